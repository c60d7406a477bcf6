"""``hed-texture``: the built-in, weight-free patch encoder (hand-crafted H&E colour and texture).

A patch (uint8 ``[S, S, 3]``, nominally 512 px at 0.5 µm/px, i.e. 256 µm of tissue; other sizes
are resized, so µm below assume that field; non-square patches are refused, not stretched) is
box-filtered to ``input_size`` = 256 px, the *fine* scale (1 µm/px), and to 128 px, the *coarse*
scale (2 µm/px). numpy/scipy/PIL only, one
thread, no BLAS on large arrays, deterministic, finite for any input; a 512 px patch costs about
as long as reading it from a JPEG-tiled TIFF (``bench/encoders_micro.py``). Stains are from
Ruifrok colour deconvolution (optical density, log10). "Tissue" is min(R, G, B) <= 215.
Layout of the 256-d float32 vector (``FEATURE_LAYOUT`` maps each name to its slice):

==============  ====  ====================================================================
name            size  content (all colour statistics at the coarse scale, every 2nd pixel)
==============  ====  ====================================================================
background      2     fraction of white (not tissue) and of black (max RGB < 30) pixels
od_rgb          6     OD of R, G, B: means, then stds
hed_stats       21    per stain H, E, D: mean, std, p5, p25, p50, p75, p95 (all pixels)
hed_tissue      6     H, E, D means, then stds, over tissue
hed_hist        24    per stain, 8-bin histogram over tissue (fractions); inner edges
                      H 0.1..1.3 step 0.2, E and D 0, 0.1, .., 0.5, 0.7
rgb_moments     9     R, G, B in [0, 1]: means, stds, skewnesses
hsv_moments     8     mean hexagonal chroma vector (x2), S and V means, stds, skewnesses
hue_hist        8     hue histogram over tissue, 8 bins of 45 degrees from -180
stain_balance   2     H / (H + E) of tissue means; H-E correlation over tissue
nuclei_lo       17    fine scale, mask H > 0.35 in tissue, components >= 4 µm²: mask
                      fraction of all and of tissue pixels, log1p(components per 1000 µm²
                      tissue), log area mean/4, std/2, p25, p50, p90 (/4), area histogram
                      (<8, 8-16, .., >=128 µm²), mean H in mask, mean H in tissue outside it,
                      boundary fraction of the mask
nuclei_hi       17    dark cores, H > 0.65, per component above: core fraction of all and of
                      tissue pixels, log1p(cored components (core >= 2 µm²) per 1000 µm²),
                      fraction of components cored, log core area stats (5, as above),
                      core area histogram (<2, 2-4, .., >=32 µm²), mean H in cores,
                      core / mask area
texture_fine    58    fine scale: riu2 LBP (P=8, R=1 px) histograms of grey (10) and H (10);
                      GLCM of 16 grey levels: contrast, homogeneity, energy, correlation,
                      entropy at d=1 then d=2 px (means of 4 angles) and contrast anisotropy
                      (11); log mean squared gradient, log-frequency centroid, orientation
                      anisotropy of the power spectrum (3); log-Gabor energies, periods 4, 8,
                      16, 32 px x 6 orientations (24, period-major)
texture_coarse  58    the same at the coarse scale
h_spectrum      8     coarse H power in 8 log-spaced radial bands (periods 128 to 2 px)
e_spectrum      8     the same for E
heterogeneity   4     std over 16 x 16 blocks of 16 µm of H, E, H + E and the white fraction
==============  ====  ====================================================================

The colour-statistic blocks (``STAIN_BLOCKS``: od_rgb to stain_balance) describe the stain; the
other 172 dimensions describe the tissue and are what region search compares
(``threads_search.vectorstore.projection``).

Values are scaled to be O(1) (fractions, OD, logs divided by small constants) but not
standardised: standardise them across a data set before linear models.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from threads_search.errors import ConfigError
from threads_search.patch_encoders import PATCH_ENCODERS, TISSUE_DIMS
from threads_search.patch_encoders.base import PatchEncoder, PatchEncoderSpec
from threads_search.patch_encoders.nuclei_ops import nuclei_features
from threads_search.patch_encoders.texture_ops import (
    N_ANGLE,
    N_RADIAL,
    gabor_bank,
    glcm_features,
    lbp_hist,
    polar_bins,
    polar_power,
    radial_spectrum,
    scaled_log10,
)

WORK_SIZE = 256
COARSE_SIZE = WORK_SIZE // 2
_EPS = 1e-6

# Ruifrok & Johnston stain vectors (rows: H, E, DAB OD per R, G, B), normalised; as skimage.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)
_OD_LUT = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)

# Stain OD values are binned finely once (for quantiles, tissue moments and the histograms).
_FINE_LO, _FINE_STEP, _FINE_BINS = -0.5, 0.01, 300
_HED_EDGES = (  # internal edges of the 8 reported bins per stain, on the 0.01 grid
    (0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3),  # H
    (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),  # E
    (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),  # D
)
_FINE_CENTRES = _FINE_LO + (np.arange(_FINE_BINS) + 0.5) * _FINE_STEP
_FINE_TO_HIST = np.stack([np.searchsorted(e, _FINE_CENTRES) for e in _HED_EDGES])  # [3, 300]
_UM_PER_PX = 512 * 0.5 / WORK_SIZE  # fine scale, for a nominal patch

FEATURE_SIZES: tuple[tuple[str, int], ...] = (
    ("background", 2),
    ("od_rgb", 6),
    ("hed_stats", 21),
    ("hed_tissue", 6),
    ("hed_hist", 24),
    ("rgb_moments", 9),
    ("hsv_moments", 8),
    ("hue_hist", 8),
    ("stain_balance", 2),
    ("nuclei_lo", 17),
    ("nuclei_hi", 17),
    ("texture_fine", 58),
    ("texture_coarse", 58),
    ("h_spectrum", 8),
    ("e_spectrum", 8),
    ("heterogeneity", 4),
)
FEATURE_LAYOUT: dict[str, slice] = {}
_start = 0
for _name, _size in FEATURE_SIZES:
    FEATURE_LAYOUT[_name] = slice(_start, _start + _size)
    _start += _size
DIM = _start
# Colour statistics: they describe the stain (which changes between labs and scanners), not the
# tissue; region search compares the other blocks (``patch_encoders.tissue_dims``).
STAIN_BLOCKS = (
    "od_rgb",
    "hed_stats",
    "hed_tissue",
    "hed_hist",
    "rgb_moments",
    "hsv_moments",
    "hue_hist",
    "stain_balance",
)
TISSUE_DIMS["hed-texture"] = tuple(
    i for n, s in FEATURE_LAYOUT.items() if n not in STAIN_BLOCKS for i in range(s.start, s.stop)
)

SPEC = PatchEncoderSpec(
    name="hed-texture",
    dim=DIM,
    input_size=WORK_SIZE,
    patch_size=512,
    target_mpp=0.5,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    precision="fp32",
    needs_checkpoint=False,
    source="threads_search.patch_encoders.hed_texture (hand-crafted colour deconvolution + texture)",
    licence="project code (Apache-2.0)",
)


# --------------------------------------------------------------------------- helpers
def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → uint8 ``[size, size, 3]`` (box filter down, bilinear up)."""
    h, w = patch.shape[:2]
    if h == size and w == size:
        return patch
    im = Image.fromarray(np.ascontiguousarray(patch))
    if h == w and h % size == 0:
        return np.asarray(im.reduce(h // size))  # exact block mean, the fast 512 → 256 path
    filt = Image.Resampling.BOX if min(h, w) >= size else Image.Resampling.BILINEAR
    return np.asarray(im.resize((size, size), filt))


def _hist_moments(hist: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean, std, skewness (0 where the std is under 1e-3, clipped to ±10) of each row of counts
    ``hist [k, B]`` over bin values ``values`` (``[B]`` or ``[k, B]``) → ``[3, k]``."""
    n = np.maximum(hist.sum(axis=1), 1.0)
    out = np.empty((3, len(hist)))
    out[0] = (hist * values).sum(axis=1) / n
    d = values - out[0][:, None]
    hd2 = hist * d * d
    out[1] = np.sqrt(hd2.sum(axis=1) / n)
    skew = (hd2 * d).sum(axis=1) / n / np.maximum(out[1], 1e-3) ** 3
    out[2] = np.minimum(np.maximum(skew, -10.0), 10.0) * (out[1] > 1e-3)
    return out


def _hist_quantiles(counts: np.ndarray, qs) -> np.ndarray:
    """Quantiles (fractions ``qs``) per row of counts ``[k, _FINE_BINS]`` on the fine OD grid,
    as bin centres → ``[k, len(qs)]``."""
    cum = np.cumsum(counts, axis=1)
    below = cum[:, :, None] < np.asarray(qs)[None, None, :] * cum[:, -1:, None]
    return _FINE_CENTRES[np.minimum(below.sum(axis=1), _FINE_BINS - 1)]


def _texture(grey8: np.ndarray, h8: np.ndarray, stride: int) -> np.ndarray:
    """58 texture features of one scale (see the module docstring) from uint8 ``[S, S]`` grey
    and quantised H (OD x 128) planes; LBP samples every ``2 * stride``-th row, GLCM every
    ``4 * stride``-th."""
    size = grey8.shape[0]
    pooled = polar_power(grey8, 1 / 255)
    _, counts, r_c, t_c, _ = polar_bins(size)
    total = max(pooled.sum(), 1e-12)
    grad2 = (pooled * (2 * np.pi * r_c) ** 2).sum()  # mean squared gradient (Parseval)
    centroid = (pooled * np.log2(r_c * size)).sum() / total / np.log2(size)
    per_angle = pooled.reshape(N_RADIAL, N_ANGLE).sum(axis=0)
    aniso = per_angle.max() / max(per_angle.mean(), 1e-12) if total > 1e-10 else 1.0
    spectral = [scaled_log10(grad2), centroid, np.log2(aniso)]
    gabor = scaled_log10(gabor_bank(size) @ pooled)
    lbp = lbp_hist(np.stack([grey8, h8]), 2 * stride).ravel()  # grey, then H
    glcm = glcm_features(grey8 >> 4, 4 * stride)
    return np.concatenate([lbp, glcm, spectral, gabor])


# --------------------------------------------------------------------------- encoder
def _grey8(planes8: np.ndarray) -> np.ndarray:
    """Luma (0.299 R + 0.587 G + 0.114 B) of uint8 planes ``[3, N]`` → uint8 ``[N]``."""
    r, g, b = planes8.astype(np.uint16)
    return ((r * 77 + g * 150 + b * 29 + 128) >> 8).astype(np.uint8)


def _deconvolve(planes8: np.ndarray, n_stains: int) -> np.ndarray:
    """uint8 RGB planes ``[3, N]`` → stain optical densities ``[n_stains, N]`` (rows H, E, D).
    ``einsum`` rather than ``@``: no BLAS call, so no BLAS threads in reader worker processes."""
    return np.einsum("sc,cn->sn", _HED_FROM_RGB[:, :n_stains].T, np.take(_OD_LUT, planes8))


_H_LUT = np.outer(_HED_FROM_RGB[:, 0], _OD_LUT)  # [3, 256]: H contribution of R, G, B values


def _haematoxylin(planes8: np.ndarray) -> np.ndarray:
    """uint8 RGB planes ``[3, N]`` → H optical density ``[N]``, by per-channel lookup tables."""
    h = np.take(_H_LUT[0], planes8[0])
    h += np.take(_H_LUT[1], planes8[1])
    h += np.take(_H_LUT[2], planes8[2])
    return h


def _h8(h: np.ndarray) -> np.ndarray:
    """H optical density quantised to uint8 (x 128, clipped) for LBP."""
    return np.clip(h * 128.0, 0, 255).astype(np.uint8)


_BYTE_VALUES = np.array(  # bin values of the R, G, B, OD(R, G, B), S, V histograms
    [*[np.arange(256) / 255] * 3, *[_OD_LUT.astype(np.float64)] * 3, *[np.arange(256) / 255] * 2]
)
_CHANNEL_OFFSET = (np.arange(3, dtype=np.uint16) * 256)[:, None]


def _colour(planes8: np.ndarray, hed: np.ndarray, f: np.ndarray) -> None:
    """Fill the colour slices of ``f`` from pixels given as uint8 planes ``[3, N]`` and their
    stains ``hed [3, N]`` (OD, rows H, E, D). Moments of R, G, B, OD, S and V come from exact
    256-bin histograms; stain moments, quantiles and histograms from one 0.01-OD-bin histogram."""
    L = FEATURE_LAYOUT
    n = planes8.shape[1]
    r8, g8, b8 = planes8
    lo8 = np.minimum(np.minimum(r8, g8), b8)
    hi8 = np.maximum(np.maximum(r8, g8), b8)
    white = lo8 > 215
    n_tissue = n - int(np.count_nonzero(white))
    f[L["background"]] = (n - n_tissue) / n, np.count_nonzero(hi8 < 30) / n
    # S = (max - min) / max and V = max, both on a 0..255 scale.
    s8 = ((hi8 - lo8).astype(np.uint16) * 255 // np.maximum(hi8, 1)).astype(np.uint16)
    chans = np.concatenate(
        [planes8 + _CHANNEL_OFFSET, (s8 + np.uint16(768))[None], (hi8 + np.uint16(1024))[None]]
    )
    hist = np.bincount(chans.ravel(), minlength=5 * 256).reshape(5, 256)
    m = _hist_moments(hist[[0, 1, 2, 0, 1, 2, 3, 4]].astype(np.float64), _BYTE_VALUES)
    f[L["rgb_moments"]] = m[:, :3].ravel()  # R, G, B mean, then std, then skewness
    f[L["od_rgb"]] = m[:2, 3:6].ravel()
    alpha = m[0, 0] - 0.5 * (m[0, 1] + m[0, 2])  # mean hexagonal chroma vector
    beta = 0.8660254 * (m[0, 1] - m[0, 2])
    f[L["hsv_moments"]] = np.concatenate([[alpha * 2, beta * 2], m[:, 6:].ravel()])

    # Stain quantiles, tissue moments and histograms from one fine histogram (0.01 OD bins).
    fine = ((hed - _FINE_LO) * (1.0 / _FINE_STEP)).astype(np.int32)
    np.clip(fine, 0, _FINE_BINS - 1, out=fine)
    fine += (np.arange(3, dtype=np.int32) * _FINE_BINS)[:, None]
    fine += white.astype(np.int32) * np.int32(3 * _FINE_BINS)
    counts = np.bincount(fine.ravel(), minlength=6 * _FINE_BINS).reshape(2, 3, _FINE_BINS)
    c_tis, c_all = counts[0].astype(np.float64), counts.sum(axis=0).astype(np.float64)
    sm = _hist_moments(np.concatenate([c_tis, c_all]), _FINE_CENTRES)  # [3, 6]
    hed_mean = _HED_FROM_RGB.T @ m[0, 3:6]  # exact: deconvolution is linear in OD
    quant = _hist_quantiles(c_all, (0.05, 0.25, 0.5, 0.75, 0.95))
    f[L["hed_stats"]] = np.concatenate([hed_mean[:, None], sm[1, 3:, None], quant], 1).ravel()
    if n_tissue == 0:
        return
    t_mean, t_std = sm[0, :3], sm[1, :3]
    f[L["hed_tissue"]] = np.concatenate([t_mean, t_std])
    hists = [np.bincount(_FINE_TO_HIST[c], weights=c_tis[c], minlength=8) for c in range(3)]
    f[L["hed_hist"]] = np.concatenate(hists) / n_tissue
    # Hue octant of the hexagonal chroma vector (alpha, beta), without an arctan.
    a2 = 2 * r8.astype(np.int32) - g8 - b8  # 2 alpha (x 255)
    gb = g8.astype(np.int32) - b8  # beta / (sqrt(3) / 2) (x 255)
    upper, right, steep = gb >= 0, a2 >= 0, 3 * gb * gb > a2 * a2
    octant = 4 * upper + np.where(upper == right, steep, 3 - steep) + 8 * white
    f[L["hue_hist"]] = np.bincount(octant, minlength=16)[:8] / n_tissue
    hs, es = max(t_mean[0], 0.0), max(t_mean[1], 0.0)
    f[L["stain_balance"].start] = hs / (hs + es) if hs + es > _EPS else 0.5
    he = float(np.einsum("i,i,i->", hed[0], hed[1], (~white).astype(np.float32))) / n_tissue
    sd = t_std[0] * t_std[1]
    cov = he - t_mean[0] * t_mean[1]
    f[L["stain_balance"].start + 1] = np.clip(cov / sd, -1, 1) if sd > 1e-6 else 0.0


def hed_texture_features(patch: np.ndarray) -> np.ndarray:
    """uint8 ``[S, S, 3]`` patch (nominal 512 px at 0.5 µm/px) → float32 ``[DIM]``.
    ValueError for a non-square patch (it would be stretched)."""
    patch = np.asarray(patch)
    if patch.ndim != 3 or patch.shape[2] != 3 or min(patch.shape[:2]) < 2:
        raise ValueError(f"hed-texture expects an RGB patch [H, W, 3], got shape {patch.shape}")
    if patch.shape[0] != patch.shape[1]:
        raise ValueError(
            f"hed-texture expects a square patch (its side stands for 256 µm; resizing a "
            f"{patch.shape[0]} x {patch.shape[1]} px (height x width) patch to a square would "
            "stretch nuclei and texture); crop or pad it to a square first"
        )
    if patch.dtype != np.uint8:
        patch = np.clip(patch, 0, 255).astype(np.uint8)
    S, C = WORK_SIZE, COARSE_SIZE
    L = FEATURE_LAYOUT
    f = np.zeros(DIM, np.float64)

    # Fine scale (1 µm/px): nuclei and texture need only grey, H, E and the tissue mask.
    img = np.ascontiguousarray(_resize(patch, S))
    planes8 = img.reshape(S * S, 3).T.copy()  # [3, N]
    h_img = _haematoxylin(planes8).reshape(S, S)
    tissue = (np.minimum(np.minimum(planes8[0], planes8[1]), planes8[2]) <= 215).reshape(S, S)
    f[L["nuclei_lo"].start : L["nuclei_hi"].stop] = nuclei_features(h_img, tissue, _UM_PER_PX)
    f[L["texture_fine"]] = _texture(_grey8(planes8).reshape(S, S), _h8(h_img), 2)

    # Coarse scale (2 µm/px): colour statistics, texture, stain spectra, heterogeneity.
    planes8_c = np.asarray(Image.fromarray(img).reduce(2)).reshape(C * C, 3).T.copy()
    hed = _deconvolve(planes8_c, 3)  # [3, C * C] rows H, E, D
    white = np.minimum(np.minimum(planes8_c[0], planes8_c[1]), planes8_c[2]) > 215
    _colour(planes8_c[:, ::2], hed[:, ::2], f)  # colour statistics from every other pixel
    h_c, e_c = hed[0].reshape(C, C), hed[1].reshape(C, C)
    f[L["texture_coarse"]] = _texture(_grey8(planes8_c).reshape(C, C), _h8(h_c), 1)
    f[L["h_spectrum"]] = radial_spectrum(h_c)
    f[L["e_spectrum"]] = radial_spectrum(e_c)
    b = C // 16
    planes = np.stack([hed[0], hed[1], hed[0] + hed[1], white.astype(np.float32)])
    blocks = planes.reshape(4, 16, b, 16, b).sum(axis=2).sum(axis=-1) / (b * b)
    f[L["heterogeneity"]] = blocks.reshape(4, -1).std(axis=1)

    return np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


class HedTextureEncoder(PatchEncoder):
    """Weight-free colour-deconvolution + texture features; ``encode`` loops ``encode_one``."""

    spec = SPEC
    cpu_per_patch = True
    device = "cpu"

    def encode(self, patches) -> np.ndarray:
        """uint8 ``[B, H, W, 3]`` (numpy or torch) → float32 ``[B, DIM]``."""
        if hasattr(patches, "detach"):
            patches = patches.detach().cpu().numpy()
        patches = np.asarray(patches)
        if patches.ndim != 4:
            raise ValueError(f"hed-texture expects patches [B, H, W, 3], got shape {patches.shape}")
        out = np.empty((len(patches), DIM), np.float32)
        for k, p in enumerate(patches):
            out[k] = hed_texture_features(p)
        return out

    def encode_one(self, patch: np.ndarray) -> np.ndarray:
        return hed_texture_features(patch)


@PATCH_ENCODERS.register("hed-texture", info=SPEC)
def _create(checkpoint=None, device: str = "auto", **kwargs) -> HedTextureEncoder:
    """No weights: ``checkpoint`` must be None. ``device`` and other options are accepted for a
    uniform factory signature and ignored (this encoder always runs on the CPU)."""
    if checkpoint is not None:
        raise ConfigError(
            f"patch encoder 'hed-texture' has no weights; got checkpoint={checkpoint!r} (omit it)"
        )
    return HedTextureEncoder()
