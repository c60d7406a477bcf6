"""The metadata join of the index build (``indexer.metadata.attach``) on small hand-made tables:
which row each slide and molecular sample takes, patient-level values from slide rows, and the
conflicts that are reported or refused rather than resolved silently."""

from __future__ import annotations

import pandas as pd
import pytest

from indexer.metadata import attach
from threads_search.molecular import MolecularDataError


def _slides(*ids):
    return pd.DataFrame(
        {
            "slide_id": list(ids),
            "path": [f"/a/{i}.svs" for i in ids],
            "mpp": 0.5,
            "width": 10,
            "height": 10,
            "n_patches": 3,
            "tissue_area_mm2": 1.0,
        }
    )


def _mol(*ids, patients=None):
    return pd.DataFrame(
        {
            "sample_id": list(ids),
            "kind": "rna",
            "model_hash": "h",
            "patient_id": patients or [None] * len(ids),
        }
    )


def test_sample_row_then_patient_row_then_agreeing_slide_rows():
    meta = pd.DataFrame(
        {
            "slide_id": ["S1", "S2", "S3", None, None],
            "sample_id": [None, None, None, "R1", None],
            "patient_id": ["P1", "P1", "P2", None, "P3"],
            "subtype": ["A", "A", "B", "own", None],
            "grade": ["G1", "G2", None, None, "G3"],
        }
    )
    pairs = pd.DataFrame(
        {"slide_id": ["S1", "S3", "S1"], "sample_id": ["R1", "R2", "R4"], "patient_id": None}
    )
    slides, mol, rep = attach(
        _slides("S1", "S2", "S3"),
        _mol("R1", "R2", "R3", "R4", patients=[None, None, "P3", None]),
        meta,
        pairs,
    )
    s = slides.set_index("slide_id")
    assert list(s["patient_id"]) == ["P1", "P1", "P2"] and list(s["subtype"]) == ["A", "A", "B"]
    m = mol.set_index("sample_id")
    assert "model_hash" not in m.columns
    assert list(m["patient_id"]) == ["P1", "P2", "P3", "P1"]  # R1, R2, R4 through their slides
    assert m.loc["R1", "subtype"] == "own"  # its own row wins; empty cells from slide rows
    assert m.loc["R4", "subtype"] == "A" and pd.isna(m.loc["R4", "grade"])  # G1 vs G2
    assert m.loc["R2", "subtype"] == "B" and pd.isna(m.loc["R2", "grade"])
    assert m.loc["R3", "grade"] == "G3"  # the patient row
    assert rep.conflicts["grade"] == {"patients": 1, "examples": {"P1": ["G1", "G2"]}}
    assert rep.from_slide_rows == 2 and rep.unmatched_rows == 0  # R2, R4 (R1: grade conflicts)
    assert any("'grade'" in n and "disagree" in n for n in rep.notes())


def test_sample_paired_with_slides_of_two_patients_has_no_patient():
    meta = pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"], "x": [1, 2]})
    pairs = pd.DataFrame({"slide_id": ["S1", "S2"], "sample_id": ["R1", "R1"]})
    _, mol, rep = attach(_slides("S1", "S2"), _mol("R1"), meta, pairs)
    assert mol["patient_id"].isna().all() and mol["x"].isna().all()
    assert rep.sample_patients == {"R1": ["P1", "P2"]}


def test_a_patient_given_twice_differently_is_refused():
    """The pairs file and the metadata disagree on a slide's patient: before, the pairs file won
    silently."""
    meta = pd.DataFrame({"slide_id": ["S1"], "patient_id": ["P9"], "x": [1]})
    pairs = pd.DataFrame({"slide_id": ["S1"], "sample_id": ["R1"], "patient_id": ["P1"]})
    with pytest.raises(MolecularDataError, match="slide 'S1': 'P1' vs 'P9'"):
        attach(_slides("S1"), _mol("R1"), meta, pairs)
    with pytest.raises(MolecularDataError, match="sample 'R1': 'P5' vs 'P1'"):
        attach(_slides("S1"), _mol("R1", patients=["P5"]), None, pairs)


def test_reserved_names_are_renamed_unless_the_new_name_is_taken():
    meta = pd.DataFrame({"slide_id": ["S1"], "MPP": [0.25], "kind": ["x"], "n_patches": [7]})
    slides, _, rep = attach(_slides("S1"), None, meta, None)
    assert rep.renamed == {"MPP": "meta_MPP", "kind": "meta_kind", "n_patches": "meta_n_patches"}
    row = slides.iloc[0]
    assert row["mpp"] == 0.5 and row["meta_MPP"] == 0.25 and row["meta_n_patches"] == 7
    assert row["n_patches"] == 3
    taken = meta.assign(meta_kind=["y"])
    with pytest.raises(MolecularDataError, match="meta_kind"):
        attach(_slides("S1"), None, taken, None)
