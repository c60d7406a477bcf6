"""Slide → tissue → patch plan on written slides, the real SVS, discovery and the demo CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.synth import write_slide
from threads_search.wsi import discover_slides, open_slide
from threads_search.wsi.segment import plan_slide


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
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--patients", "8", "--epochs", "2"],
                        env={"COLUMNS": "200"})  # fmt: skip
    assert res.exit_code == 0, res.output
    out = res.output
    assert "features: 8 slides" in out and "µm/px" in out
    assert "truncated" in out and "no-mpp" in out  # broken files reported with reasons
    assert "slides matching the RNA profile" in out and "molecular prompting" in out
    assert f"threads-search ui {tmp_path / 'index'}" in out
    assert len(list((tmp_path / "features" / "h5").glob("*.h5"))) == 8
    assert (tmp_path / "index" / "index.json").exists()
