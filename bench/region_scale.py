"""Region index at archive scale: 10^7 patch vectors, built within a few GB, searched in ms.

Synthetic patch features with the structure of real ones (not isotropic noise): tissue-type
clusters of power-law sizes in a low-dimensional latent space (48-d) embedded in D dimensions,
a shift per slide (stain, scanner, patient), within-cluster spread, and full-dimensional noise
with a decaying spectrum; rows L2-normalised, slides of 500 patches. Held-out queries are patches
of new slides drawn the same way (new slide shifts, never indexed): the tuning set and the
evaluation set are separate draws.

Per dimension (256: hed-texture; 768: CONCH v1.5), in its own child process (its peak RSS is the
number reported), with the code the index command uses (``threads_search.vectorstore.compressed``):

1. the vectors are generated chunk by chunk into a float16 ``.npy`` (never all in memory);
2. ``build_compressed``: an OPQ rotation (768-d: projected to 384), IVF with an HNSW coarse
   quantizer and 8-bit PQ codes, trained on an even sample of 2^18 rows, filled chunk by chunk,
   tuned to recall@10 0.90 on held-out indexed rows searched with their whole slide left out (as
   a new slide's patch would be): per re-rank factor the fewest probes reaching it, the fastest
   of those kept; recall reported on another half;
3. new-slide queries (never indexed): exact truth by a scan of every vector (its time per
   query, batched, is the exact-search baseline), then one query at a time through the index
   with exact re-ranking of the candidates read from disk: p50/p99 latency and recall@10.

usage: python bench/region_scale.py [--n 10000000] [--dims 256 768] [--work DIR] [--quick]
       [--code-bytes B] [--nbits 8|4] [--no-opq]
Prints one table; writes bench/results/region_scale.json (region_scale_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

LATENT = 48
N_CLUSTERS = 2000
SLIDE_PATCHES = 500
CHUNK = 1 << 18
TARGET = 0.90
K = 10


class Generator:
    """Deterministic synthetic patch features ``[n, dim]`` float32 (module docstring)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, dim])
        self.dim = dim
        self.basis = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0].T.astype(np.float32)
        self.centres = (rng.standard_normal((N_CLUSTERS, LATENT)) * 1.0).astype(np.float32)
        w = 1.0 / np.arange(1, N_CLUSTERS + 1) ** 1.1
        self.weights = w / w.sum()
        self.spread = rng.uniform(0.25, 0.6, N_CLUSTERS).astype(np.float32)
        self.noise = (0.15 * np.exp(-np.arange(dim) / (dim / 3))).astype(np.float32)
        self.noise_basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.seed = seed

    def slides(self, first_slide: int, n_slides: int) -> np.ndarray:
        """The patches of slides ``first_slide .. +n_slides`` (``SLIDE_PATCHES`` each)."""
        rng = np.random.default_rng([self.seed, 7, first_slide, n_slides])
        n = n_slides * SLIDE_PATCHES
        shift = np.repeat(rng.standard_normal((n_slides, LATENT)) * 0.3, SLIDE_PATCHES, 0)
        # each slide shows a handful of tissue types
        types = rng.choice(N_CLUSTERS, size=(n_slides, 6), p=self.weights)
        pick = types[np.repeat(np.arange(n_slides), SLIDE_PATCHES), rng.integers(0, 6, n)]
        z = self.centres[pick] + shift.astype(np.float32)
        z += rng.standard_normal((n, LATENT), dtype=np.float32) * self.spread[pick, None]
        x = z @ self.basis
        x += (rng.standard_normal((n, self.dim), dtype=np.float32) * self.noise) @ self.noise_basis
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def build_and_measure(
    n: int,
    dim: int,
    work: Path,
    n_queries: int,
    m: int | None = None,
    nbits: int = 8,
    opq: bool = True,
) -> dict:
    """Write ``n`` generated vectors (float16 file), build the compressed region index over them
    with the product code (``vectorstore.compressed``), then measure it on new-data queries."""
    import faiss

    from threads_search.vectorstore.compressed import (
        CHUNK_ROWS,
        NpyRows,
        build_compressed,
        rerank_exact,
        write_npy_rows,
    )

    gen = Generator(dim)
    n_slides = n // SLIDE_PATCHES
    per_chunk = max(1, CHUNK // SLIDE_PATCHES)
    vec_path, idx_path = work / f"vectors_{dim}.npy", work / f"regions_{dim}.index"
    t0 = time.perf_counter()
    chunks = (gen.slides(s, min(per_chunk, n_slides - s)) for s in range(0, n_slides, per_chunk))
    write_npy_rows(vec_path, n_slides * SLIDE_PATCHES, dim, chunks)
    gen_s = time.perf_counter() - t0
    vecs = NpyRows(vec_path)
    groups = np.arange(0, n_slides * SLIDE_PATCHES, SLIDE_PATCHES)  # each slide's first row
    info = build_compressed(
        vecs,
        idx_path,
        target=TARGET,
        k=K,
        n_queries=n_queries,
        groups=groups,
        m=m,
        nbits=nbits,
        opq=opq,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    index = faiss.read_index(str(idx_path))
    nprobe, kf = info["search_params"]["nprobe"], info["search_params"]["k_factor"]
    faiss.extract_index_ivf(index).nprobe = nprobe
    # new data: patches of slides never indexed, exact truth by a scan of every vector
    queries = gen.slides(2 * 10**9, max(1, n_queries // SLIDE_PATCHES + 1))
    queries = np.ascontiguousarray(
        queries[np.random.default_rng(3).choice(len(queries), n_queries, replace=False)]
    )
    heap = faiss.ResultHeap(len(queries), K, keep_max=True)
    t = time.perf_counter()
    for start in range(0, len(vecs), CHUNK_ROWS):
        block = vecs[start : start + CHUNK_ROWS].astype(np.float32)
        d, i = faiss.knn(queries, block, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, i + start)
    heap.finalize()
    exact_ms = (time.perf_counter() - t) / len(queries) * 1e3
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, cand = index.search(q[None], K * kf)
        found.append(rerank_exact(vecs, q[None], cand, K)[1][0])
        lat.append(time.perf_counter() - t)
    truth = heap.I
    new_recall = float(
        np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)])
    )
    return {
        "n": n,
        "dim": dim,
        "index": f"{info['params']['factory']} + exact re-rank",
        "generate + write s": gen_s,
        "build s": info["build_seconds"],
        "train s": info["train_seconds"],
        "add s (with exact truth of the tuning rows)": info["add_seconds"],
        "tune s": info["tune_seconds"],
        "build peak RSS GB": peak / 2**30,
        "nprobe": nprobe,
        "re-rank factor": kf,
        "tuning settings tried": len(info["tuning"]),
        "recall@10 tuning rows (slide left out)": info["recall_at_k_tuning"],
        "recall@10 evaluation rows (slide left out)": info["recall_at_k"],
        "recall@10 new-slide queries": new_recall,
        "p50 ms": float(np.percentile(lat, 50) * 1e3),
        "p99 ms": float(np.percentile(lat, 99) * 1e3),
        "exact scan ms/query (batched)": exact_ms,
        "bytes/patch on disk": (idx_path.stat().st_size + vec_path.stat().st_size) / n,
        "bytes/patch in RAM": index.sa_code_size() + 8,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="patch vectors per index")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 768])
    ap.add_argument("--queries", type=int, default=200, help="tuning and evaluation queries each")
    ap.add_argument("--work", type=Path, help="scratch folder (vectors on disk; removed after)")
    ap.add_argument("--quick", action="store_true", help="1,000,000 vectors (smoke run)")
    ap.add_argument("--code-bytes", type=int, help="PQ bytes per vector [default: the product's]")
    ap.add_argument(
        "--nbits", type=int, default=8, choices=(4, 8), help="PQ code bits (4: SIMD fast-scan)"
    )
    ap.add_argument(
        "--no-opq", action="store_true", help="no OPQ rotation before the IVF (the old layout)"
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = 1_000_000 if args.quick else args.n
    work = args.work or Path(tempfile.mkdtemp(prefix="region-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.child:
        row = build_and_measure(
            n, args.child, work, args.queries, args.code_bytes, args.nbits, not args.no_opq
        )
        print(json.dumps(row))
        return
    rows = []
    t0 = time.perf_counter()
    for dim in args.dims:
        cmd = [sys.executable, __file__, "--n", str(n), "--work", str(work)]
        cmd += ["--queries", str(args.queries), "--child", str(dim)]
        cmd += ["--code-bytes", str(args.code_bytes)] if args.code_bytes else []
        cmd += ["--nbits", str(args.nbits)] + (["--no-opq"] if args.no_opq else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for f in work.glob(f"*_{dim}.*"):
            os.unlink(f)
        print(f"dim {dim} done in {time.perf_counter() - t0:.0f} s", flush=True)
    table = [
        {"": key, **{f"{r['dim']}-d": r[key] for r in rows}} for key in rows[0] if key != "dim"
    ]
    print_table(f"region index, {n:,} patch vectors", table)
    name = "region_scale_quick" if args.quick else "region_scale"
    cmd = " ".join(["python", "bench/region_scale.py", *(argv or sys.argv[1:])])
    path = write_results(
        name, {"command": cmd, "rows": rows, "wall_seconds": time.perf_counter() - t0}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
