"""Features-stage throughput: read + ``hed-texture`` end to end versus the reader alone, at 1 and
2 workers, on the same synthetic 20x slides in the same run; plus the per-patch cost of reading
and of encoding measured single-threaded; plus the features stage with ``--stain-normalize
none|macenko|reinhard`` (per-slide fit + normalising every patch; ratio vs none) at 2 workers.

usage: python bench/features.py [--slides 2] [--size 8192x6144] [--patches 300]
Prints a table and writes bench/results/features.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from threads_search.features import default_config  # noqa: E402
from threads_search.features.extract import encode_plan  # noqa: E402
from threads_search.features.stain import fit_plan  # noqa: E402
from threads_search.patch_encoders import create_patch_encoder  # noqa: E402
from threads_search.synth import make_slide  # noqa: E402
from threads_search.wsi import open_slide  # noqa: E402
from threads_search.wsi.plan import plan_slide  # noqa: E402
from threads_search.wsi.reader import patch_loader  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slides", type=int, default=2)
    ap.add_argument("--size", default="8192x6144")
    ap.add_argument("--patches", type=int, default=300, help="patches per slide (sampled)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    enc = create_patch_encoder("hed-texture")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plans = []
        for i in range(args.slides):
            p = make_slide(Path(tmp) / f"s{i}.tiff", w, h, 0.5, seed=i, tissue_fraction=0.6).path
            plan = plan_slide(p)
            rng = np.random.default_rng(i)
            if len(plan.coords) > args.patches:
                keep = np.sort(rng.choice(len(plan.coords), args.patches, replace=False))
                plan.coords = plan.coords[keep]
            plans.append(plan)
        n = sum(len(p.coords) for p in plans)
        # Single-threaded per-patch costs: reading vs encoding the same patches.
        t_read = t_enc = 0.0
        for plan in plans:
            with open_slide(plan.path) as s:
                for x, y in plan.coords[:100]:
                    t = time.perf_counter()
                    patch = s.read_patch(int(x), int(y), 512, 0.5)
                    t_read += time.perf_counter() - t
                    t = time.perf_counter()
                    enc.encode_one(patch)
                    t_enc += time.perf_counter() - t
        m = sum(min(100, len(p.coords)) for p in plans)
        read_ms, enc_ms = 1e3 * t_read / m, 1e3 * t_enc / m
        for workers in (1, 2):
            t = time.perf_counter()
            for plan in plans:
                for _ in patch_loader(
                    plan.path, plan.coords, 512, 0.5, mpp=plan.mpp, workers=workers
                ):
                    pass
            reader_rate = n / (time.perf_counter() - t)
            cfg = default_config("hed-texture", workers=workers, batch_size=32)
            t = time.perf_counter()
            for plan in plans:
                encode_plan(plan, enc, cfg)
            e2e_rate = n / (time.perf_counter() - t)
            rows.append(
                {
                    "workers": workers,
                    "patches": n,
                    "reader only patches/s": reader_rate,
                    "read+encode patches/s": e2e_rate,
                    "e2e / reader": e2e_rate / reader_rate,
                }
            )
        stain_rows = []
        for method in ("none", "macenko", "reinhard"):
            cfg = default_config("hed-texture", workers=2, batch_size=32, stain_normalize=method)
            t = time.perf_counter()
            fit_s = 0.0
            for plan in plans:
                t_fit = time.perf_counter()
                stain = fit_plan(plan.path, plan.coords, plan.mpp, cfg)
                fit_s += time.perf_counter() - t_fit
                encode_plan(plan, enc, cfg, stain=stain)
            dt = time.perf_counter() - t
            stain_rows.append(
                {
                    "stain": method,
                    "patches": n,
                    "patches/s": n / dt,
                    "fit s/slide": fit_s / len(plans),
                }
            )
        for r in stain_rows:
            r["ratio vs none"] = r["patches/s"] / stain_rows[0]["patches/s"]
    print_table("features stage: 512 px @ 0.5 µm/px, hed-texture", rows)
    print_table("features stage with --stain-normalize (2 workers, same slides)", stain_rows)
    share = {
        "read ms/patch": read_ms,
        "encode ms/patch": enc_ms,
        "encode share": enc_ms / (read_ms + enc_ms),
    }
    print_table("single-threaded cost per patch", [share])
    result = {"args": vars(args), "rows": rows, "per_patch": share, "stain": stain_rows}
    out = write_results("features", result)
    print(f"wrote {out}")
    return {"rows": rows, "per_patch": share, "stain": stain_rows}


if __name__ == "__main__":
    main()
