"""``threads-search export`` on the hand-made index of ``query_fixtures``: Parquet and HDF5
files hold every slide and molecular embedding, exactly as the index serves them, with ids and
metadata; a wrong suffix is a one-line error."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import query_fixtures
from typer.testing import CliRunner

from threads_search.cli import app

hand = query_fixtures.hand
runner = CliRunner()


def test_index_vectors_are_the_indexed_rows_in_table_order(hand):
    from threads_search.query.errors import QueryError

    index, vecs = hand
    ids = index.slides["slide_id"].to_numpy()
    got = index.vectors("slides")
    assert got.shape == (60, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got[np.argsort(ids, kind="stable")], vecs, atol=1e-5)
    mol = index.vectors("molecular")
    assert mol.shape == (45, 32)
    np.testing.assert_allclose(np.linalg.norm(mol, axis=1), 1.0, atol=1e-5)
    with pytest.raises(QueryError, match="slides' or 'molecular"):
        index.vectors("regions")


def test_export_parquet(hand, tmp_path):
    index, vecs = hand
    out = tmp_path / "emb.parquet"
    r = runner.invoke(app, ["export", str(index.root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "60 slide and 45 molecular embeddings (32-d)" in r.output
    df = pd.read_parquet(out)
    assert len(df) == 105
    assert df["kind"].value_counts().to_dict() == {"slide": 60, "rna": 30, "dna": 15}
    slides = df[df.kind == "slide"]
    assert slides["id"].tolist() == index.slides["slide_id"].tolist()
    emb = np.stack(slides["embedding"].to_numpy())
    # the fixture's own (normalised) vectors, in slide_id order
    order = np.argsort(slides["id"].to_numpy(), kind="stable")
    np.testing.assert_allclose(emb[order], vecs, atol=1e-5)
    assert slides["subtype"].tolist() == index.slides["subtype"].tolist()
    mol = df[df.kind != "slide"]
    assert mol["sample_id"].tolist() == index.molecular["sample_id"].tolist()
    np.testing.assert_allclose(np.stack(mol["embedding"]), index.vectors("molecular"))


def test_export_h5(hand, tmp_path):
    index, vecs = hand
    out = tmp_path / "emb.h5"
    r = runner.invoke(app, ["export", str(index.root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f.attrs["dim"] == 32
        ids = [s.decode() for s in f["slides/ids"][()]]
        assert ids == index.slides["slide_id"].tolist()
        emb = f["slides/embeddings"][()]
        np.testing.assert_allclose(emb[np.argsort(ids, kind="stable")], vecs, atol=1e-5)
        ages = f["slides/meta/age"][()]
        np.testing.assert_array_equal(ages, index.slides["age"].to_numpy(float))
        grade = [s.decode() for s in f["slides/meta/grade"][()]]
        assert grade[0] == "" and grade[2] == index.slides["grade"].iloc[2] == "G2"  # None → ""
        assert f["molecular/embeddings"].shape == (45, 32)


def test_export_refuses_unknown_suffix(hand, tmp_path):
    index, _ = hand
    r = runner.invoke(app, ["export", str(index.root), "--out", str(tmp_path / "emb.csv")])
    assert r.exit_code == 2
    assert "must end in .parquet, .h5, .hdf5" in r.output
    assert not (tmp_path / "emb.csv").exists()
