"""Label tasks scored by a linear probe: ``classification`` (out-of-fold probabilities of
:func:`threads_search.eval.linear_probe`: Patho-Bench's C = 0.5 and balanced class weights, on
features z-scored with the training rows' statistics, so that embeddings of different scales
(L2-normalised THREADS vectors, raw mean-pooled patch features) meet the same penalty;
balanced accuracy, macro AUROC and macro F1 with patient-bootstrap intervals) and ``fewshot``
(:func:`threads_search.eval.few_shot_curve` on the first fold: k = 1, 2, 4, 8, 16 per class drawn
from its training patients, scored on its test patients; mean and SD over draws). Every model
uses the same folds and draws."""

from __future__ import annotations

import numpy as np
import pandas as pd

from threads_search.eval import few_shot_curve, linear_probe
from threads_search.eval.stats import class_scores
from threads_search.evaluation.compare import compare
from threads_search.evaluation.tasks import tested_rows

METRICS = ["balanced_accuracy", "macro_auc", "macro_f1"]
SHOTS = (1, 2, 4, 8, 16)


def out_of_fold(x: np.ndarray, y: np.ndarray, folds, classes: np.ndarray) -> np.ndarray:
    """Probabilities ``[N, C]`` (columns in ``classes`` order) of each row from the probe
    trained on the other folds; a class absent from a training fold gets 0."""
    proba = np.zeros((len(y), len(classes)))
    for tr, te in folds:
        seen = np.isin(y[te], np.unique(y[tr]))
        if not seen.any():
            continue
        res = linear_probe(
            x[tr], y[tr], x[te[seen]], y[te[seen]], standardize=True, return_predictions=True
        )
        cols = np.searchsorted(classes, res["classes"])
        proba[np.ix_(te[seen], cols)] = res["probabilities"]
    return proba


def classification(models: dict, y, groups, folds, n_boot: int, seed: int, progress=None) -> dict:
    """Linear-probe scores of every model (``models``: name → ``[N, E]`` of the labelled rows)
    with intervals and paired differences, plus THREADS' confusion matrix."""
    y = np.asarray(y).astype(str)
    classes = np.unique(y)
    proba = {}
    for name, x in models.items():
        proba[name] = out_of_fold(x, y, folds, classes)
        if progress:
            progress(1)
    rows = tested_rows(folds)
    res = compare(
        lambda m, r: class_scores(y[r], proba[m][r], classes),
        list(models),
        METRICS,
        rows,
        n_boot,
        seed,
        groups,
    )
    first = next(iter(models))
    pred = classes[proba[first].argmax(axis=1)]
    cm = pd.crosstab(
        pd.Categorical(y[rows], classes), pd.Categorical(pred[rows], classes), dropna=False
    )
    res["confusion"] = {"model": first, "classes": classes.tolist(), "matrix": cm.values.tolist()}
    res["n_classes"] = int(len(classes))
    return res


def fewshot(models: dict, y, folds, n_draws: int, seed: int, progress=None) -> dict:
    """Few-shot balanced accuracy per model and k: ``curves`` (model → rows of shots,
    balanced_accuracy_mean, balanced_accuracy_std, auc_mean, auc_std; first fold) and
    ``metrics`` (``k=..`` → model → value) for the side-by-side table (no interval: the SD
    column is the spread over draws)."""
    y = np.asarray(y).astype(str)
    largest = pd.Series(y).value_counts().min()
    shots = tuple(k for k in SHOTS if k <= max(1, largest)) or (1,)
    curves, metrics = {}, {}
    for name, x in models.items():
        parts = [
            few_shot_curve(
                x[tr],
                y[tr],
                x[te],
                y[te],
                shots=shots,
                n_draws=n_draws,
                seed=seed,
                standardize=True,
            )
            for tr, te in folds[:1]
        ]
        mean = pd.concat(parts).groupby("shots", as_index=False).mean(numeric_only=True)
        curves[name] = mean.to_dict("records")
        for row in curves[name]:
            metrics.setdefault(f"k={int(row['shots'])}", {})[name] = {
                "value": row["balanced_accuracy_mean"],
                "sd": row["balanced_accuracy_std"],
            }
        if progress:
            progress(1)
    return {"curves": curves, "metrics": metrics, "shots": list(shots), "n_draws": n_draws}
