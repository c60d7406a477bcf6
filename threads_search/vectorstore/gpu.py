"""GPU decision and CPU <-> GPU conversion for FAISS indexes.

``faiss-gpu`` provides the same ``faiss`` module as ``faiss-cpu`` plus ``StandardGpuResources``,
``index_cpu_to_all_gpus`` and ``index_gpu_to_cpu``. On a CPU build ``get_num_gpus`` is absent
or 0 and every path here stays on the CPU. Flat, IVF-Flat and IVF-PQ run on the GPU; HNSW is
CPU-only. Indexes are always saved from their CPU form.
"""

from __future__ import annotations

import faiss

from threads_search.device import DeviceUnavailableError
from threads_search.errors import ConfigError

GPU_TYPES = frozenset({"flat", "ivf", "ivfpq"})


def num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_gpu(
    use_gpu: bool | str, index_type: str, n_gpus: int | None = None
) -> tuple[bool, str]:
    """Decide whether to build/search ``index_type`` on the GPU: ``(use, reason)``.

    ``use_gpu``: ``False``/"cpu" never; "auto" when a GPU is visible and the type runs there;
    ``True``/"gpu" requires a GPU (``DeviceUnavailableError`` without one, a ``RuntimeError``)
    but still builds CPU-only types
    (HNSW) on the CPU, saying so in ``reason``. ``n_gpus`` overrides the detected count (tests).
    """
    n_gpus = num_gpus() if n_gpus is None else n_gpus
    if use_gpu in (False, "cpu", "no", "false"):
        return False, "use_gpu=False"
    if use_gpu not in (True, "auto", "gpu", "yes", "true"):
        raise ConfigError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    if n_gpus <= 0:
        if use_gpu == "auto":
            return False, "no GPU visible to faiss (faiss-cpu build or no device)"
        raise DeviceUnavailableError(
            "use_gpu=True, but faiss sees no GPU: install faiss-gpu on a CUDA machine, "
            "or pass use_gpu='auto'/False"
        )
    if index_type not in GPU_TYPES:
        return False, f"index type {index_type!r} has no faiss GPU implementation; built on CPU"
    return True, f"{n_gpus} GPU(s)"


def is_gpu_index(index: faiss.Index) -> bool:
    """True for a GpuIndex* or a multi-GPU replica/shard wrapper around GPU indexes."""
    name = type(faiss.downcast_index(index)).__name__
    return name.startswith("Gpu") or name in ("IndexReplicas", "IndexShards")


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Copy a CPU index to all visible GPUs (float32 storage; float16 PQ lookup tables, which
    the GPU IVF-PQ kernels need for large code sizes)."""
    if num_gpus() <= 0:
        raise DeviceUnavailableError("to_gpu: faiss sees no GPU")
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16 = False
    co.useFloat16LookupTables = True
    return faiss.index_cpu_to_all_gpus(index, co=co)


def to_cpu(index: faiss.Index) -> faiss.Index:
    """CPU copy of a GPU index (returns CPU indexes unchanged)."""
    return faiss.index_gpu_to_cpu(index) if is_gpu_index(index) else index
