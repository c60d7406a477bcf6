"""The built-in weight-free patch encoder ``hed-texture``: contract, robustness, scale handling,
agreement with scikit-image on its building blocks, and separation of painted tissue types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from threads_search.patch_encoders import (
    PatchEncoder,
    create_patch_encoder,
    get_patch_encoder_spec,
)
from threads_search.patch_encoders.hed_texture import (
    DIM,
    FEATURE_LAYOUT,
    SPEC,
)
from threads_search.synth.paint import TISSUE_CLASSES, Morphology, paint_tissue

L = FEATURE_LAYOUT
H_MEAN = L["hed_stats"].start  # stats are (mean, std, p5, p25, p50, p75, p95) per H, E, D
H_TISSUE_MEAN = L["hed_tissue"].start


@pytest.fixture(scope="module")
def encoder():
    return create_patch_encoder("hed-texture")


@pytest.fixture(scope="module")
def painted():
    """A painted 0.5 µm/px image with every tissue class; 512 px patches cut from it."""
    return paint_tissue(1536, 1536, mpp=0.5, seed=5, tissue_fraction=0.6)


def _tissue_patch(p, size=512, min_tissue=0.9) -> np.ndarray:
    for y in range(0, p.rgb.shape[0] - size + 1, size // 4):
        for x in range(0, p.rgb.shape[1] - size + 1, size // 4):
            if p.tissue_mask[y : y + size, x : x + size].mean() >= min_tissue:
                return p.rgb[y : y + size, x : x + size]
    raise AssertionError("no tissue patch in the painted image")


def _stain_patch(h: float, e: float, size: int = 512, seed: int = 0) -> np.ndarray:
    """A flat patch of stain concentrations (OD) ``h``, ``e`` by Beer-Lambert, with pixel noise."""
    vec_h = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
    vec_e = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])
    od = h * vec_h + e * vec_e
    rng = np.random.default_rng(seed)
    rgb = 255.0 * 10.0 ** (-od) + rng.normal(0, 3, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_layout_covers_dim():
    starts = sorted((s.start, s.stop) for s in FEATURE_LAYOUT.values())
    assert starts[0][0] == 0 and starts[-1][1] == DIM
    assert all(a[1] == b[0] for a, b in zip(starts[:-1], starts[1:], strict=True))
    assert DIM == SPEC.dim == 256
    assert SPEC.patch_size == 512 and SPEC.target_mpp == 0.5


def test_contract_through_registry(painted):
    enc = create_patch_encoder("hed-texture")
    assert isinstance(enc, PatchEncoder)
    assert enc.cpu_per_patch is True
    spec = get_patch_encoder_spec("hed-texture")
    assert spec == enc.spec and not spec.needs_checkpoint and spec.licence
    batch = np.stack([_tissue_patch(painted), np.full((512, 512, 3), 240, np.uint8)])
    out = enc.encode(batch)
    assert out.shape == (2, spec.dim) and out.dtype == np.float32
    np.testing.assert_array_equal(enc.encode(torch.from_numpy(batch)), out)
    np.testing.assert_array_equal(enc.encode_one(batch[0]), out[0])
    assert not np.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="no weights"):
        create_patch_encoder("hed-texture", checkpoint="weights.safetensors")
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        enc.encode(batch[0])


def test_deterministic(encoder, painted):
    patch = _tissue_patch(painted)
    a = encoder.encode_one(patch)
    b = create_patch_encoder("hed-texture").encode_one(patch.copy())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["white", "black", "noise", "red", "grey-ramp", "tiny", "float"])
def test_finite_on_any_input(encoder, kind):
    rng = np.random.default_rng(0)
    patch = {
        "white": lambda: np.full((512, 512, 3), 255, np.uint8),
        "black": lambda: np.zeros((512, 512, 3), np.uint8),
        "noise": lambda: rng.integers(0, 256, (512, 512, 3), dtype=np.uint8),
        "red": lambda: np.tile(np.array([255, 0, 0], np.uint8), (512, 512, 1)),
        "grey-ramp": lambda: np.repeat(np.linspace(0, 255, 512, dtype=np.uint8), 512 * 3).reshape(
            512, 512, 3
        ),
        "tiny": lambda: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "float": lambda: rng.uniform(-20, 300, (256, 256, 3)),
    }[kind]()
    f = encoder.encode_one(patch)
    assert f.shape == (DIM,) and f.dtype == np.float32
    assert np.isfinite(f).all()
    assert np.abs(f).max() < 50  # hand-scaled features stay O(1)


def test_non_square_patch_is_refused_not_stretched(encoder):
    """A 300 x 200 px patch used to be resized to 256 x 256 px (nuclei stretched 1.5x along
    one axis, silently); it is refused with a message saying why and what to do."""
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"square patch.*300 x 200 px.*crop or pad"):
        encoder.encode_one(patch)
    with pytest.raises(ValueError, match="square patch"):
        encoder.encode(patch[None])
    square = encoder.encode_one(np.ascontiguousarray(patch[:200]))  # cropped: fine
    assert square.shape == (DIM,) and np.isfinite(square).all()


def test_white_and_black_are_background(encoder):
    white = encoder.encode_one(np.full((512, 512, 3), 250, np.uint8))
    black = encoder.encode_one(np.zeros((512, 512, 3), np.uint8))
    assert white[L["background"]][0] == 1.0 and white[L["background"]][1] == 0.0
    assert black[L["background"]][1] == 1.0
    assert white[L["nuclei_lo"]].sum() == 0.0  # no tissue, no nuclei


def test_invariant_to_input_size(encoder, painted):
    """The same 256 µm of tissue given at 512, 384 or 256 px encodes alike (the encoder resizes
    to its working size), and much closer than a different field of tissue."""
    p = painted
    patch = _tissue_patch(p)
    other = _tissue_patch(paint_tissue(1024, 1024, mpp=0.5, seed=11, tissue_fraction=0.7))
    f512 = encoder.encode_one(patch)
    im = Image.fromarray(patch)
    scale = np.abs(f512) + np.abs(encoder.encode_one(other)) + 0.05
    d_other = np.abs(f512 - encoder.encode_one(other)) / scale
    for size in (384, 256):
        small = np.asarray(im.resize((size, size), Image.Resampling.BOX))
        d_same = np.abs(f512 - encoder.encode_one(small)) / scale
        assert d_same.mean() < 0.35 * d_other.mean(), (size, d_same.mean(), d_other.mean())
        colour = slice(0, L["stain_balance"].stop)
        np.testing.assert_allclose(
            f512[colour], encoder.encode_one(small)[colour], atol=0.03, rtol=0.05
        )


def test_haematoxylin_stain_ordering(encoder):
    """More haematoxylin → higher H features; eosin-only → H near 0, E high."""
    pink = encoder.encode_one(_stain_patch(0.0, 0.6))
    blue = encoder.encode_one(_stain_patch(0.6, 0.1))
    assert blue[H_MEAN] > pink[H_MEAN] + 0.4
    assert abs(pink[H_MEAN]) < 0.05 and abs(pink[H_MEAN + 7] - 0.6) < 0.05  # E mean
    assert blue[L["nuclei_lo"]][1] > 0.9 and pink[L["nuclei_lo"]][1] == 0.0


def test_nuclear_proxy_tracks_painted_nuclei(encoder):
    """Across 256 µm fields of a painted image, the nuclear mask fraction ranks the fields like
    the painter's true nucleus counts do."""
    from scipy.stats import spearmanr

    p = paint_tissue(1024, 1024, mpp=1.0, seed=0, tissue_fraction=0.7)
    counts, patches = [], []
    for top in range(0, 1024 - 256 + 1, 128):
        for left in range(0, 1024 - 256 + 1, 128):
            if (p.class_map[top : top + 256, left : left + 256] > 0).mean() < 0.9:
                continue
            x, y = p.nuclei[:, 0], p.nuclei[:, 1]
            counts.append(((x >= left) & (x < left + 256) & (y >= top) & (y < top + 256)).sum())
            patches.append(p.rgb[top : top + 256, left : left + 256])
    assert len(counts) >= 10
    mask_fraction = encoder.encode(np.stack(patches))[:, L["nuclei_lo"].start]
    assert spearmanr(counts, mask_fraction)[0] > 0.8


def test_real_he_tile(encoder, real_dir):
    tile = np.asarray(Image.open(real_dir / "he_tile_240.png").convert("RGB"))
    f = encoder.encode_one(tile)
    pink = encoder.encode_one(_stain_patch(0.0, 0.5, size=240))
    assert np.isfinite(f).all()
    assert f[H_MEAN] > pink[H_MEAN] + 0.1
    assert f[H_TISSUE_MEAN] > pink[H_TISSUE_MEAN] + 0.1
    assert f[L["nuclei_lo"]][0] > 0.05 > pink[L["nuclei_lo"]][0]  # dark nuclei present


def test_real_svs_tissue_vs_glass(encoder, real_dir):
    """Patches read by OpenSlide from a real Aperio slide (0.499 µm/px): tissue has nuclei and
    little background; the glass corner is background with (almost) no nuclear signal."""
    import openslide

    slide = openslide.OpenSlide(str(real_dir / "cmu_small_region.svs"))
    read = lambda x, y: np.asarray(slide.read_region((x, y), 0, (512, 512)).convert("RGB"))  # noqa: E731
    tissue, glass = encoder.encode(np.stack([read(1000, 1250), read(0, 0)]))
    slide.close()
    assert np.isfinite(tissue).all() and np.isfinite(glass).all()
    assert tissue[L["background"]][0] < 0.5 < glass[L["background"]][0]
    assert tissue[L["nuclei_lo"]][0] > 0.1 > 0.01 > glass[L["nuclei_lo"]][0]  # of all pixels
    assert tissue[H_TISSUE_MEAN] > 0.1


def test_stain_separation_matches_skimage(real_dir):
    """Our Ruifrok deconvolution is scikit-image's ``rgb2hed`` up to a scale per stain (skimage
    keeps unnormalised stain vectors and natural logs, and clips at 0) on pixels with no 0
    channel (there skimage floors intensity at 1e-6 and we at 1/255)."""
    from skimage.color import rgb2hed

    from threads_search.patch_encoders import hed_texture as ht

    tile = np.asarray(Image.open(real_dir / "he_tile_240.png").convert("RGB"))
    ours = ht._deconvolve(np.ascontiguousarray(tile.reshape(-1, 3).T), 3)
    ref = rgb2hed(tile).reshape(-1, 3).T
    ok = tile.reshape(-1, 3).min(axis=1) > 0
    assert ok.mean() > 0.9
    for c in range(2):  # H and E
        assert np.corrcoef(np.maximum(ours[c, ok], 0), ref[c, ok])[0, 1] > 0.999


def test_glcm_matches_skimage(painted):
    from skimage.feature import graycomatrix, graycoprops

    from threads_search.patch_encoders.texture_ops import glcm_features

    grey = np.asarray(Image.fromarray(_tissue_patch(painted)).convert("L").reduce(2))
    q = grey >> 4
    ours = glcm_features(q, stride=1)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(q, [1], angles, levels=16, symmetric=True, normed=True)
    for k, prop in enumerate(["contrast", "homogeneity", "energy", "correlation"]):
        ref = graycoprops(glcm, prop).mean() / (225.0 if prop == "contrast" else 1.0)
        assert ours[k] == pytest.approx(ref, rel=0.05, abs=0.005), prop


def _labelled_patches(seeds, size=1024, patch=256, mpp=1.0):
    """Patches of 256 µm (``patch`` px at ``mpp``) from painted images, labelled by the majority
    class among their tissue pixels; patches under 50% tissue are dropped."""
    x, y, group = [], [], []
    morph = Morphology(gland_fraction=0.45, fat_fraction=0.3, tumour_fraction=0.4)
    for seed in seeds:
        p = paint_tissue(size, size, mpp=mpp, seed=seed, morphology=morph, tissue_fraction=0.7)
        for top in range(0, size - patch + 1, patch // 2):
            for left in range(0, size - patch + 1, patch // 2):
                cls = p.class_map[top : top + patch, left : left + patch]
                tissue = cls > 0
                if tissue.mean() < 0.5:
                    continue
                x.append(p.rgb[top : top + patch, left : left + patch])
                y.append(int(np.bincount(cls[tissue], minlength=len(TISSUE_CLASSES)).argmax()))
                group.append(seed)
    return np.stack(x), np.array(y), np.array(group)


def test_separates_painted_tissue_types(encoder):
    """Logistic regression on the features, trained on half of the painted images and scored on
    the other half, tells stroma, tumour, gland and fat apart (chance = 1 / n classes).

    Painted at 1 µm/px with 256 px patches: the same 256 µm fields as 512 px at 0.5 µm/px, at the
    encoder's working size, to keep the test fast."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    patches, labels, group = _labelled_patches(seeds=range(6), size=1024)
    feats = encoder.encode(patches)
    train = group % 2 == 0
    classes = sorted(set(labels[train]) & set(labels[~train]))
    assert len(classes) >= 3, f"painted classes present in both halves: {classes}"
    keep = np.isin(labels, classes)
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=3000)
    )
    clf.fit(feats[train & keep], labels[train & keep])
    test = ~train & keep
    score = balanced_accuracy_score(labels[test], clf.predict(feats[test]))
    print(
        f"hed-texture painted tissue: balanced accuracy {score:.3f} over {len(classes)} "
        f"classes {[TISSUE_CLASSES[c] for c in classes]}, {test.sum()} test patches"
    )
    assert score >= 0.8, f"balanced accuracy {score:.3f} (chance {1 / len(classes):.2f})"
