"""``threads-search index`` with molecular profiles and real-world metadata layouts, through the
CLI: RNA read in the model bundle's units (a conflicting ``--rna-units`` is an error), slide-keyed
clinical rows reaching the paired molecular samples (conflicts reported), metadata column names
that clash with built-in/result columns or differ only in case, and CLI wording of errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.models.bundle import build_model, load_model, save_model
from threads_search.molecular import RnaNormalizer, read_rna_matrix
from threads_search.query import open_index
from threads_search.synth import make_cohort, write_feature_bags
from threads_search.vectorstore import store
from threads_search.vectorstore.writer import read_embeddings

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 patients with 1-2 slides each (32-d feature bags), RNA for most, and a bundle trained
    (untrained weights, fitted normaliser) on RNA in *counts* units."""
    root = tmp_path_factory.mktemp("idx_mol")
    c = make_cohort(n_patients=12, slides_per_patient=(1, 2), modality=(0.0, 1.0, 0.0), seed=5)
    paths = c.write(root / "cohort")
    write_feature_bags(c, root / "feats", dim=32, n_patches=(20, 40))
    rna = c.rna.set_index("sample_id")
    cpm = rna.to_numpy() / rna.to_numpy().sum(axis=1, keepdims=True) * 1e6
    torch.manual_seed(0)
    model = build_model(
        {"name": "synthetic-features", "dim": 32},
        slide_config={"head_dim": 64, "attn_dim": 32},
        normalizer=RnaNormalizer.fit(pd.DataFrame(np.log1p(cpm), columns=rna.columns), "counts"),
        rna_config={"hidden_dims": [64]},
    )
    save_model(model, root / "model")
    return root, c, paths


def _index(root, out, *extra):
    args = ["index", str(root / "feats"), "--model", str(root / "model"), "--out", str(out)]
    return runner.invoke(app, [*args, *map(str, extra)])


def _gen(out) -> str:
    return store.read_manifest(out)["generation_dir"]


def _molecular(out) -> pd.DataFrame:
    return pd.read_parquet(f"{_gen(out)}/molecular.parquet")


def test_index_embeds_rna_in_the_models_units(cohort, tmp_path):
    """A counts model indexed with --rna and no --rna-units: the profiles are embedded exactly as
    the Python API embeds them (counts), not as TPM (before: TPM, silently, R@10 to chance)."""
    root, _, paths = cohort
    out = tmp_path / "idx"
    r = _index(root, out, "--rna", paths["rna"])
    assert r.exit_code == 0, r.output
    model = load_model(root / "model")
    assert model.rna_units == "counts"
    index = open_index(out)
    assert index.rna_units == "counts"  # what the UI offers by default
    mol, got = read_embeddings(f"{_gen(out)}/molecular_embeddings.parquet")
    matrix = read_rna_matrix(paths["rna"], units="counts")
    want = model.embed_rna(matrix)[[matrix.samples.index(s) for s in mol["sample_id"]]]
    np.testing.assert_allclose(got, want, atol=1e-5)
    as_tpm = model.embed_rna(read_rna_matrix(paths["rna"], units="tpm"))
    assert np.abs(as_tpm - model.embed_rna(matrix)).max() > 1e-2  # the units matter
    # the search CLI reads a profile file in the model's units too, as the API does
    sid = matrix.samples[3]
    r = runner.invoke(
        app,
        [
            "search",
            str(out),
            "--rna",
            str(paths["rna"]),
            "--sample",
            sid,
            "-k",
            "3",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    api = index.search_by_molecule(rna=matrix.values.loc[sid], k=3)
    np.testing.assert_allclose([x["score"] for x in json.loads(r.stdout)], api["score"], atol=1e-5)


def test_conflicting_rna_units_flag_is_an_error(cohort, tmp_path):
    root, _, paths = cohort
    r = _index(root, tmp_path / "bad", "--rna", paths["rna"], "--rna-units", "tpm")
    assert r.exit_code == 2, r.output
    assert "--rna-units tpm conflicts" in r.output and "counts" in r.output
    assert not (tmp_path / "bad" / store.INDEX_JSON).exists()
    ok = _index(root, tmp_path / "ok", "--rna", paths["rna"], "--rna-units", "counts")
    assert ok.exit_code == 0, ok.output


def test_rna_values_not_in_the_models_units_name_the_fix(cohort, tmp_path):
    """Log-scale values for a counts model: the message says what the model expects, in CLI
    words, not ``units='log'`` (which would be the wrong advice here)."""
    root, c, _ = cohort
    log = c.rna.set_index("sample_id")
    log = np.log2(log.clip(lower=0) + 0.01).reset_index()  # negatives: log-scale
    log.to_csv(tmp_path / "log.csv", index=False)
    r = _index(root, tmp_path / "idx", "--rna", tmp_path / "log.csv")
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "negative counts values" in out and "give the matrix in counts" in out
    assert "units=" not in out


def test_slide_keyed_metadata_reaches_the_patients_samples(cohort, tmp_path):
    """The usual clinical layout (one row per slide: slide_id, patient_id, labels) and a pairs
    file without patient_id: each RNA sample gets its patient's labels, except where the
    patient's slide rows disagree (reported); molecular prototypes then work (before: no
    molecular sample had a label, classify failed with 'class sizes: {}')."""
    root, c, paths = cohort
    meta = c.slides[["slide_id", "patient_id", "subtype", "site"]].copy()
    multi = meta["patient_id"].value_counts()
    split = multi.index[multi > 1][0]  # a patient with two slides: make them disagree
    row = meta.index[meta["patient_id"] == split][1]
    meta.loc[row, "subtype"] = "other"
    meta.to_csv(tmp_path / "clinical.csv", index=False)
    pairs = pd.read_csv(paths["pairs"])[["slide_id", "sample_id"]]
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "idx"
    r = _index(
        root,
        out,
        "--rna",
        paths["rna"],
        "--metadata",
        tmp_path / "clinical.csv",
        "--pairs",
        tmp_path / "pairs.csv",
    )
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "disagree" in text and split in text
    mol = _molecular(out).set_index("sample_id")
    truth = c.slides.drop_duplicates("patient_id").set_index("patient_id")
    assert (mol["patient_id"] == mol.index.str[:12]).all()  # found through the paired slides
    agree = mol[mol["patient_id"] != split]
    assert len(agree) >= 5
    assert (agree["subtype"].to_numpy() == truth.loc[agree["patient_id"], "subtype"]).all()
    assert (agree["site"].to_numpy() == truth.loc[agree["patient_id"], "site"]).all()
    own = mol[mol["patient_id"] == split]
    assert own["subtype"].isna().all() and own["site"].notna().all()  # site still agrees
    report = store.read_manifest(out)["metadata"]
    assert report["slide_row_conflicts"]["subtype"]["patients"] == 1
    assert split in report["slide_row_conflicts"]["subtype"]["examples"]
    assert report["molecular_from_slide_rows"] == len(mol)
    r = runner.invoke(
        app, ["classify", str(out), "--label", "subtype", "--min-samples", "1", "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == len(c.slides)


def test_classify_without_labelled_samples_says_why(cohort, tmp_path):
    """Slide-keyed labels but nothing linking samples to patients (no pairs, no patient_id in
    the profiles): the error names the cause and the fix."""
    root, c, paths = cohort
    c.slides[["slide_id", "patient_id", "subtype"]].to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "idx"
    r = _index(root, out, "--rna", paths["rna"], "--metadata", tmp_path / "m.csv")
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", str(out), "--label", "subtype"])
    assert r.exit_code == 2
    err = " ".join(r.stderr.split())
    assert "no molecular sample has a value in column 'subtype'" in err
    assert "per slide" in err and "--pairs" in err and "class sizes: {}" not in err


def test_metadata_named_like_builtin_or_result_columns_is_renamed(cohort, tmp_path):
    """Columns score/path/Rank: renamed meta_<name> and reported (before: path silently dropped,
    score/rank broke --format json)."""
    root, c, _ = cohort
    meta = c.slides[["slide_id"]].assign(
        score=np.arange(len(c.slides)),
        path="/elsewhere",
        Rank="x",
        subtype=c.slides["subtype"].to_numpy(),
    )
    meta.to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "idx"
    r = _index(root, out, "--metadata", tmp_path / "m.csv")
    assert r.exit_code == 0, r.output
    assert "renamed" in r.output and "meta_score" in r.output
    slides = open_index(out).slides
    assert {"meta_score", "meta_path", "meta_Rank", "path"} <= set(slides.columns)
    assert (slides["meta_path"] == "/elsewhere").all() and (slides["path"] != "/elsewhere").all()
    sid = slides["slide_id"].iloc[0]
    r = runner.invoke(
        app,
        [
            "search",
            str(out),
            "--slide",
            sid,
            "-k",
            "2",
            "--format",
            "json",
            "--where",
            "meta_score >= 0",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 and all(isinstance(x["meta_score"], int) for x in rows)


def test_metadata_columns_differing_only_in_case_are_refused(cohort, tmp_path):
    root, c, _ = cohort
    meta = c.slides[["slide_id"]].assign(site="SITE_1", Site="SITE_2")
    meta.to_csv(tmp_path / "m.csv", index=False)
    r = _index(root, tmp_path / "idx", "--metadata", tmp_path / "m.csv")
    assert r.exit_code == 2
    assert "'site' and 'Site'" in r.output and "differ only in case" in r.output


def test_index_errors_use_flag_names(cohort, tmp_path):
    """A library message advising ``pair_by='patient'`` reads ``--pair-by patient`` on the CLI."""
    root, _, paths = cohort
    pairs = pd.read_csv(paths["pairs"])[["slide_id", "sample_id"]]
    pairs.loc[0, "sample_id"] = None
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    r = _index(root, tmp_path / "idx", "--pairs", tmp_path / "pairs.csv")
    assert r.exit_code == 2
    assert "--pair-by patient" in r.output and "pair_by=" not in r.output
