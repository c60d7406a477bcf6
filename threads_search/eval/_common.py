"""Input checks and helpers shared by the evaluation metrics (numpy only). Bad data given to a
metric raises ``InputError``, a bad option ``ConfigError`` (both ``ValueError``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from threads_search.errors import ConfigError, InputError


def as_matrix(x, name: str) -> np.ndarray:
    """``x`` as a non-empty, finite float64 ``[N, D]`` array; ``ValueError`` naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D [N, D], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise InputError(f"{name} has non-finite values (first at row {bad})")
    return arr


def as_labels(y, n: int, name: str) -> np.ndarray:
    """``y`` as a 1-D array of length ``n`` without missing values."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise InputError(f"{name} has {len(arr)} entries but the embeddings have {n} rows")
    if pd.isna(arr).any():
        bad = int(np.nonzero(pd.isna(arr))[0][0])
        raise InputError(f"{name} has missing values (first at position {bad})")
    return arr


def encode(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N] int64, uniques [L])``: dense integer codes of the labels, uniques sorted."""
    uniques, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), uniques


def as_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Positive integer cut-offs, in the given order, duplicates removed."""
    out = tuple(dict.fromkeys(int(k) for k in ks))
    if not out:
        raise ConfigError("ks is empty")
    if min(out) < 1:
        raise ConfigError(f"every k must be >= 1, got {out}")
    return out


def macro_auc(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that are scorable.

    ``scores [N, C]``: column c scores ``classes[c]``. With two classes this is the usual binary
    AUC of ``classes[1]`` (scores[:, 1]). Otherwise, each class with both positives and negatives
    in ``y_true`` contributes its one-vs-rest AUC and the unweighted mean is returned (equal to
    scikit-learn's ``multi_class="ovr", average="macro"`` when every class occurs). NaN when no
    class is scorable (e.g. a single class in ``y_true``).
    """
    if len(classes) == 2:
        pos = y_true == classes[1]
        if pos.all() or not pos.any():
            return float("nan")
        return float(roc_auc_score(pos, scores[:, 1]))
    aucs = []
    for c, cls in enumerate(classes):
        pos = y_true == cls
        if pos.any() and not pos.all():
            aucs.append(roc_auc_score(pos, scores[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices ``[B, k]`` of the k largest entries of each row of ``scores [B, N]``, best
    first; exact ties go to the lower column, as with a stable sort of ``-scores`` (``k <= N``).

    Linear in N (partition, not a full sort): the k-th value is found per row, every entry above
    it is kept and ties at it are filled in column order.
    """
    b, n = scores.shape
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # [B, 1] k-th largest
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= need))
    cols = np.nonzero(keep)[1].reshape(b, k)  # ascending column order within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)
