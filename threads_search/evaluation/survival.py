"""``survival`` tasks: a penalised Cox proportional-hazards model (lifelines ``CoxPHFitter``,
ridge penalty) on an embedding, cross-validated.

In each outer fold: the training rows' features are z-scored and reduced to at most
``N_COMPONENTS`` principal components (training statistics only; a 1024-d embedding has far more
dimensions than a cohort has events), the penalty is chosen from ``PENALIZERS`` by the mean
concordance of an inner ``INNER_FOLDS``-fold cross-validation on the training rows, and the
model refit on all of them predicts the test rows' risk (log partial hazard). Risks are turned
into within-fold ranks in [0, 1] before the folds are pooled (each fold's model has its own
scale). Concordance (Harrell's C, :func:`threads_search.eval.stats.concordance`) of the pooled
risks, with a patient-bootstrap interval; the Kaplan–Meier split puts each test row in the high-
or low-risk group by its fold's median predicted risk.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from threads_search.errors import InputError
from threads_search.eval.stats import concordance
from threads_search.evaluation.compare import compare
from threads_search.evaluation.tasks import tested_rows

PENALIZERS = (0.01, 0.1, 1.0, 10.0, 100.0)
INNER_FOLDS = 3
N_COMPONENTS = 16


def check_outcome(name: str, time, event, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """``(time float [N], event bool [N])`` checked: numeric non-negative times, 0/1 or boolean
    events, and at least ``n_folds`` events (``InputError`` naming the task otherwise)."""
    t = pd.to_numeric(pd.Series(time), errors="coerce").to_numpy(np.float64)
    ev = pd.Series(event)
    if ev.dtype == object:
        ev = (
            ev.astype(str)
            .str.lower()
            .map({"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0})
        )
    e = pd.to_numeric(ev, errors="coerce").to_numpy(np.float64)
    if np.isnan(t).any() or (t < 0).any():
        raise InputError(f"task {name!r}: survival times must be numbers >= 0")
    if np.isnan(e).any() or not np.isin(e, (0, 1)).all():
        raise InputError(f"task {name!r}: the event column must hold 0/1 or true/false")
    n_ev = int(e.sum())
    if n_ev == 0:
        raise InputError(f"task {name!r}: no events among the {len(e)} joined slides")
    if n_ev < n_folds:
        raise InputError(
            f"task {name!r}: {n_ev} event(s) among {len(e)} slides, fewer than the {n_folds} "
            "folds; lower --folds"
        )
    return t, e.astype(bool)


def _frame(z: np.ndarray, t=None, e=None) -> pd.DataFrame:
    df = pd.DataFrame(z, columns=[f"c{i}" for i in range(z.shape[1])])
    if t is not None:
        df["T"], df["E"] = t, e.astype(int)
    return df


def _reduce(x_train, x_test, n_components: int):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(n_components, x_train.shape[1], len(x_train) - 2))
    red = make_pipeline(StandardScaler(), PCA(k, random_state=0)).fit(x_train)
    return red.transform(x_train), red.transform(x_test)


def _fit_predict(z_tr, t, e, z_te, penalizer: float) -> np.ndarray:
    from lifelines import CoxPHFitter

    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(_frame(z_tr, t, e), "T", "E")
        return np.asarray(cph.predict_log_partial_hazard(_frame(z_te)), np.float64)


def cox_risk(x_train, t, e, x_test, seed: int = 0, n_components: int = N_COMPONENTS):
    """``(risk [n_test], penalizer)``: the Cox model of the module docstring fit on the
    training rows (penalty by inner cross-validation) and applied to ``x_test``."""
    from lifelines.exceptions import ConvergenceError
    from sklearn.model_selection import KFold

    z_tr, z_te = _reduce(np.asarray(x_train), np.asarray(x_test), n_components)
    best, best_c = PENALIZERS[-1], -np.inf
    inner = KFold(INNER_FOLDS, shuffle=True, random_state=seed)
    for p in PENALIZERS:
        cs = []
        for a, b in inner.split(z_tr):
            if e[a].sum() < 2 or not e[b].any():
                continue
            try:
                cs.append(concordance(t[b], _fit_predict(z_tr[a], t[a], e[a], z_tr[b], p), e[b]))
            except (ConvergenceError, np.linalg.LinAlgError, ValueError):  # this penalty fails
                cs.append(np.nan)
        c = np.nanmean(cs) if cs and not np.isnan(cs).all() else -np.inf
        if c > best_c:
            best, best_c = p, c
    return _fit_predict(z_tr, t, e, z_te, best), best


def survival(models: dict, time, event, groups, folds, n_boot: int, seed: int, progress=None):
    """Cross-validated concordance of every model with intervals and paired differences, the
    chosen penalties, and THREADS' Kaplan–Meier split (``km``: time, event, high)."""
    t, e = np.asarray(time, np.float64), np.asarray(event, bool)
    ranks, high, penalties = {}, {}, {}
    for name, x in models.items():
        r = np.full(len(t), np.nan)
        h = np.zeros(len(t), bool)
        penalties[name] = []
        for tr, te in folds:
            risk, p = cox_risk(x[tr], t[tr], e[tr], x[te], seed)
            penalties[name].append(p)
            r[te] = pd.Series(risk).rank(pct=True).to_numpy()
            h[te] = risk > np.median(risk)
        ranks[name], high[name] = r, h
        if progress:
            progress(1)
    rows = tested_rows(folds)
    res = compare(
        lambda m, r: {"c_index": concordance(t[r], ranks[m][r], e[r])},
        list(models),
        ["c_index"],
        rows,
        n_boot,
        seed,
        groups,
    )
    first = next(iter(models))
    tt, ee, hh = t[rows], e[rows], high[first][rows]
    res["km"] = {"model": first, "time": tt.tolist(), "event": ee.astype(int).tolist()}
    res["km"]["high"] = hh.astype(int).tolist()
    res["km"]["logrank_p"] = _logrank(tt, ee, hh)
    res["penalizers"] = penalties
    res["n_events"] = int(e.sum())
    return res


def _logrank(t, e, high) -> float | None:
    from lifelines.statistics import logrank_test

    if high.all() or not high.any():
        return None
    with warnings.catch_warnings():  # lifelines' pandas deprecation noise
        warnings.simplefilter("ignore")
        return float(logrank_test(t[high], t[~high], e[high], e[~high]).p_value)
