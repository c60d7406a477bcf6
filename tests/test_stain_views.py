"""Stain views (issue 14 item 2): ``features --stain-views N`` writes N re-stained feature copies
per slide (HED jitter of the slide's own stain vectors), the same on every run, without changing
the features or their hash; ``train`` swaps training bags for them (``--stain-view-p``), never
validation bags; on the real slides the views change the stain colour and keep glass white."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
from conftest import train_argv, training_log
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.features import default_config
from threads_search.features.extract import encode_looks, encode_plan, h5_path
from threads_search.features.h5io import read_features, read_views
from threads_search.features.stain_views import view_transforms
from threads_search.synth.cohort import make_cohort
from threads_search.synth.cohort_features import write_feature_bags
from threads_search.wsi.plan import plan_slide
from threads_search.wsi.stain_augment import MAX_ANGLE_DEG, jitter, view_rng
from threads_search.wsi.stain_norm import builtin_reference, glass_weight
from trainer.cli import main
from trainer.config import TrainConfig
from trainer.data import load_training_data

runner = CliRunner()
SMALL = ["--head-dim", "32", "--attn-dim", "16", "--heads", "2", "--quiet", "--threads", "2"]


def _angles(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    cos = (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)
    return np.rad2deg(np.arccos(np.clip(cos, -1, 1)))


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_jitter_turns_stains_within_range_and_is_the_same_per_slide_and_view(strength):
    ref = builtin_reference("macenko")
    turns, scales = [], []
    for v in range(200):
        j = jitter(ref, view_rng("slide-a", v), strength)
        assert (np.asarray(j.he) > 0).all(), "optical densities stay positive"
        turns.append(_angles(ref.he, j.he))
        scales.append(np.log(np.asarray(j.max_c) / np.asarray(ref.max_c)))
    turns, scales = np.array(turns), np.abs(np.array(scales))
    assert turns.max() <= MAX_ANGLE_DEG * strength + 0.5
    assert turns.mean() > 0.3 * MAX_ANGLE_DEG * strength  # really turned, not a no-op
    assert scales.max() <= 0.4 * strength + 1e-6 and scales.mean() > 0.1 * strength
    assert jitter(ref, view_rng("a", 3), strength) == jitter(ref, view_rng("a", 3), strength)
    assert jitter(ref, view_rng("slide-a", 3)) != jitter(ref, view_rng("slide-b", 3))
    with pytest.raises(ValueError, match="Macenko"):
        jitter(builtin_reference("reinhard"), view_rng("a", 0))


@pytest.fixture(scope="module")
def views_run(slide_factory, tmp_path_factory):
    """``features --stain-views 2`` and a plain run of the same slide."""
    root = tmp_path_factory.mktemp("views")
    s = slide_factory("tiff", 0.5, 2048, 1536, seed=3)
    (root / "slides").mkdir()
    (root / "slides" / "a.tiff").symlink_to(s.path)
    base = ["features", str(root / "slides"), "--workers", "0", "--patch-size", "256"]
    for name, extra in (("views", ["--stain-views", "2"]), ("plain", [])):
        res = runner.invoke(app, [*base, "--out", str(root / name), *extra])
        assert res.exit_code == 0, res.output
    return root, base


def test_features_cli_writes_views_beside_unchanged_features(views_run):
    root, _ = views_run
    with_v = read_features(root / "views" / "h5" / "a.h5")
    plain = read_features(root / "plain" / "h5" / "a.h5")
    np.testing.assert_array_equal(with_v.features, plain.features)  # features unchanged
    np.testing.assert_array_equal(with_v.coords, plain.coords)
    cfg = json.loads((root / "views" / "config.json").read_text())
    plain_cfg = json.loads((root / "plain" / "config.json").read_text())
    assert cfg["config_hash"] == plain_cfg["config_hash"]  # an index accepts either folder
    assert cfg["stain_views"] == 2 and cfg["stain_jitter"] == 1.0
    views = read_views(root / "views" / "h5" / "a.h5")
    assert views.shape == (2, *plain.features.shape) and np.isfinite(views).all()
    assert read_views(root / "plain" / "h5" / "a.h5") is None
    moved = [np.linalg.norm(v - plain.features, axis=1).mean() for v in views]
    spread = np.linalg.norm(plain.features - plain.features.mean(0), axis=1).mean()
    assert min(moved) > 0.05 * spread, "each view re-stains the patches"
    assert np.linalg.norm(views[0] - views[1], axis=1).mean() > 0.05 * spread


def test_views_are_the_same_on_a_rerun_and_one_folder_holds_one_setting(views_run):
    root, base = views_run
    res = runner.invoke(app, [*base, "--out", str(root / "again"), "--stain-views", "2"])
    assert res.exit_code == 0, res.output
    a = read_views(root / "views" / "h5" / "a.h5")
    np.testing.assert_allclose(read_views(root / "again" / "h5" / "a.h5"), a, atol=1e-5)
    for folder, extra in (
        ("views", []),
        ("views", ["--stain-views", "3"]),
        ("plain", ["--stain-views", "1"]),
    ):
        res = runner.invoke(app, [*base, "--out", str(root / folder), *extra])
        assert res.exit_code == 2 and "--stain-views" in res.output, res.output
        assert "another --out" in " ".join(res.output.split())
    res = runner.invoke(
        app, ["features", "--import-h5", str(root), "--out", str(root / "i"), "--stain-views", "1"]
    )
    assert res.exit_code == 2 and "--stain-views" in res.output


@pytest.mark.real
def test_real_slide_views_change_the_stain_keep_glass_and_give_no_nan(real_dir):
    cfg = default_config("hed-texture", stain_views=3)
    plan = plan_slide(real_dir / "cmu_small_region.svs", config=cfg.segment)
    transforms, note = view_transforms(plan, cfg, None)
    assert note == "" and len(transforms) == 3
    from threads_search.wsi.reader import PatchDataset

    grid = cfg.segment.grid
    ds = PatchDataset(plan.path, plan.coords[:8], grid.patch_size, grid.target_mpp, plan.mpp)
    patches = np.stack([ds.read(i) for i in range(len(ds))])
    white = np.full((64, 64, 3), 250, np.uint8)
    for t in transforms:
        out = t(patches)
        assert out.shape == patches.shape and out.dtype == np.uint8
        flat, orig = out.reshape(-1, 3).astype(float), patches.reshape(-1, 3).astype(float)
        tissue = glass_weight(patches.reshape(-1, 3)) >= 1
        assert np.abs(flat[tissue] - orig[tissue]).mean() > 3.0, "tissue colour changes"
        np.testing.assert_array_equal(t(white), white)  # glass stays glass
    # a slide too pale for a Macenko fit gets no views, and says why
    pale = dataclasses.replace(plan, coords=plan.coords[:0])
    transforms, note = view_transforms(pale, cfg, None)
    assert transforms == [] and "no stain views" in note
    feats = encode_plan(plan, _encoder(), cfg, stain=None)
    assert np.isfinite(feats).all()


def _encoder():
    from threads_search.patch_encoders import create_patch_encoder

    return create_patch_encoder("hed-texture")


@pytest.fixture(scope="module")
def cohort_with_views(tmp_path_factory):
    """A 60-patient feature-level cohort (16-d bags) whose every h5 also holds 2 views: the
    features plus a large constant (so a swapped bag is unmistakable)."""
    root = tmp_path_factory.mktemp("view_cohort")
    cohort = make_cohort(n_patients=60, seed=5)
    paths = cohort.write(root / "cohort")
    write_feature_bags(cohort, root / "feats", dim=16, n_patches=(10, 30))
    for sid in cohort.slides.slide_id:
        with h5py.File(h5_path(root / "feats", sid), "r+") as f:
            x = f["features"][()]
            f.create_dataset("features_views", data=np.stack([x + 100.0, x - 100.0]))
    return root, paths


def _cfg(root, paths, **kw) -> TrainConfig:
    return TrainConfig(
        features=str(root / "feats"),
        pairs=str(paths["pairs"]),
        out=str(root / "unused"),
        rna=str(paths["rna"]),
        **kw,
    )


def test_training_bags_are_swapped_for_views_and_validation_bags_never(cohort_with_views):
    root, paths = cohort_with_views
    data = load_training_data(_cfg(root, paths))
    train, val = data.split("train"), data.split("val")
    assert train and val
    assert set(data.views) == {s for it in train for s in it.slides}  # training slides only
    sv = data.report["stain_views"]
    assert sv == {
        "training_slides": len(data.views),
        "with_views": len(data.views),
        "views_per_slide": 2,
        "p": 0.5,
    }
    rng = np.random.default_rng(0)
    it = train[0]
    plain = data.bag(it)
    np.testing.assert_array_equal(data.bag(it, rng, 0.0), plain)
    swapped = [data.bag(it, rng, 1.0) for _ in range(20)]
    offsets = {round(float((b - plain).mean())) for b in swapped}
    assert offsets == {100, -100}  # both views drawn, always swapped at p=1
    halves = [not np.array_equal(data.bag(it, rng, 0.5), plain) for _ in range(400)]
    assert 0.4 < np.mean(halves) < 0.6
    off = load_training_data(_cfg(root, paths, stain_view_p=0.0))
    assert off.views == {} and "stain_views" not in off.report


def test_training_uses_the_views_and_says_so(cohort_with_views, tmp_path, capsys):
    root, paths = cohort_with_views
    logs = {}
    for p in ("0", "1"):
        out = tmp_path / p
        argv = train_argv(
            root / "feats",
            paths,
            out,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            *SMALL,
            "--stain-view-p",
            p,
            dna=False,
        )
        argv.remove("--quiet")
        assert main(argv) == 0
        logs[p] = training_log(out)[0]
    said = capsys.readouterr()
    assert "stain views: " in said.out + said.err and "p=1.0" in said.out + said.err
    assert logs["0"]["train_loss"] != pytest.approx(logs["1"]["train_loss"], rel=1e-3)
    bad = train_argv(root / "feats", paths, tmp_path / "bad", "--stain-view-p", "1.5", dna=False)
    assert main(bad) == 2


def test_batch_and_per_patch_encoders_give_the_same_views(slide_factory):
    """The reader-process path (per-patch CPU encoders) and the in-process path (batch
    encoders, e.g. on a GPU) encode every look alike."""
    cfg = default_config("hed-texture", patch_size=256, stain_views=2, workers=0)
    plan = plan_slide(slide_factory("tiff", 0.5, 2048, 1536, seed=3).path, config=cfg.segment)
    looks, note = view_transforms(plan, cfg, None)
    assert note == "" and len(looks) == 2
    per_patch = _encoder()
    batch = _encoder()
    batch.cpu_per_patch = False
    a = encode_looks(plan, per_patch, cfg, [None, *looks])
    b = encode_looks(plan, batch, cfg, [None, *looks])
    assert a.shape == (3, len(plan.coords), per_patch.spec.dim)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a[0], encode_plan(plan, per_patch, cfg))
