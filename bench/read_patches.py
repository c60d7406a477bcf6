"""Patch-reading throughput: the project's reader (``patch_loader``: DataLoader worker processes,
or ``backend="thread"``) versus a bare single-process OpenSlide ``read_region`` loop over the
same patches, in the same run.

usage: python bench/read_patches.py [--patches 1000] [--size 8192x6144] [--batch-size 32]
                                   [--repeats 5]
Contenders run interleaved, --repeats times each; the table shows each one's fastest run (the
least disturbed by other load) and the median of the per-repeat ratios to the bare loop. "2 bare
loops, 2 processes" is what the two cores allow. Prints a table and writes
bench/results/read_patches.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from threads_search.synth import make_slide  # noqa: E402
from threads_search.wsi.plan import plan_slide  # noqa: E402
from threads_search.wsi.reader import patch_loader  # noqa: E402


def bare_loop(path: Path, coords: np.ndarray, size: int) -> float:
    osr = openslide.OpenSlide(str(path))
    t = time.perf_counter()
    for x, y in coords:
        np.asarray(osr.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
    dt = time.perf_counter() - t
    osr.close()
    return dt


def two_bare_loops(path: Path, coords: np.ndarray, size: int) -> float:
    """Two bare loops in two forked processes, half the patches each: what the cores allow."""
    ctx = multiprocessing.get_context("fork")
    t = time.perf_counter()
    procs = [
        ctx.Process(target=bare_loop, args=(path, half, size)) for half in np.array_split(coords, 2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - t


def reader(
    path: Path, coords: np.ndarray, size: int, workers: int, batch: int, backend: str = "process"
) -> float:
    t = time.perf_counter()
    n = 0
    loader = patch_loader(
        path, coords, size, 0.5, batch_size=batch, workers=workers, backend=backend
    )
    for patches, _ in loader:
        n += len(patches)
    assert n == len(coords)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=1000, help="reads per contender")
    ap.add_argument("--size", default="8192x6144", help="synthetic slide size (px at 0.5 µm/px)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
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
        timings = {"bare read_region loop": [], "reader, in process": []}
        timings |= {"reader, 1 worker": [], "reader, 2 workers": []}
        timings |= {"reader, 1 thread": [], "reader, 2 threads": []}
        timings["2 bare loops, 2 processes"] = []
        for _ in range(args.repeats):
            timings["bare read_region loop"].append(bare_loop(path, coords, 512))
            for workers, name in enumerate(list(timings)[1:4]):
                timings[name].append(reader(path, coords, 512, workers, args.batch_size))
            for workers in (1, 2):
                t = reader(path, coords, 512, workers, args.batch_size, backend="thread")
                timings[f"reader, {workers} thread{'s' if workers > 1 else ''}"].append(t)
            timings["2 bare loops, 2 processes"].append(two_bare_loops(path, coords, 512))
    bare = np.array(timings["bare read_region loop"])
    rows = []
    for name, ts in timings.items():
        # Best runs (least disturbed) and the median of the per-repeat ratios: each repeat runs
        # every contender back to back, so pairing cancels slow phases of a shared machine.
        rows.append(
            {
                "method": name,
                "patches": n,
                "best s": min(ts),
                "patches/s": n / min(ts),
                "x bare (best)": bare.min() / min(ts),
                "x bare (paired median)": float(np.median(bare / np.array(ts))),
            }
        )
    print_table("512 px patches @ 0.5 µm/px from a JPEG-tiled TIFF", rows)
    out = write_results("read_patches", {"args": vars(args), "rows": rows, "timings_s": timings})
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
