"""Vector search at scale: exact FAISS Flat, the auto-chosen (recall-tuned) index and a plain
NumPy brute force (matrix product + argpartition), on synthetic clustered 1024-d embeddings.

For each size: build time, index memory, p50/p99 single-query latency, batched QPS and
recall@k against exact search, all in one run. Queries are new data: rows drawn from the same
generator as the collection but never indexed (the build tunes on held-out indexed rows). The
NumPy batched run doubles as the exact ground truth (checked against Flat). ``--types`` adds
rows for other index families, each tuned the same way (e.g. ``hnsw``).

usage: python bench/search_scale.py [--sizes 10000,100000,1000000] [--dim 1024] [--threads 2]
       [--types hnsw]
Prints a table and writes bench/results/search_scale.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

from threads_search.synth.vectors import clustered_embeddings  # noqa: E402
from threads_search.vectorstore import (  # noqa: E402
    build_index,
    create_index_type,
    recall_at_k,
    search,
)


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 131_072):
    """Exact top-k by matrix product over row chunks + argpartition: (scores, ids) [Q, k]."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, len(x), chunk):
        s = q @ x[start : start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + start], 1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def latencies(fn, queries: np.ndarray, n: int) -> tuple[float, float]:
    """p50 and p99 single-query latency in ms over the first ``n`` queries (one warm-up)."""
    fn(queries[:1])
    times = []
    for i in range(min(n, len(queries))):
        t = time.perf_counter()
        fn(queries[i : i + 1])
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def run_size(
    n: int, dim: int, k: int, n_queries: int, n_single: int, budget: int, types=()
) -> list[dict]:
    t = time.perf_counter()
    x = clustered_embeddings(n + n_queries, dim, seed=0, normalize=True)
    x, q = x[:n], np.ascontiguousarray(x[n:])  # the queries are never indexed
    print(f"[{n}] generated {n} x {dim} in {time.perf_counter() - t:.1f} s", flush=True)
    # single-query latency is measured on fewer queries where one query is slow (brute force)
    slow_single = max(10, min(n_single, int(2e9 / (n * dim))))
    rows = []

    (truth_s, truth), np_batch_s = timed(numpy_topk, x, q, k)
    np_p50, np_p99 = latencies(lambda qq: numpy_topk(x, qq, k), q, slow_single)
    rows.append(
        row(
            n,
            "numpy",
            "matmul+argpartition",
            0.0,
            x.nbytes,
            np_p50,
            np_p99,
            len(q) / np_batch_s,
            1.0,
            np_p50,
        )
    )
    print(f"[{n}] numpy p50 {np_p50:.2f} ms", flush=True)

    (flat, _), build_s = timed(create_index_type("flat").build, x)
    (_, ids), batch_s = timed(search, flat, q, k)
    p50, p99 = latencies(lambda qq, ix=flat: search(ix, qq, k), q, slow_single)
    rows.append(
        row(
            n,
            "faiss flat",
            "IndexFlatIP",
            build_s,
            n * dim * 4,
            p50,
            p99,
            len(q) / batch_s,
            recall_at_k(ids, truth),
            np_p50,
        )
    )
    print(f"[{n}] flat p50 {p50:.2f} ms, recall {rows[-1]['recall@10']:.4f}", flush=True)
    del flat
    gc.collect()

    for kind in ("auto", *types):
        (built, info), total_s = timed(
            lambda kind=kind: build_index(x, index_type=kind, memory_budget=budget, use_gpu=False)
        )
        (_, ids), batch_s = timed(search, built, q, k)
        p50, p99 = latencies(lambda qq, ix=built: search(ix, qq, k), q, n_single)
        desc = f"{info['type']} " + ",".join(f"{a}={b}" for a, b in info["params"].items())
        rows.append(
            row(
                n,
                kind,
                desc,
                info["build_seconds"],
                info["memory_bytes"],
                p50,
                p99,
                len(q) / batch_s,
                recall_at_k(ids, truth),
                np_p50,
            )
        )
        rows[-1]["tune_s"] = round(info["tune_seconds"], 2)  # JSON only
        rows[-1]["tuned_recall"] = round(info["recall_at_k"], 4)
        print(
            f"[{n}] {kind} {desc} p50 {p50:.2f} ms, recall {rows[-1]['recall@10']:.4f}", flush=True
        )
        del built
        gc.collect()
    return rows


def row(n, method, index, build_s, mem, p50, p99, qps, recall, np_p50) -> dict:
    return {
        "n": n,
        "method": method,
        "index": index,
        "build_s": round(build_s, 2),
        "memory_MB": round(mem / 2**20, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "batch_QPS": round(qps, 1),
        "recall@10": round(recall, 4),
        "speedup_p50_vs_numpy": round(np_p50 / p50, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated, e.g. 10000,1000000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200, help="held-out queries (batched, recall)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-budget-gb", type=float, default=16.0)
    ap.add_argument("--types", default="", help="more index families to build, e.g. hnsw,ivf")
    args = ap.parse_args(argv)
    types = tuple(t for t in args.types.split(",") if t)
    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        budget = int(args.memory_budget_gb * 2**30)
        rows += run_size(n, args.dim, args.k, args.queries, args.single, budget, types)
        gc.collect()
    os.environ.setdefault("COLUMNS", "150")  # rich: keep the table unwrapped when piped
    keep = ("n", "method", "index", "build_s", "memory_MB", "p50_ms", "p99_ms", "batch_QPS")
    table = [
        {
            **{c: r[c] for c in keep},
            "recall@10": r["recall@10"],
            "x_numpy_p50": r["speedup_p50_vs_numpy"],
        }
        for r in rows
    ]
    print_table(f"vector search, {args.dim}-d clustered embeddings, {args.threads} threads", table)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    path = write_results(
        "search_scale",
        {"args": vars(args), "rows": rows, "loadavg": load, "faiss": faiss.__version__},
    )
    print(f"wrote {path}  (load average {load})")
    return {"rows": rows}


if __name__ == "__main__":
    main()
