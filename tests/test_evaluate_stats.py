"""The index-free helpers of ``threads_search.eval.stats`` and the synthetic cohort's survival
outcomes (known ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.eval.stats import (
    bootstrap,
    bootstrap_indices,
    class_scores,
    concordance,
    paired_interval,
)


def test_paired_bootstrap_of_identical_and_shifted_scores():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    res = bootstrap_indices(200, 300, seed=1)
    ba = bootstrap(lambda r: a[r].mean(), res, 200)
    bb = bootstrap(lambda r: (a[r] + 0.1).mean(), res, 200)
    assert ba["lo"] < a.mean() < ba["hi"]
    d = paired_interval(bb, ba)  # same resamples: the difference is exactly 0.1 on each
    assert d["diff"] == pytest.approx(0.1) and d["lo"] == pytest.approx(0.1)
    assert d["hi"] == pytest.approx(0.1)
    assert (ba["hi"] - ba["lo"]) > 0.1  # unpaired intervals overlap


def test_cluster_bootstrap_keeps_groups_whole():
    groups = np.repeat(np.arange(10), 3)
    for idx in bootstrap_indices(30, 20, seed=0, groups=groups):
        counts = np.bincount(idx, minlength=30).reshape(10, 3)
        assert (counts == counts[:, :1]).all()  # a drawn patient brings all its rows


def test_concordance_and_class_scores():
    t = np.arange(1, 11, dtype=float)
    e = np.ones(10)
    assert concordance(t, -t, e) == pytest.approx(1.0)  # higher risk dies earlier
    assert concordance(t, t, e) == pytest.approx(0.0)
    assert np.isnan(concordance(t, t, np.zeros(10)))  # no event: nothing comparable
    y = np.array(["a", "a", "b", "b"])
    s = class_scores(y, np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]), ["a", "b"])
    assert s["balanced_accuracy"] == pytest.approx(0.75) and s["macro_auc"] == pytest.approx(0.5)


def test_cohort_survival_follows_programme_1_only():
    from threads_search.synth import make_cohort

    c = make_cohort(400, seed=3).patients
    shown = concordance(c.os_months, c.programme_1, c.os_event)
    hidden = concordance(c.hidden_os_months, c.programme_1, c.hidden_os_event)
    own = concordance(c.hidden_os_months, c.hidden_risk, c.hidden_os_event)
    assert shown > 0.7 and own > 0.7 and abs(hidden - 0.5) < 0.05
    assert 0.3 < c.os_event.mean() < 0.95 and c.os_months.max() <= 120.0
