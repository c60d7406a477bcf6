"""Scale-out benchmark: the index build on the local engine vs Ray, and the streaming build of
a collection larger than memory.

1. Engines: one synthetic slide archive (hed-texture features, an untrained bundle) indexed by
   ``--engine local`` and ``--engine ray`` (a local Ray with as many CPUs as ``--workers``) on
   the same machine: wall time, slides/hour, patches/s, Ray start-up and overhead, and the
   largest embedding difference between the two indexes.
2. Streaming: ``--n`` x ``--dim`` synthetic clustered embeddings written as Parquet shards (in
   a child process), then ``build_streaming`` in another child process whose peak resident
   memory (``ru_maxrss``, and ``VmRSS`` sampled per phase) is the number reported; build time
   per phase, recall@10 vs exact search on held-out queries, p50/p95 single-query latency with
   and without exact re-ranking, per mode (one index, or ``faiss.IndexShards``).

usage: python bench/scale_out.py [--quick] [--n 2000000] [--dim 1024] [--modes single,shards]
       [--slides 8] [--width 8192] [--height 6144] [--workers 2] [--budget-gb G] [--work DIR]
Writes bench/results/scale_out.json (scale_out_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

GB = 2**30


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------- engines: local vs ray


def bench_engines(work: Path, n_slides: int, width: int, height: int, workers: int) -> dict:
    import torch

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from indexer.ray_engine import ray_session
    from threads_search.models.bundle import build_model, save_model
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth import make_archive
    from threads_search.vectorstore import store
    from threads_search.vectorstore.writer import read_embeddings

    t = time.perf_counter()
    make_archive(work / "slides", n_slides=n_slides, width=width, height=height, seed=3)
    torch.manual_seed(0)
    spec = get_patch_encoder_spec("hed-texture")
    save_model(build_model(spec, slide_config={"head_dim": 64, "attn_dim": 32}), work / "model")
    print(f"archive of {n_slides} slides {width}x{height} in {time.perf_counter() - t:.0f}s")
    rows, embs = [], {}
    for engine in ("local", "ray"):
        cfg = IndexConfig(
            inputs=[str(work / "slides")],
            model=str(work / "model"),
            out=str(work / f"idx_{engine}"),
            workers=workers,
            engine=engine,
        )
        t0 = time.perf_counter()
        with ray_session(None, workers) if engine == "ray" else _nothing():
            start = time.perf_counter() - t0
            t1 = time.perf_counter()
            s = run_index(cfg)
            run = time.perf_counter() - t1
        if s.failed:
            raise RuntimeError(f"{engine}: failed slides {s.failed}")
        gen = store.read_manifest(cfg.out)["generation_dir"]
        embs[engine] = read_embeddings(f"{gen}/slide_embeddings.parquet")[1]
        rows.append(
            {
                "engine": engine,
                "slides": len(s.indexed),
                "patches": s.n_patches,
                "ray_start_s": start,
                "index_s": run,
                "slides_per_hour": 3600 * n_slides / run,
                "patches_per_s": s.n_patches / run,
            }
        )
        print(f"{engine}: {run:.1f}s (+{start:.1f}s start-up)")
    local, ray = rows
    return {
        "archive": {
            "slides": n_slides,
            "width": width,
            "height": height,
            "workers": workers,
            "patch_encoder": "hed-texture (CPU, in the readers)",
        },
        "rows": rows,
        "ray_overhead": ray["index_s"] / local["index_s"] - 1,
        "ray_overhead_with_startup": (ray["index_s"] + ray["ray_start_s"]) / local["index_s"] - 1,
        "max_embedding_diff": float(np.abs(embs["local"] - embs["ray"]).max()),
    }


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


# ---------------------------------------------------------------- streaming build


class _ShardSink:
    """Stands in for the ``[n, dim]`` output array of ``clustered_embeddings``: receives its
    row blocks in order and writes them to Parquet shards, never holding more than one."""

    def __init__(self, n: int, dim: int, writer) -> None:
        self.shape, self.dtype, self.writer, self.next = (n, dim), np.dtype(np.float32), writer, 0

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        if rows.start != self.next:
            raise RuntimeError(f"rows out of order: {rows.start} after {self.next}")
        self.writer.write(block)
        self.next = rows.stop


def child_generate(out: Path, n: int, dim: int, rows_per_shard: int) -> dict:
    from threads_search.synth.vectors import clustered_embeddings
    from threads_search.vectorstore.streaming import ShardWriter

    t = time.perf_counter()
    with ShardWriter(out, rows_per_shard) as w:
        clustered_embeddings(n, dim, seed=0, out=_ShardSink(n, dim, w))
    size = sum(p.stat().st_size for p in out.glob("*.parquet"))
    return {
        "seconds": time.perf_counter() - t,
        "bytes_on_disk": size,
        "shards": len(list(out.glob("*.parquet"))),
        "peak_rss": peak_rss(),
    }


def child_build(shards: Path, out: Path, mode: str, budget: int, chunk: int = 65_536) -> dict:
    from threads_search.vectorstore.streaming import ShardSet, build_streaming, open_streaming

    base = rss_now()
    phases, stop, samples = [], threading.Event(), []

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append(rss_now())

    threading.Thread(target=sample, daemon=True).start()

    def log(msg: str) -> None:
        phases.append({"after": msg, "rss": rss_now(), "max_sampled_so_far": max(samples or [0])})
        print(f"  [{mode}] {msg} (rss {rss_now() / GB:.2f} GB)", flush=True)

    info = build_streaming(
        shards,
        out,
        memory_budget=budget,
        chunk_rows=chunk,
        mode=mode,
        n_queries=300,
        n_eval=300,
        log=log,
    )
    stop.set()
    build_peak = peak_rss()
    ix = open_streaming(out)
    ss = ShardSet([shards])
    rng = np.random.default_rng(99)
    q = ss.take([np.sort(rng.choice(ss.n, 200, replace=False))], chunk)[0]
    q += rng.standard_normal(q.shape).astype(np.float32) * np.float32(0.1 / np.sqrt(ss.dim))
    lat = {}
    for kf in sorted({ix.k_factor, 1}):
        ix.search(q[:5], 10, k_factor=kf)  # warm-up
        times = []
        for row in q:
            t = time.perf_counter()
            ix.search(row, 10, k_factor=kf)
            times.append(time.perf_counter() - t)
        lat[f"k_factor={kf}"] = {
            "p50_ms": 1e3 * float(np.median(times)),
            "p95_ms": 1e3 * float(np.percentile(times, 95)),
        }
    return {
        "info": info,
        "base_rss": base,
        "build_peak_rss": build_peak,
        "sampled_peak_rss": max(samples or [0]),
        "phases": phases,
        "latency": lat,
        "serving_rss": rss_now(),
        "index_files_bytes": _size(out),
    }


def _size(path: Path) -> dict:
    return {p.name: p.stat().st_size for p in path.rglob("*") if p.is_file()}


def bench_streaming(work: Path, n: int, dim: int, modes: list[str], budget: int) -> dict:
    shards = work / f"shards_{n}x{dim}"
    rows_per_shard = max(1, n // 16)
    out: dict = {"n": n, "dim": dim, "float32_bytes": n * dim * 4, "memory_budget": budget}
    if not shards.exists():
        out["generate"] = _child(
            ["--_generate", str(shards), str(n), str(dim), str(rows_per_shard)]
        )
        print(f"generated {n}x{dim} in {out['generate']['seconds']:.0f}s")
    for mode in modes:
        dest = work / f"stream_{mode}"
        shutil.rmtree(dest, ignore_errors=True)
        out[mode] = _child(["--_build", str(shards), str(dest), mode, str(budget)])
        shutil.rmtree(dest, ignore_errors=True)
    return out


def _child(args: list[str]) -> dict:
    """Run this script as a child (its own peak memory), echoing its output; its result."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line, end="", flush=True)
    if proc.wait() or result is None:
        raise RuntimeError(f"child {args[0]} failed with {proc.returncode}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 small slides, 100k x 1024")
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--modes", default="single", help="single,shards")
    ap.add_argument(
        "--budget-gb",
        type=float,
        default=None,
        help="RAM for the vector index [default: 1/8 of the float32 vectors]",
    )
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--height", type=int, default=6144)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/threads-search-scale-out"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (shards)")
    ap.add_argument("--skip-engines", action="store_true")
    ap.add_argument("--skip-streaming", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n, a.slides, a.width, a.height = min(a.n, 100_000), 4, 2048, 1536
        a.modes = "single,shards" if a.modes == "single" else a.modes
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"args": {k: str(v) for k, v in vars(a).items()}}
    try:
        if not a.skip_engines:
            eng = a.work / "engines"
            shutil.rmtree(eng, ignore_errors=True)
            res["engines"] = bench_engines(eng, a.slides, a.width, a.height, a.workers)
            print_table("index build: local vs ray", res["engines"]["rows"])
            print(
                f"ray overhead {100 * res['engines']['ray_overhead']:.0f}% "
                f"({100 * res['engines']['ray_overhead_with_startup']:.0f}% with start-up), "
                f"max embedding diff {res['engines']['max_embedding_diff']:.2e}"
            )
            write_results("scale_out_quick" if a.quick else "scale_out", res)
        if not a.skip_streaming:
            modes = [m for m in a.modes.split(",") if m]
            budget = int(a.budget_gb * GB) if a.budget_gb else a.n * a.dim * 4 // 8
            res["streaming"] = st = bench_streaming(a.work, a.n, a.dim, modes, budget)
            rows = []
            for m in modes:
                r, i = st[m], st[m]["info"]
                rows.append(
                    {
                        "mode": m,
                        "type": i["type"],
                        "m": i["params"].get("m"),
                        "nprobe": i["nprobe"],
                        "kf": i["k_factor"],
                        "peak GB": r["build_peak_rss"] / GB,
                        "build s": i["seconds"]["total"],
                        "R@10": i["eval"]["recall_at_k"],
                        "R@10 kf=1": i["eval"]["recall_at_k_no_rerank"],
                        "p50 ms": r["latency"][f"k_factor={i['k_factor']}"]["p50_ms"],
                        "p50 kf=1": r["latency"]["k_factor=1"]["p50_ms"],
                    }
                )
            st["rows"] = rows
            print_table(f"streaming build {a.n} x {a.dim}", rows)
    finally:
        path = write_results("scale_out_quick" if a.quick else "scale_out", res)
        print(f"wrote {path}")
        if not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_generate":
        r = child_generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        print("RESULT " + json.dumps(r), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "--_build":
        r = child_build(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        print("RESULT " + json.dumps(r, default=str), flush=True)
    else:
        main()
