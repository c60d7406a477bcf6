"""Training configuration (:class:`TrainConfig`), saved into the model bundle (``config.json``'s
``training``) and the training state (``checkpoints/state.pt``, compared on ``--resume``).

Enum-like settings are ``Literal`` fields, checked when a config is made; ``check()`` refuses
values that cannot train, naming the CLI option (:class:`~threads_search.errors.ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from threads_search.config import StrictConfig
from threads_search.errors import ConfigError

DEFAULT_VAL_FRACTION = 0.15  # of the patients, when no split column is given
MIN_TRAIN_ITEMS = 8  # fewest matched training items (bags) a run accepts

RnaUnits = Literal["tpm", "counts", "log"]
PairBy = Literal["sample", "patient"]
BagBy = Literal["patient", "slide"]
SelectMetric = Literal["val_mean_recall", "val_rankme"]
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TrainConfig(StrictConfig):
    """Everything that defines a training run. Paths are strings (JSON-ready)."""

    features: str = ""
    pairs: str = ""
    out: str = ""
    rna: str | None = None
    dna: str | None = None
    rna_units: RnaUnits = "tpm"
    metadata: str | None = None  # optional table with a patient-level ``split`` column
    pair_by: PairBy = "sample"  # patient: TCGA barcodes paired by their first 12 characters
    bag_by: BagBy = "patient"  # patient: a patient's slides form one bag; slide: one per slide
    # Share of patients held out for validation when the metadata has no split column
    # (None: DEFAULT_VAL_FRACTION; 0: no validation split). Not allowed with a split column.
    val_fraction: float | None = None
    # Refuse to train on fewer matched training items (bags with a paired profile). InfoNCE
    # contrasts the items of a batch, so a handful of items cannot train a model.
    min_train_items: int = MIN_TRAIN_ITEMS
    slide_encoder: str = "threads"  # a registered slide encoder (list_slide_encoders())
    slide_config: dict = field(default_factory=dict)
    rna_config: dict = field(default_factory=dict)
    dna_config: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    max_patches: int = 2048  # patches sampled per bag per step (all at validation)
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    accum_steps: int = 1
    temperature: float = 0.07
    select_metric: SelectMetric = "val_mean_recall"
    # A patient-level column of --metadata (e.g. "site") to balance by (trainer.balance): each
    # batch holds the training items of ONE value, values contributing in proportion to their
    # items (every item once an epoch); values with < 2 training items go to mixed remainder
    # batches (reported). Validation recall is computed within each value and averaged
    # (val_mean_recall; the all-gallery mean is logged as val_mean_recall_all).
    balance_by: str | None = None
    # A patient-level column of --metadata whose per-value patch-feature mean/sd (training items
    # only) re-style bags to another value (trainer.augment): x' = (x - mu_s) / sd_s * sd_t +
    # mu_t, with probability augment_p per bag and step; never at validation.
    augment_by: str | None = None
    augment_p: float = 0.5
    # Stain views (``features --stain-views``): a training bag's slide is swapped for one of its
    # re-stained feature copies with this probability per slide and step (0: never); never at
    # validation. Slides without views are used as they are.
    stain_view_p: float = 0.5
    patience: int = 10  # epochs without improvement before early stopping (0 = never)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = leave as is)

    def check(self) -> None:
        """Settings that cannot train → :class:`ConfigError` naming the option."""
        bad = []
        if self.batch_size < 2:
            bad.append(f"--batch-size {self.batch_size}: InfoNCE needs at least 2 items a batch")
        if self.min_train_items < 2:
            bad.append(f"--min-train-items {self.min_train_items}: at least 2")
        if self.epochs < 1 or self.accum_steps < 1 or self.max_patches < 1:
            bad.append("--epochs, --accum-steps and --max-patches must be at least 1")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            bad.append(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if not 0 <= self.augment_p <= 1:
            bad.append(f"--augment-p {self.augment_p}: a probability, in [0, 1]")
        if not 0 <= self.stain_view_p <= 1:
            bad.append(f"--stain-view-p {self.stain_view_p}: a probability, in [0, 1]")
        for opt, col in (("--balance-by", self.balance_by), ("--augment-by", self.augment_by)):
            if col is not None and (not isinstance(col, str) or not col.strip()):
                bad.append(f"{opt} {col!r}: name a column of --metadata (e.g. site)")
            elif col is not None and not self.metadata:
                bad.append(
                    f"{opt} {col} needs --metadata FILE with a {col!r} column (one value per "
                    "patient)"
                )
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            bad.append(f"--device {self.device}: use auto, cpu, cuda or cuda:N")
        if bad:
            raise ConfigError("; ".join(bad))
        from threads_search.models.slide_encoders import list_slide_encoders

        if self.slide_encoder not in list_slide_encoders():
            known = ", ".join(list_slide_encoders())
            raise ConfigError(f"--slide-encoder {self.slide_encoder!r}: use one of {known}")
