"""Registry of FAISS index types for cosine search: inner product on L2-normalised float32.

Ids: vectors are added in row order, so FAISS's sequential ids ``0..N-1`` are the caller's
Parquet row numbers. No ``IndexIDMap`` (it would lose ``reconstruct``, which the exact filtered
search uses). An entry is created with ``create_index_type(name, **params)``; parameters left
out are chosen from ``n`` and ``dim`` by ``resolve(n, dim)``. Each entry knows how to build an
index (``build``), which search-time knob trades speed for recall (``knob``, set per call by
``vectors.search_parameters`` or stored on the index by ``set_knob``), and its memory.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import faiss
import numpy as np

from threads_search.errors import ConfigError
from threads_search.registry import Registry
from threads_search.vectorstore.gpu import is_gpu_index, to_cpu, to_gpu
from threads_search.vectorstore.vectors import iter_normalized, normalize

INDEX_TYPES: Registry[IndexType] = Registry("index type")
IP = faiss.METRIC_INNER_PRODUCT


def create_index_type(name: str, **params: Any) -> IndexType:
    """``IndexType`` entry ``name`` with the given build/search parameters (others defaulted)."""
    return INDEX_TYPES.create(name, **params)


def list_index_types() -> list[str]:
    return INDEX_TYPES.names()


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest ``2 * sqrt(n)``, in [16, 65536],
    with at least 39 vectors a list (FAISS's k-means minimum)."""
    nlist = 2 ** round(math.log2(max(2.0 * math.sqrt(max(n, 1)), 1.0)))
    nlist = min(max(nlist, 16), 65_536)
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return max(nlist, 1)


class IndexType:
    """One kind of FAISS index. Subclasses set the class variables and ``_new``."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    knob: ClassVar[str | None] = None  # search-time parameter tuned for recall
    gpu: ClassVar[bool] = False  # buildable/searchable with faiss GPU
    exact_vectors: ClassVar[bool] = True  # reconstruct() returns the stored vectors exactly

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"index type {self.name!r}: unknown parameter(s) {sorted(unknown)}; "
                f"accepted: {sorted(self.defaults)}"
            )
        self.params = {k: v for k, v in params.items() if v is not None}
        self.gpu_error: str | None = None  # why the last GPU build fell back to the CPU

    def resolve(self, n: int, dim: int) -> dict[str, Any]:
        """All parameters for ``n`` vectors of ``dim``: given ones, else defaults."""
        return {**self.defaults, **self.params}

    def with_params(self, **params: Any) -> IndexType:
        return type(self)(**{**self.params, **params})

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        raise NotImplementedError

    def fixed_bytes(self, dim: int, n: int) -> int:
        return 0

    def memory_bytes(self, n: int, dim: int) -> int:
        """Estimated RAM of the built index holding ``n`` vectors of ``dim``."""
        return int(self.fixed_bytes(dim, n) + n * self.bytes_per_vector(dim, n))

    def knob_range(self, n: int, dim: int, k: int) -> tuple[int, int]:
        """Smallest and largest sensible value of ``knob`` (tuner searches in between)."""
        return (0, 0)

    def escalate(self, n: int, dim: int) -> IndexType | None:
        """A bigger build expected to reach higher recall, or None when there is none."""
        return None

    def set_knob(self, index: faiss.Index, value: int) -> None:
        """Store the search-time parameter on ``index`` itself (saved with it)."""
        if self.knob is not None:
            space = faiss.GpuParameterSpace() if is_gpu_index(index) else faiss.ParameterSpace()
            space.set_index_parameter(index, self.knob, int(value))

    def _new(self, n: int, dim: int, p: dict[str, Any]) -> faiss.Index:
        raise NotImplementedError

    def build(
        self, vectors: np.ndarray, seed: int = 0, gpu: bool = False, chunk: int = 65_536
    ) -> tuple[faiss.Index, faiss.Index | None]:
        """Train (on a seeded sample) and add ``vectors`` [N, D] (normalised chunk by chunk, so
        no second full copy besides the index). Returns ``(cpu_index, gpu_index or None)``;
        ids are row numbers."""
        n, dim = vectors.shape
        p = self.resolve(n, dim)
        self.params = p
        index = self._new(n, dim, p)
        work = index
        if gpu:
            try:
                work = to_gpu(index)
            except (RuntimeError, AttributeError) as e:  # e.g. PQ shape the GPU kernels lack
                self.gpu_error = f"{type(e).__name__}: {e}"
        if not index.is_trained:
            work.train(self._train_sample(vectors, p, seed))
        for block in iter_normalized(vectors, chunk):
            work.add(block)
        cpu = to_cpu(work) if work is not index else index
        self._finish(cpu)
        if self.knob:
            for ix in {id(cpu): cpu, id(work): work}.values():
                self.set_knob(ix, p[self.knob])
        return cpu, (work if work is not index else None)

    def _train_sample(self, vectors: np.ndarray, p: dict[str, Any], seed: int) -> np.ndarray:
        n = len(vectors)
        size = min(n, self._train_size(p))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        return normalize(vectors[rows])

    def _train_size(self, p: dict[str, Any]) -> int:
        return 0

    def _finish(self, index: faiss.Index) -> None:
        """Post-add step on the CPU index (IVF: direct map so reconstruct() works)."""


@INDEX_TYPES.register("flat", info="exact IndexFlatIP (brute force), recall 1")
class FlatType(IndexType):
    name = "flat"
    gpu = True

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        return 4.0 * dim

    def _new(self, n: int, dim: int, p: dict[str, Any]) -> faiss.Index:
        return faiss.IndexFlatIP(dim)


@INDEX_TYPES.register("hnsw", info="IndexHNSWFlat graph (CPU only); knob efSearch")
class HNSWType(IndexType):
    name = "hnsw"
    defaults: ClassVar[dict[str, Any]] = {"M": 32, "efConstruction": 80, "efSearch": 64}
    knob = "efSearch"

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        m = self.resolve(n, dim)["M"]
        # vector + 2M level-0 links + upper levels (1/(M-1) of the vectors, M links) + offsets
        return 4.0 * dim + 4.0 * (2 * m + m / max(m - 1, 1)) + 12.0

    def knob_range(self, n: int, dim: int, k: int) -> tuple[int, int]:
        # from 2k: a held-out indexed row is itself a node of the graph, which leads the search
        # straight to its neighbours, so tuning on such rows is optimistic at small efSearch
        # (100k x 1024: efSearch 10 tuned to 0.95 gave 0.907 on new data, 20 gave 0.963)
        return (max(2 * k, 16), max(4096, 2 * k))

    def escalate(self, n: int, dim: int) -> IndexType | None:
        p = self.resolve(n, dim)
        if p["M"] >= 64:
            return None
        return self.with_params(M=p["M"] * 2, efConstruction=p["efConstruction"] * 2)

    def _new(self, n: int, dim: int, p: dict[str, Any]) -> faiss.Index:
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), IP)
        index.hnsw.efConstruction = int(p["efConstruction"])
        index.hnsw.efSearch = int(p["efSearch"])
        return index


class _IVFBase(IndexType):
    knob = "nprobe"
    gpu = True

    def resolve(self, n: int, dim: int) -> dict[str, Any]:
        p = super().resolve(n, dim)
        if p.get("nlist") is None:
            p["nlist"] = ivf_nlist(n)
        if p.get("nprobe") is None:
            p["nprobe"] = max(1, p["nlist"] // 64)
        return p

    def fixed_bytes(self, dim: int, n: int) -> int:
        return 4 * dim * self.resolve(n, dim)["nlist"]

    def knob_range(self, n: int, dim: int, k: int) -> tuple[int, int]:
        return (1, self.resolve(n, dim)["nlist"])

    def _train_size(self, p: dict[str, Any]) -> int:
        return 40 * p["nlist"]

    def _finish(self, index: faiss.Index) -> None:
        faiss.extract_index_ivf(index).make_direct_map()

    @staticmethod
    def _quiet(ivf: faiss.IndexIVF, n_train: int) -> None:
        # small data: accept fewer than 39 points per centroid without a stderr warning per run
        ivf.cp.min_points_per_centroid = 1 if n_train < 39 * ivf.nlist else 39


@INDEX_TYPES.register("ivf", info="IndexIVFFlat (inverted lists of full vectors); knob nprobe")
class IVFType(_IVFBase):
    name = "ivf"
    defaults: ClassVar[dict[str, Any]] = {"nlist": None, "nprobe": None}

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        return 4.0 * dim + 8 + 8  # vector, id in its list, direct-map entry

    def _new(self, n: int, dim: int, p: dict[str, Any]) -> faiss.Index:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(p["nlist"]), IP)
        index.nprobe = int(p["nprobe"])
        self._quiet(index, min(n, self._train_size(p)))
        return index


@INDEX_TYPES.register("ivfpq", info="IndexIVFPQ (m bytes/vector codes, optional OPQ); knob nprobe")
class IVFPQType(_IVFBase):
    name = "ivfpq"
    defaults: ClassVar[dict[str, Any]] = {
        "nlist": None,
        "nprobe": None,
        "m": None,
        "nbits": 8,
        "opq": False,
    }
    exact_vectors = False

    def resolve(self, n: int, dim: int) -> dict[str, Any]:
        p = super().resolve(n, dim)
        if p.get("m") is None:
            p["m"] = pq_m(dim, max(dim // 16, 1))
        if dim % p["m"]:
            raise ConfigError(f"index type 'ivfpq': m={p['m']} must divide dim={dim}")
        return p

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        p = self.resolve(n, dim)
        return math.ceil(p["m"] * p["nbits"] / 8) + 8 + 8  # code, id, direct-map entry

    def fixed_bytes(self, dim: int, n: int) -> int:
        p = self.resolve(n, dim)
        opq = 4 * dim * dim if p["opq"] else 0
        return super().fixed_bytes(dim, n) + 4 * dim * 2 ** p["nbits"] + opq

    def escalate(self, n: int, dim: int) -> IndexType | None:
        m = self.resolve(n, dim)["m"]
        bigger = pq_m(dim, m * 2)
        return self.with_params(m=bigger) if bigger > m else None

    def _train_size(self, p: dict[str, Any]) -> int:
        return max(40 * p["nlist"], 64 * 2 ** p["nbits"])

    def _new(self, n: int, dim: int, p: dict[str, Any]) -> faiss.Index:
        ivf = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, int(p["nlist"]), int(p["m"]), int(p["nbits"]), IP
        )
        ivf.nprobe = int(p["nprobe"])
        n_train = min(n, self._train_size(p))
        self._quiet(ivf, n_train)
        ivf.pq.cp.niter = 10  # as FAISS's coarse k-means; 25 (its PQ default) costs 2.5x
        if n_train < 39 * 2 ** p["nbits"]:
            ivf.pq.cp.min_points_per_centroid = 1
        if not p["opq"]:
            return ivf
        opq = faiss.OPQMatrix(dim, int(p["m"]))
        return faiss.IndexPreTransform(opq, ivf)


def pq_m(dim: int, want: int) -> int:
    """Largest number of PQ sub-quantisers <= ``want`` that divides ``dim`` with >= 8 dims each
    (FAISS's 256-centroid k-means per sub-quantiser gets ~15x slower on 4-dim slices)."""
    for m in range(min(want, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1
