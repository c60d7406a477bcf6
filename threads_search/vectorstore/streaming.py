"""The vector store's out-of-core build: a FAISS index over a collection larger than memory,
built by streaming Parquet shards (:mod:`threads_search.vectorstore.shards`).

``threads-search index`` builds the slide index this way when the slide embeddings exceed
``--memory-budget-gb`` (``vectorstore.writer``; ``open_index`` searches it through
``vectors.search``); ``bench/scale_out.py`` and the tests call it directly.

The embeddings (``[N, D]`` float32, a fixed-size-list column of one or more Parquet files, rows
in file order = ids ``0..N-1``) are never held at once; the build reads them twice, a chunk of
``chunk_rows`` at a time:

1. sample pass: a seeded uniform sample trains the index (``40 * nlist`` rows or more, as
   ``faiss_types``), plus the source rows of the tuning and evaluation queries;
2. add pass: each chunk is normalised, added to the index, appended to ``vectors.f32`` (raw
   normalised float32 rows on disk, written with ``write``: page cache, not process memory),
   and searched exactly against the queries (ground truth merged in a ``faiss.ResultHeap``).

Index types: ``ivf`` (IVF-Flat) while it fits ``memory_budget``, else ``ivfpq`` with the most
code bytes per vector that fit (``autotune.choose_index``). IVF-PQ alone ranks poorly among
near neighbours (recall@10 ~0.6 at 1024-d, 128 B/vector), so it searches ``k * k_factor``
candidates which are re-ranked exactly with their vectors read from ``vectors.f32``: RAM holds
only the codes, the disk the vectors. The tuner picks the smallest ``k_factor`` (doubling) and
then the smallest ``nprobe`` reaching ``target_recall`` on the tuning queries; recall is
reported on separate evaluation queries.

``mode="shards"``: one index per Parquet file, all cloned from the same trained index, saved
separately and searched as one ``faiss.IndexShards`` (ids offset per shard, results merged):
the same results as ``single`` (same coarse lists and codes), shards buildable apart (one task
per file) and replaceable, at the price of one coarse-quantizer pass per shard per query.

Layout of ``out_dir``: ``streaming.json`` (type, params, knobs, counts, recall, timings),
``index.faiss`` or ``shards/NNNN.faiss``, ``vectors.f32`` (``ivfpq`` only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from threads_search.atomic import write_text
from threads_search.errors import ConfigError, MissingError
from threads_search.linalg import l2_normalize
from threads_search.vectorstore.autotune import (
    DEFAULT_MEMORY_BUDGET,
    choose_index,
    drop_own,
    tuning_queries,
)
from threads_search.vectorstore.faiss_types import create_index_type
from threads_search.vectorstore.shards import ROW_GROUP_BYTES, ShardSet, ShardWriter, write_shards
from threads_search.vectorstore.vectors import (
    load_index,
    normalize,
    pread_rows,
    recall_at_k,
    save_index,
)

__all__ = [
    "META",
    "ROW_GROUP_BYTES",
    "VECTORS",
    "ShardSet",
    "ShardWriter",
    "StreamingIndex",
    "build_streaming",
    "open_streaming",
    "write_shards",
]

IP = faiss.METRIC_INNER_PRODUCT
META = "streaming.json"
VECTORS = "vectors.f32"
SEARCH_BATCH = 1024  # queries searched at once (candidate id/score arrays bounded)


def build_streaming(
    shards: ShardSet | Iterable[str | Path],
    out_dir: str | Path,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    index_type: str = "auto",
    params: dict | None = None,
    mode: str = "single",
    target_recall: float = 0.95,
    k: int = 10,
    n_queries: int = 300,
    n_eval: int = 300,
    chunk_rows: int = 65_536,
    max_k_factor: int = 64,
    seed: int = 0,
    perturb: float = 0.0,
    log=None,
) -> dict:
    """Build the FAISS index of ``shards`` into ``out_dir`` (see the module docstring) within
    ``memory_budget`` bytes of FAISS RAM. Returns the info written to ``streaming.json``."""
    if mode not in ("single", "shards"):
        raise ConfigError(f"mode must be 'single' or 'shards', got {mode!r}")
    ss = shards if isinstance(shards, ShardSet) else ShardSet(shards)
    n, dim, out = ss.n, ss.dim, Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    if index_type == "auto":
        name, p = choose_index(n, dim, memory_budget, exact_max=0)
    else:
        name, p = index_type, {}
    if name not in ("ivf", "ivfpq"):
        raise ConfigError(f"streaming builds 'ivf' or 'ivfpq' indexes, not {name!r}")
    spec = create_index_type(name, **{**p, **(params or {})})
    p = spec.resolve(n, dim)
    # 1. sample pass: training rows and query source rows
    rng = np.random.default_rng([seed, 0x57E4])
    n_train = min(n, spec._train_size(p))
    picked = rng.choice(n, size=min(n, n_train + n_queries + n_eval), replace=False)
    qrows = np.sort(picked[n_train:])
    train, qsrc = ss.take([np.sort(picked[:n_train]), qrows], chunk_rows)
    l2_normalize(train, inplace=True)
    perm = rng.permutation(len(qsrc))  # tuning and evaluation rows both uniform
    qsrc, qrows = qsrc[perm], qrows[perm]
    own = None if perturb > 0 else qrows  # held-out rows: each searched with itself left out
    queries = tuning_queries(qsrc, len(qsrc), seed, perturb) if perturb > 0 else normalize(qsrc)
    t_sample = time.perf_counter() - t0
    say(f"sampled {len(picked)} rows in {t_sample:.1f}s; training {name} {p}")
    # 2. train once (the shards of mode="shards" are clones of this trained, empty index)
    t = time.perf_counter()
    trained = spec._new(n, dim, p)
    trained.train(train)
    del train
    t_train = time.perf_counter() - t
    say(f"trained in {t_train:.1f}s; adding {n} rows in chunks of {chunk_rows}")
    # 3. add pass, exact ground truth of the queries on the way
    t = time.perf_counter()
    kq = min(k, n)
    kt = kq + (own is not None)  # one more: the query's own row is dropped from the truth
    heap = faiss.ResultHeap(len(queries), kt, keep_max=True)
    rerank = name == "ivfpq"
    vec_file = open(out / VECTORS, "wb") if rerank else None  # noqa: SIM115 - closed below
    single = faiss.clone_index(trained) if mode == "single" else None
    shard_files, n_chunks, max_rows = [], 0, 0
    try:
        for s in range(len(ss.paths)) if mode == "shards" else [None]:
            index = single if s is None else faiss.clone_index(trained)
            for start, block in ss.iter_chunks(chunk_rows, shard=s):
                x = normalize(block)
                del block
                index.add(x)
                if vec_file is not None:
                    x.tofile(vec_file)
                if len(queries):
                    d_, i_ = faiss.knn(queries, x, min(kt, len(x)), metric=IP)
                    if d_.shape[1] < kt:  # a chunk smaller than kt rows
                        d_ = np.pad(d_, ((0, 0), (0, kt - d_.shape[1])), constant_values=-np.inf)
                        i_ = np.pad(i_, ((0, 0), (0, kt - i_.shape[1])), constant_values=-1)
                    heap.add_result(d_, np.where(i_ >= 0, i_ + start, -1))
                n_chunks, max_rows = n_chunks + 1, max(max_rows, len(x))
            if s is not None:
                shard_files.append(_save(index, spec, p, out / "shards" / f"{s:04d}.faiss"))
                del index
        if single is not None:
            _save(single, spec, p, out / "index.faiss")
            del single
    finally:
        if vec_file is not None:
            vec_file.close()
    heap.finalize()
    truth_all = drop_own(heap.I, own, kq)
    t_add = time.perf_counter() - t
    say(f"added in {t_add:.1f}s ({n_chunks} chunks)")
    meta = {
        "type": name,
        "params": dict(p),
        "mode": mode,
        "n": n,
        "dim": dim,
        "shards": [f.name for f in shard_files],
        "rerank": rerank,
        "k_factor": 1,
        "nprobe": int(p["nprobe"]),
        "vectors": VECTORS if rerank else None,
    }
    _write_meta(out, meta)
    # 4. tune nprobe (and k_factor) on the tuning queries, report on the evaluation queries
    t = time.perf_counter()
    idx = open_streaming(out)
    nq = min(n_queries, len(queries))
    tq, tt = queries[:nq], truth_all[:nq]
    t_own, e_own = (None, None) if own is None else (own[:nq], own[nq:])
    kf, nprobe, rec = _tune(idx, tq, tt, kq, target_recall, max_k_factor if rerank else 1, t_own)
    idx.k_factor, idx.nprobe = kf, nprobe
    eq, et = queries[nq:], truth_all[nq:]
    kk = kq + (e_own is not None)
    eval_rec = recall_at_k(drop_own(idx.search(eq, kk)[1], e_own, kq), et) if len(eq) else None
    eval_raw = (
        recall_at_k(drop_own(idx.search(eq, kk, k_factor=1)[1], e_own, kq), et)
        if len(eq) and rerank
        else None
    )
    t_tune = time.perf_counter() - t
    seconds = {"sample": t_sample, "train": t_train, "add": t_add, "tune": t_tune}
    info = {
        **meta,
        "k_factor": kf,
        "nprobe": nprobe,
        "k": kq,
        "target_recall": target_recall,
        "recall_at_k": rec,
        "met_target": rec >= target_recall,
        "eval": {
            "n_queries": len(eq),
            "recall_at_k": eval_rec,
            "recall_at_k_no_rerank": eval_raw,
            "queries": (
                f"sampled rows + noise norm {perturb}, seed {seed}"
                if perturb > 0
                else f"held-out rows, each searched with itself left out, seed {seed}"
            ),
        },
        "memory_bytes": spec.memory_bytes(n, dim),
        "memory_budget_bytes": int(memory_budget),
        "chunk_rows": chunk_rows,
        "chunks_read": n_chunks,
        "max_rows_in_memory": max_rows,
        "train_rows": n_train,
        "seconds": {**seconds, "total": time.perf_counter() - t0},
        "faiss_version": faiss.__version__,
    }
    _write_meta(out, info)
    say(f"tuned k_factor={kf} nprobe={nprobe}: recall@{kq} {rec:.3f} (eval {eval_rec})")
    return info


def _save(index: faiss.Index, spec, p: dict, path: Path) -> Path:
    faiss.extract_index_ivf(index).make_direct_map()
    spec.set_knob(index, p["nprobe"])
    return save_index(index, path)


def _write_meta(out: Path, meta: dict) -> None:
    write_text(out / META, json.dumps(meta, indent=2, default=str))


def _tune(idx, queries, truth, k, target, max_kf, own=None) -> tuple[int, int, float]:
    """Smallest k_factor (1, 2, 4, … ``max_kf``) reaching ``target`` recall@k when every list
    is probed (one candidate search, re-ranked per prefix), then the smallest nprobe (doubling,
    then bisection) reaching it at that k_factor; else the largest of both. ``own``: each
    query's own row, left out of its answers (held-out rows)."""
    nlist = idx.nlist
    kf, kk = 1, k + (own is not None)
    if max_kf > 1:  # one candidate search and one read of their vectors for every k_factor
        _, cand = idx.candidates(queries, k * max_kf + 1, nlist)
        if own is not None:
            cand = np.where(cand == np.asarray(own)[:, None], -1, cand)
        exact = idx.exact_scores(queries, cand)

        def rec_kf(kf: int) -> float:
            m = k * kf + 1
            return recall_at_k(idx.rerank(queries, cand[:, :m], k, exact[:, :m])[1], truth)

        while kf < max_kf and rec_kf(kf) < target:
            kf *= 2

    def rec(nprobe: int) -> float:
        found = idx.search(queries, kk, nprobe=nprobe, k_factor=kf)[1]
        return recall_at_k(drop_own(found, own, k), truth)

    lo, hi = 0, 1  # recall at nprobe=lo fails (0: none probed); find the smallest passing hi
    r = rec(hi)
    while r < target and hi < nlist:
        lo, hi = hi, min(nlist, hi * 2)
        r = rec(hi)
    while hi - lo > 1 and r >= target:
        mid = (lo + hi) // 2
        rm = rec(mid)
        if rm >= target:
            hi, r = mid, rm
        else:
            lo = mid
    return kf, hi, r


class StreamingIndex:
    """The FAISS index in a folder written by ``build_streaming``, read-only: ``search`` like
    ``vectors.search`` (cosine scores, ids = row numbers; exact scores when re-ranked),
    ``reconstruct_batch`` exact rows."""

    is_streaming = True  # ``vectors.index_kind`` and ``vectors.search`` tell it by this

    def __init__(self, out_dir: str | Path, mmap_index: bool = True) -> None:
        self.dir = Path(out_dir)
        self.info = json.loads((self.dir / META).read_text())
        self.d, self.ntotal = int(self.info["dim"]), int(self.info["n"])
        self.k_factor, self.nprobe = int(self.info["k_factor"]), int(self.info["nprobe"])
        if self.info["mode"] == "shards":
            self._parts = [
                load_index(self.dir / "shards" / f, mmap_index) for f in self.info["shards"]
            ]
            self.index = faiss.IndexShards(self.d, True, True)  # threaded, successive ids
            for part in self._parts:
                self.index.add_shard(part)
        else:
            self._parts = [load_index(self.dir / "index.faiss", mmap_index)]
            self.index = self._parts[0]
        self.nlist = faiss.extract_index_ivf(self._parts[0]).nlist
        v = self.info.get("vectors")  # read with pread: no mapping, nothing stays resident
        self.vectors = os.open(self.dir / v, os.O_RDONLY) if v else None

    def __del__(self) -> None:
        if getattr(self, "vectors", None) is not None:
            os.close(self.vectors)
            self.vectors = None

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``vectors.f32`` as float32 ``[len(ids), D]`` (``vectors.pread_rows``:
        nothing stays resident)."""
        return pread_rows(self.vectors, ids, self.d, np.float32)

    def candidates(self, q: np.ndarray, kk: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's own top-``kk`` (approximate scores, ids) for normalised ``q``."""
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(nprobe)
        return self.index.search(q, min(kk, self.ntotal), params=sp)

    def search(
        self, queries, k: int = 10, nprobe: int | None = None, k_factor: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) ``[Q, k]`` for ``queries`` ``[Q, D]`` or ``[D]``; slots it
        could not fill have id -1 and score -inf. Thread-safe (knobs passed per call)."""
        q = normalize(queries)
        if q.shape[1] != self.d:
            raise ValueError(f"queries have dim {q.shape[1]}, the index has dim {self.d}")
        k = min(int(k), self.ntotal)
        kf = int(k_factor or self.k_factor) if self.vectors is not None else 1
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for b in range(0, len(q), SEARCH_BATCH):
            qb = q[b : b + SEARCH_BATCH]
            scores, ids = self.candidates(qb, k * kf, nprobe or self.nprobe)
            if kf > 1:
                scores, ids = self.rerank(qb, ids, k)
            out_s[b : b + len(qb)], out_i[b : b + len(qb)] = scores[:, :k], ids[:, :k]
        out_s[out_i < 0] = -np.inf
        return out_s, out_i

    def exact_scores(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Exact cosine of each query with its candidate ids ``[Q, K]`` (-inf where id < 0),
        each query's rows read once."""
        out = np.full(cand.shape, -np.inf, np.float32)
        for r, (qr, c) in enumerate(zip(q, cand, strict=True)):
            ok = c >= 0
            if ok.any():
                out[r, ok] = self._rows(c[ok]) @ qr
        return out

    def rerank(self, q: np.ndarray, cand: np.ndarray, k: int, scores: np.ndarray | None = None):
        """Best ``k`` of candidate ids ``[Q, K]`` by exact score (``scores`` if known):
        (scores, ids) ``[Q, k]``."""
        sc = self.exact_scores(q, cand) if scores is None else scores
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(cand, top, 1)
        sc = np.take_along_axis(sc, top, 1)
        ids[~np.isfinite(sc)] = -1
        return sc, ids

    def reconstruct_batch(self, ids) -> np.ndarray:
        """Exact normalised rows ``[len(ids), D]`` (IVF-PQ: from ``vectors.f32``)."""
        ids = np.asarray(ids, np.int64)
        if self.vectors is not None:
            return self._rows(ids)
        offsets = np.cumsum([0] + [p.ntotal for p in self._parts])
        out = np.empty((len(ids), self.d), np.float32)
        shard = np.searchsorted(offsets, ids, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._parts[s].reconstruct_batch(ids[sel] - offsets[s])
        return out


def open_streaming(out_dir: str | Path, mmap_index: bool = True) -> StreamingIndex:
    """Open a folder written by ``build_streaming``."""
    if not (Path(out_dir) / META).exists():
        raise MissingError(f"{out_dir}: no {META} (not a streaming index, or unfinished)")
    return StreamingIndex(out_dir, mmap_index)
