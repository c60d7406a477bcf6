"""FAISS vector index: index-type registry, automatic choice and recall tuning, save/load,
search, filtered search, GPU decision logic.

Sizes: the per-type tests use 3000 clustered vectors of dim 256 (PQ training and HNSW
construction at 1024-d would cost most of the time budget); the auto-recall tests use 1k x 1024
and 200k x 128 (the 200k case keeps dim small to stay fast; 1M x 1024 lives in
bench/search_scale.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from threads_search.synth.vectors import clustered_embeddings
from threads_search.vectorstore import (
    build_index,
    choose_index,
    create_index_type,
    drop_padding,
    exact_knn,
    list_index_types,
    load_index,
    normalize,
    recall_at_k,
    resolve_gpu,
    save_index,
    search,
    search_subset,
    to_cpu,
    to_gpu,
    tuning_queries,
)
from threads_search.vectorstore.autotune import HNSW_MIN_N, drop_own, held_out_rows, knn_recall
from threads_search.vectorstore.gpu import is_gpu_index, num_gpus

N, DIM, K = 3000, 256, 10
TYPES = list_index_types()
# the largest PQ code for dim 256 (8 dims a sub-quantiser): one build, no escalation rebuilds
# (escalation is tested on its own below)
FIXTURE_PARAMS = {"ivfpq": {"m": 32}}


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin while waiting: on a shared 2-core box under load, 2 threads
    made PQ training 4x slower than 1. These tests check behaviour, not speed."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    # raw (unnormalised, varying norms): the index must normalise itself
    x = clustered_embeddings(N, DIM, n_clusters=60, seed=3)
    return x * np.random.default_rng(3).uniform(0.5, 4.0, (N, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def built(data):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_index(
                data,
                index_type=name,
                params=FIXTURE_PARAMS.get(name),
                n_queries=200,
                use_gpu=False,
                fallback_flat=False,
            )
        return cache[name]

    return get


def brute_force(data: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int):
    sims = normalize(queries) @ normalize(data[rows]).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), rows[order]


def test_registry_lists_the_required_types():
    assert {"flat", "hnsw", "ivf", "ivfpq"} <= set(TYPES)
    with pytest.raises(KeyError, match="unknown index type 'nope'"):
        create_index_type("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        create_index_type("ivf", efSearch=3)


@pytest.mark.parametrize("name", TYPES)
def test_build_tunes_knob_to_the_smallest_value_reaching_target(name, data, built):
    index, info = built(name)
    spec = create_index_type(name)
    assert index.ntotal == N and index.d == DIM and info["type"] == name
    assert info["n"] == N and info["dim"] == DIM and info["faiss_version"] == faiss.__version__
    assert info["gpu"] is False and info["build_seconds"] > 0 and info["tune_seconds"] > 0
    # the reported recall is what the returned index gives on held-out rows not used for tuning
    # (leave-one-out: a row is never its own answer); the tuning half's is reported beside it
    tune, held = held_out_rows(N, 200, seed=0)
    assert len(tune) == len(held) == 200 and not set(tune) & set(held)
    assert info["tuning_queries"]["source"].startswith("held-out rows")
    for rows, key in ((held, "recall_at_k"), (tune, "recall_at_k_tuning")):
        q = data[rows] / np.linalg.norm(data[rows], axis=1, keepdims=True)
        truth = drop_own(exact_knn(data, q, K + 1)[1], rows, K)
        assert not (truth == rows[:, None]).any()
        assert knn_recall(index, q, truth, None, rows) == pytest.approx(info[key])
    assert info["met_target"] == (info["recall_at_k"] >= 0.95)
    if spec.exact_vectors:
        assert info["met_target"]
    if spec.knob and info["recall_at_k_tuning"] >= 0.95:
        value = info["search_params"][spec.knob]
        lo, _ = spec.knob_range(N, DIM, K)
        if value > lo:  # one less no longer reaches the target on the tuning rows
            below = knn_recall(index, q, truth, {spec.knob: value - 1}, tune)
            assert below < 0.95


@pytest.mark.parametrize("name", TYPES)
def test_memory_estimate_matches_serialised_size(name, built):
    index, info = built(name)
    actual = faiss.serialize_index(index).nbytes
    assert 0.7 * actual <= info["memory_bytes"] <= 1.5 * actual


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(name, mmap, data, built, tmp_path):
    index, info = built(name)
    q = normalize(data[::97]) + 0.01
    before = search(index, q, K)
    path = save_index(index, tmp_path / "faiss" / "vectors.index")
    assert [p.name for p in path.parent.iterdir()] == ["vectors.index"]  # no temp left
    loaded = load_index(path, mmap=mmap)
    after = search(loaded, q, K)  # the tuned knob travels inside the file
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-6)
    if mmap and sys.platform.startswith("linux"):
        assert str(path) in Path("/proc/self/maps").read_text()


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.index"):
        load_index(tmp_path / "nothere.index")


@pytest.mark.parametrize("name", TYPES)
def test_ids_are_row_numbers(name, data, built):
    index, _ = built(name)
    rows = np.random.default_rng(1).choice(N, 50, replace=False)
    scores, ids = search(index, data[rows], K)
    # a row queried by its own vector comes back as that row (first, unless PQ-approximated)
    exact = create_index_type(name).exact_vectors
    assert np.mean(ids[:, 0] == rows if exact else (ids == rows[:, None]).any(1)) >= 0.95
    if exact:  # scores are the cosines with those rows
        cos = np.einsum("qd,qkd->qk", normalize(data[rows]), normalize(data)[ids])
        np.testing.assert_allclose(scores, cos, atol=1e-4)


def test_flat_self_query_is_first_and_scale_invariant():
    x = clustered_embeddings(2000, 1024, seed=5)
    index, info = build_index(x, index_type="flat", n_queries=100, use_gpu=False)
    scores, ids = search(index, x * 7.5, 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(2000))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert info["recall_at_k"] == 1.0 and info["search_params"] == {}
    one = search(index, x[7], 5)  # a single [D] query, a 20+ batch (FAISS BLAS path) agrees
    assert one[1].shape == (1, 5) and one[1][0, 0] == 7
    np.testing.assert_array_equal(search(index, x[:40], 5)[1][:, 0], np.arange(40))


def test_choose_index_rule():
    assert choose_index(1_000, 1024) == ("flat", {})
    name, p = choose_index(50_000, 1024)
    assert name == "ivf" and p["nlist"] & (p["nlist"] - 1) == 0 and 256 <= p["nlist"] <= 4096
    # from HNSW_MIN_N on, a CPU build gets the graph (measured faster at equal recall); a GPU
    # build keeps IVF (HNSW has no GPU implementation); the caller's preference wins
    assert choose_index(HNSW_MIN_N, 1024)[0] == "hnsw"
    assert choose_index(HNSW_MIN_N - 1, 1024)[0] == "ivf"
    assert choose_index(200_000, 1024, gpu=True)[0] == "ivf"
    assert choose_index(200_000, 1024, prefer="ivf")[0] == "ivf"
    assert choose_index(50_000, 1024, prefer="hnsw")[0] == "hnsw"
    budget = 50_000_000  # 200k x 1024 floats = 819 MB: only PQ codes fit
    name, p = choose_index(200_000, 1024, memory_budget_bytes=budget)
    assert name == "ivfpq" and 1024 % p["m"] == 0
    spec = create_index_type("ivfpq", **p)
    assert spec.memory_bytes(200_000, 1024) <= budget
    assert (
        create_index_type("ivfpq", **{**p, "m": p["m"] * 2}).memory_bytes(200_000, 1024) > (budget)
        or p["m"] * 2 > 1024 // 8
    )
    # a small collection whose floats do not fit goes to PQ too
    assert choose_index(1_000, 1024, memory_budget_bytes=2_000_000)[0] == "ivfpq"
    with pytest.raises(ValueError, match="too small"):
        choose_index(200_000, 1024, memory_budget_bytes=100_000)


@pytest.mark.parametrize(("n", "dim", "expect"), [(1_000, 1024, "flat"), (60_000, 128, "ivf")])
def test_auto_index_meets_recall(n, dim, expect):
    x = clustered_embeddings(n, dim, seed=11)
    index, info = build_index(x, use_gpu=False)
    assert info["type"] == expect and info["chosen_by"] == "auto"
    assert info["choice"].startswith(f"{expect}: ")  # the reason is recorded for index.json
    assert info["recall_at_k"] >= 0.95 and info["met_target"]
    # fresh queries (other seed) against exact search: the tuned index generalises
    q = tuning_queries(x, 200, seed=99)
    fresh = recall_at_k(search(index, q, K)[1], exact_knn(x, q, K)[1])
    assert fresh >= 0.93


def test_escalates_then_falls_back_to_flat():
    x = clustered_embeddings(1000, 64, n_clusters=30, seed=2)
    index, info = build_index(x, index_type="ivfpq", target_recall=0.999, n_queries=100)
    kinds = [a["type"] for a in info["attempts"]]
    assert kinds[0] == "ivfpq" and kinds[-1] == "flat" and info["type"] == "flat"
    ms = [a["params"]["m"] for a in info["attempts"] if a["type"] == "ivfpq"]
    assert ms == sorted(ms) and len(set(ms)) == len(ms) >= 2  # more bytes before giving up
    assert info["recall_at_k"] == 1.0 and isinstance(faiss.downcast_index(index), faiss.IndexFlat)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("frac", [0.01, 0.1, 0.5])
def test_filtered_search_equals_brute_force(name, frac, data, built):
    index, _ = built(name)
    rng = np.random.default_rng(int(frac * 1000))
    allowed = np.sort(rng.choice(N, int(N * frac), replace=False))
    q = data[rng.choice(N, 20, replace=False)] + 0.05
    vectors = data if name == "ivfpq" else None  # PQ codes are approximate: caller's floats
    scores, ids = search_subset(index, q, K, allowed, vectors=vectors)
    ref_scores, ref_ids = brute_force(data, q, allowed, K)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("name", TYPES)
def test_filtered_search_selector_path(name, data, built):
    """Subsets above ``exact_max`` go through FAISS ID selectors: still only allowed ids."""
    index, info = built(name)
    rng = np.random.default_rng(7)
    allowed = rng.choice(N, N // 5, replace=False)
    q = data[rng.choice(N, 20, replace=False)] + 0.05
    params = {"nprobe": info["params"]["nlist"]} if "nlist" in info["params"] else None
    scores, ids = search_subset(index, q, K, allowed, exact_max=0, params=params)
    ref_scores, ref_ids = brute_force(data, q, np.sort(allowed), K)
    assert np.isin(ids[ids >= 0], allowed).all()
    if name in ("flat", "ivf"):  # flat scan / all lists probed: exact
        np.testing.assert_array_equal(ids, ref_ids)
    else:
        assert recall_at_k(ids, ref_ids) >= 0.6


def test_filtered_search_small_subsets_and_errors(built):
    index, _ = built("flat")
    q = np.ones((2, DIM), np.float32)
    scores, ids = search_subset(index, q, K, np.array([5, 3, 3, 9]))
    assert ids.shape == (2, 3) and set(ids[0]) == {3, 5, 9}  # k clipped, duplicates merged
    assert search_subset(index, q, K, np.array([], np.int64))[1].shape == (2, 0)
    with pytest.raises(ValueError, match="allowed_ids must lie in"):
        search_subset(index, q, K, np.array([N]))


def test_padding_is_marked_and_dropped(built):
    index, info = built("ivf")
    q = np.random.default_rng(0).standard_normal((3, DIM)).astype(np.float32)
    scores, ids = search(index, q, N, {"nprobe": 1})  # one list cannot fill k = N
    assert ids.shape == (3, N) and (ids == -1).any()
    for s, i in zip(scores, ids, strict=True):
        valid = np.flatnonzero(i >= 0)
        assert (valid == np.arange(len(valid))).all()  # padding only at the end
        assert np.isneginf(s[i < 0]).all()
        vs, vi = drop_padding(s, i)
        assert len(vi) == len(valid) and (vi >= 0).all() and (np.diff(vs) <= 1e-6).all()


def test_gpu_decision_logic_on_this_machine(data):
    assert resolve_gpu(False, "ivf") == (False, "use_gpu=False")
    assert resolve_gpu("auto", "ivf", n_gpus=1)[0] is True
    use, reason = resolve_gpu("auto", "hnsw", n_gpus=1)
    assert use is False and "hnsw" in reason
    assert resolve_gpu(True, "flat", n_gpus=2) == (True, "2 GPU(s)")
    assert resolve_gpu("auto", "ivf", n_gpus=0)[0] is False
    with pytest.raises(RuntimeError, match="sees no GPU"):
        resolve_gpu(True, "ivf", n_gpus=0)
    with pytest.raises(ValueError, match="use_gpu"):
        resolve_gpu("maybe", "ivf")
    cpu_index = faiss.IndexFlatIP(DIM)
    assert not is_gpu_index(cpu_index) and to_cpu(cpu_index) is cpu_index
    if num_gpus() == 0:
        assert resolve_gpu("auto", "ivf")[0] is False
        with pytest.raises(RuntimeError):
            to_gpu(cpu_index)
        _, info = build_index(data[:1000], index_type="ivf", use_gpu="auto", n_queries=50)
        assert info["gpu"] is False and "no GPU" in info["gpu_reason"]


@pytest.mark.skipif(num_gpus() == 0, reason="needs faiss-gpu and a CUDA device")
@pytest.mark.parametrize("name", ["flat", "ivf", "ivfpq"])
def test_gpu_build_matches_cpu(name, data, tmp_path):
    index, info = build_index(data, index_type=name, use_gpu=True, n_queries=200)
    assert info["gpu"] is True and not is_gpu_index(index)
    gpu_index = to_gpu(index)
    assert is_gpu_index(gpu_index)
    q = normalize(data[:50])
    cpu_ids = search(index, q, K)[1]
    gpu_ids = search(gpu_index, q, K, info["search_params"])[1]
    assert recall_at_k(gpu_ids, cpu_ids) >= 0.95
    loaded = load_index(save_index(gpu_index, tmp_path / "g.index"))
    np.testing.assert_array_equal(search(loaded, q, K)[1], cpu_ids)
