"""The region projection (``vectorstore.projection``): what region search compares. Its
statistics, modes and file on their own, and on vectors whose nearest neighbours by raw cosine
share the stain while those by the tissue dimensions share the tissue."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import ConfigError
from threads_search.patch_encoders import get_patch_encoder_spec, list_patch_encoders, tissue_dims
from threads_search.vectorstore.projection import (
    MIN_FIT,
    MIN_SLIDES,
    OLDER,
    ProjectedRows,
    RegionProjection,
    projected_rows,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunks(x: np.ndarray, size: int = 37):
    return (x[a : a + size] for a in range(0, len(x), size))


@pytest.mark.parametrize("name", list_patch_encoders())
def test_declared_tissue_dimensions_lie_in_the_features(name):
    dims = tissue_dims(name)
    if dims is None:  # the pretrained networks declare none: every dimension is compared
        return
    dim = get_patch_encoder_spec(name).dim
    assert list(dims) == sorted(set(dims)) and 0 < len(dims) < dim
    assert dims[0] >= 0 and dims[-1] < dim


def test_hed_texture_leaves_out_exactly_its_colour_statistics():
    from threads_search.patch_encoders.hed_texture import FEATURE_LAYOUT, STAIN_BLOCKS

    dims = set(tissue_dims("hed-texture"))
    for block, s in FEATURE_LAYOUT.items():
        inside = {i in dims for i in range(s.start, s.stop)}
        assert inside == {block not in STAIN_BLOCKS}, block
    assert len(dims) == 172 and tissue_dims("no-such-encoder") is None


def test_fit_streams_the_statistics_and_projects_to_unit_vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) * np.arange(1, 13)
    x[:, 3] = 0.0  # a constant dimension: scaled by the floor, stays finite
    x = _unit(x)
    dims = [1, 3, 5, 7, 9, 11]
    p = RegionProjection.fit(_chunks(x), 12, "tissue", dims, n_slides=60)
    sel = x[:, dims]
    assert np.allclose(p.mean, sel.mean(0), atol=1e-6)
    std = sel.std(0)
    assert np.allclose(p.scale[std > 1e-3], std[std > 1e-3], rtol=1e-4)
    assert p.scale[1] == pytest.approx(0.01 * np.median(std), rel=1e-4)
    out = p(x[:10] * 7.0)  # any scale: normalised first
    assert out.shape == (10, 6) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.isfinite(out).all()
    want = _unit((sel[:10] - sel.mean(0)) / p.scale)
    assert np.allclose(out, want, atol=1e-5)
    d = p.describe()
    assert d["out_dim"] == 6 and d["standardised"] and d["fitted_on_patches"] == 500
    assert "6 tissue dimensions, standardised over 500 patches" in d["reason"]


def test_modes_and_what_they_record():
    x = _unit(np.random.default_rng(1).normal(size=(300, 8)))
    raw = RegionProjection.fit(_chunks(x), 8, "raw", [0, 1], n_slides=500)
    assert raw.is_identity and raw.out_dim == 8 and np.allclose(raw(x), x, atol=1e-6)
    few = RegionProjection.fit(_chunks(x), 8, "auto", [0, 1, 2], n_slides=MIN_SLIDES - 1)
    assert few.is_identity and f"{MIN_SLIDES - 1} slides < {MIN_SLIDES}" in few.reason
    many = RegionProjection.fit(_chunks(x), 8, "auto", [0, 1, 2], n_slides=MIN_SLIDES)
    assert many.mode == "tissue" and many.out_dim == 3 and many.describe()["standardised"]
    none = RegionProjection.fit(_chunks(x), 8, "auto", None, n_slides=500)
    assert none.is_identity and "declares no tissue dimensions" in none.reason
    every = RegionProjection.fit(_chunks(x), 8, "tissue", None, n_slides=3)  # asked for
    assert every.mode == "tissue" and every.out_dim == 8 and "all dimensions" in every.reason
    small = RegionProjection.fit(_chunks(x[: MIN_FIT - 1]), 8, "tissue", [0, 1], n_slides=80)
    assert small.is_identity and f"but raw: {MIN_FIT - 1} patches < {MIN_FIT}" in small.reason
    with pytest.raises(ConfigError, match="auto, tissue, raw"):
        RegionProjection.fit(_chunks(x), 8, "colour", None, n_slides=80)
    with pytest.raises(ConfigError, match=r"0\.\.7"):
        RegionProjection.fit(_chunks(x), 8, "tissue", [2, 8], n_slides=80)


def test_saved_projection_reads_back_and_older_generations_read_as_raw(tmp_path):
    x = _unit(np.random.default_rng(2).normal(size=(400, 10)))
    p = RegionProjection.fit(_chunks(x), 10, "tissue", [0, 4, 6], n_slides=70)
    path = tmp_path / "region_projection.npz"
    p.save(path)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["region_projection.npz"]
    back = RegionProjection.load(path, 10)
    assert back.describe() == p.describe() and np.array_equal(back(x[:5]), p(x[:5]))
    old = RegionProjection.load(tmp_path / "missing.npz", 10)
    assert old.is_identity and old.out_dim == 10 and old.reason == OLDER
    with pytest.raises(ValueError, match="10-d features, stored 12-d"):
        RegionProjection.load(path, 12)


def test_projected_rows_read_like_the_projection_of_the_features():
    x = _unit(np.random.default_rng(3).normal(size=(200, 6))).astype(np.float16)
    p = RegionProjection.fit(_chunks(x), 6, "tissue", [1, 2, 5], n_slides=99)
    rows = ProjectedRows(x, p)
    assert rows.shape == (200, 3) and len(rows) == 200
    ids = np.array([7, 3, 150])
    assert np.allclose(rows[ids], p(x[ids].astype(np.float32)))
    assert projected_rows(x, RegionProjection.identity(6)) is x  # raw: the features, no copy
    assert isinstance(projected_rows(x, p), ProjectedRows)
    assert np.allclose(rows[10:20], p(x[10:20].astype(np.float32)))


def test_the_tissue_dimensions_find_the_tissue_where_raw_cosine_finds_the_stain():
    """Patches of 4 tissues under 3 stains: the stain moves 8 large dimensions, the tissue 4
    small ones (the hand-crafted features' colour statistics dwarf their texture). Raw cosine
    neighbours share the stain; the standardised tissue dimensions' share the tissue."""
    rng = np.random.default_rng(4)
    n = 600
    tissue, stain = rng.integers(0, 4, n), rng.integers(0, 3, n)
    t_centres, s_centres = rng.normal(size=(4, 4)), rng.normal(size=(3, 8)) * 6
    x = np.concatenate(
        [
            s_centres[stain] + rng.normal(size=(n, 8)),  # stain: large
            0.05 * (t_centres[tissue] + 0.3 * rng.normal(size=(n, 4))),  # tissue: small
        ],
        axis=1,
    )
    x = _unit(x + np.array([10.0] * 8 + [0.0] * 4))  # a common offset, as features have

    def same_at_10(v: np.ndarray, label: np.ndarray) -> float:
        s = _unit(v) @ _unit(v).T
        np.fill_diagonal(s, -np.inf)
        top = np.argsort(-s, axis=1)[:, :10]
        return float((label[top] == label[:, None]).mean())

    p = RegionProjection.fit(_chunks(x), 12, "tissue", range(8, 12), n_slides=100)
    assert same_at_10(x, stain) > 0.9 and same_at_10(x, tissue) < 0.5
    assert same_at_10(p(x), tissue) > 0.9
