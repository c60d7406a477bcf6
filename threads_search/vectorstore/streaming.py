"""Vector index of a collection larger than memory, built by streaming Parquet shards.

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
from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from threads_search.vectorstore.autotune import DEFAULT_MEMORY_BUDGET, choose_index, tuning_queries
from threads_search.vectorstore.faiss_types import create_index_type
from threads_search.vectorstore.vectors import load_index, normalize, recall_at_k, save_index

IP = faiss.METRIC_INNER_PRODUCT
META = "streaming.json"
VECTORS = "vectors.f32"
ROW_GROUP_BYTES = 64 * 2**20  # Parquet row groups written by ShardWriter (one read at a time)
SEARCH_BATCH = 1024  # queries searched at once (candidate id/score arrays bounded)


class ShardSet:
    """Parquet files holding the rows ``0..N-1`` in order, column ``column`` a (fixed-size)
    list of float32 ``[D]``. Opening reads only the footers."""

    def __init__(self, paths: str | Path | Iterable[str | Path], column: str = "embedding"):
        items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.paths = sorted(f for p in items for f in (sorted(p.glob("*.parquet"))
                                                       if p.is_dir() else [p]))  # fmt: skip
        if not self.paths:
            raise FileNotFoundError(f"no Parquet files in {[str(p) for p in items]}")
        self.column = column
        self.counts = [pq.ParquetFile(p).metadata.num_rows for p in self.paths]
        self.n = int(sum(self.counts))
        first = next(self.iter_chunks(1), None)
        if first is None:
            raise ValueError(f"{self.paths[0]}: no rows")
        self.dim = first[1].shape[1]

    def iter_chunks(self, rows: int, shard: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row id, float32 [<= rows, D])`` blocks in row order (of one shard only when
        ``shard`` is given). Reads one row group at a time, single-threaded, without
        pre-buffering (a 1024-d row group of 16k rows holds 64 MiB); row groups above
        ``rows`` are read in batches of ``rows``."""
        start = sum(self.counts[:shard]) if shard is not None else 0
        for i, path in enumerate(self.paths):
            if shard is not None and i != shard:
                continue
            f = pq.ParquetFile(path, pre_buffer=False)
            for g in range(f.metadata.num_row_groups):
                if f.metadata.row_group(g).num_rows <= rows:
                    parts = [f.read_row_group(g, columns=[self.column], use_threads=False)]
                else:
                    parts = f.iter_batches(batch_size=rows, row_groups=[g], columns=[self.column],
                                           use_threads=False)  # fmt: skip
                for part in parts:
                    block = _as_matrix(part.column(0), path, self.column)
                    del part
                    yield start, block
                    start += len(block)
        pa.default_memory_pool().release_unused()

    def take(self, row_sets: list[np.ndarray], chunk_rows: int) -> list[np.ndarray]:
        """For each array of sorted row ids, those rows as float32 ``[len, D]``; all sets
        gathered in one streaming pass."""
        outs = [np.empty((len(r), self.dim), np.float32) for r in row_sets]
        done = [0] * len(row_sets)
        for start, block in self.iter_chunks(chunk_rows):
            for s, rows in enumerate(row_sets):
                j = done[s]
                hi = int(np.searchsorted(rows, start + len(block)))
                if hi > j:
                    outs[s][j:hi] = block[rows[j:hi] - start]
                    done[s] = hi
        return outs


def _as_matrix(col, path: Path, name: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_fixed_size_list(col.type):
        raise ValueError(f"{path}: column {name!r} is {col.type}, expected list<float32>")
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if n and flat.size % n:
        raise ValueError(f"{path}: column {name!r} has rows of different lengths")
    return flat.reshape(n, -1 if n else 0).astype(np.float32, copy=False)


class ShardWriter:
    """Push float32 blocks ``[b, D]`` in row order; they land in ``part-NNNNN.parquet`` files of
    ``rows_per_shard`` rows (column ``embedding``, fixed-size list<float32>, uncompressed, row
    groups of ``row_group`` rows, default ``ROW_GROUP_BYTES``), one block held at a time. Use as a
    context manager, or call ``close``."""

    def __init__(self, out_dir: str | Path, rows_per_shard: int, row_group: int | None = None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard, self.row_group = rows_per_shard, row_group
        self._writer, self._rows, self._part = None, 0, 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, np.float32)
        while len(block):
            if self._writer is None:
                schema = pa.schema([("embedding", pa.list_(pa.float32(), block.shape[1]))])
                path = self.out / f"part-{self._part:05d}.parquet"
                self._writer = pq.ParquetWriter(path, schema, compression="none")
            take = min(len(block), self.rows_per_shard - self._rows)
            flat = pa.array(block[:take].reshape(-1), pa.float32())
            arr = pa.FixedSizeListArray.from_arrays(flat, block.shape[1])
            rg = self.row_group or max(1, ROW_GROUP_BYTES // (4 * block.shape[1]))
            self._writer.write_table(pa.table({"embedding": arr}), row_group_size=rg)
            self._rows, block = self._rows + take, block[take:]
            if self._rows == self.rows_per_shard:
                self._next()

    def _next(self) -> None:
        self._writer.close()
        self._writer, self._rows, self._part = None, 0, self._part + 1

    def close(self) -> ShardSet:
        if self._writer is not None:
            self._next()
        return ShardSet([self.out])

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._next()


def write_shards(
    out_dir: str | Path,
    chunks: Iterable[np.ndarray],
    rows_per_shard: int,
    row_group: int | None = None,
) -> ShardSet:
    """Write an iterable of float32 blocks with a ``ShardWriter``; returns the ``ShardSet``."""
    w = ShardWriter(out_dir, rows_per_shard, row_group)
    with w:
        for block in chunks:
            w.write(block)
    return ShardSet([out_dir])


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
    perturb: float = 0.1,
    log=None,
) -> dict:
    """Build the index of ``shards`` into ``out_dir`` (see the module docstring) within
    ``memory_budget`` bytes of index RAM. Returns the info written to ``streaming.json``."""
    if mode not in ("single", "shards"):
        raise ValueError(f"mode must be 'single' or 'shards', got {mode!r}")
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
        raise ValueError(f"streaming builds 'ivf' or 'ivfpq' indexes, not {name!r}")
    spec = create_index_type(name, **{**p, **(params or {})})
    p = spec.resolve(n, dim)
    # 1. sample pass: training rows and query source rows
    rng = np.random.default_rng([seed, 0x57E4])
    n_train = min(n, spec._train_size(p))
    picked = rng.choice(n, size=min(n, n_train + n_queries + n_eval), replace=False)
    train, qsrc = ss.take([np.sort(picked[:n_train]), np.sort(picked[n_train:])], chunk_rows)
    faiss.normalize_L2(train)
    qsrc = qsrc[rng.permutation(len(qsrc))]  # tuning and evaluation rows both uniform
    queries = tuning_queries(qsrc, len(qsrc), seed, perturb) if len(qsrc) else qsrc
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
    heap = faiss.ResultHeap(len(queries), kq, keep_max=True)
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
                    d_, i_ = faiss.knn(queries, x, min(kq, len(x)), metric=IP)
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
    truth_all = heap.I
    t_add = time.perf_counter() - t
    say(f"added in {t_add:.1f}s ({n_chunks} chunks)")
    meta = {
        "type": name, "params": dict(p), "mode": mode, "n": n, "dim": dim,
        "shards": [f.name for f in shard_files], "rerank": rerank, "k_factor": 1,
        "nprobe": int(p["nprobe"]), "vectors": VECTORS if rerank else None,
    }  # fmt: skip
    _write_meta(out, meta)
    # 4. tune nprobe (and k_factor) on the tuning queries, report on the evaluation queries
    t = time.perf_counter()
    idx = open_streaming(out)
    nq = min(n_queries, len(queries))
    tq, tt = queries[:nq], truth_all[:nq]
    kf, nprobe, rec = _tune(idx, tq, tt, kq, target_recall, max_k_factor if rerank else 1)
    idx.k_factor, idx.nprobe = kf, nprobe
    eq, et = queries[nq:], truth_all[nq:]
    eval_rec = recall_at_k(idx.search(eq, kq)[1], et) if len(eq) else None
    eval_raw = recall_at_k(idx.search(eq, kq, k_factor=1)[1], et) if len(eq) and rerank else None
    t_tune = time.perf_counter() - t
    info = {
        **meta, "k_factor": kf, "nprobe": nprobe, "k": kq, "target_recall": target_recall,
        "recall_at_k": rec, "met_target": rec >= target_recall,
        "eval": {"n_queries": len(eq), "recall_at_k": eval_rec, "recall_at_k_no_rerank": eval_raw,
                 "queries": f"sampled rows + noise norm {perturb}, seed {seed}"},
        "memory_bytes": spec.memory_bytes(n, dim), "memory_budget_bytes": int(memory_budget),
        "chunk_rows": chunk_rows, "chunks_read": n_chunks, "max_rows_in_memory": max_rows,
        "train_rows": n_train,
        "seconds": {"sample": t_sample, "train": t_train, "add": t_add, "tune": t_tune,
                    "total": time.perf_counter() - t0},
        "faiss_version": faiss.__version__,
    }  # fmt: skip
    _write_meta(out, info)
    say(f"tuned k_factor={kf} nprobe={nprobe}: recall@{kq} {rec:.3f} (eval {eval_rec})")
    return info


def _save(index: faiss.Index, spec, p: dict, path: Path) -> Path:
    faiss.extract_index_ivf(index).make_direct_map()
    spec.set_knob(index, p["nprobe"])
    return save_index(index, path)


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out / f".{META}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, out / META)


def _tune(idx, queries, truth, k, target, max_kf) -> tuple[int, int, float]:
    """Smallest k_factor (1, 2, 4, … ``max_kf``) reaching ``target`` recall@k when every list
    is probed (one candidate search, re-ranked per prefix), then the smallest nprobe (doubling,
    then bisection) reaching it at that k_factor; else the largest of both."""
    nlist = idx.nlist
    kf = 1
    if max_kf > 1:  # one candidate search and one read of their vectors for every k_factor
        _, cand = idx.candidates(queries, k * max_kf, nlist)
        exact = idx.exact_scores(queries, cand)

        def rec_kf(kf: int) -> float:
            m = k * kf
            return recall_at_k(idx.rerank(queries, cand[:, :m], k, exact[:, :m])[1], truth)

        while kf < max_kf and rec_kf(kf) < target:
            kf *= 2

    def rec(nprobe: int) -> float:
        return recall_at_k(idx.search(queries, k, nprobe=nprobe, k_factor=kf)[1], truth)

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
    """A built streaming index, read-only: ``search`` like ``vectors.search`` (cosine scores,
    ids = row numbers; exact scores when re-ranked), ``reconstruct_batch`` exact rows."""

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
        """Rows ``ids`` of ``vectors.f32`` as float32 ``[len(ids), D]``, one ``preadv`` each
        (page cache when warm). Faster than a memory map for scattered rows, and it keeps
        them out of resident memory: a map's fault-around makes every row touched cost 64 KB
        of RSS, gigabytes after a few hundred queries."""
        out = np.empty((len(ids), self.d), np.float32)
        view, rb = memoryview(out).cast("B"), 4 * self.d
        for j, r in enumerate(ids.tolist()):
            os.preadv(self.vectors, [view[j * rb : (j + 1) * rb]], r * rb)
        return out

    def candidates(self, q: np.ndarray, kk: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's own top-``kk`` (approximate scores, ids) for normalised ``q``."""
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(nprobe)
        return self.index.search(q, min(kk, self.ntotal), params=sp)

    def search(self, queries, k: int = 10, nprobe: int | None = None,
               k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
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
        raise FileNotFoundError(f"{out_dir}: no {META} (not a streaming index, or unfinished)")
    return StreamingIndex(out_dir, mmap_index)
