"""Training inputs that do not fit: pairs that mostly do not match, too few items, epochs without
an optimiser step, runs without validation, and the split (``--val-fraction``, a metadata split
column). All through ``trainer.cli.main(argv)`` on small synthetic cohorts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import train_argv, training_log

from threads_search.synth.cohort import make_cohort
from threads_search.synth.cohort_features import write_feature_bags
from trainer.cli import main

SMALL = [
    "--head-dim",
    "16",
    "--attn-dim",
    "8",
    "--heads",
    "2",
    "--quiet",
    "--threads",
    "2",
    "--batch-size",
    "8",
    "--epochs",
    "1",
]
N_PATIENTS = 40


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    c = make_cohort(n_patients=N_PATIENTS, seed=3)
    paths = c.write(root / "cohort")
    write_feature_bags(c, root / "feats", dim=16, n_patches=(20, 40))
    return root, paths


def _args(root, paths, out, *extra, pairs=None, metadata=None, rna=True, dna=True):
    extra = (*SMALL, *extra)
    return train_argv(
        root / "feats", paths, out, *extra, pairs=pairs, metadata=metadata, rna=rna, dna=dna
    )


_log = training_log


def _training(out):
    return json.loads((out / "config.json").read_text())["training"]


def _no_bundle(out):
    return not any((out / p).exists() for p in ("model.safetensors", "config.json", "last"))


def test_mostly_unmatched_pairs_are_refused_with_a_report(cohort, tmp_path, capsys):
    root, paths = cohort
    pairs = pd.read_csv(paths["pairs"], dtype=str)
    slides = sorted(pairs.slide_id.unique())
    keep = set(slides[: len(slides) // 10])  # 90 % of the slide ids renamed
    rename = {s: f"slide_{i:04d}" for i, s in enumerate(slides) if s not in keep}
    pairs["slide_id"] = pairs.slide_id.map(lambda s: rename.get(s, s))
    bad = tmp_path / "pairs.csv"
    pairs.to_csv(bad, index=False)
    out = tmp_path / "m"
    assert main(_args(root, paths, out, pairs=bad)) == 2
    err = capsys.readouterr().err
    assert "cannot train" in err and "at least 8 are needed (--min-train-items)" in err
    assert f"pairs: {len(pairs)} slide–sample links" in err
    n_bad = int(pairs.slide_id.isin(rename.values()).sum())
    assert f"{n_bad} name a slide without features" in err
    assert repr(min(rename.values())) in err  # the pairs' side …
    assert f"{len(rename)} named in no pair" in err  # … and the features' side
    assert repr(sorted(rename)[0]) in err
    assert "hint: pairs slide ids look like 'slide_" in err
    assert "likely cause: ids that do not match" in err
    assert f"only {len(pairs) - n_bad} of {len(pairs)} pairs matched" in err
    assert _no_bundle(out) and not out.exists()


def test_partly_unmatched_pairs_train_and_the_report_is_kept(cohort, tmp_path, capsys):
    root, paths = cohort
    pairs = pd.read_csv(paths["pairs"], dtype=str)
    slides = sorted(pairs.slide_id.unique())
    with_ext = set(slides[::4])  # a quarter written with the file extension
    pairs["slide_id"] = [s + ".svs" if s in with_ext else s for s in pairs.slide_id]
    gone = pairs.index[pairs.sample_id.str.endswith("R")][:3]
    pairs.loc[gone, "sample_id"] = [f"UNKNOWN-{i}" for i in range(len(gone))]
    path = tmp_path / "pairs.csv"
    pairs.to_csv(path, index=False)
    out = tmp_path / "m"
    assert main(_args(root, paths, out, pairs=path, metadata=paths["metadata"])) == 0
    err = capsys.readouterr().err
    no_feat = int(pairs.slide_id.str.endswith(".svs").sum())
    assert f"{no_feat} name a slide without features" in err
    assert "3 name a sample without an RNA/DNA profile: 'UNKNOWN-0'" in err
    assert "once case, folders and file extensions are ignored" in err
    report = _training(out)["data"]
    matched = ~pairs.slide_id.str.endswith(".svs") & ~pairs.sample_id.str.startswith("UNKNOWN")
    assert report["pairs"] == len(pairs) and report["pairs_matched"] == int(matched.sum())
    assert report["pairs_without_features"] == no_feat and report["pairs_without_profile"] == 3
    assert report["feature_slides_unpaired"]["count"] == len(with_ext)
    meta = pd.read_csv(paths["metadata"], dtype=str).set_index("patient_id")["split"]
    patients = pairs.patient_id[matched].unique()
    want = meta.loc[patients].value_counts()
    items = report["items"]
    assert (items["train"], items["val"], items["held_out"]) == (
        want.get("train", 0),
        want.get("val", 0),
        want.get("test", 0),
    )


def test_minimum_and_batch_size_are_enforced(cohort, tmp_path, capsys):
    root, paths = cohort
    out = tmp_path / "m"
    assert main(_args(root, paths, out, "--min-train-items", "1000")) == 2
    err = capsys.readouterr().err
    assert "at least 1000 are needed" in err and "too small" in err and _no_bundle(out)
    assert main(_args(root, paths, out, "--batch-size", "1")) == 2
    assert "--batch-size 1: InfoNCE needs at least 2" in capsys.readouterr().err
    assert _no_bundle(out)


def test_a_modality_with_one_training_item_is_refused(cohort, tmp_path, capsys):
    root, paths = cohort
    pairs = pd.read_csv(paths["pairs"], dtype=str)
    dna = pairs.index[pairs.sample_id.str.endswith("D")]
    pairs = pairs.drop(dna[1:])  # one DNA pair left
    path = tmp_path / "pairs.csv"
    pairs.to_csv(path, index=False)
    out = tmp_path / "m"
    assert main(_args(root, paths, out, "--val-fraction", "0", pairs=path)) == 2
    err = capsys.readouterr().err
    assert "--dna given but only 1 training item(s) have a paired DNA profile" in err
    assert _no_bundle(out)


def test_an_epoch_without_optimiser_step_saves_nothing(tmp_path, capsys):
    # Two RNA-only and two DNA-only patients, batches of 2: a batch with one of each has no
    # loss (InfoNCE needs 2 items of a modality). Seeds differ in how the batches fall.
    c = make_cohort(n_patients=4, seed=1, modality=(0.0, 0.5, 0.5))
    paths = c.write(tmp_path / "cohort")
    write_feature_bags(c, tmp_path / "feats", dim=16, n_patches=(20, 40))
    outcomes = {}
    for seed in range(6):
        out = tmp_path / f"m{seed}"
        args = _args(
            tmp_path,
            paths,
            out,
            "--batch-size",
            "2",
            "--val-fraction",
            "0",
            "--min-train-items",
            "4",
            "--seed",
            str(seed),
        )
        outcomes[seed] = main(args)
        err = capsys.readouterr().err
        if outcomes[seed] == 2:
            assert "epoch 1 made no optimiser step" in err and "no bundle was written" in err
            assert _no_bundle(out) and not (out / "training_log.jsonl").exists()
        else:
            assert outcomes[seed] == 0
            log = _log(out)
            assert log[0]["optimizer_steps"] >= 1 and np.isfinite(log[0]["train_loss"])
            assert (out / "model.safetensors").exists()
    assert 2 in outcomes.values(), outcomes


def test_without_validation_the_best_epoch_is_by_training_loss(cohort, tmp_path, capsys):
    root, paths = cohort
    out = tmp_path / "m"
    assert main(_args(root, paths, out, "--val-fraction", "0", "--epochs", "3")) == 0
    cap = capsys.readouterr()
    log = _log(out)
    assert not [k for row in log for k in row if k.startswith("val_") and k != "val_seconds"]
    assert {row["selected_by"] for row in log} == {"train_loss"}
    losses = [row["train_loss"] for row in log]
    best = int(np.argmin(losses)) + 1
    assert f"best epoch {best} (train_loss = {min(losses):.4f}" in cap.out
    assert "lowest training loss: no validation split" in cap.out
    assert "val_mean_recall" not in cap.out
    assert [row["best"] for row in log] == [
        loss < min(losses[:i], default=np.inf) for i, loss in enumerate(losses)
    ]
    training = _training(out)
    assert training["selected_by"] == "train_loss" and training["epoch"] == best
    assert training["train_loss"] == pytest.approx(min(losses))
    items = training["data"]["items"]
    assert items["val"] == 0 and items["train"] == N_PATIENTS  # nothing held out
    assert "split: none (--val-fraction 0)" in cap.err


def test_val_fraction_sets_the_random_split(cohort, tmp_path, capsys):
    root, paths = cohort
    out = tmp_path / "m"
    assert main(_args(root, paths, out, "--val-fraction", "0.25")) == 0
    cap = capsys.readouterr()
    items = _training(out)["data"]["items"]
    assert items["val"] == 10 and items["train"] == N_PATIENTS - 10
    row = _log(out)[0]
    assert row["selected_by"] == "val_mean_recall" and "val_mean_recall" in row
    assert f"(val_mean_recall = {row['val_mean_recall']:.4f}, highest on 10 validation" in cap.out


def _meta(paths, tmp_path, edit) -> str:
    meta = pd.read_csv(paths["metadata"], dtype=str)
    meta = edit(meta)
    path = tmp_path / "meta.csv"
    meta.to_csv(path, index=False)
    return str(path)


def test_split_column_and_val_fraction_conflict(cohort, tmp_path, capsys):
    root, paths = cohort
    out = tmp_path / "m"
    args = _args(root, paths, out, "--val-fraction", "0", metadata=paths["metadata"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--val-fraction 0.0 applies only without a split column" in err and _no_bundle(out)


def test_split_column_without_val_rows_trains_without_validation(cohort, tmp_path, capsys):
    root, paths = cohort
    meta = _meta(paths, tmp_path, lambda m: m.assign(split=m.split.replace("val", "train")))
    out = tmp_path / "m"
    assert main(_args(root, paths, out, metadata=meta)) == 0
    cap = capsys.readouterr()
    n_test = int((pd.read_csv(meta).split == "test").sum())
    items = _training(out)["data"]["items"]
    assert (items["train"], items["val"], items["held_out"]) == (N_PATIENTS - n_test, 0, n_test)
    assert "train_loss = " in cap.out and "no validation split" in cap.out
    assert _log(out)[0]["selected_by"] == "train_loss"


def test_split_values_are_normalised_and_unknown_ones_refused(cohort, tmp_path, capsys):
    root, paths = cohort
    spelled = {"train": "Train", "val": "Validation", "test": " TEST"}
    meta = _meta(paths, tmp_path, lambda m: m.assign(split=m.split.map(spelled)))
    want = pd.read_csv(paths["metadata"]).split.value_counts()
    out = tmp_path / "m"
    assert main(_args(root, paths, out, metadata=meta)) == 0
    items = _training(out)["data"]["items"]
    assert (items["train"], items["val"], items["held_out"]) == (
        want["train"],
        want["val"],
        want["test"],
    )
    meta = _meta(paths, tmp_path, lambda m: m.assign(split=m.split.replace("val", "dev")))
    capsys.readouterr()
    assert main(_args(root, paths, tmp_path / "m2", metadata=meta)) == 2
    assert "unknown split value(s) dev" in capsys.readouterr().err


def test_split_column_keyed_by_slide_id_is_used(cohort, tmp_path):
    root, paths = cohort
    meta = pd.read_csv(paths["metadata"], dtype=str)
    pairs = pd.read_csv(paths["pairs"], dtype=str).drop_duplicates("slide_id")
    by_slide = pairs.merge(meta, on="patient_id")[["slide_id", "split"]]
    path = tmp_path / "slides_meta.csv"
    by_slide.to_csv(path, index=False)
    out = tmp_path / "m"
    assert main(_args(root, paths, out, metadata=path)) == 0
    want = meta.split.value_counts()
    items = _training(out)["data"]["items"]
    assert (items["train"], items["val"], items["held_out"]) == (
        want["train"],
        want["val"],
        want["test"],
    )


def test_split_conflicts_and_unmatched_metadata_are_refused(cohort, tmp_path, capsys):
    root, paths = cohort
    meta = pd.read_csv(paths["metadata"], dtype=str)
    pairs = pd.read_csv(paths["pairs"], dtype=str).drop_duplicates("slide_id")
    rows = pairs.merge(meta, on="patient_id")[["slide_id", "patient_id", "split"]]
    victim = rows.patient_id.iloc[0]
    other = "val" if rows.split.iloc[0] != "val" else "train"
    rows = pd.concat([rows, pd.DataFrame({"patient_id": [victim], "split": [other]})])
    path = tmp_path / "conflict.csv"
    rows.to_csv(path, index=False)
    assert main(_args(root, paths, tmp_path / "m", metadata=path)) == 2
    err = capsys.readouterr().err
    assert "in several splits" in err and victim in err
    path = _meta(paths, tmp_path, lambda m: m.assign(patient_id="X-" + m.patient_id))
    assert main(_args(root, paths, tmp_path / "m2", metadata=path)) == 2
    err = capsys.readouterr().err
    assert f"names none of the {N_PATIENTS} matched items" in err and "X-SYNT" in err


def test_features_are_reconciled_as_the_index_does(cohort, tmp_path, capsys):
    """The trainer takes the slides the indexer takes from a FEATURES_DIR (one reconciliation,
    ``threads_search.features.reconcile``): h5 files without a status row made with the
    folder's settings are adopted, unusable files and rows are left out and reported; no path
    is built from an id by hand (a row naming ``../x`` never reads a file outside ``h5/``)."""
    import shutil

    import h5py

    from threads_search.features.extract import h5_path
    from threads_search.features.reconcile import feature_sources
    from trainer.config import TrainConfig
    from trainer.data import load_training_data
    from trainer.matching import format_report

    root, paths = cohort
    feats = tmp_path / "feats"
    shutil.copytree(root / "feats", feats)
    st = pd.read_parquet(feats / "status.parquet")
    ids = sorted(st.slide_id)
    rowless, foreign, missing = ids[:2], ids[2], ids[3]
    with h5py.File(h5_path(feats, foreign), "a") as f:
        f["coords"].attrs["config_hash"] = "0123456789abcdef"
    h5_path(feats, missing).unlink()
    shutil.copy(h5_path(feats, ids[4]), feats / "outside.h5")  # a real file outside h5/
    evil = st[st.slide_id == ids[4]].assign(slide_id="../outside")
    st = pd.concat([st[~st.slide_id.isin([*rowless, foreign])], evil])
    st.to_parquet(feats / "status.parquet", index=False)
    pairs = pd.read_csv(paths["pairs"], dtype=str)
    pairs = pd.concat([pairs, pairs.head(1).assign(slide_id="../outside")])
    pairs.to_csv(tmp_path / "pairs.csv", index=False)

    cfg = TrainConfig(
        features=str(feats),
        pairs=str(tmp_path / "pairs.csv"),
        rna=paths["rna"],
        dna=paths["maf"],
        val_fraction=0,
        min_train_items=2,
    )
    data = load_training_data(cfg)
    used = {s for it in data.items for s in it.slides}
    indexable = set(feature_sources(feats).sources)
    assert used == indexable & set(pairs.slide_id)
    assert set(rowless) <= used and not {foreign, missing, "../outside"} & used
    rep = data.report
    assert rep["feature_files_adopted"]["count"] == 2
    assert sorted(rep["feature_files_adopted"]["examples"]) == rowless
    assert rep["feature_files_unusable"]["count"] == 3
    text = format_report(rep)
    assert "2 h5 file(s) without a status row adopted" in text
    assert "3 unusable" in text and foreign in text and "0123456789abcdef" in text


def test_a_killed_runs_temporaries_are_removed_and_progress_shows_each_epoch(
    cohort, tmp_path, capsys
):
    """Every file of MODEL_DIR is written through ``threads_search.atomic``; the temporaries a
    killed run left (its pid gone) are removed by the next run (before: left forever). Progress
    (rich) prints one line per epoch unless --quiet."""
    root, paths = cohort
    out = tmp_path / "m"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphans = [
        out / "checkpoints" / f".state.tmp-{gone.pid}-0123abcd.pt",
        out / f".training_log.tmp-{gone.pid}-0123abcd.jsonl",
    ]
    for p in orphans:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half written")
    loud = [a for a in _args(root, paths, out, "--epochs", "2") if a != "--quiet"]
    assert main(loud) == 0
    assert not any(p.exists() for p in orphans)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert (out / "checkpoints" / "state.pt").exists() and len(_log(out)) == 2
    printed = capsys.readouterr().out
    assert "epoch 1: {" in printed and "epoch 2: {" in printed
    assert main(_args(root, paths, tmp_path / "quiet")) == 0
    assert "epoch 1:" not in capsys.readouterr().out
