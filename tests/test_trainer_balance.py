"""Stain-invariant training (issue 14): ``train --balance-by COLUMN`` (one site per batch,
within-site validation) and ``--augment-by COLUMN`` (bags re-styled to another site's feature
statistics), on a feature-level cohort whose sites shift every patch feature and, in the
training split, go with the subtype."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train_argv, training_log
from safetensors.numpy import load_file

from threads_search.features.extract import h5_path
from threads_search.models.bundle import load_model
from threads_search.synth.cohort import make_cohort
from threads_search.synth.cohort_features import write_feature_bags
from trainer.augment import SiteStyle
from trainer.balance import MISSING, GroupedBatches
from trainer.cli import main
from trainer.config import TrainConfig
from trainer.data import collate, load_training_data
from trainer.state import load_state
from trainer.validate import validate

SMALL = ["--head-dim", "32", "--attn-dim", "16", "--heads", "2", "--quiet", "--threads", "2"]
N_SITES, OFFSET = 3, 6.0  # sites and the norm of each site's shift of every patch feature
LONELY = "site_lonely"  # a site with one training patient


def _confounded_sites(patients: pd.DataFrame, p: float, seed: int) -> np.ndarray:
    """Site index per patient: in the training split the subtype's home site (subtype mod
    N_SITES) with probability ``p``, else uniform; uniform in the other splits."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, N_SITES, len(patients))
    home = patients.subtype_index.to_numpy() % N_SITES
    take = (patients.split.to_numpy() == "train") & (rng.random(len(patients)) < p)
    return np.where(take, home, site)


@pytest.fixture(scope="module")
def site_cohort(tmp_path_factory):
    """A 120-patient feature-level cohort (32-d bags) with our own site column: each site adds
    a fixed offset of norm OFFSET to every patch feature of its patients' bags, and site is
    confounded with subtype (0.9) in training. One training patient is alone at ``LONELY``
    and one has no site. Returns (root, paths, metadata frame with ``site``)."""
    root = tmp_path_factory.mktemp("site_cohort")
    cohort = make_cohort(n_patients=120, seed=11)
    paths = cohort.write(root / "cohort")
    write_feature_bags(cohort, root / "feats", dim=32, n_patches=(30, 80))
    pats = cohort.patients.reset_index(drop=True)
    site = _confounded_sites(pats, 0.9, seed=1)
    offsets = np.random.default_rng(2).standard_normal((N_SITES + 1, 32))
    offsets *= OFFSET / np.linalg.norm(offsets, axis=1, keepdims=True)
    names = np.array([f"site_{s + 1}" for s in site], dtype=object)
    train_rows = np.flatnonzero(pats.split.to_numpy() == "train")
    names[train_rows[0]] = LONELY
    site[train_rows[0]] = N_SITES
    for pid, s in zip(pats.patient_id, site, strict=True):
        for sid in cohort.slides.slide_id[cohort.slides.patient_id == pid]:
            with h5py.File(h5_path(root / "feats", sid), "r+") as f:
                f["features"][...] = f["features"][()] + offsets[s].astype(np.float32)
    names[train_rows[1]] = None  # no site: the "(missing)" group
    meta = cohort.metadata.assign(site=names)
    meta.to_csv(root / "metadata.csv", index=False)
    return root, paths, meta


def _args(root, paths, out, *extra, metadata=None):
    extra = ("--batch-size", "16", *SMALL, *extra)
    meta = metadata or root / "metadata.csv"
    return train_argv(root / "feats", paths, out, *extra, metadata=meta)


def _cfg(root, paths, **kw) -> TrainConfig:
    return TrainConfig(
        features=str(root / "feats"),
        pairs=str(paths["pairs"]),
        out=str(root / "unused"),
        rna=str(paths["rna"]),
        dna=str(paths["maf"]),
        metadata=str(root / "metadata.csv"),
        **kw,
    )


def test_balanced_batches_hold_one_site_and_use_every_item_once(site_cohort):
    root, paths, meta = site_cohort
    data = load_training_data(_cfg(root, paths, balance_by="site", batch_size=16))
    train = data.split("train")
    part = data.report["groups"]["site"]
    # the lone site's item and the lone item without a site go to the remainder
    assert part["remainder"] == {"values": sorted([LONELY, MISSING]), "items": 2}
    assert part["missing"]["count"] == 1 and part["values"][MISSING]["train"] == 1
    sampler = GroupedBatches(train, "site", 16)
    assert [it.groups["site"] for it in sampler.remainder] == sorted([LONELY, MISSING])
    for epoch in range(2):
        batches = sampler.epoch(np.random.default_rng([0, epoch]))
        assert len(batches) == len(sampler)
        keys = [it.key for b in batches for it in b]
        assert sorted(keys) == sorted(it.key for it in train)  # every item exactly once
        mixed = 0
        for b in batches:
            assert 2 <= len(b) <= 16
            sites = {it.groups["site"] for it in b}
            if sites & {LONELY, MISSING}:
                mixed += 1  # the remainder batch
                assert b[0] in sampler.remainder or b[1] in sampler.remainder
                continue
            assert len(sites) == 1, sites
        assert mixed == 1
    # the unbalanced order of the same items mixes sites within batches
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    plain = [{train[j].groups["site"] for j in order[i : i + 16]} for i in range(0, 64, 16)]
    assert any(len(s) > 1 for s in plain)


def test_training_with_both_options_resumes_exactly_and_selects_within_site(
    site_cohort, tmp_path, capsys
):
    root, paths, _ = site_cohort
    opts = ("--balance-by", "site", "--augment-by", "site", "--augment-p", "0.7")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(root, paths, full, "--epochs", "3", "--lr", "1e-3", *opts)) == 0
    err = capsys.readouterr().err
    assert "--balance-by, --augment-by site: items train/val per value" in err
    assert "remainder" in err and "(missing)" in err and "re-styling statistics" in err
    args = _args(root, paths, part, "--epochs", "3", "--lr", "1e-3", *opts)
    assert main([*args, "--stop-after-epochs", "1"]) == 0
    assert main([*args, "--resume"]) == 0
    a, b = training_log(full), training_log(part)
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b], rel=1e-5)
    wa = load_file(full / "last" / "model.safetensors")
    wb = load_file(part / "last" / "model.safetensors")
    for k in wa:
        assert np.allclose(wa[k], wb[k], atol=1e-5), k
    # the statistics are in the training state
    state = load_state(part)
    assert state["augment"]["column"] == "site" and len(state["augment"]["values"]) == 4
    # options recorded in the bundle
    training = json.loads((full / "config.json").read_text())["training"]
    assert training["balance_by"] == "site" and training["augment_by"] == "site"
    assert training["augment_p"] == 0.7
    assert training["data"]["groups"]["site"]["remainder"]["items"] == 2
    # selection uses the within-site recall, which is not the all-gallery one
    for h in a:
        within = [v for k, v in h.items() if k.endswith("_within")]
        assert h["val_mean_recall"] == pytest.approx(np.mean(within))
        assert "val_mean_recall_all" in h
    assert any(abs(h["val_mean_recall"] - h["val_mean_recall_all"]) > 1e-3 for h in a)
    assert training["selected_by"] == "val_mean_recall"
    best = max(a, key=lambda h: h["val_mean_recall"])
    assert training["epoch"] == best["epoch"]
    assert training["metrics"]["val_mean_recall"] == best["val_mean_recall"]


def test_validation_is_never_augmented(site_cohort, tmp_path):
    root, paths, _ = site_cohort
    out = tmp_path / "aug"
    opts = ("--augment-by", "site", "--augment-p", "1", "--epochs", "1")
    assert main(_args(root, paths, out, *opts)) == 0
    logged = training_log(out)[0]
    data = load_training_data(_cfg(root, paths, augment_by="site"))
    model = load_model(out)
    metrics = validate(model, data, data.split("val"), torch.device("cpu"))
    assert metrics, "the cohort has validation items"
    for k, v in metrics.items():
        assert logged[k] == pytest.approx(v, abs=1e-5), k


def test_augmentation_statistics_come_from_training_items_only(site_cohort):
    root, paths, _ = site_cohort
    data = load_training_data(_cfg(root, paths, augment_by="site"))
    train = data.split("train")
    style = SiteStyle.fit(data, train, "site")
    assert style.values == sorted(["site_1", "site_2", "site_3", LONELY])  # (missing) has none
    pooled = {
        v: np.concatenate([data.bag(it) for it in train if it.groups["site"] == v]).astype(
            np.float64
        )
        for v in style.values
    }
    for i, v in enumerate(style.values):
        assert np.allclose(style.mean[i], pooled[v].mean(0), atol=1e-6)
        assert np.allclose(style.std[i], pooled[v].std(0), atol=1e-6)
    every = SiteStyle.fit(data, data.items, "site")  # with the validation items: other stats
    assert not np.allclose(every.mean, style.mean)
    # re-styled patches of site_1 have site_2's mean and sd, per feature dimension
    x = style.restyle(pooled["site_1"], "site_1", "site_2").astype(np.float64)
    j = style.values.index("site_2")
    assert np.allclose(x.mean(0), style.mean[j], atol=1e-4)
    assert np.allclose(x.std(0), style.std[j], atol=1e-4)
    # in a batch: p=1 re-styles every bag with a site to another site, p=0 none
    batch = [it for it in train if it.groups["site"] in ("site_1", MISSING)][:6]
    feats, mask = collate([data.bag(it) for it in batch], 10_000, None)
    before = feats.clone()
    assert style.apply(feats, mask, batch, np.random.default_rng(0), 0.0) == 0
    assert torch.equal(feats, before)
    n = style.apply(feats, mask, batch, np.random.default_rng(0), 1.0)
    assert n == sum(it.groups["site"] != MISSING for it in batch)
    for i, it in enumerate(batch):
        changed = not torch.equal(feats[i], before[i])
        assert changed == (it.groups["site"] != MISSING)
        if changed:  # a proper re-styling to one of the other sites
            m = mask[i]
            got = feats[i, m].double().numpy()
            src = before[i, m].double().numpy()
            assert any(
                np.allclose(got, style.restyle(src, "site_1", t), atol=1e-4)
                for t in style.values
                if t != "site_1"
            )
            assert not np.allclose(got.mean(0), src.mean(0), atol=0.5)
        assert torch.equal(feats[i, ~mask[i]], before[i, ~mask[i]])  # padding untouched


@pytest.mark.parametrize(
    "how, words",
    [
        ("absent", ["'hospital'", "metadata", "columns"]),
        ("empty", ["'hospital'", "empty"]),
        ("single", ["'hospital'", "nothing to balance"]),
        ("no-metadata", ["--balance-by hospital", "--metadata"]),
    ],
)
def test_a_bad_column_is_refused_naming_it(site_cohort, tmp_path, capsys, how, words):
    root, paths, meta = site_cohort
    path = tmp_path / "meta.csv"
    if how == "empty":
        meta = meta.assign(hospital=np.nan)
    elif how == "single":
        meta = meta.assign(hospital="h1")
    meta.to_csv(path, index=False)
    args = _args(root, paths, tmp_path / "m", "--epochs", "1", "--balance-by", "hospital")
    if how == "no-metadata":
        i = args.index("--metadata")
        del args[i : i + 2]
    else:
        args[args.index("--metadata") + 1] = str(path)
    assert main(args) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    if how != "no-metadata":
        assert str(path) in err
    assert not (tmp_path / "m" / "config.json").exists()


def test_the_options_are_in_the_training_panel_with_their_help():
    from typer.testing import CliRunner

    from threads_search.cli import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    panel = res.output[res.output.index("╭─ Training ─") :]
    for option in ("--balance-by", "--augment-by", "--augment-p"):
        assert f" {option} " in panel, option
    assert "val_mean_recall_all" in panel and "remainder" in panel and "[default: 0.5]" in panel


def test_values_come_from_the_most_specific_rows_and_conflicts_are_refused(tmp_path):
    from trainer.balance import assign_groups
    from trainer.data import Item
    from trainer.errors import TrainingDataError

    def items():
        return [
            Item("P1-DX1", "P1", ["P1-DX1"], "P1-R", None),
            Item("P1-DX2", "P1", ["P1-DX2"], "P1-R", None),
            Item("P2", "P2", ["P2-DX1"], "P2-R", None),
            Item("P3", "P3", ["P3-DX1"], None, "P3-D", split="val"),
        ]

    path = tmp_path / "meta.csv"
    pd.DataFrame(
        {
            "slide_id": ["P1-DX1", "P1-DX2", None, None],
            "patient_id": ["P1", "P1", "P2", "P3"],
            "scanner": ["A", "B", "A", None],
        }
    ).to_csv(path, index=False)
    got = items()
    part = assign_groups(got, str(path), "scanner", "--balance-by")
    assert [it.groups["scanner"] for it in got] == ["A", "B", "A", MISSING]
    assert part["values"] == {
        "A": {"train": 2, "val": 0},
        "B": {"train": 1, "val": 0},
        MISSING: {"train": 0, "val": 1},
    }
    assert part["missing"] == {"count": 1, "examples": ["P3"]}
    # one bag holding both of P1's slides gets two values: refused, naming the bag and the fix
    bag = [Item("P1", "P1", ["P1-DX1", "P1-DX2"], "P1-R", None), *items()[2:]]
    with pytest.raises(TrainingDataError, match=r"P1 \(A/B\).*--bag-by slide"):
        assign_groups(bag, str(path), "scanner", "--balance-by")
