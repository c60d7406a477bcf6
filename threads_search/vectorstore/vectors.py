"""Cosine vector search with FAISS: normalisation, exact k-NN, search, filtered search, I/O of
the vector store's FAISS files.

Conventions: vectors are float32 ``[N, D]`` and are L2-normalised here (callers pass raw
embeddings), so inner product = cosine similarity and scores lie in [-1, 1], higher = more
similar. FAISS ids are the row numbers ``0..N-1`` of the caller's Parquet table (vectors are
added in row order). Results are ``(scores [Q, k'], ids [Q, k'])`` with ``k' = min(k, N)``;
a slot FAISS could not fill (IVF lists too small for ``k``) has id -1 and score -inf, always at
the end of its row: ``drop_padding`` turns one row into the valid hits only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from threads_search.atomic import atomic_path
from threads_search.errors import MissingError, ThreadsSearchError
from threads_search.linalg import l2_normalize

IP = faiss.METRIC_INNER_PRODUCT
SUBSET_EXACT_MAX = 50_000  # filtered search brute-forces subsets up to this many vectors
SMALL_BATCH = 20  # FAISS's BLAS threshold: fewer queries on a flat index go through NumPy


class VectorFileError(ThreadsSearchError, RuntimeError):
    """A FAISS file that FAISS cannot read (truncated, corrupt, another format); a
    ``RuntimeError`` too, as before."""


def normalize(x: np.ndarray) -> np.ndarray:
    """Float32 C-contiguous L2-normalised copy of ``x`` [N, D] (or [D] -> [1, D]); zero rows stay
    zero (``threads_search.linalg.l2_normalize``)."""
    return l2_normalize(x, np.float32)


def iter_normalized(vectors: np.ndarray, chunk: int = 65_536) -> Iterator[np.ndarray]:
    """Normalised float32 copies of consecutive row blocks of ``vectors`` (an array or memmap)."""
    for start in range(0, len(vectors), chunk):
        yield normalize(vectors[start : start + chunk])


def exact_knn(
    vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of ``queries`` among ``vectors`` (both normalised here),
    chunk by chunk (FAISS ``knn`` inner product = IndexFlatIP search, merged with a result heap),
    so no normalised copy of the whole database is made. Returns (scores, ids) [Q, k]."""
    q = normalize(queries)
    k = min(k, len(vectors))
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for i, block in enumerate(iter_normalized(vectors, chunk)):
        d, ix = faiss.knn(q, block, min(k, len(block)), metric=IP)
        heap.add_result(d, np.where(ix >= 0, ix + i * chunk, -1))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k, for id arrays [Q, k] (-1 never counts)."""
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


def index_kind(index: faiss.Index) -> str:
    """'flat' | 'hnsw' | 'ivf' | 'ivfpq' | 'other' for a CPU FAISS index (OPQ wrapper seen
    through); 'streaming' for a ``streaming.StreamingIndex`` (vectors on disk)."""
    if getattr(index, "is_streaming", False):
        return "streaming"
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)):
        return "ivfpq"
    return "other"


def search_parameters(
    index: faiss.Index, params: dict[str, Any] | None = None, sel: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """Per-call FAISS search parameters (thread-safe: the index is not modified) from
    ``params`` ({"efSearch": v} or {"nprobe": v}; others ignored) and an optional selector."""
    params = params or {}
    inner = faiss.downcast_index(index)
    wrapped = isinstance(inner, faiss.IndexPreTransform)
    if wrapped:
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = int(params.get("efSearch", inner.hnsw.efSearch))
    elif isinstance(inner, faiss.IndexIVF):
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(params.get("nprobe", inner.nprobe))
    elif sel is not None:
        sp = faiss.SearchParameters()
    else:
        return None
    if sel is not None:
        sp.sel = sel
    if wrapped:
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = sp
        outer.referenced = sp  # keep the Python object alive with the wrapper
        return outer
    return sp


def _finish(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    scores[ids < 0] = -np.inf
    return scores, ids


def search(
    index: faiss.Index, queries: np.ndarray, k: int = 10, params: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of ``queries`` [Q, D] (or [D]); ``params`` overrides the
    tuned search parameters stored on the index for this call only."""
    q = normalize(queries)
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dim {q.shape[1]}, the index has dim {index.d}")
    k = min(int(k), int(index.ntotal))
    if k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    if getattr(index, "is_streaming", False):  # tuned knobs and exact re-ranking inside
        return _finish(*index.search(q, k, **(params or {})))
    from threads_search.vectorstore.gpu import is_gpu_index

    if is_gpu_index(index):  # GPU indexes take parameters set on the index (not thread-safe)
        space = faiss.GpuParameterSpace()
        for name, value in (params or {}).items():
            space.set_index_parameter(index, name, int(value))
        return _finish(*index.search(q, k))
    if len(q) < SMALL_BATCH and isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        return _flat_small_batch(index, q, k)
    return _finish(*index.search(q, k, params=search_parameters(index, params)))


def _flat_small_batch(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of a few queries on a CPU flat index with ``faiss.knn`` over a zero-copy view
    of its storage (FAISS's own single-query path scans on one thread). A NumPy product over the
    same view is much slower when the index is memory-mapped, so BLAS is not used here."""
    n, d = int(index.ntotal), int(index.d)
    xb = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), n * d).reshape(n, d)
    q = np.ascontiguousarray(q, dtype=np.float32)
    scores, ids = faiss.knn(q, xb, min(k, n), metric=faiss.METRIC_INNER_PRODUCT)
    return _finish(scores, ids)


def drop_padding(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The valid hits of one result row (ids >= 0), in rank order."""
    keep = ids >= 0
    return scores[keep], ids[keep]


def subset_vectors(
    index: faiss.Index, ids: np.ndarray, vectors: np.ndarray | None = None
) -> np.ndarray | None:
    """Normalised vectors of rows ``ids``: from the caller's ``vectors`` when given, else
    reconstructed from an index that stores them exactly (flat, HNSW, IVF-Flat with its direct
    map); None when neither can give them exactly (IVF-PQ without ``vectors``)."""
    if vectors is not None:
        return normalize(vectors[ids])
    if index_kind(index) not in ("flat", "hnsw", "ivf"):
        return None
    try:  # an IVF index built elsewhere may lack the direct map
        return np.ascontiguousarray(index.reconstruct_batch(ids), dtype=np.float32)
    except RuntimeError:
        return None


def search_subset(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray,
    vectors: np.ndarray | None = None,
    exact_max: int = SUBSET_EXACT_MAX,
    params: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours among the rows ``allowed_ids`` only (e.g. a SQL filter's result).

    Results are always restricted to ``allowed_ids``. Ranking is exact when the subset has at
    most ``exact_max`` rows (brute force over their vectors: ``vectors`` [N, D] from the caller,
    else reconstructed from the index) or when the index is flat (FAISS ``IDSelectorBatch`` over
    an exact scan). Larger subsets on approximate indexes use the selector with the search knob
    widened by 1/selectivity (nprobe up to nlist, efSearch up to 4096), approximate like any
    search of that index; so do small subsets of an IVF-PQ index given no ``vectors``.
    """
    q = normalize(queries)
    allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
    if allowed.size and (allowed[0] < 0 or allowed[-1] >= index.ntotal):
        raise ValueError(f"allowed_ids must lie in [0, {index.ntotal}), got {allowed[[0, -1]]}")
    k = min(int(k), allowed.size)
    if k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    kind = index_kind(index)
    if allowed.size <= exact_max or kind == "other":
        sub = subset_vectors(index, allowed, vectors)
        if sub is not None:
            return _exact_over(q, sub, allowed, k)
    from threads_search.vectorstore.gpu import is_gpu_index

    if is_gpu_index(index):
        raise ValueError(
            "filtered search on a GPU index needs the caller's `vectors` (FAISS GPU indexes "
            "take no ID selectors); search the CPU index instead"
        )
    sel = faiss.IDSelectorBatch(allowed)
    widened = dict(params or {})
    frac = allowed.size / max(index.ntotal, 1)
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        base = widened.get("nprobe", inner.nprobe)
        widened["nprobe"] = min(inner.nlist, int(np.ceil(base / frac)))
    elif isinstance(inner, faiss.IndexHNSW):
        base = widened.get("efSearch", inner.hnsw.efSearch)
        widened["efSearch"] = max(k, min(4096, int(np.ceil(base / frac))))
    sp = search_parameters(index, widened, sel)
    return _finish(*index.search(q, k, params=sp))


def _exact_over(
    q: np.ndarray, sub: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores, pos = faiss.knn(q, sub, k, metric=IP)
    return _finish(scores, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1))


def pread_rows(fd: int, ids, dim: int, dtype, offset: int = 0) -> np.ndarray:
    """Rows ``ids`` ``[len(ids), dim]`` of a file of fixed-size ``dtype`` rows starting at byte
    ``offset``, one ``preadv`` each into private memory (page cache when warm). Faster than a
    memory map for scattered rows, and nothing stays resident: a map's fault-around makes every
    row touched cost 64 KB of RSS, gigabytes after a few hundred queries."""
    out = np.empty((len(ids), dim), dtype)
    view, rb = memoryview(out).cast("B"), out.itemsize * dim
    for j, r in enumerate(np.asarray(ids).tolist()):
        os.preadv(fd, [view[j * rb : (j + 1) * rb]], offset + r * rb)
    return out


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write ``index`` (converted to CPU if on GPU) to ``path`` atomically
    (``threads_search.atomic``), so a reader never sees half a file."""
    from threads_search.vectorstore.gpu import to_cpu

    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(to_cpu(index), str(tmp))
    return path


def load_index(path: str | Path, mmap: bool = True) -> faiss.Index:
    """Read an index written by ``save_index``. ``mmap``: map the vectors/codes read-only instead
    of reading them into memory (IVF inverted lists via ``IO_FLAG_MMAP``, flat/HNSW storage via
    ``IO_FLAG_MMAP_IFC``), falling back to a plain read when the type does not allow it. A mapped
    index is read-only and keeps working after ``path`` is replaced (the old file stays mapped)."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"FAISS index file not found: {path}")
    if mmap:
        with open(path, "rb") as f:
            fourcc = f.read(4)
        ivf = fourcc[:2] == b"Iw" or fourcc == b"IxPT"  # IVF family, or OPQ wrapping an IVF
        flags = (faiss.IO_FLAG_MMAP if ivf else faiss.IO_FLAG_MMAP_IFC) | faiss.IO_FLAG_READ_ONLY
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError:
            pass
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise VectorFileError(f"cannot read FAISS index {path}: {e}") from e
