"""Choose, build and tune a FAISS index so that it reaches a recall target against exact search.

Choice (``choose_index``, in the spirit of autofaiss): exact ``flat`` while ``n <= exact_max``
(20k: a brute-force query reads every vector, 80 MB at 20k x 1024, a few ms; at 100k it took
37 ms, memory-bound, against a few ms for a tuned IVF) and the vectors fit the memory budget
(``index --index-type flat`` keeps exact search at any size); beyond that, when it fits the
budget, a graph or an inverted file chosen by measurement (``prefer="auto"``, recorded in
``index.json`` as ``choice``): ``hnsw`` (HNSW32 over exact vectors) from ``HNSW_MIN_N`` vectors
on a CPU build, else ``ivf`` (IVF-Flat: exact vectors in ~2*sqrt(n) inverted lists; also at any
size when the build runs on a GPU, where HNSW does not). ``bench/search_scale.py --types hnsw``
at 1M x 1024 on 2 cores, held-out queries drawn like new data: HNSW p50 0.63 ms at recall@10
0.955 against IVF 1.24 ms at 0.943, HNSW built in 893 s against 61 s; at 100k IVF already took
1.1 ms per query. Below ``HNSW_MIN_N`` IVF-Flat answers within a millisecond and builds in
seconds. Both keep exact vectors (reconstruct, exact re-ranking of filtered subsets) and support
ID selectors. Otherwise ``ivfpq`` with the most bytes per vector that fit.

Tuning (``build_index``): by default, held-out rows: a seeded sample of the indexed rows, each
searched as a new item would be: its own row left out of both the exact ground truth and the
index's answer (leave-one-out), so a query is never its own easy nearest neighbour. Half of the
sample tunes the knob, the other half measures the recall that is reported (``recall_at_k``; the
tuning half's is ``recall_at_k_tuning``). ``perturb`` > 0 gives the older, easier queries
instead (sampled rows moved by Gaussian noise of that norm: near-duplicates); the caller's own
``queries`` are used as given. Ground truth is exact inner-product search over the same
normalised vectors. The search knob (efSearch / nprobe) is
doubled until recall@k >= target, then bisected down to the smallest value that still reaches
it. If the knob's range is exhausted, the build escalates (HNSW: larger M; IVF-PQ: more bytes
per vector, within the budget) and finally falls back to ``flat``.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from threads_search.errors import ConfigError, InputError
from threads_search.vectorstore.faiss_types import IndexType, create_index_type, pq_m
from threads_search.vectorstore.gpu import resolve_gpu
from threads_search.vectorstore.vectors import exact_knn, normalize, recall_at_k, search

DEFAULT_MEMORY_BUDGET = 16 * 2**30  # bytes; pass the serving machine's budget explicitly
EXACT_MAX = 20_000
HNSW_MIN_N = 100_000  # CPU builds from here on get HNSW (see the module docstring)


def choose_index(
    n: int,
    dim: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    exact_max: int = EXACT_MAX,
    prefer: str = "auto",
    gpu: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Index type and parameters for ``n`` vectors of ``dim`` under ``memory_budget_bytes``
    (see the module docstring for the rule; ``prefer`` "auto", "ivf" or "hnsw"; ``gpu``: the
    build will run on a GPU). Raises ``ConfigError`` (a ``ValueError``) when not even 1
    byte/vector of PQ code fits."""
    if prefer not in ("auto", "ivf", "hnsw"):
        raise ConfigError(f"prefer must be 'auto', 'ivf' or 'hnsw', got {prefer!r}")
    flat = create_index_type("flat")
    if n <= exact_max and flat.memory_bytes(n, dim) <= memory_budget_bytes:
        return "flat", {}
    if prefer == "auto":
        prefer = "hnsw" if n >= HNSW_MIN_N and not gpu else "ivf"
    big = create_index_type(prefer)
    if n > exact_max and big.memory_bytes(n, dim) <= memory_budget_bytes:
        return prefer, big.resolve(n, dim)
    probe = create_index_type("ivfpq", m=1)
    fixed = probe.fixed_bytes(dim, n)
    per_vector = (memory_budget_bytes - fixed) / max(n, 1) - 16  # minus id + direct-map entry
    if per_vector < 1:
        need = probe.memory_bytes(n, dim)
        raise ConfigError(
            f"memory budget {memory_budget_bytes} B is too small for {n} vectors of dim {dim}: "
            f"even 1-byte PQ codes need about {need} B"
        )
    m = pq_m(dim, int(per_vector))
    return "ivfpq", create_index_type("ivfpq", m=m).resolve(n, dim)


def choice_reason(name: str, n: int, prefer: str, gpu: bool) -> str:
    """Why ``choose_index`` picked ``name`` (a sentence for ``index.json``)."""
    if name == "flat":
        return f"flat: {n} vectors <= {EXACT_MAX} (exact search is fast at this size)"
    if name == "ivfpq":
        return "ivfpq: exact vectors do not fit the memory budget (PQ codes do)"
    if prefer != "auto":
        return f"{name}: preferred by the caller"
    if name == "hnsw":
        return (
            f"hnsw: {n} vectors >= {HNSW_MIN_N} on a CPU build (measured at 1M x 1024: p50 "
            "0.63 ms at recall@10 0.955 against IVF-Flat's 1.24 ms at 0.943)"
        )
    why = "a GPU build (HNSW is CPU only)" if gpu else f"{n} vectors < {HNSW_MIN_N}"
    return f"ivf: {why}; IVF-Flat builds in seconds and answers within a millisecond here"


def tuning_queries(
    vectors: np.ndarray, n_queries: int = 500, seed: int = 0, perturb: float = 0.1
) -> np.ndarray:
    """``n_queries`` normalised rows of ``vectors`` (seeded sample) plus Gaussian noise of norm
    ``perturb``, renormalised: [Q, D] float32."""
    n, dim = vectors.shape
    rng = np.random.default_rng([seed, 0x7E57])
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    q = normalize(vectors[rows])
    q += (rng.standard_normal(q.shape) * (perturb / np.sqrt(dim))).astype(np.float32)
    return normalize(q)


def held_out_rows(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded samples of up to ``n_queries`` row numbers each (tuning, evaluation)
    of ``n`` rows, for leave-one-out queries."""
    rng = np.random.default_rng([seed, 0x4E1D])
    rows = rng.choice(n, size=min(n, 2 * n_queries), replace=False)
    half = (len(rows) + 1) // 2
    return np.sort(rows[:half]), np.sort(rows[half:])


def drop_own(found: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` ids of each row of ``found`` that are not the query's ``own`` row."""
    if own is None:
        return found[:, :k]
    keep = found != np.asarray(own)[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, order, 1)


def knn_recall(index, queries, truth, params=None, own=None) -> float:
    """Recall@k of ``index`` against ``truth`` ``[Q, k]``; ``own``: each query's own row, left
    out of the answer (leave-one-out queries)."""
    k = truth.shape[1]
    found = search(index, queries, k + (own is not None), params)[1]
    return recall_at_k(drop_own(found, own, k), truth)


def tune_knob(
    spec: IndexType,
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    n: int,
    own: np.ndarray | None = None,
) -> tuple[int | None, float]:
    """Smallest knob value with recall@k >= ``target`` (doubling, then bisection), or the
    largest value tried when none reaches it. Returns (value or None for knob-less types,
    recall at that value). ``own``: leave-one-out queries' rows (``knn_recall``)."""
    k = truth.shape[1]
    if spec.knob is None:
        return None, knn_recall(index, queries, truth, None, own)
    lo, hi = spec.knob_range(n, index.d, k)
    seen: dict[int, float] = {}

    def rec(v: int) -> float:
        if v not in seen:
            seen[v] = knn_recall(index, queries, truth, {spec.knob: v}, own)
        return seen[v]

    v, fail = lo, lo - 1
    while rec(v) < target:
        if v >= hi:
            return v, seen[v]
        fail, v = v, min(hi, v * 2)
    while v - fail > 1:  # recall is non-decreasing in the knob: bisect (fail, v]
        mid = (fail + v) // 2
        if rec(mid) >= target:
            v = mid
        else:
            fail = mid
    return v, seen[v]


def build_index(
    vectors: np.ndarray,
    index_type: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 500,
    seed: int = 0,
    use_gpu: bool | str = "auto",
    params: dict[str, Any] | None = None,
    queries: np.ndarray | None = None,
    perturb: float = 0.0,
    exact_max: int = EXACT_MAX,
    prefer: str = "auto",
    fallback_flat: bool = True,
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a CPU FAISS index over ``vectors`` [N, D] (raw; normalised here; ids = row numbers)
    tuned to recall@``k`` >= ``target_recall``. ``index_type``: "auto" (``choose_index``) or a
    registered name (with ``params``; recall is still measured and tuned). Returns the index
    (tuned knob stored on it) and a JSON-ready info dict for ``index.json``."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"vectors must be a non-empty [N, D] array, got shape {vectors.shape}")
    n, dim = vectors.shape
    _check_finite(vectors)
    k = min(k, n)
    if index_type == "auto":
        on_gpu = resolve_gpu(use_gpu, "ivf")[0]
        name, p = choose_index(n, dim, memory_budget, exact_max, prefer, gpu=bool(on_gpu))
        p.update(params or {})
        choice = choice_reason(name, n, prefer, bool(on_gpu))
    else:
        name, p = index_type, dict(params or {})
        choice = f"{name}: asked for (index type override)"
    spec = create_index_type(name, **p)

    t = time.perf_counter()
    own = own_eval = None
    if queries is not None:
        tq = eq = normalize(queries)
        source = "given"
    elif perturb > 0:
        tq = eq = tuning_queries(vectors, n_queries, seed, perturb)
        source = f"sampled rows + noise norm {perturb}"
    else:
        own, own_eval = held_out_rows(n, n_queries, seed)
        tq, eq = normalize(vectors[own]), normalize(vectors[own_eval])
        source = "held-out rows (leave-one-out), separate tuning and evaluation halves"
    kk = k if own is None else min(k + 1, n)
    truth = drop_own(exact_knn(vectors, tq, kk)[1], own, k)
    truth_eval = drop_own(exact_knn(vectors, eq, kk)[1], own_eval, k)
    truth_s = time.perf_counter() - t
    attempts: list[dict[str, Any]] = []
    while True:
        gpu, gpu_reason = resolve_gpu(use_gpu, spec.name)
        t = time.perf_counter()
        cpu, gpu_index = spec.build(vectors, seed=seed, gpu=gpu)
        build_s = time.perf_counter() - t
        if gpu and gpu_index is None:
            gpu, gpu_reason = False, f"GPU conversion failed, built on CPU ({spec.gpu_error})"
        t = time.perf_counter()
        value, rec_tune = tune_knob(spec, gpu_index or cpu, tq, truth, target_recall, n, own)
        if value is not None:
            spec.set_knob(cpu, value)
            spec.params[spec.knob] = value
        rec = knn_recall(gpu_index or cpu, eq, truth_eval, None, own_eval)
        if gpu:  # the saved index is the CPU copy: report its recall
            rec_gpu, rec = rec, knn_recall(cpu, eq, truth_eval, None, own_eval)
        tune_s = time.perf_counter() - t
        attempts.append(
            {
                "type": spec.name,
                "params": dict(spec.params),
                "recall_at_k": rec,
                "recall_at_k_tuning": rec_tune,
                "build_seconds": build_s,
                "tune_seconds": tune_s,
                "gpu": gpu,
            }
        )
        if gpu:
            attempts[-1]["recall_at_k_gpu"] = rec_gpu
        if rec_tune >= target_recall:
            break
        nxt = spec.escalate(n, dim)
        if nxt is not None and nxt.memory_bytes(n, dim) <= memory_budget:
            spec = nxt
        elif spec.name != "flat" and fallback_flat:
            spec = create_index_type("flat")
        else:
            break
    del gpu_index
    info = {
        "type": spec.name,
        "params": dict(spec.params),
        "search_params": {spec.knob: spec.params[spec.knob]} if spec.knob else {},
        "metric": "inner product on L2-normalised float32 (cosine)",
        "ids": "row numbers 0..N-1 in input order (sequential FAISS ids)",
        "n": n,
        "dim": dim,
        "k": k,
        "recall_at_k": rec,
        "recall_at_k_tuning": rec_tune,
        "target_recall": target_recall,
        "met_target": rec >= target_recall,
        "chosen_by": "auto" if index_type == "auto" else "override",
        "choice": choice,
        "tuning_queries": {"n": len(tq), "n_eval": len(eq), "source": source, "seed": seed},
        "build_seconds": sum(a["build_seconds"] for a in attempts),
        "tune_seconds": truth_s + sum(a["tune_seconds"] for a in attempts),
        "memory_bytes": spec.memory_bytes(n, dim),
        "memory_budget_bytes": int(memory_budget),
        "over_budget": spec.memory_bytes(n, dim) > memory_budget,
        "faiss_version": faiss.__version__,
        "gpu": attempts[-1]["gpu"],
        "gpu_reason": gpu_reason,
        "attempts": attempts,
    }
    return cpu, info


def _check_finite(vectors: np.ndarray, chunk: int = 65_536) -> None:
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise InputError(f"vectors row {start + int(np.flatnonzero(bad)[0])} is not finite")
