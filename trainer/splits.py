"""Train/validation split of the training items, by patient: a metadata ``split`` column when
the metadata has one, else a seeded random split of ``val_fraction`` of the patients.

``val_fraction`` 0 means no validation split (model selection then falls back on the training
loss, and says so). With a ``split`` column the column decides and ``val_fraction`` must not be
given. Split values: train/training, val/valid/validation, test/testing/holdout (any case);
items of a split other than train and val are held out of training.
"""

from __future__ import annotations

import numpy as np

from threads_search.molecular.tables import read_metadata
from trainer.config import DEFAULT_VAL_FRACTION, TrainConfig
from trainer.errors import TrainingDataError

SPLIT_NAMES = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation"), "val"),
    **dict.fromkeys(("test", "testing", "holdout", "held_out"), "test"),
}


def _few(ids, n: int = 5) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:n]) + (f" … ({len(ids)} in all)" if len(ids) > n else "")


def _from_metadata(items, cfg: TrainConfig, meta) -> str:
    raw = meta["split"].map(lambda v: None if v is None or v != v else str(v).strip())
    norm = raw.map(lambda v: SPLIT_NAMES.get(v.lower(), "?") if v else None)
    unknown = sorted(set(raw[norm == "?"]))
    if unknown:
        raise TrainingDataError(
            f"metadata {cfg.metadata}: unknown split value(s) {_few(unknown)}; use train, val or "
            "test (also accepted: training, valid, validation, testing, holdout)"
        )
    if cfg.val_fraction is not None:
        counts = norm.value_counts().to_dict()
        raise TrainingDataError(
            f"--val-fraction {cfg.val_fraction} applies only without a split column, and "
            f"metadata {cfg.metadata} has one ({counts}): drop --val-fraction to use the column, "
            "or edit the column (no 'val' rows: no validation split)"
        )
    lookup: dict[str, dict[str, set[str]]] = {}
    for col in ("slide_id", "sample_id", "patient_id"):
        if col in meta.columns:
            by = lookup.setdefault(col, {})
            for key, split in zip(meta[col], norm, strict=True):
                if isinstance(key, str) and split:
                    by.setdefault(key, set()).add(split)
    unassigned, conflicts = [], []
    for it in items:
        keys = [("slide_id", s) for s in it.slides] + [("patient_id", it.patient_id)]
        keys += [("sample_id", s) for s in (it.rna, it.dna) if s]
        found = set()
        for col, i in keys:
            found |= lookup.get(col, {}).get(i, set())
        if len(found) > 1:
            conflicts.append(f"{it.key} ({'/'.join(sorted(found))})")
        elif found:
            it.split = found.pop()
        else:
            unassigned.append(it.key)
            it.split = "train"
    if conflicts:
        raise TrainingDataError(
            f"metadata {cfg.metadata}: the split column puts one bag's slides/samples/patient in "
            f"several splits (a leak between train and validation): {_few(conflicts)}"
        )
    if len(unassigned) == len(items):
        cols = [c for c in lookup if lookup[c]]
        shown = "; ".join(f"{c} like {_few(list(lookup[c]), 2)}" for c in cols)
        raise TrainingDataError(
            f"metadata {cfg.metadata}: its split column names none of the {len(items)} matched "
            f"items (metadata has {shown or 'no ids with a split value'}; items' patients look "
            f"like {_few([it.patient_id for it in items], 2)}): fix the ids or drop --metadata"
        )
    note = ""
    if unassigned:
        note = f" ({len(unassigned)} items not in it → train: {_few(unassigned, 3)})"
    return f"metadata column 'split'{note}"


def assign_splits(items, cfg: TrainConfig) -> str:
    """Set each item's ``split`` (train, val, test); return how the split was made, in words."""
    meta = read_metadata(cfg.metadata) if cfg.metadata else None
    if meta is not None and "split" in meta.columns:
        return _from_metadata(items, cfg, meta)
    frac = DEFAULT_VAL_FRACTION if cfg.val_fraction is None else cfg.val_fraction
    if not 0 <= frac < 1:
        raise TrainingDataError(f"--val-fraction must be in [0, 1), got {frac}")
    patients = sorted({it.patient_id for it in items})
    if frac == 0:
        n_val, how = 0, "none (--val-fraction 0)"
    elif len(patients) <= 2:
        n_val, how = 0, f"none (only {len(patients)} patient(s))"
    else:
        n_val = max(1, round(frac * len(patients)))
        how = f"random, {n_val} of {len(patients)} patients to validation (fraction {frac})"
    rng = np.random.default_rng(cfg.seed)
    val = set(rng.permutation(patients)[:n_val].tolist())
    for it in items:
        it.split = "val" if it.patient_id in val else "train"
    return how
