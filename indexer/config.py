"""Settings of an index run (saved in ``index.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class IndexConfig:
    inputs: list[str] = field(default_factory=list)  # slide files/folders or FEATURES_DIRs
    model: str = ""
    out: str = ""
    features_dir: str | None = None  # default: INDEX_DIR/features
    metadata: str | None = None
    pairs: str | None = None
    pair_by: str = "sample"
    rna: str | None = None
    rna_units: str | None = None  # None: the model's units; another value than those: error
    dna: str | None = None
    mpp_csv: str | None = None
    remove: list[str] = field(default_factory=list)
    prune: bool = False
    index_type: str = "auto"
    memory_budget_gb: float | None = None
    workers: int = 2
    batch_size: int = 32
    device: str = "auto"
    checkpoint: str | None = None  # pretrained patch-encoder weights
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # None: a local Ray on this machine (loopback only)
    gpus_per_worker: float | None = None  # per encoder actor; None: 1 if the cluster has GPUs
    cpus_per_reader: float = 1.0  # per patch-reading task

    def to_dict(self) -> dict:
        return asdict(self)
