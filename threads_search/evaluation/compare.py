"""Side-by-side numbers of one task: each model's value with its bootstrap interval, and THREADS
minus each baseline with its paired interval (all models scored on the same resamples)."""

from __future__ import annotations

import numpy as np

from threads_search.eval.stats import bootstrap, bootstrap_indices, paired_interval
from threads_search.evaluation.baselines import THREADS


def compare(
    score_of, models: list[str], metrics: list[str], rows, n_boot: int, seed: int, groups=None
) -> dict:
    """``score_of(model, rows) -> {metric: value}`` on ``rows`` (the scored row numbers, e.g. the
    test rows of a train/test split) and on ``n_boot`` resamples of them (whole ``groups``, e.g.
    patients, when given: ``groups`` is indexed by row number); returns ``metrics`` (metric →
    model → value, lo, hi) and ``vs`` (metric → baseline → diff, lo, hi: THREADS minus the
    baseline, paired: every model sees the same resamples)."""
    rows = np.asarray(rows)
    g = None if groups is None else np.asarray(groups)[rows]
    resamples = [rows[i] for i in bootstrap_indices(len(rows), n_boot, seed, g)]
    cache: dict = {}

    def one(model, metric):
        def f(rows):
            key = (model, id(rows))
            if key not in cache:
                cache[key] = (rows, score_of(model, rows))
            return cache[key][1][metric]

        return f

    boots = {m: {k: bootstrap(one(m, k), resamples, rows) for k in metrics} for m in models}
    out = {
        "metrics": {
            k: {m: {x: boots[m][k][x] for x in ("value", "lo", "hi")} for m in models}
            for k in metrics
        },
        "vs": {},
    }
    if THREADS in models:
        for k in metrics:
            out["vs"][k] = {
                m: paired_interval(boots[THREADS][k], boots[m][k]) for m in models if m != THREADS
            }
    return out
