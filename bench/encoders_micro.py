"""Per-patch cost of CPU patch encoders against the cost of reading the patch, in the same run.

A synthetic H&E image (``paint_tissue``, 0.5 µm/px) is written as a JPEG-tiled TIFF (256 px tiles);
512 px tissue patches are read with OpenSlide ``read_region`` and each is encoded right away by
every ``cpu_per_patch`` encoder, single-threaded, so reading and encoding see the same machine
load. Reported: ms/patch (best round) and the encode/read time ratio (median over rounds; the
features stage needs <= 1).

usage: python bench/encoders_micro.py [--patches 200] [--rounds 5] [--encoders hed-texture]
Prints a table and writes bench/results/encoders_micro.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, as in a reader worker process

import numpy as np  # noqa: E402
import openslide  # noqa: E402
import tifffile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from threads_search.patch_encoders import (  # noqa: E402
    create_patch_encoder,
    get_patch_encoder_spec,
    list_patch_encoders,
)
from threads_search.synth.paint import paint_tissue  # noqa: E402

PATCH = 512


def write_tiff(path: Path, size: int, seed: int) -> np.ndarray:
    """Paint a ``size``² image at 0.5 µm/px, write it JPEG-tiled; return its tissue mask."""
    painted = paint_tissue(size, size, mpp=0.5, seed=seed, tissue_fraction=0.6)
    res = (1e4 / 0.5, 1e4 / 0.5)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            painted.rgb,
            tile=(256, 256),
            compression="jpeg",
            photometric="rgb",
            resolution=res,
            resolutionunit="CENTIMETER",
        )
    return painted.tissue_mask


def tissue_coords(mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` random top-left corners (x, y) of 512 px patches that are >= 50% tissue."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    out = []
    for _ in range(50 * n):
        x, y = rng.integers(0, w - PATCH), rng.integers(0, h - PATCH)
        if mask[y : y + PATCH : 16, x : x + PATCH : 16].mean() >= 0.5:
            out.append((x, y))
            if len(out) == n:
                break
    return np.array(out, np.int64)


def interleaved_round(osr, coords: np.ndarray, encoders: dict) -> dict[str, float]:
    """Read each patch, then encode it with every encoder, timing each step: both see the same
    machine load. Returns total seconds per step name."""
    totals = {"read": 0.0, **{name: 0.0 for name in encoders}}
    for x, y in coords:
        t = time.perf_counter()
        patch = np.asarray(osr.read_region((int(x), int(y)), 0, (PATCH, PATCH)).convert("RGB"))
        totals["read"] += time.perf_counter() - t
        for name, enc in encoders.items():
            t = time.perf_counter()
            enc.encode_one(patch)
            totals[name] += time.perf_counter() - t
    return totals


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=3072, help="painted image side, px at 0.5 µm/px")
    ap.add_argument("--encoders", nargs="*", default=None, help="default: every cpu_per_patch one")
    args = ap.parse_args(argv)
    names = args.encoders or list_patch_encoders()
    encoders = {}
    for name in names:
        if get_patch_encoder_spec(name).needs_checkpoint:
            continue
        enc = create_patch_encoder(name, device="cpu")
        if enc.cpu_per_patch:
            encoders[name] = enc
    if not encoders:
        raise SystemExit(f"no cpu_per_patch encoder among {names}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "micro.tiff"
        coords = tissue_coords(write_tiff(path, args.size, seed=3), args.patches, seed=0)
        osr = openslide.OpenSlide(str(path))
        interleaved_round(osr, coords[:20], encoders)  # warm the page cache and filter banks
        rounds = [interleaved_round(osr, coords, encoders) for _ in range(args.rounds)]
        osr.close()
    n = len(coords)
    read_ms = min(r["read"] for r in rounds) / n * 1e3
    rows = [{"step": "read_region 512 px (JPEG TIFF)", "ms/patch": read_ms, "x read": 1.0}]
    for name in encoders:
        ms = min(r[name] for r in rounds) / n * 1e3
        ratio = float(np.median([r[name] / r["read"] for r in rounds]))
        rows.append({"step": f"encode_one {name}", "ms/patch": ms, "x read": ratio})
    print_table(f"{n} tissue patches, 512 px @ 0.5 µm/px, single thread", rows)
    out = write_results("encoders_micro", {"args": vars(args), "rows": rows})
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
