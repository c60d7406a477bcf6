"""A compressed index over more vectors than memory holds: IVF with an HNSW coarse quantizer and
8-bit PQ codes in RAM, the exact vectors in a float16 ``.npy`` on disk for re-ranking.

Used for the region (patch) index when its vectors exceed the memory budget
(``vectorstore.writer``), and measured at 10^7 vectors by ``bench/region_scale.py``. The
vectors (L2-normalised, float16 ``[N, D]``, memory-mapped) are read in chunks, never whole:

1. train: ``OPQ{m}_{d},IVF{nlist}_HNSW32,PQ{m}`` (inner product; ``m`` = D/4 bytes up to
   512-d, D/8 above: ``code_bytes``) on an even sample of ``TRAIN_ROWS`` rows. The OPQ stage
   rotates the vectors (and above 4m dimensions projects them to ``d`` = 4m) so that each byte
   of code describes about 4 dimensions of balanced variance: measured at 10^6 x 768, recall@10
   of new-slide queries at 32 probes and 40 candidates rose from 0.73 to 0.92;
2. add: chunk by chunk; the same pass computes the exact top-``k`` of the held-out query rows
   (a seeded sample: half tunes, half evaluates) with each query's whole slide left out of the
   truth and of the index's answers (``groups``; else its own row): a patch of a new slide finds
   nothing of its own slide, so this is how new data is searched;
3. tune: for each re-rank factor (candidates per wanted hit, re-scored exactly from the
   vectors) the smallest ``nprobe`` whose recall@k on the tuning rows reaches ``target``; of
   these settings the one with the lowest measured time per query (search + re-rank) is kept;
   recall on the evaluation rows is what is reported.

Searching such an index: ask it for ``k * k_factor`` candidates at ``nprobe`` and re-rank them
with their stored vectors (``query.regions.rerank``).

GPU: with ``faiss-gpu`` and a device, the coarse k-means of step 1 (``nlist`` centroids over the
training sample) assigns on the GPU through the IVF's
``clustering_index``, a GPU flat L2 index, as the CPU build's own assigner would on the CPU; the
OPQ and PQ training, the adds and every search stay on the CPU (FAISS has no GPU version of the
HNSW coarse quantizer nor of the per-slide leave-out selectors, and a single query takes
milliseconds there). ``info["gpu"]`` and ``info["gpu_reason"]`` say what ran where.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import faiss
import numpy as np

from threads_search.vectorstore.autotune import held_out_rows
from threads_search.vectorstore.gpu import resolve_gpu, to_gpu
from threads_search.vectorstore.vectors import (
    pread_rows,
    recall_at_k,
    save_index,
    search_parameters,
)

TRAIN_ROWS = 1 << 18
CHUNK_ROWS = 1 << 18
IP = faiss.METRIC_INNER_PRODUCT
K_FACTORS = (2, 4, 8, 16, 32)  # re-rank factors tried by the tuner
NPROBES = (4, 8, 16, 32, 64, 128, 256, 512)  # probes tried by the tuner


class NpyRows:
    """Rows of a 2-D ``.npy`` file read with ``pread`` into private memory, never mapped: what
    a build reads does not stay resident (a memory map's touched pages count in its RSS).
    ``rows[a:b]`` a block, ``rows[ids]`` scattered rows."""

    def __init__(self, path: str | Path) -> None:
        mm = np.load(path, mmap_mode="r")
        self.path, self.shape, self.dtype = str(path), mm.shape, mm.dtype
        self._offset, self._row = mm.offset, mm.dtype.itemsize * mm.shape[1]  # bytes
        del mm

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        dim = self.shape[1]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            count = max(0, stop - start) * dim
            off = self._offset + start * self._row
            return np.fromfile(self.path, self.dtype, count, offset=off).reshape(-1, dim)
        ids = np.arange(self.shape[0])[key] if isinstance(key, slice) else np.asarray(key)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return pread_rows(fd, ids, dim, self.dtype, self._offset)
        finally:
            os.close(fd)


def write_npy_rows(path: str | Path, n: int, dim: int, chunks, dtype=np.float16) -> int:
    """Write the blocks of ``chunks`` (``[m, dim]`` each, ``n`` rows in all) as one ``.npy``
    ``[n, dim]`` of ``dtype`` with plain file writes (no memory map). Returns rows written."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    header["shape"] = (n, dim)
    rows = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for block in chunks:
            f.write(np.ascontiguousarray(block, dtype).tobytes())
            rows += len(block)
    return rows


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 2 sqrt(n), a power of two, 256-4096 (training
    k-means costs lists x training rows; with an HNSW coarse quantizer a query visits only a few
    lists either way, and 4096 lists keep a 10^7 build's training to minutes on 2 cores)."""
    return int(min(4096, max(256, 2 ** round(np.log2(2 * np.sqrt(max(n, 1)))))))


def code_bytes(dim: int) -> int:
    """PQ bytes per vector (8-bit codes): one per 4 dimensions up to 512-d, one per 8 above (a
    divisor of ``dim``). Measured at 10^6 x 256-d new-slide queries: 32 bytes left recall@10 at
    0.85 whatever the re-ranking, 64 bytes reached 0.98 at a quarter of the probes."""
    m = max(1, dim // 4 if dim <= 512 else dim // 8)
    while dim % m:
        m -= 1
    return m


def opq_dim(dim: int, m: int) -> int:
    """Dimensions the OPQ stage gives the IVF and the codes of ``m`` bytes: min(dim, 4m)."""
    return min(dim, 4 * m)


def opq_stage(dim: int, m: int, nbits: int = 8) -> str:
    """The OPQ pre-transform of the factory string: ``OPQ{s}_{d},`` with ``s`` sub-quantizers
    (``m``, or ``2m`` for 4-bit codes) and ``d`` = ``opq_dim`` output dimensions."""
    subq = m if nbits == 8 else 2 * m
    out = opq_dim(dim, m)
    return f"OPQ{subq}_{out}," if out != dim else f"OPQ{subq},"


def tune_settings(measure, nlist: int, target: float) -> tuple[int, int, float, list]:
    """``(nprobe, k_factor, recall, tried)``: for each re-rank factor of ``K_FACTORS`` the
    smallest ``nprobe`` of ``NPROBES`` (at most ``nlist``) whose recall reaches ``target``,
    then of those the fastest. ``measure(nprobe, k_factor)`` → (recall, seconds per query). A
    larger factor is only tried with fewer probes than the best so far (with as many it can
    only be slower). None reaching ``target``: the best recall seen. ``tried``: every
    measurement, ``{"nprobe", "k_factor", "recall", "ms"}``."""
    tried, met = [], []
    probes = [p for p in NPROBES if p <= nlist] or [nlist]
    limit = len(probes)
    for kf in K_FACTORS:
        for j, nprobe in enumerate(probes[:limit]):
            r, sec = measure(nprobe, kf)
            tried.append({"nprobe": nprobe, "k_factor": kf, "recall": r, "ms": sec * 1e3})
            if r >= target:
                met.append(tried[-1])
                limit = j  # a larger factor must need fewer probes to be faster
                break
        if limit == 0:
            break
    if met:
        best = min(met, key=lambda t: t["ms"])
    else:
        best = max(tried, key=lambda t: (t["recall"], -t["ms"]))
    return best["nprobe"], best["k_factor"], best["recall"], tried


def rerank_exact(vectors, q: np.ndarray, cand: np.ndarray, k: int) -> tuple:
    """(scores, ids) ``[Q, k]``: each query's candidate ids ``cand`` ``[Q, K]`` re-scored exactly
    with their ``vectors`` rows, best first (score -inf and id -1 pad when fewer)."""
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    for j, c in enumerate(cand):
        c = np.unique(c[c >= 0])
        s = np.asarray(vectors[c], np.float32) @ q[j]
        top = np.argsort(-s)[:k]
        scores[j, : len(top)], ids[j, : len(top)] = s[top], c[top]
    return scores, ids


def _left_out(n: int, own: np.ndarray, bounds: np.ndarray | None) -> np.ndarray:
    """``[Q, 2]`` row range left out for each query row: its group's (``bounds``: sorted group
    start rows, ``n`` last), else the row itself."""
    if bounds is None:
        return np.stack([own, own + 1], 1)
    g = np.searchsorted(bounds, own, side="right") - 1
    return np.stack([bounds[g], bounds[g + 1]], 1)


def _exact_block(q, block, start, lo_hi, k) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of ``q`` over ``block`` (rows ``start..``), each query's left-out
    range masked."""
    d = q @ block.T
    rows = np.arange(start, start + len(block))
    d[(rows[None] >= lo_hi[:, :1]) & (rows[None] < lo_hi[:, 1:])] = -np.inf
    kk = min(k, d.shape[1])
    top = np.argpartition(-d, kk - 1, axis=1)[:, :kk]
    sc = np.take_along_axis(d, top, 1)
    ids = np.where(np.isfinite(sc), top + start, -1)
    if kk < k:
        sc = np.pad(sc, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
    return sc.astype(np.float32), ids.astype(np.int64)


def train_coarse_on(index, d: int, use_gpu: bool | str = "auto") -> tuple:
    """Give the IVF of ``index`` (``d``-d after its OPQ stage) the flat L2 index that assigns
    training vectors to centroids in its coarse k-means on the GPU when ``use_gpu`` resolves to
    it; else leave it to FAISS (the same flat L2 search, on the CPU). Returns ``(assigner or
    None, on_gpu, reason)``: the caller keeps the assigner alive until training ends (the IVF
    holds a bare pointer to it), then resets ``clustering_index``."""
    ivf = faiss.extract_index_ivf(index)
    gpu, reason = resolve_gpu(use_gpu, "ivfpq")
    if not gpu:
        return None, False, reason
    try:
        assigner = to_gpu(faiss.IndexFlatL2(d))
    except (RuntimeError, AttributeError) as e:  # e.g. out of GPU memory
        why = f"coarse k-means on the CPU: the GPU index failed ({type(e).__name__}: {e})"
        return None, False, why
    ivf.clustering_index = assigner
    return assigner, True, f"coarse k-means on {reason}"


def build_compressed(
    vectors,
    path: str | Path,
    target: float = 0.9,
    k: int = 10,
    n_queries: int = 200,
    seed: int = 0,
    groups: np.ndarray | None = None,
    log=None,
    m: int | None = None,
    nbits: int = 8,
    opq: bool = True,
    use_gpu: bool | str = "auto",
) -> dict:
    """Build, tune and save (atomically, to ``path``) the compressed index of ``vectors``
    (float16/float32 ``[N, D]``, L2-normalised: an array, or ``NpyRows`` of a file).
    ``groups``: sorted start rows of contiguous groups (a slide's patches): a held-out query row
    then leaves out its whole group, as a patch of a new slide would find none of its slide
    (else only itself); ``m``: PQ bytes per vector (default ``code_bytes``); ``nbits``: 8
    (one sub-quantizer per byte) or 4 (two per byte, scanned with SIMD "fast-scan" tables);
    ``opq``: learn the OPQ rotation (module docstring) before the IVF; ``use_gpu``: as
    ``vectorstore.gpu.resolve_gpu`` (the coarse k-means only: module docstring). Returns its
    info (type, params, knobs, recalls, timings, bytes, where the k-means ran)."""
    say = log or (lambda msg: None)
    n, dim = vectors.shape
    t0 = time.perf_counter()
    nlist, m = min(nlist_for(n), max(1, n // 40)), m or code_bytes(dim)
    if nbits not in (4, 8):
        raise ValueError(f"nbits must be 4 or 8, got {nbits}")
    pq = f"PQ{m}" if nbits == 8 else f"PQ{2 * m}x4fs"
    d = opq_dim(dim, m) if opq else dim  # what the IVF and the codes see
    factory = f"{opq_stage(dim, m, nbits) if opq else ''}IVF{nlist}_HNSW32,{pq}"
    index = faiss.index_factory(dim, factory, IP)
    sample = np.linspace(0, n - 1, min(n, TRAIN_ROWS)).astype(np.int64)
    assigner, gpu, gpu_reason = train_coarse_on(index, d, use_gpu)
    index.train(np.ascontiguousarray(vectors[sample], np.float32))
    faiss.extract_index_ivf(index).clustering_index = None  # a GPU index is not saved
    del assigner
    train_s = time.perf_counter() - t0
    say(f"trained {factory} in {train_s:.0f} s" + (" (coarse k-means on the GPU)" if gpu else ""))
    tune_rows, eval_rows = held_out_rows(n, n_queries, seed)
    own = np.concatenate([tune_rows, eval_rows])
    bounds = None if groups is None else np.append(np.asarray(groups, np.int64), n)
    lo_hi = _left_out(n, own, bounds)
    q = np.ascontiguousarray(vectors[own], np.float32)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    t = time.perf_counter()
    for start in range(0, n, CHUNK_ROWS):
        block = np.ascontiguousarray(vectors[start : start + CHUNK_ROWS], np.float32)
        index.add(block)
        for sub in range(0, len(block), 1 << 15):
            heap.add_result(*_exact_block(q, block[sub : sub + (1 << 15)], start + sub, lo_hi, k))
        say(f"added {min(n, start + CHUNK_ROWS):,} of {n:,}")
    heap.finalize()
    add_s = time.perf_counter() - t
    truth = heap.I
    ivf = faiss.extract_index_ivf(index)
    nt = len(tune_rows)

    def recall(rows: slice, nprobe: int, kf: int) -> tuple[float, float]:
        """(recall@k, seconds per query: search + exact re-rank) of ``rows``."""
        found, t = [], time.perf_counter()
        for qi, (lo, hi) in zip(q[rows], lo_hi[rows], strict=True):
            sel = faiss.IDSelectorNot(faiss.IDSelectorRange(int(lo), int(hi)))
            _, cand = index.search(
                qi[None], k * kf, params=search_parameters(index, {"nprobe": nprobe}, sel)
            )
            found.append(rerank_exact(vectors, qi[None], cand, k)[1][0])
        per_query = (time.perf_counter() - t) / max(1, len(found))
        return recall_at_k(np.array(found), truth[rows]), per_query

    t = time.perf_counter()
    nprobe, kf, tune_recall, tried = tune_settings(
        lambda p, f: recall(slice(0, nt), p, f), nlist, target
    )
    eval_recall = recall(slice(nt, None), nprobe, kf)[0]
    ivf.nprobe = nprobe
    tune_s = time.perf_counter() - t
    save_index(index, path)
    source = "held-out rows, " + ("their slide left out" if groups is not None else "leave-one-out")
    return {
        "type": "ivfpq-rerank",
        "params": {
            "nlist": nlist,
            "m": m,
            "quantizer": "HNSW32",
            "nbits": nbits,
            "pq": pq,
            "factory": factory,
        },
        "search_params": {"nprobe": nprobe, "k_factor": kf},
        "tuning": tried,
        "n": n,
        "dim": dim,
        "k": k,
        "recall_at_k": eval_recall,
        "recall_at_k_tuning": tune_recall,
        "target_recall": target,
        "met_target": eval_recall >= target,
        "tuning_queries": {"n": nt, "n_eval": len(eval_rows), "source": source},
        "gpu": gpu,
        "gpu_reason": gpu_reason,
        "train_seconds": train_s,
        "add_seconds": add_s,
        "tune_seconds": tune_s,
        "build_seconds": time.perf_counter() - t0,
        # codes and ids, centroids and their HNSW graph (about as much again), the OPQ matrix
        "memory_bytes": int(n * (m + 8) + nlist * d * 4 * 2 + (dim * d * 4 if opq else 0)),
    }
