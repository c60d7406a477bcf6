"""Slide → tissue → patch plan on written slides, the real SVS, discovery and the demo CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.synth import write_slide
from threads_search.wsi import discover_slides, open_slide
from threads_search.wsi.plan import plan_slide


def _block_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Downsample a level-0 bool mask to ``shape`` by majority over blocks."""
    h, w = shape
    ys = (np.arange(h + 1) * mask.shape[0] / h).astype(int)
    xs = (np.arange(w + 1) * mask.shape[1] / w).astype(int)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tot = integral[np.ix_(ys[1:], xs[1:])] - integral[np.ix_(ys[:-1], xs[1:])]
    tot = tot - integral[np.ix_(ys[1:], xs[:-1])] + integral[np.ix_(ys[:-1], xs[:-1])]
    area = np.outer(np.diff(ys), np.diff(xs))
    return tot / area >= 0.5


@pytest.mark.parametrize("fmt, mpp, seed", [("tiff", 0.5, 1), ("svs", 0.25, 2), ("tiff", 0.25, 3)])
def test_tissue_found_on_written_slides(slide_factory, fmt, mpp, seed):
    s = slide_factory(fmt=fmt, mpp=mpp, width=4096, height=3072, seed=seed)
    plan = plan_slide(s.path)
    truth = _block_mask(s.tissue_mask, plan.tissue.mask.shape)
    found = plan.tissue.mask
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou >= 0.9, f"IoU {iou:.3f}"
    true_mm2 = s.tissue_mask.sum() * (mpp / 1000) ** 2
    assert plan.tissue.area_mm2 == pytest.approx(true_mm2, rel=0.1)
    assert len(plan.coords) > 0
    # Patches lie on tissue: most of each kept patch is tissue in the generator's mask.
    side = round(512 * 0.5 / mpp)
    fracs = [s.tissue_mask[y : y + side, x : x + side].mean() for x, y in plan.coords]
    assert np.median(fracs) > 0.5 and min(fracs) > 0.1


def test_blank_slide_has_no_tissue(tmp_path):
    rng = np.random.default_rng(0)
    blank = np.clip(238 + rng.normal(0, 2, (2048, 3072, 3)), 0, 255).astype(np.uint8)
    plan = plan_slide(write_slide(tmp_path / "blank.tiff", blank, 0.5))
    assert plan.tissue.mask.sum() == 0 and plan.tissue.area_mm2 == 0
    assert len(plan.coords) == 0 and plan.tissue.contours == []


def test_real_aperio_svs(real_dir):
    path = real_dir / "cmu_small_region.svs"
    with open_slide(path) as s:
        assert s.vendor == "aperio"
        assert s.mpp == pytest.approx(0.499, abs=1e-3) and not s.mpp_info.estimated
        assert s.dimensions == (2220, 2967)
        assert {"label", "macro", "thumbnail"} <= set(s.associated_images)
    plan = plan_slide(path)
    frac = plan.tissue.mask.mean()
    assert 0.15 < frac < 0.6, f"tissue fraction {frac:.2f}"  # skin covers roughly a third
    assert len(plan.coords) > 0
    with open_slide(path) as s:
        for x, y in plan.coords[:8]:
            patch = s.read_patch(int(x), int(y), 512, 0.5)
            assert patch.shape == (512, 512, 3)
            hsv_sat = patch.max(-1).astype(int) - patch.min(-1)
            assert (hsv_sat > 25).mean() > 0.2, "patch is background"
            assert patch.mean() < 225


def test_discover_slides_ids_are_stems_unless_they_collide(tmp_path):
    for rel in ("a/case1.svs", "a/case2.tiff", "b/case1.svs", "b/notes.txt", "b/.hidden.svs"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    refs = discover_slides([tmp_path])
    assert [r.slide_id for r in refs] == ["a/case1.svs", "b/case1.svs", "case2"]
    assert discover_slides([tmp_path / "b" / "notes.txt"])[0].slide_id == "notes"


def test_cli_help_and_demo(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "features" in res.output and "demo" in res.output
    res = runner.invoke(
        app,
        ["demo", "--out", str(tmp_path), "--patients", "8", "--epochs", "2"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "features: 8 slides" in out and "µm/px" in out
    assert "truncated" in out and "no-mpp" in out  # broken files reported with reasons
    assert "slides matching the RNA profile" in out and "molecular prompting" in out
    assert "regions most like" in out and f"search {tmp_path / 'index'} --region " in out
    assert f"threads-search ui {tmp_path / 'index'}" in out
    # step 6 prints the evaluate command; 8 patients are too few for its folds: said, not fatal
    assert f"threads-search evaluate {tmp_path / 'index'} --labels" in out
    assert "evaluation skipped: " in out or "Δ" in out
    assert len(list((tmp_path / "features" / "h5").glob("*.h5"))) == 8
    assert (tmp_path / "index" / "index.json").exists()


def test_coarse_slide_is_refused_unless_the_user_means_it(real_dir, slide_factory):
    """The frozen TCGA slide has no resolution; given its real 4 µm/px, 0.5 µm/px patches would
    be blown up 8x from 64 px: refused with the values and both fixes. Each fix works."""
    from dataclasses import replace

    from threads_search.wsi import SlideError
    from threads_search.wsi.plan import SegmentConfig, apply_options

    path = real_dir / "tcga_cr7395_frozen_ts1.svs"
    with pytest.raises(SlideError) as e:
        plan_slide(path, mpp=4.0)
    msg = e.value.detail
    assert e.value.reason == "too-coarse" and "tcga_cr7395" in str(e.value)
    for words in ("4 µm/px (override)", "0.5 µm/px", "8.0x", "--target-mpp 4", "--max-upsample 8"):
        assert words in msg, words
    allowed = plan_slide(path, mpp=4.0, config=apply_options(SegmentConfig(), max_upsample=8))
    assert len(allowed.coords) > 100  # upsampled patches, as asked
    native = SegmentConfig()
    native.grid = replace(native.grid, patch_size=64, target_mpp=4.0)
    assert len(plan_slide(path, mpp=4.0, config=native).coords) > 1000
    ten_x = slide_factory(fmt="tiff", mpp=1.0, width=2048, height=1536, seed=4)
    assert len(plan_slide(ten_x.path).coords) > 0  # 2x (10x scanner for 20x patches) is fine


def test_segment_settings_round_trip_and_options():
    from threads_search.errors import ConfigError
    from threads_search.wsi.plan import SegmentConfig, apply_options

    old_tissue = {"exclude_pen": False, "pen_dilate_um": 16.0, "min_saturation": 0.07}
    old = {"tissue": old_tissue, "grid": {"patch_size": 256}}
    cfg = SegmentConfig.from_saved(old)  # settings written by an older version still load
    assert cfg.tissue.min_saturation == 0.07 and cfg.grid.patch_size == 256
    with pytest.raises(ConfigError, match="exclude_pen.*accepted: thumb_mpp, min_saturation"):
        SegmentConfig.from_dict(old)  # hand-written settings: a key that does not exist is refused
    with pytest.raises(ConfigError, match="'colour'.*accepted:"):
        SegmentConfig.from_saved({"tissue": {"colour": 1}})  # only keys that existed are dropped
    d = apply_options(cfg, exclude_ink=False, min_od=0.2, max_upsample=4).to_dict()
    assert d["tissue"]["exclude_ink"] is False and d["tissue"]["min_od"] == 0.2
    assert d["grid"]["max_upsample"] == 4 and SegmentConfig.from_dict(d).to_dict() == d
    for name, value in [("min_saturation", 2.0), ("max_upsample", 0.5), ("colour", 1)]:
        with pytest.raises(ConfigError, match=name):  # a ValueError too
            apply_options(cfg, **{name: value})


def test_features_cli_tissue_options_are_recorded(real_dir, tmp_path):
    """Tissue settings are options of `features` and land in FEATURES_DIR/config.json."""
    import json

    runner = CliRunner()
    slide = str(real_dir / "cmu_small_region.svs")
    out = tmp_path / "feats"
    given = {
        "--min-od": ("min_od", 0.2),
        "--min-tissue-area-mm2": ("min_area_mm2", 0.01),
        "--max-hole-area-mm2": ("max_hole_area_mm2", 0.1),
        "--ink-red-excess": ("ink_red_excess", 0.2),
        "--min-saturation": ("min_saturation", 0.06),
        "--max-saturation": ("max_saturation", 0.2),
    }
    args = ["features", slide, "--out", str(out), "--workers", "0", "--no-ink-removal"]
    args += [a for flag, (_, v) in given.items() for a in (flag, str(v))]
    res = runner.invoke(app, [*args, "--max-upsample", "3"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    seg = json.loads((out / "config.json").read_text())["segment"]
    assert seg["tissue"]["exclude_ink"] is False
    for name, value in given.values():
        assert seg["tissue"][name] == value
    assert seg["grid"]["max_upsample"] == 3.0 and "ink_on_tissue_um" in seg["tissue"]
    for bad in (["--min-saturation", "2"], ["--mpp", "90"]):
        res = runner.invoke(app, ["features", slide, "--out", str(tmp_path / "x"), *bad])
        assert res.exit_code == 2 and ("min_saturation" in res.output or "plausible" in res.output)
