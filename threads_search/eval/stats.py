"""Uncertainty and score helpers that need no index: bootstrap resampling (by item or by group,
e.g. patient) with percentile intervals, paired differences between two models scored on the
same resamples, classification scores from predicted probabilities and the concordance index
(lifelines) of a risk score.

Pairing: :func:`bootstrap_indices` is deterministic from ``seed``, so two models scored with the
same seed see the same resamples and the interval of their difference is a paired bootstrap
interval (:func:`paired_interval`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from threads_search.errors import InputError
from threads_search.eval._common import macro_auc

LEVEL = 0.95  # interval coverage


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, groups=None) -> list[np.ndarray]:
    """``n_boot`` resamples of the row numbers ``0..n-1`` drawn with replacement; with
    ``groups [n]`` (e.g. patient ids) whole groups are drawn, every row of a drawn group kept
    (cluster bootstrap). Deterministic from ``seed``."""
    rng = np.random.default_rng([seed, 17])
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if n else []
    out = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        out.append(np.concatenate([members[g] for g in pick]))
    return out


def bootstrap(
    score: Callable[[np.ndarray], float], resamples: list[np.ndarray], rows
) -> dict[str, object]:
    """``score`` (row numbers → a number) on ``rows`` (an int array, or a count ``n`` for
    ``0..n-1``) and on each resample. Returns ``value``, ``lo``/``hi`` (percentile interval at
    ``LEVEL``; NaN resamples ignored) and ``samples`` (the resampled values, for
    :func:`paired_interval`)."""
    rows = np.arange(rows) if np.isscalar(rows) else np.asarray(rows)
    value = float(score(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = np.array([score(idx) for idx in resamples], np.float64)
    lo, hi = interval(samples)
    return {"value": value, "lo": lo, "hi": hi, "samples": samples}


def interval(samples: np.ndarray) -> tuple[float, float]:
    """Percentile interval at ``LEVEL`` of the finite ``samples`` (NaN, NaN when none)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = (1 - LEVEL) / 2 * 100
    return float(np.percentile(s, a)), float(np.percentile(s, 100 - a))


def paired_interval(a: dict, b: dict) -> dict[str, float]:
    """Difference ``a - b`` of two :func:`bootstrap` results computed on the same resamples:
    ``diff`` and its paired percentile interval ``lo``/``hi``."""
    lo, hi = interval(np.asarray(a["samples"]) - np.asarray(b["samples"]))
    return {"diff": float(a["value"] - b["value"]), "lo": lo, "hi": hi}


def class_scores(y_true, proba, classes) -> dict[str, float]:
    """``balanced_accuracy``, ``macro_auc`` (one-vs-rest, see ``_common.macro_auc``) and
    ``macro_f1`` of class probabilities ``proba [N, C]`` (columns in ``classes`` order; the
    prediction is the most probable class)."""
    y = np.asarray(y_true)
    p = np.asarray(proba, np.float64)
    classes = np.asarray(classes)
    pred = classes[p.argmax(axis=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "macro_auc": macro_auc(y, p, classes),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        }


def concordance(time, risk, event) -> float:
    """Harrell's concordance index (lifelines) of ``risk`` (higher = earlier event) for
    survival ``time`` (any unit) and ``event`` (1 = event observed, 0 = censored); 0.5 is
    chance. NaN when no pair is comparable (e.g. no event)."""
    from lifelines.utils import concordance_index

    t = np.asarray(time, np.float64)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, np.float64)
    if len(t) != len(r) or len(e) != len(r):
        raise InputError(f"time, risk and event differ in length ({len(t)}, {len(r)}, {len(e)})")
    if not e.any() or len(t) < 2:
        return float("nan")
    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:  # no admissible pair
        return float("nan")
