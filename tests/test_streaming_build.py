"""Streaming build of a vector index from Parquet shards: recall against exact search, memory
that does not grow with the collection, shards merged as one index."""

from __future__ import annotations

import math
import tracemalloc

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from threads_search.synth.vectors import clustered_embeddings
from threads_search.vectorstore.autotune import tuning_queries
from threads_search.vectorstore.streaming import (
    ShardSet,
    build_streaming,
    open_streaming,
    write_shards,
)
from threads_search.vectorstore.vectors import exact_knn, normalize, recall_at_k

N, DIM, SHARDS = 100_000, 64, 5


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """100k x 64 clustered embeddings written as 5 Parquet shards (blocks of 7000 rows)."""
    root = tmp_path_factory.mktemp("streaming")
    x = clustered_embeddings(N, DIM, seed=3)
    blocks = (x[i : i + 7000] for i in range(0, N, 7000))
    ss = write_shards(root / "shards", blocks, rows_per_shard=N // SHARDS, row_group=5000)
    return root, x, ss


def _exact(x, n_queries=200, seed=21):
    q = tuning_queries(x, n_queries, seed=seed)
    return q, exact_knn(x, q, 10)[1]


def test_shards_written_and_read_in_order(collection):
    root, x, ss = collection
    assert len(ss.paths) == SHARDS and ss.counts == [N // SHARDS] * SHARDS
    assert ss.n == N and ss.dim == DIM
    starts = []
    for start, block in ss.iter_chunks(3000):
        assert len(block) <= 3000
        np.testing.assert_array_equal(block, x[start : start + len(block)])
        starts.append(start)
    assert starts[0] == 0 and starts == sorted(starts)
    rows = [np.array([0, 19_999, 20_000, N - 1]), np.array([5, 77_777])]
    got = ss.take(rows, 4096)
    for r, g in zip(rows, got, strict=True):
        np.testing.assert_array_equal(g, x[r])


def test_ivfpq_over_budget_streams_with_bounded_memory(collection, tmp_path):
    root, x, ss = collection
    budget = 4 * 2**20  # far below the 24 MB of vectors: IVF-PQ codes + re-ranking from disk
    tracemalloc.start()
    try:
        info = build_streaming(
            ss,
            tmp_path / "ix",
            memory_budget=budget,
            chunk_rows=4096,
            target_recall=0.95,
            n_queries=150,
            n_eval=150,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info["type"] == "ivfpq" and info["memory_bytes"] <= budget
    assert info["chunks_read"] >= math.ceil(N / 4096) and info["max_rows_in_memory"] <= 4096
    assert peak < 0.4 * x.nbytes, f"build held {peak / 2**20:.1f} MiB of {x.nbytes / 2**20} MiB"
    assert info["eval"]["recall_at_k"] >= 0.9
    ix = open_streaming(tmp_path / "ix")
    q, truth = _exact(x)
    scores, ids = ix.search(q, 10)
    assert recall_at_k(ids, truth) >= 0.9
    xn = normalize(x)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", xn[ids], q), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(ix.reconstruct_batch([3, 99_999]), xn[[3, 99_999]], atol=1e-6)
    _, raw = ix.search(q, 10, k_factor=1)  # PQ ranking alone is what re-ranking fixes
    assert recall_at_k(raw, truth) < recall_at_k(ids, truth)


def test_sharded_index_merges_like_one(collection, tmp_path):
    root, x, ss = collection
    kw = {"index_type": "ivf", "params": {"nlist": 64}, "chunk_rows": 8192, "target_recall": 0.95}
    one = build_streaming(ss, tmp_path / "one", **kw)
    many = build_streaming(ss, tmp_path / "many", mode="shards", **kw)
    assert one["type"] == many["type"] == "ivf" and len(many["shards"]) == SHARDS
    a, b = open_streaming(tmp_path / "one"), open_streaming(tmp_path / "many")
    assert isinstance(b.index, faiss.IndexShards) and b.index.ntotal == N
    q, truth = _exact(x, seed=5)
    _, ia = a.search(q, 10, nprobe=8)
    _, ib = b.search(q, 10, nprobe=8)
    assert (ia == ib).mean() > 0.99  # same lists, same vectors: the same hits
    assert recall_at_k(b.search(q, 10)[1], truth) >= 0.9
    ids = np.array([0, 20_000, 45_678, N - 1])  # across shard boundaries
    np.testing.assert_allclose(b.reconstruct_batch(ids), normalize(x[ids]), atol=1e-6)


def test_errors_name_the_problem(collection, tmp_path):
    root, x, ss = collection
    with pytest.raises(ValueError, match="mode"):
        build_streaming(ss, tmp_path / "a", mode="tree")
    with pytest.raises(ValueError, match="'flat'"):
        build_streaming(ss, tmp_path / "b", index_type="flat")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"embedding": pa.array(["x", "y"])}), bad)
    with pytest.raises(ValueError, match="bad.parquet"):
        ShardSet([bad])
    with pytest.raises(FileNotFoundError):
        open_streaming(tmp_path / "nothing")


@pytest.mark.parametrize("budget_mb", [4, 40])
def test_the_index_writer_streams_slides_over_the_budget_and_open_index_searches_them(
    tmp_path, budget_mb
):
    """Slide embeddings larger than the memory budget (4 MB for 7.7 MB of floats): the
    generation's slide index is a streaming IVF-PQ build re-ranked from its vectors on disk,
    that ``open_index`` opens and searches: unfiltered (recall against exact search), filtered
    (exact), by id. Within the budget (40 MB) the in-memory build stays."""
    import pandas as pd

    from threads_search.query import open_index
    from threads_search.vectorstore.writer import write_generation

    n, dim = 30_000, 64
    x = normalize(clustered_embeddings(n, dim, seed=5))
    ids = [f"S{i:05d}" for i in range(n)]
    slides = pd.DataFrame(
        {"slide_id": ids, "path": None, "patient_id": None, "bucket": np.arange(n) % 10}
    )
    manifest = write_generation(tmp_path, slides, x, memory_budget=budget_mb * 2**20)
    info = manifest["slides"]["faiss"]
    gen = tmp_path / "generations" / manifest["generation"]
    streamed = (gen / "faiss" / "slides_streaming").is_dir()
    assert streamed == (budget_mb == 4)
    assert info["type"] == ("ivfpq" if budget_mb == 4 else "ivf")
    if streamed:
        assert info["rerank"] and info["memory_bytes"] <= budget_mb * 2**20
    idx = open_index(tmp_path)
    assert idx.info()["faiss"]["slides"]["type"] == info["type"]
    q = x[::1500][:20]
    found = np.stack(
        [idx.search_slides(v, k=10).slide_id.str[1:].astype(int).to_numpy() for v in q]
    )
    assert recall_at_k(found, exact_knn(x, q, 10)[1]) >= 0.9
    res = idx.search_slides(ids[7], k=5, where="bucket = 3")  # filtered: exact over the subset
    sub = np.flatnonzero(np.arange(n) % 10 == 3)
    want = sub[np.argsort(-(x[sub] @ x[7]))[:5]]
    assert list(res.slide_id) == [ids[i] for i in want]
    np.testing.assert_allclose(res.score, x[want] @ x[7], atol=1e-5)
