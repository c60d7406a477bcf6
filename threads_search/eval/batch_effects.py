"""How visible a batch (hospital site, scanner, lab) is in an embedding, beside the labels it
should encode: :func:`batch_effect_report`.

Two measures per column (the batch column first, then each label column):

- **linear probe**: balanced accuracy of out-of-fold predictions of a 5-fold stratified
  cross-validation (fewer folds when a value has fewer than 5 items; grouped by patient when a
  ``patient_id`` column exists, so no patient is in a training and a test fold), each fold
  scored by :func:`~threads_search.eval.probe.linear_probe` (logistic regression, C = 0.5,
  balanced class weights, features z-scored on the training part). Chance: ``1 / n_values``.
- **kNN majority**: for each item, the share of its ``k`` nearest neighbours (cosine; the item
  itself and, when a ``patient_id`` column exists, every item of its patient left out) with the
  same value, averaged over items. Chance: the sum of squared value frequencies (the share a
  random neighbour would reach); ``lift`` = share − chance (0: the embedding ignores the
  column; 1 − chance: neighbours always share it).

Items with a missing value of a column (None / NaN) are left out of that column and counted;
values held by fewer than 2 items (or, with ``patient_id``, fewer than 2 patients) cannot be
cross-validated nor have a neighbour of their kind and are left out too (listed). A column left
with fewer than 2 values is reported as skipped, with the reason.

A ``warning`` is set when the batch column is clearly predictable (probe balanced accuracy at
least ``VISIBLE_MARGIN`` above chance) and more predictable than every label column (probe
above each label's); without label columns, when it is clearly predictable at all.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from threads_search.errors import ConfigError, InputError
from threads_search.eval._common import top_k_stable
from threads_search.eval.probe import linear_probe

VISIBLE_MARGIN = 0.1  # probe balanced accuracy above chance that counts as "predictable"
FOLDS = 5
_BLOCK = 1024  # query rows per similarity block (memory: block x N float32)


def batch_effect_report(
    embeddings,
    frame: pd.DataFrame,
    batch_column: str = "site",
    label_columns=None,
    k: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Report how well ``embeddings [N, E]`` predict ``batch_column`` and each of
    ``label_columns`` of ``frame`` (one row per embedding, same order); see the module
    docstring. Rows whose embedding is not finite are left out (``n_excluded_embeddings``).

    Returns a JSON-ready dict: ``batch_column``, ``label_columns``, ``k``, ``n_items``,
    ``n_excluded_embeddings``, ``exclude_same`` ("patient_id" or None), ``columns`` (column
    name → a dict, batch first: ``column``, ``role`` batch|label, ``status`` ok|skipped,
    ``reason`` (skipped only), ``n_used``, ``n_missing``, ``rare_values`` (left out, < 2
    items/patients), ``n_values``, ``probe_balanced_accuracy``, ``probe_chance``,
    ``probe_folds``, ``knn_same_share``, ``knn_chance``, ``knn_lift``, ``k_used``), and
    ``warning`` (a sentence, or None). Unavailable numbers are None."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"embeddings must be a non-empty [N, E] array, got shape {x.shape}")
    if len(frame) != len(x):
        raise InputError(f"frame has {len(frame)} rows but there are {len(x)} embeddings")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    labels = [label_columns] if isinstance(label_columns, str) else list(label_columns or [])
    columns = [batch_column] + [c for c in labels if c != batch_column]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"no column {', '.join(map(repr, missing))} in the metadata (columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float32)
    groups = None
    if "patient_id" in frame.columns:  # a row without a patient is its own group
        pid = frame["patient_id"].astype(object)
        own = pd.Series([f"\0row{i}" for i in range(len(x))], index=frame.index)
        groups = pid.where(pid.notna(), own).astype(str).to_numpy()
    rows = [
        _column(
            unit, frame[c], finite, groups, k, seed, "batch" if c == batch_column else "label", c
        )
        for c in columns
    ]
    return {
        "batch_column": batch_column,
        "label_columns": columns[1:],
        "k": int(k),
        "n_items": int(len(x)),
        "n_excluded_embeddings": int((~finite).sum()),
        "exclude_same": "patient_id" if groups is not None else None,
        "columns": {r["column"]: r for r in rows},
        "warning": _warning(rows, k),
    }


def _column(unit, values: pd.Series, finite, groups, k, seed, role, name) -> dict:
    """The report row of one column (see :func:`batch_effect_report`)."""
    present = values.notna().to_numpy() & finite
    row: dict[str, Any] = {
        "column": name,
        "role": role,
        "status": "ok",
        "reason": None,
        "n_used": 0,
        "n_missing": int(values.isna().sum()),
        "rare_values": [],
        "n_values": 0,
        "probe_balanced_accuracy": None,
        "probe_chance": None,
        "probe_folds": 0,
        "knn_same_share": None,
        "knn_chance": None,
        "knn_lift": None,
        "k_used": 0,
    }
    y = values.astype(str).to_numpy()
    g = groups if groups is not None else np.arange(len(y)).astype(str)
    support = pd.Series(g[present]).groupby(y[present]).nunique()
    rare = sorted(support.index[support < 2].tolist())
    row["rare_values"] = rare
    keep = present & ~np.isin(y, rare)
    idx = np.flatnonzero(keep)
    row["n_used"], row["n_values"] = int(idx.size), int(support.size - len(rare))
    if row["n_values"] < 2:
        unit_name = "patients" if groups is not None else "items"
        if support.size == 0:
            why = "every value is missing"
        elif support.size == 1:
            why = f"a single value ({support.index[0]!r})"
        else:
            why = f"{row['n_values']} of its {support.size} values have >= 2 {unit_name}"
        row.update(status="skipped", reason=f"needs >= 2 values with >= 2 {unit_name}: {why}")
        return row
    yk, gk = y[idx], g[idx]
    row.update(_probe(unit[idx].astype(np.float64), yk, gk, groups is not None, seed))
    row.update(_knn(unit[idx], yk, gk, k))
    return row


def _probe(x, y, groups, grouped: bool, seed: int) -> dict:
    """Out-of-fold balanced accuracy of the linear probe (items of a value unseen in a fold's
    training part count as wrong)."""
    classes, codes = np.unique(y, return_inverse=True)
    support = pd.Series(groups).groupby(codes).nunique().min()
    folds = int(min(FOLDS, support))
    if grouped:
        split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, codes, groups)
    else:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, codes)
    pred = np.full(len(codes), -1)  # -1: never predicted (a value unseen in training)
    try:
        for tr, te in split:
            seen = np.isin(codes[te], codes[tr])
            if seen.any():
                res = linear_probe(
                    x[tr],
                    codes[tr],
                    x[te[seen]],
                    codes[te[seen]],
                    standardize=True,
                    return_predictions=True,
                )
                pred[te[seen]] = res["predictions"]
    except InputError:  # a training fold with a single value (tiny columns)
        return {"probe_folds": folds}
    with warnings.catch_warnings():  # -1 is a "class" absent from y_true
        warnings.simplefilter("ignore", UserWarning)
        acc = float(balanced_accuracy_score(codes, pred))
    return {
        "probe_balanced_accuracy": acc,
        "probe_chance": 1.0 / len(classes),
        "probe_folds": folds,
    }


def _knn(unit, y, groups, k: int) -> dict:
    """Mean share of the k nearest neighbours (cosine; same group left out) with the same value."""
    n = len(y)
    _, codes = np.unique(y, return_inverse=True)
    _, gcodes = np.unique(groups, return_inverse=True)
    largest = np.bincount(gcodes).max()
    k_used = int(min(k, n - largest)) if n - largest > 0 else 0
    if k_used < 1:
        return {"k_used": 0}
    shares = np.empty(n)
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        sc = unit[b0:b1] @ unit.T  # [B, N] cosine
        same = gcodes[b0:b1, None] == gcodes[None, :]
        sc[same] = -np.inf  # the item itself and its patient
        top = top_k_stable(sc, k_used)
        shares[b0:b1] = (codes[top] == codes[b0:b1, None]).mean(axis=1)
    freq = np.bincount(codes) / n
    chance = float((freq**2).sum())
    share = float(shares.mean())
    return {
        "knn_same_share": share,
        "knn_chance": chance,
        "knn_lift": share - chance,
        "k_used": k_used,
    }


def column_note(row: dict) -> str:
    """What a report row (``batch_effect_report(...)["columns"][name]``) leaves out, in words:
    why it was skipped, items without a value, rare values left out (the first 5); ``""``."""
    rare = row["rare_values"]
    return "; ".join(
        x
        for x in (
            row["reason"],
            f"{row['n_missing']} missing" if row["n_missing"] else None,
            f"left out: {', '.join(map(str, rare[:5]))}" if rare else None,
        )
        if x
    )


def _warning(rows: list[dict], k: int) -> str | None:
    batch = rows[0]
    acc, chance = batch["probe_balanced_accuracy"], batch["probe_chance"]
    if batch["status"] != "ok" or acc is None or acc < chance + VISIBLE_MARGIN:
        return None
    labels = [r for r in rows[1:] if r["probe_balanced_accuracy"] is not None]
    if any(r["probe_balanced_accuracy"] >= acc for r in labels):
        return None
    name = batch["column"]
    text = f"{name} is predictable from the embeddings (linear probe balanced accuracy {acc:.2f}"
    if labels:
        best = max(labels, key=lambda r: r["probe_balanced_accuracy"])
        text = (
            f"{name} is more predictable from the embeddings than "
            f"{', '.join(r['column'] for r in labels)} (linear probe balanced accuracy "
            f"{acc:.2f} vs {best['probe_balanced_accuracy']:.2f} for {best['column']}"
        )
    text += f"; chance {chance:.2f})"
    if batch["knn_same_share"] is not None:
        text += (
            f"; {batch['knn_same_share']:.0%} of the {batch['k_used']} nearest neighbours share "
            f"the {name} (chance {batch['knn_chance']:.0%})"
        )
    return (
        text + f". Searches may find slides by {name} rather than by tissue: consider stain "
        "normalisation of the features or training balanced by this column."
    )
