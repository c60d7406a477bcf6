"""Patch-reading throughput: the project's reader (worker processes) versus a bare
single-process OpenSlide ``read_region`` loop over the same patches, in the same run.

usage: python bench/read_patches.py [--patches 400] [--size 8192x6144] [--batch-size 32]
Prints a table and writes bench/results/read_patches.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from threads_search.synth import make_slide  # noqa: E402
from threads_search.wsi.reader import patch_loader  # noqa: E402
from threads_search.wsi.segment import plan_slide  # noqa: E402


def bare_loop(path: Path, coords: np.ndarray, size: int) -> float:
    osr = openslide.OpenSlide(str(path))
    t = time.perf_counter()
    for x, y in coords:
        np.asarray(osr.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
    dt = time.perf_counter() - t
    osr.close()
    return dt


def reader(path: Path, coords: np.ndarray, size: int, workers: int, batch: int) -> float:
    t = time.perf_counter()
    n = 0
    for patches, _ in patch_loader(path, coords, size, 0.5, batch_size=batch, workers=workers):
        n += len(patches)
    assert n == len(coords)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=1000, help="reads per contender")
    ap.add_argument("--size", default="8192x6144", help="synthetic slide size (px at 0.5 µm/px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_20x.tiff"
        t = time.perf_counter()
        make_slide(path, w, h, mpp=0.5, seed=1, tissue_fraction=0.6)
        print(f"wrote {w}x{h} synthetic 20x slide in {time.perf_counter() - t:.1f} s")
        coords = plan_slide(path).coords
        rng = np.random.default_rng(0)
        # Tissue patches in a random order, cycled until there are --patches reads: enough work
        # to amortise starting the worker processes, as on a real slide of thousands of patches.
        coords = coords[rng.permutation(np.resize(np.arange(len(coords)), args.patches))]
        n = len(coords)
        # Warm the page cache so every contender reads from memory.
        bare_loop(path, coords, 512)
        timings = {"bare read_region loop": [], "reader, 1 worker": [], "reader, 2 workers": []}
        for _ in range(args.repeats):
            timings["bare read_region loop"].append(bare_loop(path, coords, 512))
            timings["reader, 1 worker"].append(reader(path, coords, 512, 1, args.batch_size))
            timings["reader, 2 workers"].append(reader(path, coords, 512, 2, args.batch_size))
    base = n / min(timings["bare read_region loop"])
    rows = []
    for name, ts in timings.items():
        rate = n / min(ts)
        rows.append({"method": name, "patches": n, "seconds": min(ts), "patches/s": rate,
                     "x bare loop": rate / base})  # fmt: skip
    print_table("512 px patches @ 0.5 µm/px from a JPEG-tiled TIFF", rows)
    out = write_results("read_patches", {"args": vars(args), "rows": rows})
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
