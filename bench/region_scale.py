"""Region index at archive scale: 10^7 patch vectors, built within a few GB, searched in ms.

Synthetic patch features with the structure of real ones (not isotropic noise): tissue-type
clusters of power-law sizes in a low-dimensional latent space (48-d) embedded in D dimensions,
a shift per slide (stain, scanner, patient), within-cluster spread, and full-dimensional noise
with a decaying spectrum; rows L2-normalised, slides of 500 patches. Held-out queries are patches
of new slides drawn the same way (new slide shifts, never indexed): the tuning set and the
evaluation set are separate draws.

Per dimension (256: hed-texture; 768: CONCH v1.5), in its own child process (its peak RSS is the
number reported):

1. train an IVF index with an HNSW coarse quantizer and 8-bit PQ codes (``IVF{nlist}_HNSW32,
   PQ{m}``, inner product) on a sample of 2^18 rows;
2. add the rows chunk by chunk as they are generated (never all in memory), writing each chunk
   also as float16 to ``vectors.f16`` (for exact re-ranking) and searching it exactly against
   the queries (ground truth merged in a ``faiss.ResultHeap``; its time per query is the exact
   search baseline);
3. tune on the tuning queries the smallest re-rank factor and ``nprobe`` reaching recall@10
   0.90, then measure single-query latency (p50/p99, one thread... as FAISS runs: all cores)
   and recall@10 on the evaluation queries.

usage: python bench/region_scale.py [--n 10000000] [--dims 256 768] [--work DIR] [--quick]
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


def build_and_measure(n: int, dim: int, work: Path, n_queries: int) -> dict:
    import faiss

    t0 = time.perf_counter()
    gen = Generator(dim)
    n_slides = n // SLIDE_PATCHES
    per_chunk = CHUNK // SLIDE_PATCHES
    nlist = 4096 if n >= 2_000_000 else 1024
    m = dim // 8  # 8-bit PQ: dim/8 bytes a vector
    index = faiss.index_factory(dim, f"IVF{nlist}_HNSW32,PQ{m}", faiss.METRIC_INNER_PRODUCT)
    train = Generator(dim).slides(10**9, max(40 * nlist, CHUNK) // SLIDE_PATCHES)
    t = time.perf_counter()
    index.train(train)
    del train
    train_s = time.perf_counter() - t
    queries = gen.slides(2 * 10**9, max(1, 2 * n_queries // SLIDE_PATCHES + 1))
    pick = np.random.default_rng(3).choice(len(queries), 2 * n_queries, replace=False)
    queries = np.ascontiguousarray(queries[pick])
    heap = faiss.ResultHeap(len(queries), K, keep_max=True)
    vec_path = work / f"vectors_{dim}.f16"
    vectors = np.lib.format.open_memmap(vec_path, "w+", np.float16, (n, dim))
    t = time.perf_counter()
    exact_s = 0.0
    for start in range(0, n_slides, per_chunk):
        block = gen.slides(start, min(per_chunk, n_slides - start))
        row0 = start * SLIDE_PATCHES
        index.add(block)
        vectors[row0 : row0 + len(block)] = block
        te = time.perf_counter()
        d, i = faiss.knn(queries, block, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, i + row0)
        exact_s += time.perf_counter() - te
    vectors.flush()
    heap.finalize()
    add_s = time.perf_counter() - t - exact_s
    truth = heap.I
    idx_path = work / f"regions_{dim}.index"
    faiss.write_index(index, str(idx_path))
    build_s = time.perf_counter() - t0 - exact_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del vectors
    vecs = np.load(vec_path, mmap_mode="r")
    ivf = faiss.extract_index_ivf(index)
    tune, evalq = slice(0, n_queries), slice(n_queries, 2 * n_queries)

    def run(qs, nprobe, kf):
        ivf.nprobe = nprobe
        _, cand = index.search(qs, K * kf)
        out = np.empty((len(qs), K), np.int64)
        for j, (q, c) in enumerate(zip(qs, cand, strict=True)):
            c = np.unique(c[c >= 0])
            s = np.asarray(vecs[c], np.float32) @ q
            out[j] = c[np.argsort(-s)[:K]]
        return out

    def recall(found, sl):
        t_ = truth[sl]
        return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, t_, strict=True)]))

    best = None
    for kf in (2, 4, 8, 16):
        for nprobe in (8, 16, 32, 64, 128, 256):
            r = recall(run(queries[tune], nprobe, kf), tune)
            if r >= TARGET:
                best = (nprobe, kf, r)
                break
        if best:
            break
    nprobe, kf, tune_recall = best or (256, 16, r)
    eval_recall = recall(run(queries[evalq], nprobe, kf), evalq)
    lat = []
    for q in queries[evalq]:
        t = time.perf_counter()
        run(q[None], nprobe, kf)
        lat.append(time.perf_counter() - t)
    disk = idx_path.stat().st_size + vec_path.stat().st_size
    return {
        "n": n,
        "dim": dim,
        "index": f"IVF{nlist}_HNSW32,PQ{m} + exact re-rank (float16 on disk)",
        "build s": build_s,
        "train s": train_s,
        "add s": add_s,
        "build peak RSS GB": peak / 2**30,
        "nprobe": nprobe,
        "re-rank factor": kf,
        "recall@10 tuning": tune_recall,
        "recall@10 held-out": eval_recall,
        "p50 ms": float(np.percentile(lat, 50) * 1e3),
        "p99 ms": float(np.percentile(lat, 99) * 1e3),
        "exact ms/query (batched)": exact_s / len(queries) * 1e3,
        "bytes/patch on disk": disk / n,
        "bytes/patch in RAM (codes+ids)": m + 8,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="patch vectors per index")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 768])
    ap.add_argument("--queries", type=int, default=200, help="tuning and evaluation queries each")
    ap.add_argument("--work", type=Path, help="scratch folder (vectors on disk; removed after)")
    ap.add_argument("--quick", action="store_true", help="1,000,000 vectors (smoke run)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = 1_000_000 if args.quick else args.n
    work = args.work or Path(tempfile.mkdtemp(prefix="region-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(build_and_measure(n, args.child, work, args.queries)))
        return
    rows = []
    t0 = time.perf_counter()
    for dim in args.dims:
        cmd = [sys.executable, __file__, "--n", str(n), "--work", str(work)]
        cmd += ["--queries", str(args.queries), "--child", str(dim)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for f in work.glob(f"*_{dim}.*"):
            os.unlink(f)
        print(f"dim {dim} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(f"region index, {n:,} patch vectors", rows)
    name = "region_scale_quick" if args.quick else "region_scale"
    cmd = " ".join(["python", "bench/region_scale.py", *(argv or sys.argv[1:])])
    path = write_results(
        name, {"command": cmd, "rows": rows, "wall_seconds": time.perf_counter() - t0}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
