"""Training data: patch-feature bags joined to RNA and/or DNA profiles through the pairs table.

Each item is one bag (a patient's slides by default, or one slide with ``bag_by="slide"``) with
the RNA sample and/or DNA sample paired to it. Items with only RNA or only DNA are kept: the loss
is computed per available modality.

Slides with features are those the indexer takes from the same FEATURES_DIR (one
reconciliation, ``threads_search.features.reconcile``: h5 files without a status row adopted,
unusable files and rows left out and reported), read through ``h5_path``. What matched and
what did not is counted in ``TrainingData.report`` (see ``trainer.matching``).
Training is refused (:class:`TrainingDataError`) with fewer than ``cfg.min_train_items`` matched
training items (default 8), or with a modality given (``--rna``/``--dna``) that fewer than 2
training items carry: InfoNCE contrasts at least 2 items of a modality, so that encoder could
not learn. With ``--balance-by``/``--augment-by`` each item also carries its value of that
patient-level metadata column (``Item.groups``, ``report["groups"]``; see ``trainer.balance``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.features.extract import h5_path
from threads_search.features.h5io import read_features, read_views
from threads_search.features.reconcile import FeatureSources, feature_sources
from threads_search.molecular import RnaNormalizer, multi_hot
from threads_search.molecular.dna import read_dna
from threads_search.molecular.rna import read_rna_matrix
from threads_search.molecular.tables import read_pairs
from trainer.balance import assign_groups, remainder_report
from trainer.config import TrainConfig
from trainer.errors import TrainingDataError
from trainer.matching import count_items, format_report, match_report
from trainer.splits import assign_splits

__all__ = ["Item", "TrainingData", "TrainingDataError", "collate", "load_training_data"]


def _few(ids, n: int = 5) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:n]) + (f" … ({len(ids)} in all)" if len(ids) > n else "")


@dataclass
class Item:
    """One training bag: ``slides`` (slide ids), molecular samples (None where absent)."""

    key: str
    patient_id: str
    slides: list[str]
    rna: str | None
    dna: str | None
    split: str = "train"
    # column → value for the --balance-by/--augment-by columns (trainer.balance.assign_groups)
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainingData:
    items: list[Item]
    bags: dict[str, np.ndarray] = field(repr=False)  # slide_id -> float32 [N, D]
    rna: dict[str, np.ndarray] = field(repr=False)  # sample_id -> z-scored float32 [G]
    dna: dict[str, np.ndarray] = field(repr=False)  # sample_id -> multi-hot float32 [P]
    normalizer: RnaNormalizer | None
    genes_dna: list[str] | None
    patch_encoder: dict
    report: dict = field(default_factory=dict)  # matching report (trainer.matching), JSON-ready
    # slide_id -> float32 [V, N, D]: stain views (features --stain-views), training slides only
    views: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def bag(self, item: Item, rng: np.random.Generator | None = None, p: float = 0.0):
        """float32 ``[N, D]``: the item's slides' features; with ``rng`` each slide that has
        stain views is swapped, with probability ``p``, for one of them drawn uniformly."""
        parts = [self._slide(s, rng, p) for s in item.slides]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _slide(self, sid: str, rng, p: float) -> np.ndarray:
        views = self.views.get(sid)
        if rng is None or views is None or p <= 0 or rng.random() >= p:
            return self.bags[sid]
        return views[rng.integers(len(views))]


def _features_info(features_dir: Path) -> tuple[dict, FeatureSources]:
    """The patch-encoder description (with the folder's stain normalisation, ``stain``, when it
    had one) and the folder's slides reconciled as the indexer does
    (``threads_search.features.reconcile``: ``sources`` with usable features, ``adopted`` h5
    files without a status row, ``problems`` with reasons, ``failed`` at the features stage)."""
    cfg_path = features_dir / "config.json"
    if not cfg_path.exists():
        raise TrainingDataError(f"{features_dir} is not a FEATURES_DIR: no config.json")
    cfg = json.loads(cfg_path.read_text())
    found = feature_sources(features_dir)
    grid = cfg.get("segment", {}).get("grid", {})
    pe = {
        "name": cfg.get("patch_encoder"),
        "dim": (cfg.get("encoder_spec") or {}).get("dim") or cfg.get("feature_dim"),
        "patch_size": grid.get("patch_size", 512),
        "target_mpp": grid.get("target_mpp", 0.5),
    }
    stain = cfg.get("stain")  # the model remembers it; absent (older folders) = none
    if isinstance(stain, dict) and stain.get("method", "none") != "none":
        pe["stain"] = stain
    return pe, found


def _load_views(features_dir: Path, slide_ids: list[str], bags: dict) -> dict[str, np.ndarray]:
    """The stain views (``features --stain-views``) of ``slide_ids`` that have them."""
    views = {}
    for sid in slide_ids:
        v = read_views(h5_path(features_dir, sid))
        if v is not None and v.shape[1:] == bags[sid].shape:
            views[sid] = np.ascontiguousarray(v, dtype=np.float32)
    return views


def _load_bags(features_dir: Path, slide_ids: list[str], pe: dict) -> dict[str, np.ndarray]:
    bags: dict[str, np.ndarray] = {}
    encoders: dict[str, list[str]] = {}
    for sid in slide_ids:
        ff = read_features(h5_path(features_dir, sid))
        name = ff.attrs.get("encoder", pe["name"])
        encoders.setdefault(f"{name} ({ff.features.shape[1]}-d)", []).append(sid)
        bags[sid] = np.ascontiguousarray(ff.features, dtype=np.float32)
    if len(encoders) > 1:
        detail = "; ".join(f"{k}: {_few(v, 3)}" for k, v in encoders.items())
        raise TrainingDataError(f"features of mixed encoders in {features_dir}: {detail}")
    dim = next(iter(bags.values())).shape[1]
    if pe["dim"] is None:
        pe["dim"] = dim
    elif pe["dim"] != dim:
        raise TrainingDataError(f"{features_dir}: config says {pe['dim']}-d, h5 hold {dim}-d")
    return bags


def _check_counts(cfg: TrainConfig, report: dict) -> None:
    """Refuse a training set too small to train on, with the report and the likely cause."""
    it = report["items"]
    problems = []
    if it["train"] < cfg.min_train_items:
        problems.append(
            f"only {it['train']} matched training item(s); at least {cfg.min_train_items} are "
            "needed (--min-train-items)"
        )
    for mod, given in (("rna", cfg.rna), ("dna", cfg.dna)):
        if given and it[f"train_{mod}"] < 2:
            problems.append(
                f"--{mod} given but only {it[f'train_{mod}']} training item(s) have a paired "
                f"{mod.upper()} profile: InfoNCE needs at least 2 to train the {mod.upper()} "
                f"encoder (fix the pairs, or drop --{mod})"
            )
    if problems:
        cause = (
            "likely cause: ids that do not match between the pairs, the features and the "
            "profiles (see the hints)"
            if report["hints"] or report["pairs_matched"] < report["pairs"] / 2
            else "likely cause: the cohort or its training split is too small"
        )
        lines = "".join(f"\n  - {p}" for p in problems)
        raise TrainingDataError(f"cannot train:{lines}\n{cause}.\n{format_report(report)}")


def _assign_groups(cfg: TrainConfig, items: list[Item], report: dict) -> None:
    """Each item's value of the --balance-by/--augment-by columns (``item.groups``); what was
    found goes to ``report["groups"]`` (per value its train/val items, the missing ones, and
    for --balance-by the values merged into remainder batches)."""
    asked = [(cfg.balance_by, "--balance-by"), (cfg.augment_by, "--augment-by")]
    for column, option in asked:
        if column and column in report.get("groups", {}):
            report["groups"][column]["option"] += f", {option}"
        if not column or column in report.get("groups", {}):
            continue
        part = assign_groups(items, cfg.metadata, column, option)
        if column == cfg.balance_by:
            part["remainder"] = remainder_report(part)
        report.setdefault("groups", {})[column] = part


def load_training_data(cfg: TrainConfig) -> TrainingData:
    """Read features, pairs and profiles; match them (``report``); split; refuse a training set
    below the minimum; fit RNA normalisation on the training split."""
    if not cfg.rna and not cfg.dna:
        raise TrainingDataError("give --rna and/or --dna: there is nothing to align slides to")
    fdir = Path(cfg.features)
    pe, found = _features_info(fdir)
    done = sorted(found.sources)
    pairs = read_pairs(cfg.pairs, pair_by=cfg.pair_by)
    rna_m = read_rna_matrix(cfg.rna, units=cfg.rna_units) if cfg.rna else None
    dna_m = read_dna(cfg.dna) if cfg.dna else None
    rna_ids = set(rna_m.samples) if rna_m is not None else set()
    dna_ids = set(dna_m.index.astype(str)) if dna_m is not None else set()
    unusable = found.unusable()
    report = match_report(
        pairs, done, found.failed, rna_ids, dna_ids, str(fdir), found.adopted, unusable
    )
    ok = pairs[pairs.slide_id.isin(set(done)) & pairs.sample_id.isin(rna_ids | dna_ids)]
    if ok.empty:
        raise TrainingDataError(
            "no pairs matched: no pair links a slide with features to a sample with a profile.\n"
            + format_report(report)
        )
    ok = ok.assign(patient_id=ok.patient_id.fillna(ok.sample_id))
    key_col = "patient_id" if cfg.bag_by == "patient" else "slide_id"
    items = []
    for key, grp in ok.groupby(key_col, sort=True):
        samples = sorted(grp.sample_id.unique())
        rna = next((s for s in samples if s in rna_ids), None)
        dna = next((s for s in samples if s in dna_ids), None)
        items.append(
            Item(str(key), str(grp.patient_id.iloc[0]), sorted(grp.slide_id.unique()), rna, dna)
        )
    report["split"] = assign_splits(items, cfg)
    report["bag_by"] = cfg.bag_by
    report["items"] = count_items(items)
    _check_counts(cfg, report)
    items = [it for it in items if it.split in ("train", "val")]
    _assign_groups(cfg, items, report)
    train = [it for it in items if it.split == "train"]
    bags = _load_bags(fdir, sorted({s for it in items for s in it.slides}), pe)
    views = {}
    if cfg.stain_view_p > 0:
        train_slides = sorted({s for it in train for s in it.slides})
        views = _load_views(fdir, train_slides, bags)
        report["stain_views"] = {
            "training_slides": len(train_slides),
            "with_views": len(views),
            "views_per_slide": max((len(v) for v in views.values()), default=0),
            "p": cfg.stain_view_p,
        }
    normalizer, rna = None, {}
    if rna_m is not None:
        log = rna_m.log_values()
        train_ids = sorted({it.rna for it in train if it.rna})
        if not train_ids or log.shape[1] == 0:
            raise TrainingDataError("gene vocabulary empty: no RNA profile in the training split")
        normalizer = RnaNormalizer.fit(log.loc[train_ids], units=cfg.rna_units)
        used = sorted({it.rna for it in items if it.rna})
        z = normalizer.transform(log.loc[used], "RNA matrix")
        rna = dict(zip(used, z.astype(np.float32), strict=True))
    genes_dna, dna = None, {}
    if dna_m is not None:
        train_ids = sorted({it.dna for it in train if it.dna})
        panel = dna_m.loc[train_ids]
        genes_dna = sorted(str(g) for g in panel.columns[panel.to_numpy().any(axis=0)])
        if not genes_dna:
            raise TrainingDataError("gene vocabulary empty: no mutated gene in the training DNA")
        used = sorted({it.dna for it in items if it.dna})
        x = multi_hot(dna_m.loc[used], genes_dna, "DNA")
        dna = dict(zip(used, x, strict=True))
    return TrainingData(items, bags, rna, dna, normalizer, genes_dna, pe, report, views)


def collate(bags: list[np.ndarray], max_patches: int, rng: np.random.Generator | None):
    """Pad bags to one tensor. ``rng`` samples up to ``max_patches`` per bag (None: all).
    Returns features float32 ``[B, N, D]`` and mask bool ``[B, N]``."""
    import torch

    chosen = []
    for bag in bags:
        if rng is not None and len(bag) > max_patches:
            bag = bag[np.sort(rng.choice(len(bag), max_patches, replace=False))]
        chosen.append(bag)
    n = max(len(b) for b in chosen)
    feats = np.zeros((len(chosen), n, chosen[0].shape[1]), np.float32)
    mask = np.zeros((len(chosen), n), bool)
    for i, b in enumerate(chosen):
        feats[i, : len(b)] = b
        mask[i, : len(b)] = True
    return torch.from_numpy(feats), torch.from_numpy(mask)
