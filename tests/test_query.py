"""The index (``open_index``): tables and files, search_slides / search_by_molecule /
search_molecules on a small synthetic index with known ground truth (``query_fixtures.hand``),
exact filtered search, same-patient exclusion, thread safety, query and format errors.
Classification: test_query_classify.py; the CLI: test_query_cli.py; queries embedded with the
index's model: test_query_modelled.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import query_fixtures
from query_fixtures import N_PATIENTS, E, brute

from threads_search.query import FilterError, IndexFormatError, QueryError, open_index
from threads_search.query.filters import Contains, NotNull, Range, build_where, combine_where
from threads_search.vectorstore import store
from threads_search.vectorstore.store import IndexNotFoundError

hand = query_fixtures.hand  # the session fixture


def test_open_tables_manifest_and_files(hand):
    index, vecs = hand
    s, m = index.slides, index.molecular
    assert len(s) == 2 * N_PATIENTS and list(s["slide_id"]) == sorted(s["slide_id"])
    assert {"subtype", "site", "age", "grade"} <= set(s.columns)
    assert len(m) == N_PATIENTS + N_PATIENTS // 2 and set(m["kind"]) == {"rna", "dna"}
    assert index.manifest["counts"] == {"slides": 60, "molecular": 45}
    assert index.dim == E
    t = index.thumbnail("P000-DX1")
    assert t and Path(t).is_absolute() and Path(t).is_file()
    assert index.thumbnail("P029-DX2") is None
    assert list(index.attention("P000-DX1")["score"]) == [0.3, 0.7]
    info = index.info()
    assert info["counts"]["slides"] == 60 and info["faiss"]["slides"]["type"] == "flat"
    assert info["faiss"]["slides"]["recall_at_k"] == pytest.approx(1.0)
    assert info["faiss"]["slides"]["choice"].startswith("flat: 60 vectors")  # why, recorded


def test_search_slides_by_id_excludes_self_and_patient(hand):
    index, vecs = hand
    ids = list(index.slides["slide_id"])
    q = ids.index("P005-DX1")
    df = index.search_slides("P005-DX1", k=8)
    assert list(df["rank"]) == list(range(1, 9))
    assert list(df.columns[:3]) == ["rank", "score", "slide_id"] and "thumbnail" in df
    assert not (df["patient_id"] == "P005").any()
    assert df["score"].is_monotonic_decreasing
    allowed = np.array([i for i, s in enumerate(ids) if not s.startswith("P005")])
    want, sc = brute(vecs, vecs[q], allowed, 8)
    assert list(df["slide_id"]) == [ids[i] for i in want]
    np.testing.assert_allclose(df["score"], sc, atol=1e-5)
    # without patient exclusion the other slide of the same patient comes first, never itself
    df2 = index.search_slides("P005-DX1", k=3, exclude_same_patient=False)
    assert df2["slide_id"].iloc[0] == "P005-DX2" and "P005-DX1" not in set(df2["slide_id"])
    # a vector query: nothing excluded, the slide itself first with cosine 1
    df3 = index.search_slides(vecs[q] * 3.0, k=3)
    assert df3["slide_id"].iloc[0] == "P005-DX1" and df3["score"].iloc[0] == pytest.approx(1)
    # the path of an indexed slide is that slide
    df4 = index.search_slides(Path("/archive/P005-DX1.svs"), k=8)
    assert list(df4["slide_id"]) == list(df["slide_id"])


FILTERS = [
    ("site = 'A'", lambda s: s.site == "A"),
    ("age > 50 AND subtype <> 'class_0'", lambda s: (s.age > 50) & (s.subtype != "class_0")),
    ("grade IS NULL", lambda s: s.grade.isna()),
    (
        "subtype IN ('class_1', 'class_2') OR age BETWEEN 31 AND 33",
        lambda s: s.subtype.isin(["class_1", "class_2"]) | s.age.between(31, 33),
    ),
    (
        "lower(site) LIKE 'b%' OR (coalesce(grade, 'none') = 'none' AND NOT (age < 40))",
        lambda s: (s.site == "B") | (s.grade.isna() & (s.age >= 40)),
    ),
]


@pytest.mark.parametrize("where,mask", FILTERS, ids=[f[0] for f in FILTERS])
def test_filters_restrict_exactly(hand, where, mask):
    index, vecs = hand
    s = index.slides
    ids = np.flatnonzero(mask(s).fillna(False).to_numpy())
    np.testing.assert_array_equal(index.filter_ids(where), ids)
    assert list(index.select(where)["slide_id"]) == list(s["slide_id"].iloc[ids])
    for query in ("P003-DX2", "P020-DX1", "P027-DX1"):
        q = int(np.flatnonzero(s["slide_id"] == query)[0])
        allowed = np.array([i for i in ids if s["patient_id"].iat[i] != s["patient_id"].iat[q]])
        df = index.search_slides(query, k=7, where=where)
        want, sc = brute(vecs, vecs[q], allowed, 7)
        assert list(df["slide_id"]) == list(s["slide_id"].iloc[want])
        np.testing.assert_allclose(df["score"], sc, atol=1e-5)


def test_filter_selecting_nothing_and_unknown_column(hand):
    index, _ = hand
    assert index.search_slides("P001-DX1", where="age > 1000").empty
    with pytest.raises(FilterError, match="unknown column 'nope'.*available columns: age"):
        index.search_slides("P001-DX1", where="nope = 1")
    with pytest.raises(FilterError, match="failed on the slides table"):
        index.search_slides("P001-DX1", where="site > 3")  # type error, raised by DuckDB


def test_facet_filters(hand):
    index, _ = hand
    s = index.slides
    cols = index.filter_columns("slides")
    where = build_where(
        {"site": ["A", "B"], "age": Range(35, 48), "grade": NotNull, "subtype": Contains("SS_1")},
        cols,
    )
    mask = (
        s.site.isin(["A", "B"]) & s.age.between(35, 48) & s.grade.notna() & (s.subtype == "class_1")
    )
    np.testing.assert_array_equal(index.filter_ids(where), np.flatnonzero(mask))
    quoted = build_where({"site": "it's", "grade": None}, cols)
    assert index.filter_ids(quoted).size == 0
    assert index.filter_ids(build_where({"site": []}, cols)).size == 0
    both = combine_where(where, "age < 40", None)
    np.testing.assert_array_equal(index.filter_ids(both), np.flatnonzero(mask & (s.age < 40)))
    with pytest.raises(FilterError, match="unknown facet column"):
        build_where({"nope": 1}, cols)
    with pytest.raises(FilterError, match="unbalanced"):
        combine_where("site = 'A'", "1=1) OR (1=1")


def test_search_by_molecule_sample_ids(hand):
    index, _ = hand
    df = index.search_by_molecule(rna="P006-R", k=4)
    assert set(df["slide_id"].iloc[:2]) == {"P006-DX1", "P006-DX2"}
    both = index.search_by_molecule(rna="P006-R", dna="P006-D", k=2)
    assert set(both["slide_id"]) == {"P006-DX1", "P006-DX2"}
    ex = index.search_by_molecule(rna="P006-R", k=4, exclude_same_patient=True)
    assert not (ex["patient_id"] == "P006").any()
    filt = index.search_by_molecule(rna="P006-R", k=50, where="site = 'B'")
    assert set(filt["site"]) == {"B"} and len(filt) == 20
    with pytest.raises(QueryError, match="it is a dna sample"):
        index.search_by_molecule(rna="P006-D")
    with pytest.raises(QueryError, match="no such sample"):
        index.search_by_molecule(dna="nope")
    with pytest.raises(QueryError, match="give rna= and/or dna="):
        index.search_by_molecule()


def test_search_molecules(hand):
    index, _ = hand
    df = index.search_molecules("P010-DX1", k=5, exclude_same_patient=True)
    assert list(df.columns[:3]) == ["rank", "score", "sample_id"]
    assert not (df["patient_id"] == "P010").any()
    own = index.search_molecules("P010-DX1", k=2)
    assert set(own["sample_id"]) == {"P010-R", "P010-D"}
    dna = index.search_molecules("P010-DX1", k=40, kind="dna", where="site <> 'A'")
    assert set(dna["kind"]) == {"dna"} and "A" not in set(dna["site"])
    assert len(dna) == len(index.select("kind = 'dna' AND site <> 'A'", "molecular"))


def test_cross_modal_searches_share_the_same_patient_rule(hand):
    """Both cross-modal directions keep the query patient's own results by default (they are
    the expected match) and drop them with exclude_same_patient=True; only slide → slide
    search drops them by default. Before, search_molecules dropped them by default while
    search_by_molecule kept them."""
    index, _ = hand
    to_samples = index.search_molecules("P010-DX1", k=2)
    to_slides = index.search_by_molecule(rna="P010-R", k=2)
    assert set(to_samples["patient_id"]) == set(to_slides["patient_id"]) == {"P010"}
    for df in (
        index.search_molecules("P010-DX1", k=10, exclude_same_patient=True),
        index.search_by_molecule(rna="P010-R", k=10, exclude_same_patient=True),
        index.search_slides("P010-DX1", k=10),
    ):
        assert len(df) == 10 and "P010" not in set(df["patient_id"])


def test_concurrent_queries_match_serial(hand):
    index, vecs = hand
    jobs = [
        lambda i=i: index.search_slides(f"P{i:03d}-DX1", k=5, where="age > 35" if i % 2 else None)
        for i in range(12)
    ] + [lambda i=i: index.search_by_molecule(rna=f"P{i:03d}-R", k=3) for i in range(6)]
    jobs += [
        lambda i=i: index.search_molecules(vecs[i], k=4, where=f"site = '{'ABC'[i % 3]}'")
        for i in range(6)
    ]
    serial = [j() for j in jobs]
    fresh = open_index(index.root)  # lazy parts built concurrently too
    warmed = open_index(index.root)
    warmed.warm()
    assert warmed.search_slides("P001-DX1", k=5, where="age > 35").equals(serial[1])
    results: dict[tuple, tuple[int, pd.DataFrame]] = {}
    errors = []

    def worker(t):
        try:
            results[(t, "fresh")] = (1, fresh.search_slides("P001-DX1", k=5, where="age > 35"))
            for i, j in enumerate(jobs):
                if (i + t) % 2 == 0:
                    results[(t, i)] = (i, j())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 * (1 + len(jobs) // 2)
    for _, (i, got) in results.items():
        pd.testing.assert_frame_equal(got, serial[i])


def test_query_errors(hand, tmp_path):
    index, _ = hand
    with pytest.raises(QueryError, match="neither a slide_id of this index"):
        index.search_slides("no-such-slide")
    with pytest.raises(QueryError, match="shape \\(5,\\)"):
        index.search_slides(np.ones(5))
    with pytest.raises(QueryError, match="k must be >= 1"):
        index.search_slides("P001-DX1", k=0)
    with pytest.raises(QueryError, match="needs a query whose patient is known"):
        index.search_slides(np.ones(E), exclude_same_patient=True)
    f = tmp_path / "new.h5"
    f.write_bytes(b"not a slide")
    with pytest.raises(QueryError, match="cannot load the index's model bundle"):
        index.search_slides(f)  # the model is only needed (and loaded) now


def test_missing_and_wrong_version(hand, tmp_path):
    with pytest.raises(IndexNotFoundError, match="index.json is missing"):
        open_index(tmp_path / "nothing")
    index, _ = hand
    src = index.root
    for version, hint in ((store.FORMAT_VERSION + 1, "upgrade threads-search"), (0, "rebuild")):
        doc = json.loads((src / store.INDEX_JSON).read_text())
        doc["format_version"] = version
        (tmp_path / "v").mkdir(exist_ok=True)
        (tmp_path / "v" / store.INDEX_JSON).write_text(json.dumps(doc))
        (tmp_path / "v" / store.GENERATIONS).mkdir(exist_ok=True)
        link = tmp_path / "v" / store.GENERATIONS / doc["generation"]
        if not link.exists():
            link.symlink_to(Path(index.generation_dir))
        with pytest.raises(IndexFormatError, match=f"format version {version}.*{hint}"):
            open_index(tmp_path / "v")
