"""Tissue detection on painted and real thumbnails; GeoJSON and thumbnail outputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from threads_search.synth.paint import Morphology, blank, paint_tissue
from threads_search.wsi.tissue import (
    TissueParams,
    contours_to_geojson,
    detect_tissue,
    draw_contours,
    write_geojson,
    write_thumbnail_jpeg,
)

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
THUMB_MPP = 8.0


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f`` x ``f`` blocks (image cropped to whole blocks)."""
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:h, :w].astype(np.float64)
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


@functools.lru_cache(maxsize=8)
def _painted(seed: int, mpp: float, hue: float, density: float, fat: float):
    """Painted slide with pen marks and its 8 µm/px thumbnail, truth and pen masks."""
    m = Morphology(stain_hue=hue, nuclear_density=density, fat_fraction=fat, tumour_fraction=0.45)
    p = paint_tissue(3072, 2304, mpp=mpp, seed=seed, morphology=m, pen_marks=True)
    f = round(THUMB_MPP / mpp)
    thumb = np.clip(_block_mean(p.rgb, f) + 0.5, 0, 255).astype(np.uint8)
    truth = _block_mean(p.tissue_mask, f) >= 0.5
    pen = _block_mean(p.pen_mask, f) >= 0.5
    return thumb, truth, pen


CASES = [(0, 1.0, 0.0, 1.0, 0.15), (1, 0.5, 1.0, 2.0, 0.15), (2, 1.0, -1.0, 1.0, 0.5)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}-mpp{c[1]}-hue{c[2]}")
def test_detected_mask_matches_painted_tissue_and_skips_pen(case):
    thumb, truth, pen = _painted(*case)
    res = detect_tissue(thumb, THUMB_MPP, case[1])
    assert res.mask.shape == truth.shape and res.mask_mpp == THUMB_MPP
    iou = (res.mask & truth).sum() / (res.mask | truth).sum()
    assert iou >= 0.9, f"IoU {iou:.3f}"
    assert pen.sum() > 20 and not (res.mask & pen).any(), "pen marks detected as tissue"
    assert res.area_mm2 == pytest.approx(res.mask.sum() * (res.mask_mpp / 1000) ** 2)
    assert res.area_mm2 > 0 and len(res.contours) >= 1


def test_blank_and_ink_only_slides_have_no_tissue():
    res = detect_tissue(blank(400, 300, seed=3), THUMB_MPP, 0.5)
    assert not res.mask.any() and res.area_mm2 == 0 and res.contours == []
    ink = blank(400, 300, seed=4)
    ink[40:80, 50:350] = (25, 135, 70)  # green marker
    ink[120:160, 50:350] = (35, 70, 175)  # blue marker
    ink[200:240, 50:350] = (20, 20, 25)  # black ink / dust
    ink[260:280, 60:200] = (40, 150, 160)  # cyan marker
    res = detect_tissue(ink, THUMB_MPP, 0.5)
    assert not res.mask.any() and res.contours == []
    with_pen = detect_tissue(ink, THUMB_MPP, 0.5, TissueParams(exclude_ink=False))
    assert with_pen.mask[40:80, 50:350].mean() > 0.8  # the same ink counts when not excluded
    assert contours_to_geojson(res, "empty") == {"type": "FeatureCollection", "features": []}


def test_finer_thumbnail_is_reduced_to_detection_mpp():
    thumb, truth, _ = _painted(*CASES[0])
    fine = np.repeat(np.repeat(thumb, 4, 0), 4, 1)  # the same image at 2 µm/px
    res = detect_tissue(fine, THUMB_MPP / 4, CASES[0][1])
    assert res.mask_mpp == pytest.approx(THUMB_MPP) and res.mask.shape == truth.shape
    assert (res.mask & truth).sum() / (res.mask | truth).sum() >= 0.9


def test_params_change_the_result():
    thumb, _, _ = _painted(*CASES[0])
    base = detect_tissue(thumb, THUMB_MPP, 1.0)
    huge_min = detect_tissue(thumb, THUMB_MPP, 1.0, TissueParams(min_area_mm2=1e6))
    assert not huge_min.mask.any()
    strict = detect_tissue(thumb, THUMB_MPP, 1.0, TissueParams(min_saturation=0.9))
    assert strict.mask.sum() < 0.1 * base.mask.sum()


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_geojson_polygons_are_closed_in_bounds_and_match_mask(tmp_path):
    thumb, _, _ = _painted(*CASES[1])
    mpp0 = CASES[1][1]
    res = detect_tissue(thumb, THUMB_MPP, mpp0)
    scale = res.mask_mpp / res.level0_mpp
    w0, h0 = res.mask.shape[1] * scale, res.mask.shape[0] * scale
    path = write_geojson(res, "slide_a", tmp_path / "contours" / "slide_a.geojson")
    data = json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["slide_a.geojson"]  # no temporaries
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(res.contours)
    inside = np.zeros(res.mask.shape, bool)
    yy, xx = np.mgrid[: res.mask.shape[0], : res.mask.shape[1]]
    centres = np.stack([(xx.ravel() + 0.5) * scale, (yy.ravel() + 0.5) * scale], 1)
    polygon_area = 0.0
    for feat in data["features"]:
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        props = feat["properties"]
        assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tissue"
        rings = [np.asarray(r, float) for r in feat["geometry"]["coordinates"]]
        for ring in rings:
            assert ring.shape[0] >= 4 and ring.shape[1] == 2
            assert np.array_equal(ring[0], ring[-1]), "ring not closed"
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w0
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h0
        assert _ring_area(rings[0]) > 0 and all(_ring_area(r) < 0 for r in rings[1:])
        polygon_area += sum(_ring_area(r) for r in rings)
        hit = MplPath(rings[0]).contains_points(centres)
        for hole in rings[1:]:
            hit &= ~MplPath(hole).contains_points(centres)
        inside |= hit.reshape(res.mask.shape)
    # level-0 polygons cover the mask: same pixels and the same area
    assert (inside == res.mask).mean() > 0.98
    assert polygon_area == pytest.approx(res.mask.sum() * scale**2, rel=0.05)


def test_thumbnail_jpeg_has_green_contours(tmp_path):
    thumb, _, _ = _painted(*CASES[0])
    res = detect_tissue(thumb, THUMB_MPP, CASES[0][1])
    drawn = draw_contours(thumb, res)
    assert drawn.shape == thumb.shape and not np.array_equal(drawn, thumb)
    green = (drawn[..., 0] == 0) & (drawn[..., 1] == 200) & (drawn[..., 2] == 0)
    assert green.sum() > 100
    path = write_thumbnail_jpeg(thumb, res, tmp_path / "thumbs" / "s.jpg", max_side=200)
    with Image.open(path) as img:
        assert img.format == "JPEG" and max(img.size) == 200
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert ((rgb[..., 1] - rgb[..., 0] > 80) & (rgb[..., 1] - rgb[..., 2] > 80)).sum() > 20
    assert [p.name for p in path.parent.iterdir()] == ["s.jpg"]


def test_bad_thumbnail_raises():
    with pytest.raises(ValueError, match="uint8"):
        detect_tissue(np.zeros((10, 10), np.uint8), THUMB_MPP, 0.5)
    with pytest.raises(ValueError, match="mpp"):
        detect_tissue(np.zeros((10, 10, 3), np.uint8), 0.0, 0.5)


def test_real_aperio_svs_tissue():
    path = REAL_DIR / "cmu_small_region.svs"
    if not path.exists():
        pytest.skip(f"real slide not found at {path} (../shared absent)")
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        w0, h0 = slide.dimensions
        mpp0 = float(slide.properties["openslide.mpp-x"])
        size = (round(w0 * mpp0 / THUMB_MPP), round(h0 * mpp0 / THUMB_MPP))
        thumb = np.asarray(slide.get_thumbnail(size).convert("RGB"))
    thumb_mpp = mpp0 * w0 / thumb.shape[1]
    res = detect_tissue(thumb, thumb_mpp, mpp0, level0_size=(w0, h0))
    frac = res.mask.mean()
    assert 0.2 < frac < 0.5, f"tissue fraction {frac:.2f}"
    assert res.contours
    for ring in res.contours:
        assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w0
        assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h0
        assert np.array_equal(ring[0], ring[-1])


def test_large_holes_kept_as_interior_rings_small_ones_filled():
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, xx - 150)
    img = blank(300, 300, seed=5)
    img[(r < 120) & (r > 70)] = (225, 140, 200)  # pink annulus; hole ~ 1 mm² at 8 µm/px
    img[r < 15] = (225, 140, 200)  # an island inside the hole
    res = detect_tissue(img, THUMB_MPP, 0.5, TissueParams(max_hole_area_mm2=0.5))
    assert len(res.contours) == 2 and sorted(len(h) for h in res.holes) == [0, 1]
    ring = [c for c, h in zip(res.contours, res.holes, strict=True) if h][0]
    hole = [h for h in res.holes if h][0][0]
    scale = THUMB_MPP / 0.5
    assert _ring_area(ring) == pytest.approx(np.pi * 120**2 * scale**2, rel=0.05)
    assert -_ring_area(hole) == pytest.approx(np.pi * 70**2 * scale**2, rel=0.05)
    filled = detect_tissue(img, THUMB_MPP, 0.5, TissueParams(max_hole_area_mm2=2.0))
    assert len(filled.contours) == 1 and filled.holes == [[]]
    assert filled.area_mm2 == pytest.approx(np.pi * (120 * THUMB_MPP / 1000) ** 2, rel=0.05)


# ------------------------------------------------ colour patches at measured values
GLASS = (243, 242, 240)
DENSE_H = (73, 81, 140)  # hue 233°, saturation 0.48: frozen-section breast tumour (issue)
MARKERS = {  # RGB of marker inks and dyes on glass
    "cmu-green-dye": (73, 151, 156),  # median of the CMU slide's marking dye, level 0
    "blue-pen": (35, 70, 175),
    "light-blue-pen": (110, 140, 210),
    "green-pen": (25, 135, 70),
    "cyan-pen": (40, 150, 160),
}


def _hue_sat(rgb) -> tuple[float, float]:
    import colorsys

    h, s, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255.0))
    return h * 360, s


def _textured(colour, shape, seed=0, spread=0.15) -> np.ndarray:
    """``colour`` with its optical density varied by ±``spread`` (smooth blobs, like nuclei
    density at 8 µm/px)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal(shape), 2)
    field = 1 + spread * field / (np.abs(field).max() + 1e-9)
    od = -np.log10(np.asarray(colour, float) / 255.0)
    return np.clip(255 * 10 ** (-od * field[..., None]), 0, 255).round().astype(np.uint8)


def test_stain_measures_tell_ink_from_haematoxylin():
    from threads_search.wsi.stain import optical_density, red_excess

    def excess(rgb):
        return float(red_excess(optical_density(np.array([[rgb]], np.uint8)))[0, 0])

    assert _hue_sat(DENSE_H) == pytest.approx((233, 0.48), abs=0.6)
    for h in (DENSE_H, (53, 59, 102), (77, 70, 150), (63, 34, 82)):  # dense H, nuclei
        assert excess(h) < 0.1, h
    assert excess((230, 120, 180)) < 0  # eosin
    for name, rgb in MARKERS.items():
        assert excess(rgb) > 0.15, name
    # the lookup-table path detection uses gives the same numbers
    from threads_search.wsi.stain import colour_measures

    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    glass = np.array([246.0, 243.0, 243.0])
    _, _, od_sum, ex = colour_measures(img, glass)
    od = optical_density(img, glass)
    np.testing.assert_allclose(od_sum, od.sum(-1), rtol=0.01, atol=0.01)
    dense = od.sum(-1) > 0.3
    np.testing.assert_allclose(ex[dense], red_excess(od)[dense], atol=0.02)


def test_dense_haematoxylin_at_measured_colour_stays_tissue():
    """A 2.4 mm block of tumour at hue 233°, saturation 0.48: the old blue-pen rule (hue
    195-235°, saturation > 0.35) removed it all (0 patches, "no-tissue: blank slide?")."""
    from threads_search.wsi.grid import GridParams, patch_grid

    img = blank(500, 500, seed=7)
    img[100:400, 100:400] = _textured(DENSE_H, (300, 300))
    hue, sat = _hue_sat(img[100:400, 100:400].reshape(-1, 3).mean(0))
    assert abs(hue - 233) < 2 and abs(sat - 0.48) < 0.04
    res = detect_tissue(img, THUMB_MPP, 0.5)
    assert res.mask[100:400, 100:400].mean() > 0.98
    coords = patch_grid(res.mask, THUMB_MPP, 0.5, (8000, 8000), GridParams())
    inside = (coords >= 1600) & (coords + 512 <= 6400)  # level-0 px of the block
    n_fit = sum(1600 <= x <= 6400 - 512 for x in range(0, 8000 - 511, 512))
    assert inside.all(axis=1).sum() == n_fit**2  # every patch inside the block is kept


@pytest.mark.parametrize("name", list(MARKERS))
def test_marker_ink_on_glass_is_removed(name):
    img = blank(400, 300, seed=4)
    img[60:90, 40:360] = MARKERS[name]  # a stroke on glass
    img[150:250, 100:250] = _textured((225, 140, 200), (100, 150), seed=1)  # tissue, away
    res = detect_tissue(img, THUMB_MPP, 0.5)
    assert not res.mask[60:90].any(), f"{name} on glass detected as tissue"
    assert res.mask[150:250, 100:250].mean() > 0.95
    kept = detect_tissue(img, THUMB_MPP, 0.5, TissueParams(exclude_ink=False))
    assert kept.mask[60:90, 40:360].mean() > 0.9  # the same ink counts when not excluded


def test_ink_on_tissue_is_tissue_ink_on_glass_is_not():
    """Marking dye along a tissue edge and a pen stroke across tissue are on tissue: inside
    the mask. The same stroke where it runs on over glass is not tissue."""
    img = blank(500, 400, seed=5)
    img[100:300, 100:300] = _textured((225, 140, 200), (200, 200), seed=2)
    img[100:300, 295:301] = MARKERS["cmu-green-dye"]  # dye band on the tissue's right edge
    img[195:203, 150:480] = MARKERS["blue-pen"]  # pen across the tissue, then on glass
    res = detect_tissue(img, THUMB_MPP, 0.5)
    assert res.mask[100:300, 295:301].mean() > 0.95  # inked margin inside
    assert res.mask[195:203, 150:300].mean() > 0.95  # pen over tissue
    assert not res.mask[195:203, 320:480].any()  # pen on glass, beyond 48 µm of the tissue


def test_tissue_params_are_validated():
    with pytest.raises(ValueError, match="min_od"):
        detect_tissue(blank(50, 50), THUMB_MPP, 0.5, TissueParams(min_od=-1))
    with pytest.raises(ValueError, match="max_saturation"):
        TissueParams(max_saturation=2).validate()


def test_glass_colour_white_balance():
    from threads_search.wsi.stain import glass_colour

    pinkish = blank(200, 200, seed=1)
    pinkish[:] = (236, 224, 232)  # a pink cast over all the glass
    pinkish[50:150, 50:150] = (200, 110, 160)
    assert glass_colour(pinkish) == pytest.approx([236, 224, 232], abs=1)
    assert not detect_tissue(pinkish, THUMB_MPP, 0.5).mask[:40].any()
    tumour = _textured(DENSE_H, (100, 100))  # no glass at all: no white balance
    assert list(glass_colour(tumour)) == [255, 255, 255]
    assert detect_tissue(tumour, THUMB_MPP, 0.5).mask.mean() > 0.98
