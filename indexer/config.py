"""Settings of an index run: :class:`IndexConfig`, saved in ``index.json`` (``config``).

A ``StrictConfig``: choices (``engine``, ``pair_by``, ``rna_units``, ``index_type``,
``region_features``, ``device``) are checked when the config is made, ranges by
:meth:`IndexConfig.check`, and ``from_dict`` refuses an unknown key listing the accepted ones; each fault is a
``ConfigError`` naming the setting and what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from threads_search.config import StrictConfig
from threads_search.errors import ConfigError

# "auto" (chosen by size, ``vectorstore.autotune``) or a name of ``vectorstore.faiss_types``
IndexType = Literal["auto", "flat", "hnsw", "ivf", "ivfpq"]


@dataclass
class IndexConfig(StrictConfig):
    """One ``threads-search index`` run (the CLI options of the same names)."""

    inputs: list[str] = field(default_factory=list)  # slide files/folders or FEATURES_DIRs
    model: str = ""
    out: str = ""
    features_dir: str | None = None  # default: INDEX_DIR/features
    metadata: str | None = None
    pairs: str | None = None
    pair_by: Literal["sample", "patient"] = "sample"
    rna: str | None = None
    # None: the model's units; another value than those: ConfigError (indexer.profiles)
    rna_units: Literal["tpm", "counts", "log"] | None = None
    dna: str | None = None
    mpp_csv: str | None = None
    remove: list[str] = field(default_factory=list)
    prune: bool = False
    index_type: IndexType = "auto"
    regions: bool = True  # also build the patch-level (region) index
    # what region search compares: the encoder's tissue dimensions, standardised over the
    # indexed patches ("tissue"), the features as they are ("raw"), or tissue from 50 slides
    # and raw below ("auto"); vectorstore.projection
    region_features: Literal["auto", "tissue", "raw"] = "auto"
    memory_budget_gb: float | None = None  # GiB for the FAISS build; None: no limit
    workers: int = 2  # patch-reading processes (local) / local Ray CPUs (ray)
    batch_size: int = 32  # patches per encoder batch
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint: str | None = None  # pretrained patch-encoder weights
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: a local Ray on this machine (loopback only)
    gpus_per_worker: float | None = None  # per encoder actor; None: 1 if the cluster has GPUs
    cpus_per_reader: float = 1.0  # per patch-reading task

    def check(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ConfigError(f"IndexConfig.{name} must be {rule}, got {value!r}")

        need(self.workers >= 0, "workers", ">= 0 (0: read patches in this process)")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(
            self.memory_budget_gb is None or self.memory_budget_gb > 0,
            "memory_budget_gb",
            "> 0 GiB (or None: no limit)",
        )
        need(self.cpus_per_reader > 0, "cpus_per_reader", "> 0")
        need(
            self.gpus_per_worker is None or self.gpus_per_worker >= 0,
            "gpus_per_worker",
            ">= 0 (or None: 1 if the cluster has GPUs)",
        )
