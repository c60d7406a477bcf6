"""THREADS training on synthetic cohorts through ``trainer.cli.main(argv)``: learning, exact
resume, single-modality cohorts, clear input errors, and features → train from pixels."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import train_argv, training_log
from safetensors.numpy import load_file
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.models.bundle import load_model
from threads_search.synth.cohort import make_cohort
from threads_search.synth.cohort_features import write_feature_bags
from threads_search.synth.cohort_slides import write_slides
from trainer.cli import main

SMALL = ["--head-dim", "64", "--attn-dim", "32", "--heads", "2", "--quiet", "--threads", "2"]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    cohort = make_cohort(n_patients=160, seed=3)
    paths = cohort.write(root / "cohort")
    write_feature_bags(cohort, root / "feats", dim=32, n_patches=(40, 120))
    return root, paths


def _args(root, paths, out, *extra, rna=True, dna=True):
    meta = paths["metadata"]
    extra = ("--batch-size", "32", *SMALL, *extra)
    return train_argv(root / "feats", paths, out, *extra, metadata=meta, rna=rna, dna=dna)


_log = training_log


def test_training_lowers_the_loss_and_aligns_modalities(cohort_dir, tmp_path):
    root, paths = cohort_dir
    out = tmp_path / "model"
    assert main(_args(root, paths, out, "--epochs", "6", "--lr", "1e-3")) == 0
    log = _log(out)
    assert len(log) == 6
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    n_val = int((pd.read_csv(paths["metadata"]).split == "val").sum())
    chance = 5 / n_val
    best = max(h["val_rna_mol2slide_R@5"] for h in log)
    assert best > 2.5 * chance, f"R@5 {best:.2f} vs chance {chance:.2f}"
    assert (out / "training_curves.png").stat().st_size > 10_000
    model = load_model(out)
    assert model.rna is not None and model.dna is not None
    assert model.patch_encoder["name"] == "synthetic-features" and model.patch_encoder["dim"] == 32
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["epochs"] == 6 and "metrics" in cfg["training"]
    assert (out / "last" / "model.safetensors").exists()


def test_resume_equals_uninterrupted(cohort_dir, tmp_path):
    root, paths = cohort_dir
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(root, paths, full, "--epochs", "3")) == 0
    assert main(_args(root, paths, part, "--epochs", "3", "--stop-after-epochs", "1")) == 0
    assert len(_log(part)) == 1
    assert main(_args(root, paths, part, "--epochs", "3", "--resume")) == 0
    a, b = _log(full), _log(part)
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b], rel=1e-5)
    wa = load_file(full / "last" / "model.safetensors")
    wb = load_file(part / "last" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.allclose(wa[k], wb[k], atol=1e-5), k
    # Resuming with other settings is refused.
    assert main(_args(root, paths, part, "--epochs", "3", "--lr", "1", "--resume")) == 2


@pytest.mark.parametrize("modality", ["rna", "dna"])
def test_single_modality_cohorts_train(cohort_dir, tmp_path, modality):
    root, paths = cohort_dir
    out = tmp_path / modality
    args = _args(root, paths, out, "--epochs", "2", rna=modality == "rna", dna=modality == "dna")
    assert main(args) == 0
    model = load_model(out)
    assert (model.rna is not None) == (modality == "rna")
    assert (model.dna is not None) == (modality == "dna")
    assert np.isfinite(_log(out)[-1]["train_loss"])


def test_clear_errors(cohort_dir, tmp_path, capsys):
    root, paths = cohort_dir
    bad_pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"slide_id": ["nope-1", "nope-2"], "sample_id": ["x-1", "x-2"]}).to_csv(
        bad_pairs, index=False
    )
    args = _args(root, paths, tmp_path / "m1", "--epochs", "1")
    args[args.index("--pairs") + 1] = str(bad_pairs)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no pairs matched" in err and "nope-1" in err and "x-1" in err
    # A DNA file whose every variant is silent gives an empty gene vocabulary.
    maf = pd.read_csv(paths["maf"], sep="\t", comment="#")
    maf["Variant_Classification"] = "Silent"
    silent = tmp_path / "silent.maf"
    maf.to_csv(silent, sep="\t", index=False)
    args = _args(root, paths, tmp_path / "m2", "--epochs", "1", rna=False)
    args[args.index("--dna") + 1] = str(silent)
    assert main(args) == 2
    assert "vocabulary empty" in capsys.readouterr().err


def test_mixed_encoders_are_refused(cohort_dir, tmp_path, capsys):
    import shutil

    root, paths = cohort_dir
    feats = tmp_path / "feats"
    shutil.copytree(root / "feats", feats)
    victim = sorted((feats / "h5").glob("*.h5"))[0]
    with h5py.File(victim, "a") as f:
        f["coords"].attrs["encoder"] = "uni"
    args = _args(root, paths, tmp_path / "m", "--epochs", "1")
    args[args.index("--features") + 1] = str(feats)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mixed encoders" in err and "uni" in err


def test_pixel_cohort_features_then_train_through_the_cli(tmp_path):
    cohort = make_cohort(n_patients=8, seed=5, modality=(1.0, 0.0, 0.0))
    paths = cohort.write(tmp_path / "cohort")
    write_slides(cohort, tmp_path / "slides", width=1536, height=1536)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "features",
            str(tmp_path / "slides"),
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "0",
            "--patch-size",
            "256",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--features",
            str(tmp_path / "f"),
            "--pairs",
            str(paths["pairs"]),
            "--rna",
            str(paths["rna"]),
            "--dna",
            str(paths["maf"]),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--min-train-items",
            "4",
            *SMALL,
        ],
    )
    assert res.exit_code == 0, res.output
    model = load_model(tmp_path / "m")
    assert model.patch_encoder["name"] == "hed-texture"
    emb = model.embed_slide(sorted((tmp_path / "f" / "h5").glob("*.h5"))[0])
    assert emb.shape == (1024,) and abs(np.linalg.norm(emb) - 1) < 1e-4
