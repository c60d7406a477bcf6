"""Stain normalisation in the features stage (issue 14 items 1 and 5): fitted once per slide on
tissue, applied to every patch; on the real files (the CC0 slide, the frozen TCGA slide, the
real H&E tile) the tissue mask and patch grid stay the same and the colours move to the
reference; no NaN, glass stays white; recorded in the features config, the h5s and the model,
and an index refuses features made with other stain settings than its model's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torchstain.numpy.utils import lab_split, rgb2lab
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.errors import ConfigError, InputError
from threads_search.features import FeaturesConfig, default_config, extract_features
from threads_search.features.h5io import read_features
from threads_search.features.stain import fit_plan
from threads_search.models.threads_model import check_patch_encoder, patch_encoder_dict
from threads_search.wsi.plan import plan_slide
from threads_search.wsi.stain_norm import (
    IO,
    REINHARD_LAB_MEAN,
    REINHARD_LAB_STD,
    StainConfig,
    apply,
    fit_reference,
    fit_slide,
    glass_weight,
)

METHODS = ["macenko", "reinhard"]
TILE = "he_tile_240.png"
runner = CliRunner()


def _tile(real_dir) -> np.ndarray:
    return np.asarray(Image.open(real_dir / TILE).convert("RGB"))


def _lab(rgb: np.ndarray) -> np.ndarray:
    return np.stack(lab_split(rgb2lab(rgb.reshape(-1, 3).astype(np.float32) / 255)), 1)


def _tissue_mean_lab(rgb: np.ndarray) -> np.ndarray:
    """LAB mean of the pixels normalised fully (tissue, not glass)."""
    flat = rgb.reshape(-1, 3)
    return _lab(flat[glass_weight(flat) >= 1]).mean(0)


def _lab_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(_tissue_mean_lab(a) - _tissue_mean_lab(b)))


def _shift_stain(rgb: np.ndarray, h_scale: float, e_scale: float) -> np.ndarray:
    """``rgb`` with its haematoxylin and eosin concentrations scaled (the tile's own Macenko
    vectors; the out-of-plane OD scaled by their geometric mean); glass kept."""
    he = np.asarray(fit_slide([rgb], "macenko").he)
    flat = rgb.reshape(-1, 3)
    od = -np.log((flat.astype(float) + 1) / IO)
    conc = od @ np.linalg.pinv(he).T
    resid = od - conc @ he.T
    od2 = (conc * [h_scale, e_scale]) @ he.T + resid * np.sqrt(h_scale * e_scale)
    out = np.clip(IO * np.exp(-od2) - 1, 0, 255)
    w = glass_weight(flat)[:, None]
    return np.rint(w * out + (1 - w) * flat).astype(np.uint8).reshape(rgb.shape)


@pytest.mark.real
def test_builtin_reinhard_reference_is_the_real_tiles_tissue(real_dir):
    st = fit_slide([_tile(real_dir)], "reinhard")
    assert np.allclose(st.lab_mean, REINHARD_LAB_MEAN, atol=1e-3)
    assert np.allclose(st.lab_std, REINHARD_LAB_STD, atol=1e-3)


@pytest.mark.real
@pytest.mark.parametrize("method", METHODS)
def test_a_stain_shifted_real_tile_is_brought_back_to_the_reference(real_dir, method):
    """The real tile with less haematoxylin and more eosin, normalised to the tile itself (given
    as --stain-reference): its tissue colour comes back close to the original."""
    tile = _tile(real_dir)
    ref = fit_reference(StainConfig(method, str(real_dir / TILE)))
    shifted = _shift_stain(tile, 0.6, 1.4)
    out = apply(shifted, fit_slide([shifted], method), ref)
    before, after = _lab_distance(shifted, tile), _lab_distance(out, tile)
    assert before > 5  # a visible shift (ΔE of the tissue means)
    assert after * 3 < before, (before, after)


@pytest.mark.real
@pytest.mark.parametrize("method", METHODS)
def test_no_nan_and_white_stays_white_on_white_black_pen_and_flat_patches(real_dir, method):
    stats, ref = fit_slide([_tile(real_dir)], method), fit_reference(StainConfig(method))
    colours = {
        "white": (255, 255, 255),
        "glass": (242, 240, 245),
        "black": (0, 0, 0),
        "blue pen": (35, 70, 175),
        "green pen": (25, 135, 70),
        "pink": (230, 150, 200),
    }
    batch = np.stack([np.full((32, 32, 3), c, np.uint8) for c in colours.values()])
    batch[0, 8:12, 8:12] = 0  # a speck on white
    out = apply(batch, stats, ref)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert (out[1] == batch[1]).all()  # glass unchanged
    white = np.ones((32, 32), bool)
    white[8:12, 8:12] = False
    assert (out[0][white] == 255).all()
    assert np.array_equal(out, apply(batch, stats, ref))  # deterministic
    floats = apply(batch.astype(np.float64), stats, ref)  # any input is made uint8 first
    assert np.isfinite(floats.astype(float)).all()
    for name, patch in zip(colours, batch, strict=True):
        assert fit_slide([patch], method) is None, name  # nothing to fit: said, not guessed


@pytest.mark.real
@pytest.mark.parametrize(
    "name, mpp, grid",
    [
        ("cmu_small_region.svs", None, {"patch_size": 256, "target_mpp": 1.0}),
        ("tcga_cr7395_frozen_ts1.svs", 4.0, {"patch_size": 128, "target_mpp": 4.0}),
    ],
)
def test_real_slides_keep_mask_and_grid_and_move_towards_the_reference(
    real_dir, tmp_path, name, mpp, grid
):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / name).symlink_to(real_dir / name)
    made = {}
    for method in ["none", *METHODS]:
        cfg = default_config("hed-texture", workers=0, stain_normalize=method)
        cfg.segment = cfg.segment.replace(grid=cfg.segment.grid.replace(**grid))
        out = tmp_path / method
        [o] = extract_features([slides], out, cfg, mpp=mpp)
        assert o.state == "done" and not o.note, o
        sid = Path(name).stem
        ff = read_features(out / "h5" / f"{sid}.h5")
        contours = (out / "contours" / f"{sid}.geojson").read_text()
        made[method] = (ff, contours, cfg)
    base_ff, base_contours, _ = made["none"]
    assert "stain_method" not in base_ff.attrs
    for method in METHODS:
        ff, contours, cfg = made[method]
        assert np.array_equal(ff.coords, base_ff.coords)  # the same patch grid
        assert contours == base_contours  # the same tissue mask
        assert ff.attrs["stain_method"] == method
        assert json.loads(ff.attrs["stain_fit"])["method"] == method
        assert not np.allclose(ff.features, base_ff.features)  # the patches were normalised
        # colours of the slide's sampled tissue patches, before and after, vs the reference
        plan = plan_slide(real_dir / name, mpp=mpp, config=cfg.segment)
        stain = fit_plan(plan.path, plan.coords, plan.mpp, cfg)
        from threads_search.wsi.reader import PatchDataset

        ds = PatchDataset(
            plan.path,
            plan.coords[:: max(1, len(plan.coords) // 16)],
            **{"patch_size": grid["patch_size"], "target_mpp": grid["target_mpp"], "mpp": plan.mpp},
        )
        patches = np.stack([ds.read(i) for i in range(len(ds))])
        ref = np.asarray(Image.open(real_dir / TILE).convert("RGB"))
        ref_out = apply(ref, fit_slide([ref], method), stain.ref)  # the reference's colours
        before = _lab_distance(patches, ref_out)
        after = _lab_distance(stain(patches), ref_out)
        print(f"{name} {method}: ΔE tissue mean to the reference {before:.2f} -> {after:.2f}")
        assert after < before


def _small_slide(slide_factory, tmp_path):
    s = slide_factory("tiff", 0.5, 2048, 1536, seed=3)
    folder = tmp_path / "slides"
    folder.mkdir(exist_ok=True)
    (folder / "a.tiff").symlink_to(s.path)
    return folder


@pytest.mark.parametrize("method", METHODS)
def test_features_cli_records_the_stain_and_the_index_refuses_other_settings(
    slide_factory, tmp_path, method
):
    folder = _small_slide(slide_factory, tmp_path)
    base = ["features", str(folder), "--workers", "0", "--patch-size", "256"]
    out = tmp_path / method
    res = runner.invoke(app, [*base, "--out", str(out), "--stain-normalize", method])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stain"] == {"method": method, "reference": None, "sample_patches": 16}
    none = tmp_path / "none"
    assert runner.invoke(app, [*base, "--out", str(none)]).exit_code == 0
    plain = json.loads((none / "config.json").read_text())
    assert cfg["config_hash"] != plain["config_hash"]
    assert plain["config_hash"] == default_config("hed-texture", 256).hash()  # as before
    ff = read_features(out / "h5" / "a.h5")
    assert ff.attrs["stain_method"] == method and ff.attrs["config_hash"] == cfg["config_hash"]
    # the same folder with other stain settings is refused, naming them
    res = runner.invoke(app, [*base, "--out", str(out)])
    assert res.exit_code == 2 and "stain" in res.output
    # the trainer records the setting in the model; an index checks features against it
    from trainer.data import _features_info

    pe, _ = _features_info(out)
    pe = patch_encoder_dict({**pe, "dim": ff.features.shape[1]})
    assert pe["stain"]["method"] == method
    check_patch_encoder(ff, pe, out / "h5" / "a.h5")  # same settings: accepted
    plain_pe = {k: v for k, v in pe.items() if k != "stain"}  # an older bundle: none
    assert patch_encoder_dict(plain_pe) == plain_pe
    with pytest.raises(InputError, match=f"stain normalisation {method}.*--stain-normalize none"):
        check_patch_encoder(ff, plain_pe, out / "h5" / "a.h5")
    plain_ff = read_features(none / "h5" / "a.h5")
    with pytest.raises(InputError, match=f"normalisation none.*--stain-normalize {method}"):
        check_patch_encoder(plain_ff, pe, none / "h5" / "a.h5")
    other = "reinhard" if method == "macenko" else "macenko"
    with pytest.raises(InputError, match=f"--stain-normalize {other}"):
        check_patch_encoder(ff, {**pe, "stain": {"method": other}}, out / "h5" / "a.h5")
    # the index's features stage takes the model's settings
    from indexer.config import IndexConfig
    from indexer.core import features_config

    fc = features_config(IndexConfig(), SimpleNamespace(patch_encoder=pe), workers=0)
    assert fc.stain.method == method and fc.hash() != default_config("hed-texture").hash()


def test_bad_stain_reference_is_refused_before_any_slide_is_read(slide_factory, tmp_path):
    folder = _small_slide(slide_factory, tmp_path)
    out = tmp_path / "feats"
    base = ["features", str(folder), "--out", str(out), "--workers", "0"]
    missing = tmp_path / "nope.png"
    res = runner.invoke(
        app, [*base, "--stain-normalize", "macenko", "--stain-reference", str(missing)]
    )
    assert res.exit_code == 2 and "nope.png" in res.output and "file not found" in res.output
    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(white)
    res = runner.invoke(
        app, [*base, "--stain-normalize", "reinhard", "--stain-reference", str(white)]
    )
    assert res.exit_code == 2 and "white.png" in res.output and "too few tissue" in res.output
    res = runner.invoke(app, [*base, "--stain-reference", str(white)])  # no method
    assert res.exit_code == 2 and "--stain-normalize" in res.output
    assert not (out / "status.parquet").exists() and not (out / "h5").exists()


def test_old_config_json_without_stain_loads_and_hashes_as_before():
    saved = FeaturesConfig().to_dict()
    del saved["stain"]
    assert FeaturesConfig.from_saved(saved).hash() == "2c7a272876453d78"
    assert FeaturesConfig.from_saved({**saved, "stain": {"method": "none"}}).hash() == (
        "2c7a272876453d78"
    )
    assert "stain" not in FeaturesConfig().output_key()
    on = FeaturesConfig(stain=StainConfig("macenko"))
    assert on.hash() != "2c7a272876453d78" and on.output_key()["stain"]["method"] == "macenko"
    with pytest.raises(ConfigError, match="sample_patches"):
        StainConfig("macenko", sample_patches=0)
    with pytest.raises(ConfigError, match="'histogram'"):
        StainConfig("histogram")


def test_a_slide_too_pale_to_fit_is_left_as_is_and_said_so():
    """A slide whose sampled patches hold too little stained tissue: not normalised, recorded
    for its h5 and said in its outcome's note, never silent."""
    from threads_search.features.stain import SlideStain
    from threads_search.wsi.stain_norm import fit_slide_or_reason

    pale = [
        np.full((256, 256, 3), 245, np.uint8),
        np.full((256, 256, 3), (240, 225, 235), np.uint8),
    ]
    why = fit_slide_or_reason(pale, "macenko")
    assert isinstance(why, str) and why.startswith("too few tissue pixels")
    stain = SlideStain("macenko", None, None, why)
    assert stain.attrs() == {"stain_method": "macenko", "stain_fit": "not fitted: " + why}
    assert "stain not normalised" in stain.note and why in stain.note
    assert np.array_equal(stain(pale[1]), pale[1])
    back = SlideStain.from_attrs(stain.attrs(), StainConfig("macenko"))
    assert back.stats is None and back.why == why


@pytest.mark.real
@pytest.mark.parametrize("method", METHODS)
def test_a_slides_colour_table_normalises_as_the_direct_path(real_dir, method, monkeypatch):
    """After ``TABLE_AFTER_PIXELS`` pixels a slide's normalisation is a lookup in its table of
    all 2^24 colours: the same output as the direct path, and the table is not pickled."""
    import pickle

    from threads_search.features import stain as feature_stain
    from threads_search.features.stain import SlideStain, reference
    from threads_search.wsi.stain_norm import apply_table, colour_table

    tile = _tile(real_dir)
    cfg = StainConfig(method)
    shifted = _shift_stain(tile, 1.3, 0.8)  # a slide stained otherwise than the reference
    stats, ref = fit_slide([shifted], method), reference(cfg)
    table = colour_table(stats, ref)
    assert table.shape == (1 << 24, 3) and table.dtype == np.uint8
    patches = np.stack([tile, shifted, np.full_like(tile, 250), tile[::-1]])
    direct = apply(patches, stats, ref)
    looked_up = apply_table(patches, table)
    diff = np.abs(direct.astype(int) - looked_up.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4  # float32 rounding only
    assert not np.array_equal(direct[1], shifted)  # it did normalise
    # SlideStain switches to the table after the threshold (lowered here to 2 tiles)
    monkeypatch.setattr(feature_stain, "TABLE_AFTER_PIXELS", 2 * tile.size // 3)
    slide = SlideStain(method, stats, ref)
    first = slide(tile)
    assert slide.__dict__["_cache"]["table"] is None
    slide(shifted)
    assert slide.__dict__["_cache"]["table"] is not None
    np.testing.assert_array_equal(slide(tile), apply_table(tile, table))
    assert np.abs(first.astype(int) - slide(tile).astype(int)).max() <= 1
    again = pickle.loads(pickle.dumps(slide))
    assert len(pickle.dumps(slide)) < 100_000 and "_cache" not in again.__dict__
    assert again == slide


@pytest.mark.parametrize(
    "h, e",
    [
        ((0.650, 0.704, 0.286), (0.072, 0.990, 0.105)),  # Ruifrok & Johnston
        ((0.39, 0.66, 0.63), (0.44, 0.86, 0.25)),  # a blue haematoxylin, a red-heavy eosin
        ((0.80, 0.48, 0.37), (0.05, 0.89, 0.44)),
    ],
)
def test_macenko_keeps_haematoxylin_first_whichever_stain_absorbs_more_red(h, e):
    """torchstain orders the two fitted vectors by their red OD; a lab whose haematoxylin
    absorbs less red than its eosin had its stains swapped (nuclei painted pink)."""
    from threads_search.wsi.stain_norm import fit_pixels

    rng = np.random.default_rng(0)
    hv, ev = (np.asarray(v) / np.linalg.norm(v) for v in (h, e))
    n = 20_000  # nuclei (mostly H), stroma (mostly E), and mixtures
    c_h = np.concatenate([rng.uniform(0.6, 1.2, n // 4), rng.uniform(0, 0.1, n // 4)])
    c_e = np.concatenate([rng.uniform(0, 0.1, n // 4), rng.uniform(0.4, 1.0, n // 4)])
    mix = rng.uniform(0.1, 0.8, (n // 2, 2))
    conc = np.concatenate([np.stack([c_h, c_e], 1), mix])
    rgb = np.clip(IO * np.exp(-(conc @ np.stack([hv, ev]))) - 1, 0, 255).astype(np.uint8)
    fit = fit_pixels(rgb, "macenko")
    got = np.asarray(fit.he)
    assert got[:, 0] @ hv > got[:, 0] @ ev and got[:, 1] @ ev > got[:, 1] @ hv
    assert got[:, 0] @ hv > 0.97 and got[:, 1] @ ev > 0.97
    # haematoxylin's 99th percentile concentration stays with haematoxylin
    assert abs(fit.max_c[0] - 1.2) < 0.25 and abs(fit.max_c[1] - 1.0) < 0.4
