"""Supervised evaluation of frozen embeddings: linear probe and few-shot curves (Patho-Bench
convention: L2-regularised logistic regression, C = 0.5, balanced class weights)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from threads_search.errors import ConfigError, InputError
from threads_search.eval._common import as_labels, as_matrix, macro_auc


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    C: float = 0.5,
    *,
    standardize: bool = False,
    max_iter: int = 10_000,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Fit logistic regression on ``train_x [N, D]`` / ``train_y [N]``, score ``test_x [M, D]``.

    The model is scikit-learn's ``LogisticRegression(C=C, class_weight="balanced", lbfgs,
    max_iter=max_iter, random_state=0)`` (multinomial for more than two classes), as in
    Patho-Bench. ``standardize=True`` first z-scores each feature with statistics of the
    training set only (off by default, as in Patho-Bench).

    Returns ``balanced_accuracy``, ``auc`` (binary ROC AUC of the second sorted class, or the
    macro mean of one-vs-rest AUCs over the classes present in ``test_y``; NaN when the test set
    holds a single class), ``weighted_f1``, ``n_train``, ``n_test``; with
    ``return_predictions`` also ``classes [C]``, ``predictions [M]``, ``probabilities [M, C]``.

    Raises ``ValueError`` on empty or mismatched inputs, fewer than two training classes, or
    test labels absent from the training labels.
    """
    xtr, ytr, xte, yte = _check_split(train_x, train_y, test_x, test_y)
    classes = np.unique(ytr)
    if len(classes) < 2:
        raise InputError(f"a linear probe needs >= 2 classes in train_y, got {classes.tolist()}")
    unseen = np.setdiff1d(np.unique(yte), classes)
    if unseen.size:
        raise InputError(f"test_y has labels absent from train_y: {unseen.tolist()}")
    if standardize:
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=0)
    clf.fit(xtr, ytr)
    proba = clf.predict_proba(xte)
    pred = clf.classes_[proba.argmax(axis=1)]
    out: dict[str, Any] = {
        "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
        "auc": macro_auc(yte, proba, clf.classes_),
        "weighted_f1": float(f1_score(yte, pred, average="weighted", zero_division=0)),
        "n_train": len(ytr),
        "n_test": len(yte),
    }
    if return_predictions:
        out.update(classes=clf.classes_, predictions=pred, probabilities=proba)
    return out


def _check_split(train_x, train_y, test_x, test_y):
    xtr = as_matrix(train_x, "train_x")
    xte = as_matrix(test_x, "test_x")
    if xtr.shape[1] != xte.shape[1]:
        raise InputError(f"train_x has D={xtr.shape[1]} but test_x has D={xte.shape[1]}")
    ytr = as_labels(train_y, len(xtr), "train_y")
    yte = as_labels(test_y, len(xte), "test_y")
    return xtr, ytr, xte, yte


def few_shot_curve(
    train_x,
    train_y,
    test_x,
    test_y,
    shots: Iterable[int] = (1, 2, 4, 8, 16),
    n_draws: int = 10,
    seed: int = 0,
    C: float = 0.5,
    *,
    standardize: bool = False,
) -> pd.DataFrame:
    """Linear-probe scores when training on only ``k`` samples per class, for each k in ``shots``.

    For every k and draw d, a training subset is drawn without replacement with
    ``np.random.default_rng([seed, k, d])`` (so a shot's draws do not depend on the other
    shots): ``k`` samples of each class of ``train_y``; a class with fewer than ``k`` samples
    contributes all it has. When no class has more than ``k`` samples every draw would be the
    same, so only one draw is run (``n_draws`` column = 1). The full test set is scored each
    time with :func:`linear_probe` (same ``C``, ``standardize``).

    Returns one row per shot: ``shots``, ``n_draws``, ``n_train`` (mean training size), and
    ``<metric>_mean`` / ``<metric>_std`` (population std over draws, ddof=0) for
    ``balanced_accuracy``, ``auc`` and ``weighted_f1``.
    """
    xtr, ytr, xte, yte = _check_split(train_x, train_y, test_x, test_y)
    shots = tuple(dict.fromkeys(int(k) for k in shots))
    if not shots or min(shots) < 1:
        raise ConfigError(f"shots must be a non-empty list of integers >= 1, got {shots}")
    if n_draws < 1:
        raise ConfigError(f"n_draws must be >= 1, got {n_draws}")
    classes, codes = np.unique(ytr, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"a few-shot curve needs >= 2 classes in train_y, got {classes.tolist()}")
    per_class = [np.nonzero(codes == c)[0] for c in range(len(classes))]
    largest = max(len(idx) for idx in per_class)
    metrics = ("balanced_accuracy", "auc", "weighted_f1")
    rows = []
    for k in shots:
        draws = n_draws if largest > k else 1
        scores = {m: [] for m in metrics}
        sizes = []
        for d in range(draws):
            rng = np.random.default_rng([seed, k, d])
            pick = np.concatenate(
                [rng.choice(idx, size=min(k, len(idx)), replace=False) for idx in per_class]
            )
            res = linear_probe(xtr[pick], ytr[pick], xte, yte, C=C, standardize=standardize)
            for m in metrics:
                scores[m].append(res[m])
            sizes.append(len(pick))
        row: dict[str, Any] = {"shots": k, "n_draws": draws, "n_train": float(np.mean(sizes))}
        for m in metrics:
            row[f"{m}_mean"] = float(np.mean(scores[m]))
            row[f"{m}_std"] = float(np.std(scores[m]))
        rows.append(row)
    return pd.DataFrame(rows)
