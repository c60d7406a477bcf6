"""``Index.classify``: zero-shot classification by class prototypes, on the prototypes of
``threads_search.eval`` (one implementation: the index and the metrics agree on classes, their
order and the scores)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import query_fixtures
from query_fixtures import unit

from threads_search.eval import prototype_zero_shot
from threads_search.eval.embedding import nearest
from threads_search.query import QueryError, SmallClassWarning, open_index
from threads_search.vectorstore.writer import write_generation

hand = query_fixtures.hand  # the session fixture


def test_classify_molecular_prototypes(hand):
    index, vecs = hand
    with pytest.warns(SmallClassWarning, match="class_2 \\(9\\)"):
        df = index.classify("subtype", min_samples=10)
    assert df.attrs["class_sizes"] == {"class_0": 21, "class_1": 15, "class_2": 9}
    assert df.attrs["excluded_classes"] == {"class_2": 9}
    assert list(df.columns) == [
        "slide_id",
        "predicted",
        "score_class_0",
        "score_class_1",
        "subtype",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = index.classify("subtype", min_samples=3)
    assert (df["predicted"] == df["subtype"]).mean() == 1.0
    m = index.molecular
    mv = unit(np.array([index._m.rows([i])[0] for i in range(len(m))]))
    for c in ["class_0", "class_1", "class_2"]:
        proto = unit(mv[(m["subtype"] == c).to_numpy()].mean(0))
        np.testing.assert_allclose(df[f"score_{c}"], vecs @ proto, atol=1e-5)
    sub = index.classify(
        "subtype", where="site = 'C'", slides=["P002-DX1", "P003-DX1"], min_samples=3
    )
    assert list(sub["slide_id"]) == ["P002-DX1"]
    rna_only = index.classify("subtype", kind="rna", min_samples=3)
    assert rna_only.attrs["class_sizes"] == {"class_0": 14, "class_1": 10, "class_2": 6}
    with pytest.raises(QueryError, match="no column 'nope' in the molecular table"):
        index.classify("nope")
    with pytest.raises(QueryError, match="no class has at least 100"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.classify("subtype", min_samples=100)


def test_classify_slide_prototypes_leave_one_out(hand):
    index, vecs = hand
    df = index.classify("grade", prototypes="slide", min_samples=2)
    s = index.slides
    labels = s["grade"].fillna("").to_numpy()
    for i in (2, 5, 13):  # rows with a grade
        assert labels[i]
        for c in sorted(set(labels) - {""}):
            members = np.flatnonzero((labels == c) & (np.arange(len(s)) != i))
            want = vecs[i] @ unit(vecs[members].mean(0))
            assert df[f"score_{c}"].iat[i] == pytest.approx(want, abs=1e-5)
    assert df.attrs["prototypes"] == "slide" and sum(df.attrs["class_sizes"].values()) == 44
    assert df["grade"].isna().sum() == 16  # unlabelled slides are scored, not used


def test_classify_and_eval_prototypes_agree(hand):
    """One prototype implementation: ``Index.classify`` and ``eval.prototype_zero_shot`` on the
    same embeddings give the same classes in the same order, scores and predictions."""
    index, vecs = hand
    m = index.molecular
    mol_vecs = index._m.rows(np.arange(len(m)))
    df = index.classify("subtype", min_samples=1)
    ref = prototype_zero_shot(vecs, index.slides["subtype"], mol_vecs, m["subtype"])
    cols = [c for c in df.columns if c.startswith("score_")]
    assert cols == [f"score_{c}" for c in ref["classes"]]
    np.testing.assert_allclose(df[cols].to_numpy(), ref["scores"], atol=1e-6)
    assert list(df["predicted"]) == list(ref["predictions"])
    assert list(df.attrs["class_sizes"].values()) == list(ref["counts"])


def test_classes_are_ordered_by_value(tmp_path):
    """Numeric labels come in numeric order in the index as in the metrics (before, the index
    ordered them as text: 10 before 2 and 9, unlike ``eval``), and ties go to the first."""
    rng = np.random.default_rng(1)
    grades = np.array([2, 10, 9] * 4)
    centres = {g: rng.normal(size=8) for g in (2, 9, 10)}
    slide_emb = np.array([centres[g] + 0.1 * rng.normal(size=8) for g in grades], np.float32)
    mol_emb = np.array([centres[g] + 0.1 * rng.normal(size=8) for g in grades], np.float32)
    ids = [f"S{i:02d}" for i in range(len(grades))]
    slides = pd.DataFrame({"slide_id": ids, "patient_id": ids, "grade": grades})
    mol = pd.DataFrame({"sample_id": ids, "patient_id": ids, "kind": "rna", "grade": grades})
    write_generation(tmp_path / "idx", slides, slide_emb, mol, mol_emb)
    df = open_index(tmp_path / "idx").classify("grade", min_samples=1)
    assert [c for c in df.columns if c.startswith("score_")] == ["score_2", "score_9", "score_10"]
    assert list(df.attrs["class_sizes"]) == [2, 9, 10]
    assert (df["predicted"] == df["grade"]).all()
    ref = prototype_zero_shot(slide_emb, grades, mol_emb, grades)
    assert list(ref["classes"]) == [2, 9, 10]
    assert list(nearest(np.array([[0.5, 0.5, 0.1], [np.nan, 0.2, 0.2]]))) == [0, 1]
