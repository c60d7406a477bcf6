"""Queries the index embeds with its own model (``query_fixtures.modelled``): RNA and DNA
profiles, new slide and feature files, and a model of another dimension."""

from __future__ import annotations

import numpy as np
import pytest
import query_fixtures

from threads_search.query import QueryError, open_index

hand, modelled = query_fixtures.hand, query_fixtures.modelled  # the session fixtures


def test_profile_retrieves_its_own_slide(modelled):
    index, cohort, _, _ = modelled
    rna = cohort.rna.set_index("sample_id")
    for i, sid in enumerate(rna.index[:6]):
        profile = [rna.loc[sid].to_dict(), rna.loc[sid], rna.loc[[sid]].reset_index()][i % 3]
        df = index.search_by_molecule(rna=profile, k=3)
        assert df["patient_id"].iloc[0] == sid[:12], (sid, df)
        assert df["score"].iloc[0] > 0.99
        by_id = index.search_by_molecule(rna=sid, k=3)
        assert list(by_id["slide_id"]) == list(df["slide_id"])
        np.testing.assert_allclose(by_id["score"], df["score"], atol=1e-5)
    with pytest.raises(QueryError, match="one profile"):
        index.search_by_molecule(rna=rna.iloc[:2].reset_index())


def test_dna_profile_and_combined_query(modelled):
    index, cohort, _, _ = modelled
    dna = cohort.dna_matrix()
    sid = dna.index[dna.sum(axis=1).to_numpy().argmax()]
    genes = [g for g in dna.columns if dna.loc[sid, g]]
    by_profile = index.search_by_molecule(dna=genes, k=4)
    by_id = index.search_by_molecule(dna=sid, k=4)
    assert list(by_profile["slide_id"]) == list(by_id["slide_id"])
    rna_id = sid[:12] + "-01R"
    both = index.search_by_molecule(rna=rna_id, dna=genes, k=4)
    q = (
        index._m.rows([np.flatnonzero(index.molecular["sample_id"] == rna_id)[0]])[0]
        + index.model.embed_dna(genes)
    ) / 2
    assert list(both["slide_id"]) == list(index.search_slides(q, k=4)["slide_id"])


def test_new_slide_files_are_embedded(modelled, tmp_path):
    index, _, h5, slide = modelled
    df = index.search_slides(h5, k=3)
    assert df["slide_id"].iloc[0] == "TWIN-H5" and df["score"].iloc[0] == pytest.approx(1, abs=1e-4)
    df = index.search_slides(str(slide), k=3)
    assert df["slide_id"].iloc[0] == "TWIN-SLIDE"
    assert df["score"].iloc[0] == pytest.approx(1, abs=1e-4)
    mol = index.search_molecules(h5, k=2)
    assert len(mol) == 2 and mol["score"].is_monotonic_decreasing
    for name, data in (("bad.h5", b"not hdf5"), ("bad.svs", b"not a slide")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(QueryError, match=f"cannot embed slide .*{name}"):
            index.search_slides(tmp_path / name)


def test_model_dimension_mismatch(hand, modelled):
    index, _ = hand
    other, _, h5, _ = modelled
    wrong = open_index(index.root, model=other.model)  # 1024-d model over a 32-d index
    with pytest.raises(QueryError, match="embeds in 1024-d, the index holds 32-d"):
        wrong.search_slides(h5)
    assert len(wrong.search_slides("P001-DX1", k=2)) == 2  # stored vectors need no model
