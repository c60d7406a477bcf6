"""Where the compressed (region) index trains: the coarse k-means assigner that a GPU build hands
to FAISS gives the centroids FAISS's own CPU training gives, a CPU build says why it ran on the
CPU and asking for a GPU without one is refused; with faiss-gpu and a device, the build trains
there, matches the CPU build and saves a CPU index (skipped here without one)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from threads_search.device import DeviceUnavailableError
from threads_search.vectorstore.compressed import build_compressed, train_coarse_on
from threads_search.vectorstore.gpu import num_gpus
from threads_search.vectorstore.vectors import index_kind, load_index

IP = faiss.METRIC_INNER_PRODUCT


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(5)
    n, dim = 6_000, 32
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _centroids(index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_a_flat_l2_assigner_gives_the_centroids_of_faiss_own_training(data):
    """The GPU path (``train_coarse_on``) changes only the index that assigns vectors during
    the coarse k-means, to a flat L2 index as FAISS uses on the CPU: handed one here, FAISS
    gives the centroids of its own training. Without a GPU ``train_coarse_on`` hands none."""
    own = faiss.index_factory(32, "IVF64_HNSW32,PQ8", IP)
    own.train(data)
    handed = faiss.index_factory(32, "IVF64_HNSW32,PQ8", IP)
    if num_gpus() == 0:
        assert train_coarse_on(handed, 32, "auto")[:2] == (None, False)
    assigner = faiss.IndexFlatL2(32)
    faiss.extract_index_ivf(handed).clustering_index = assigner
    handed.train(data)
    np.testing.assert_allclose(_centroids(handed), _centroids(own), atol=1e-5)


def test_a_cpu_build_says_where_it_trained_and_a_demanded_gpu_is_refused(data, tmp_path):
    path = tmp_path / "regions.index"
    groups = np.arange(0, len(data), 300)
    info = build_compressed(data, path, groups=groups, n_queries=100)
    assert info["gpu"] is False and "no GPU" in info["gpu_reason"]
    index = load_index(path)  # the k-means assigner is not part of the saved index
    assert index_kind(index) == "ivfpq" and index.ntotal == len(data)
    assert faiss.extract_index_ivf(index).clustering_index is None
    if num_gpus() == 0:
        with pytest.raises(DeviceUnavailableError, match="faiss sees no GPU"):
            build_compressed(data, tmp_path / "gpu.index", use_gpu=True)
        assert not (tmp_path / "gpu.index").exists()


@pytest.mark.skipif(num_gpus() == 0, reason="needs faiss-gpu and a CUDA device")
def test_gpu_k_means_builds_the_index_the_cpu_would(data, tmp_path):
    groups = np.arange(0, len(data), 300)
    cpu = build_compressed(data, tmp_path / "cpu.index", groups=groups, use_gpu=False)
    gpu = build_compressed(data, tmp_path / "gpu.index", groups=groups, use_gpu=True)
    assert gpu["gpu"] is True and "GPU" in gpu["gpu_reason"]
    assert gpu["recall_at_k"] >= cpu["recall_at_k"] - 0.05
    a, b = load_index(tmp_path / "cpu.index"), load_index(tmp_path / "gpu.index")
    # k-means on another device may break ties differently: most centroids still agree
    ca, cb = (c / np.linalg.norm(c, axis=1, keepdims=True) for c in (_centroids(a), _centroids(b)))
    assert np.median((cb @ ca.T).max(axis=1)) > 0.99
