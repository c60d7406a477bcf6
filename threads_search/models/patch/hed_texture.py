"""``hed-texture``: the built-in, weight-free patch encoder (hand-crafted H&E colour and texture).

A patch (uint8 ``[H, W, 3]``, nominally 512 px at 0.5 µm/px, any square size accepted) is resized
to the working size ``input_size`` = 256 px (1 µm/px for a 512 px patch; box filter) — the *fine*
scale — and 2x2 block-averaged to 128 px (2 µm/px) — the *coarse* scale. Features are computed with
numpy/scipy only (no threads spawned, deterministic) and are finite for any input. The 256-d
float32 vector is laid out as follows (``FEATURE_LAYOUT`` maps each name to its slice):

====================  ====  ==============================================================
name                  size  content
====================  ====  ==============================================================
background            2     fraction of white (min RGB > 215) and of black (max RGB < 30) px
od_rgb                6     optical density (log10) of R, G, B: mean, std (all px)
hed_stats             21    H, E, D (Ruifrok colour deconvolution, OD units): mean, std,
                            p5, p25, p50, p75, p95 (all px; per stain, 7 values each)
hed_tissue            6     H, E, D mean and std over tissue (non-white) px
hed_hist              24    H, E, D histograms, 8 fixed bins each, fraction of tissue px
rgb_moments           9     R, G, B (in [0, 1]) mean, std, skewness
hsv_moments           8     hue vector (chroma-weighted mean of cos, sin), S and V mean, std,
                            skewness
hue_hist              8     hue histogram of tissue px, 8 bins of 45 deg, fractions
stain_balance         2     H / (H + E) over tissue; correlation of H and E over tissue
nuclei_lo, nuclei_hi  17+17 nuclear proxies from H > 0.45 and H > 0.75 at 1 µm/px, components
                            >= 4 µm² (per threshold: mask fraction of all px and of tissue,
                            log1p density per 1000 µm² tissue, log area mean, std, p25, p50,
                            p90 (µm²), 6-bin log-area histogram, mean H inside, mean E
                            outside the mask in tissue, boundary/area ratio)
texture_fine          58    fine scale (1 µm/px) grey: LBP riu2 P=8 R=1 histogram (10), same
                            on H (10), GLCM (16 grey levels) contrast, homogeneity, energy,
                            correlation, entropy at d=1 and d=2 averaged over 4 angles (10)
                            plus contrast anisotropy at d=1 (1), gradient magnitude mean,
                            std, p90 (3), log-Gabor energies 4 frequencies x 6 orientations
                            (24; periods 4, 8, 16, 32 px)
texture_coarse        58    the same at the coarse scale (2 µm/px)
h_spectrum            8     log power of the H channel in 8 radial bands (fine scale)
e_spectrum            8     log power of the E channel in 8 radial bands (fine scale)
heterogeneity         4     std over 16x16 blocks (of 8x8 coarse px) of H, E, OD and white fraction
====================  ====  ==============================================================

Gabor-type energies are computed in the Fourier domain: by Parseval, the mean squared response of a
filter equals the image power spectrum weighted by the filter's squared gain, so one FFT per
channel and one matrix product with a precomputed log-Gabor bank replace 24 convolutions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
from PIL import Image
from scipy import ndimage

from threads_search.models.patch import PATCH_ENCODERS
from threads_search.models.patch.base import PatchEncoder, PatchEncoderSpec

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
_NUC_THRESHOLDS = (0.45, 0.75)
_NUC_MIN_AREA_UM2 = 4.0
_CORE_MIN_AREA_UM2 = 2.0
_UM_PER_PX = 512 * 0.5 / WORK_SIZE  # fine scale, for a nominal patch
_AREA_BINS_UM2 = np.array([8.0, 16.0, 32.0, 64.0, 128.0])  # 6 bins: <8, 8-16, ..., >=128
_GLCM_LEVELS = 16
_GABOR_PERIODS = (4.0, 8.0, 16.0, 32.0)
_GABOR_ORIENTS = 6
_N_RADIAL, _N_ANGLE = 24, 24  # polar bins of the power spectrum

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
    source="threads_search.models.patch.hed_texture (hand-crafted colour deconvolution + texture)",
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
    """Mean, std, skewness (0 where the spread is nil, clipped to ±10) of each row of counts
    ``hist [k, B]`` over bin values ``values`` (``[B]`` or ``[k, B]``) → ``[3, k]``."""
    n = np.maximum(hist.sum(axis=1), 1.0)
    mean = (hist * values).sum(axis=1) / n
    d = values - mean[:, None]
    hd2 = hist * d * d
    std = np.sqrt(hd2.sum(axis=1) / n)
    skew = (hd2 * d).sum(axis=1) / n / np.maximum(std, 1e-3) ** 3
    return np.stack([mean, std, np.where(std > 1e-3, np.clip(skew, -10, 10), 0.0)])


def _hist_quantiles(counts: np.ndarray, qs) -> np.ndarray:
    """Quantiles (fractions ``qs``) per row of counts ``[k, _FINE_BINS]`` on the fine OD grid,
    as bin centres → ``[k, len(qs)]``."""
    cum = np.cumsum(counts, axis=1)
    below = cum[:, :, None] < np.asarray(qs)[None, None, :] * cum[:, -1:, None]
    return _FINE_CENTRES[np.minimum(below.sum(axis=1), _FINE_BINS - 1)]


@lru_cache(maxsize=1)
def _lbp_lut() -> np.ndarray:
    """Code (8 bits) → rotation-invariant uniform label 0..9 (riu2)."""
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(axis=1)
    return np.where(transitions <= 2, bits.sum(axis=1), 9).astype(np.intp)


def _lbp_hist(img: np.ndarray, stride: int = 1) -> np.ndarray:
    """10-bin riu2 LBP histogram (8 neighbours at radius 1, square) of a 2-D array, over the
    centre pixels of every ``stride``-th row (all columns but the first and last).

    The rows above, at and below the centres are flattened so that every comparison runs over
    one contiguous 1-D array (neighbour x±1 is flat index ±1); codes of the first and last
    column, whose neighbours would wrap to the adjacent row, are dropped before counting."""
    h, w = img.shape
    up, mid, down = (np.ascontiguousarray(img[k : h - 2 + k : stride]).ravel() for k in range(3))
    c = mid[1:-1]
    code = np.zeros(c.shape, np.uint8)
    # Neighbours in circular order: UL, U, UR, R, DR, D, DL, L.
    for k, (row, dx) in enumerate(
        ((up, -1), (up, 0), (up, 1), (mid, 1), (down, 1), (down, 0), (down, -1), (mid, -1))
    ):
        ge = row[1 + dx : len(row) - 1 + dx] >= c
        code |= ge.view(np.uint8) << np.uint8(k)
    code = np.concatenate([code, code[:2]]).reshape(-1, w)[:, :-2]  # centres of columns 1..w-2
    per_code = np.bincount(code.ravel(), minlength=256)
    return np.bincount(_lbp_lut(), weights=per_code, minlength=10) / code.size


_GLCM_I, _GLCM_J = np.meshgrid(np.arange(_GLCM_LEVELS), np.arange(_GLCM_LEVELS), indexing="ij")
_GLCM_D2 = ((_GLCM_I - _GLCM_J) ** 2).astype(np.float64)
# (dy, dx) pixel offsets: distance 1 then 2, each at 0, 45, 90, 135 degrees.
_GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, 2), (2, 2), (2, 0), (2, -2))


def _glcm_features(q: np.ndarray, stride: int = 1) -> np.ndarray:
    """GLCM of uint8 levels ``q`` (< 16): 5 props at d = 1, 2 (mean of 4 angles) + anisotropy.

    Pairs start at every ``stride``-th pixel of ``q[:-2, 2:-2]`` in both axes (a sample of the
    pairs: the props are averages), so all 8 offsets share one shape and one ``bincount``.
    """
    n, s = _GLCM_LEVELS, stride
    h, w = q.shape
    first = q[: h - 2 : s, 2 : w - 2 : s].astype(np.uint16) * np.uint16(n)
    codes = np.empty((len(_GLCM_OFFSETS), *first.shape), np.uint16)
    for k, (dy, dx) in enumerate(_GLCM_OFFSETS):
        np.add(first, q[dy : h - 2 + dy : s, 2 + dx : w - 2 + dx : s], out=codes[k])
        codes[k] += np.uint16(k * n * n)
    c = np.bincount(codes.ravel(), minlength=len(_GLCM_OFFSETS) * n * n)
    c = c.reshape(len(_GLCM_OFFSETS), n, n).astype(np.float64)
    p = c + c.transpose(0, 2, 1)
    p /= np.maximum(p.sum(axis=(1, 2), keepdims=True), 1.0)
    contrast = (p * _GLCM_D2).sum(axis=(1, 2)) / (n - 1) ** 2
    homog = (p / (1.0 + _GLCM_D2)).sum(axis=(1, 2))
    energy = np.sqrt((p * p).sum(axis=(1, 2)))
    px = p.sum(axis=2)  # marginal (symmetric matrix: rows = columns)
    mu = px @ _GLCM_I[:, 0]
    var = px @ (_GLCM_I[:, 0] ** 2) - mu**2
    cov = (p * (_GLCM_I * _GLCM_J)).sum(axis=(1, 2)) - mu**2
    corr = np.where(var > 1e-9, cov / np.maximum(var, 1e-9), 1.0)
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=(1, 2)) / np.log(n * n)
    props = np.stack([contrast, homog, energy, corr, entropy]).reshape(5, 2, 4).mean(axis=2)
    return np.concatenate([props.T.ravel(), [contrast[:4].max() - contrast[:4].min()]])


@lru_cache(maxsize=4)
def _polar_bins(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polar binning of the ``rfft2`` grid of a ``size``² image: per frequency the bin index
    (``_N_RADIAL`` log-spaced radii from 1/size cycles/px, x ``_N_ANGLE`` orientations mod pi;
    the DC term goes to an extra last bin), and per bin its count, centre radius and angle."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    r = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(1.0 / size, 0.5, _N_RADIAL + 1)
    r_bin = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, _N_RADIAL - 1)
    theta = np.mod(np.arctan2(fy, fx), np.pi)
    t_bin = np.minimum((theta / (np.pi / _N_ANGLE)).astype(np.intp), _N_ANGLE - 1)
    idx = np.where(r > 0, r_bin * _N_ANGLE + t_bin, _N_RADIAL * _N_ANGLE).ravel()
    counts = np.bincount(idx, minlength=_N_RADIAL * _N_ANGLE + 1)[:-1].astype(np.float64)
    r_c = np.repeat(np.sqrt(edges[:-1] * edges[1:]), _N_ANGLE)
    t_c = np.tile((np.arange(_N_ANGLE) + 0.5) * np.pi / _N_ANGLE, _N_RADIAL)
    return idx, counts, r_c, t_c


@lru_cache(maxsize=4)
def _gabor_bank(size: int) -> np.ndarray:
    """Log-Gabor squared gains on the polar bins, each filter summing to 1 over the frequency
    grid: ``[len(_GABOR_PERIODS) * _GABOR_ORIENTS, _N_RADIAL * _N_ANGLE]``."""
    _, counts, r_c, t_c = _polar_bins(size)
    sigma_r, sigma_t = 0.35, np.pi / _GABOR_ORIENTS / 2
    bank = []
    for period in _GABOR_PERIODS:
        radial = np.exp(-((np.log(r_c * period)) ** 2) / (2 * sigma_r**2))
        for k in range(_GABOR_ORIENTS):
            dt = np.angle(np.exp(2j * (t_c - np.pi * k / _GABOR_ORIENTS))) / 2  # mod pi
            g2 = (radial * np.exp(-(dt**2) / (2 * sigma_t**2))) ** 2
            bank.append(g2 / max(g2 @ counts, _EPS))
    return np.array(bank)


def _polar_power(img: np.ndarray) -> np.ndarray:
    """Power spectrum (``|FFT|² / n``) of a Hann-windowed, mean-removed square image, summed
    per polar bin (see ``_polar_bins``): ``[_N_RADIAL * _N_ANGLE]``."""
    x = img.astype(np.float32)
    x = (x - x.mean()) * _hann(img.shape[0])
    f = scipy.fft.rfft2(x)
    power = (f.real * f.real + f.imag * f.imag).ravel()
    idx = _polar_bins(img.shape[0])[0]
    return np.bincount(idx, weights=power, minlength=_N_RADIAL * _N_ANGLE + 1)[:-1] / x.size


def _log10(x) -> np.ndarray:
    """``log10`` of a power, mapped by ``/3 + 1`` to about [-1, 2] (floor 1e-7)."""
    return np.log10(np.asarray(x) + 1e-7) / 3 + 1


def _radial_spectrum(img: np.ndarray, n_bands: int = 8) -> np.ndarray:
    """Mean power in ``n_bands`` log-spaced radial bands (see ``_polar_power``), ``_log10``-ed."""
    _, counts, _, _ = _polar_bins(img.shape[0])
    pooled = _polar_power(img).reshape(n_bands, -1).sum(axis=1)
    return _log10(pooled / np.maximum(counts.reshape(n_bands, -1).sum(axis=1), 1.0))


@lru_cache(maxsize=4)
def _hann(size: int) -> np.ndarray:
    w = np.hanning(size).astype(np.float32)
    return np.outer(w, w)


def _texture(grey8: np.ndarray, h8: np.ndarray, stride: int) -> np.ndarray:
    """58 texture features of one scale (see the module docstring) from uint8 ``[S, S]`` grey
    and quantised H (OD x 128) planes; LBP and GLCM sample every ``stride``-th pixel."""
    size = grey8.shape[0]
    pooled = _polar_power(grey8 * np.float32(1 / 255))
    _, counts, r_c, t_c = _polar_bins(size)
    total = max(pooled.sum(), 1e-12)
    grad2 = (pooled * (2 * np.pi * r_c) ** 2).sum()  # mean squared gradient (Parseval)
    centroid = (pooled * np.log2(r_c * size)).sum() / total / np.log2(size)
    per_angle = pooled.reshape(_N_RADIAL, _N_ANGLE).sum(axis=0)
    aniso = per_angle.max() / max(per_angle.mean(), 1e-12) if total > 1e-10 else 1.0
    spectral = [_log10(grad2), centroid, np.log2(aniso)]
    gabor = _log10(_gabor_bank(size) @ pooled)
    lbp = [_lbp_hist(grey8, stride), _lbp_hist(h8, stride)]
    glcm = _glcm_features(grey8 >> 4, 2 * stride)
    return np.concatenate([*lbp, glcm, spectral, gabor])


def _size_stats(areas: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[0:11]``: log area mean/4, std/2, p25, p50, p90 (/4), 6-bin histogram."""
    if len(areas) == 0:
        return
    la = np.sort(np.log(areas))
    out[0:2] = la.mean() / 4, la.std() / 2
    out[2:5] = la[[int(q * (len(la) - 1)) for q in (0.25, 0.5, 0.9)]] / 4
    out[5:11] = np.bincount(np.searchsorted(edges, areas, "right"), minlength=6) / len(areas)


def _nuclei(h: np.ndarray, e: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """34 nuclear proxies (17 per threshold, see the module docstring) from ``[S, S]`` planes at
    ``_UM_PER_PX`` µm/px: H and E (OD), tissue (bool). One labelling of the low-threshold mask;
    high-threshold "cores" are counted per low-threshold component."""
    px_area = _UM_PER_PX**2
    n_tissue = int(np.count_nonzero(tissue))
    lo = (h > _NUC_THRESHOLDS[0]) & tissue
    n_lo = int(np.count_nonzero(lo))
    f_lo, f_hi = np.zeros(17), np.zeros(17)
    if n_lo == 0:
        return np.concatenate([f_lo, f_hi])
    hi = h > _NUC_THRESHOLDS[1]
    hi &= lo
    n_hi = int(np.count_nonzero(hi))
    labels, n = ndimage.label(lo, output=np.intp)
    lab = labels.ravel()
    areas = np.bincount(lab, minlength=n + 1)[1:] * px_area
    cores = np.bincount(lab[hi.ravel()], minlength=n + 1)[1:] * px_area  # hi area per component
    keep = areas >= _NUC_MIN_AREA_UM2
    areas, cores = areas[keep], cores[keep]
    cores = cores[cores >= _CORE_MIN_AREA_UM2]
    tissue_um2 = max(n_tissue * px_area, 1.0)

    f_lo[0], f_lo[1] = n_lo / lo.size, n_lo / max(n_tissue, 1)
    f_lo[2] = np.log1p(len(areas) / tissue_um2 * 1000.0)
    _size_stats(areas, _AREA_BINS_UM2, f_lo[3:14])
    hf, lof = h.ravel(), lo.ravel().astype(np.float32)
    f_lo[14] = float(hf @ lof) / n_lo
    outside = n_tissue - n_lo
    if outside > 0:
        f_lo[15] = float(e.ravel() @ (tissue ^ lo).ravel().astype(np.float32)) / outside
    f_lo[16] = 1.0 - np.count_nonzero(_interior(lo)) / n_lo

    f_hi[0], f_hi[1] = n_hi / hi.size, n_hi / max(n_tissue, 1)
    f_hi[2] = np.log1p(len(cores) / tissue_um2 * 1000.0)
    f_hi[3] = len(cores) / max(len(areas), 1)
    _size_stats(cores, _AREA_BINS_UM2 / 4, f_hi[4:15])
    if n_hi:
        f_hi[15] = float(hf @ hi.ravel().astype(np.float32)) / n_hi
    f_hi[16] = n_hi / n_lo
    return np.concatenate([f_lo, f_hi])


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask[1:-1, 1:-1]`` whose 4 neighbours are all in ``mask``."""
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1]
    inner &= mask[2:, 1:-1]
    inner &= mask[1:-1, :-2]
    inner &= mask[1:-1, 2:]
    return inner


# --------------------------------------------------------------------------- encoder
def _grey8(planes8: np.ndarray) -> np.ndarray:
    """Luma (0.299 R + 0.587 G + 0.114 B) of uint8 planes ``[3, N]`` → uint8 ``[N]``."""
    r, g, b = planes8.astype(np.uint16)
    return ((r * 77 + g * 150 + b * 29 + 128) >> 8).astype(np.uint8)


def _h8(h: np.ndarray) -> np.ndarray:
    """H optical density quantised to uint8 (x 128, clipped) for LBP."""
    return np.clip(h * 128.0, 0, 255).astype(np.uint8)


_BYTE_VALUES = np.array(  # bin values of the R, G, B, OD(R, G, B), S, V histograms
    [*[np.arange(256) / 255] * 3, *[_OD_LUT.astype(np.float64)] * 3, *[np.arange(256) / 255] * 2]
)
_CHANNEL_OFFSET = (np.arange(3, dtype=np.uint16) * 256)[:, None]


def _colour(planes8: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill the colour slices of ``f`` from uint8 planes ``[3, N]``; returns (hed [3, N] float32
    rows H, E, D; white [N] bool). Moments of R, G, B, OD, S and V come from exact 256-bin
    histograms; stain moments, quantiles and histograms from one 0.01-OD-bin histogram."""
    L = FEATURE_LAYOUT
    n = planes8.shape[1]
    hed = _HED_FROM_RGB.T @ np.take(_OD_LUT, planes8)  # [3, N]
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
        return hed, white
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
    he = float((hed[0] * hed[1]) @ (~white).astype(np.float32)) / n_tissue
    sd = t_std[0] * t_std[1]
    cov = he - t_mean[0] * t_mean[1]
    f[L["stain_balance"].start + 1] = np.clip(cov / sd, -1, 1) if sd > 1e-6 else 0.0
    return hed, white


def hed_texture_features(patch: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` patch (square; nominal 512 px at 0.5 µm/px) → float32 ``[DIM]``."""
    patch = np.asarray(patch)
    if patch.ndim != 3 or patch.shape[2] != 3 or min(patch.shape[:2]) < 2:
        raise ValueError(f"hed-texture expects an RGB patch [H, W, 3], got shape {patch.shape}")
    if patch.dtype != np.uint8:
        patch = np.clip(patch, 0, 255).astype(np.uint8)
    S, C = WORK_SIZE, COARSE_SIZE
    L = FEATURE_LAYOUT
    f = np.zeros(DIM, np.float64)

    # Fine scale (1 µm/px): nuclei and texture need only grey, H, E and the tissue mask.
    img = np.ascontiguousarray(_resize(patch, S))
    planes8 = img.reshape(S * S, 3).T.copy()  # [3, N]
    he = _HED_FROM_RGB[:, :2].T @ np.take(_OD_LUT, planes8)  # [2, N] rows H, E
    h_img, e_img = he[0].reshape(S, S), he[1].reshape(S, S)
    tissue = (np.minimum(np.minimum(planes8[0], planes8[1]), planes8[2]) <= 215).reshape(S, S)
    f[L["nuclei_lo"].start : L["nuclei_hi"].stop] = _nuclei(h_img, e_img, tissue)
    f[L["texture_fine"]] = _texture(_grey8(planes8).reshape(S, S), _h8(h_img), 2)

    # Coarse scale (2 µm/px): colour statistics, texture, stain spectra, heterogeneity.
    planes8_c = np.asarray(Image.fromarray(img).reduce(2)).reshape(C * C, 3).T.copy()
    hed, white = _colour(planes8_c, f)
    h_c, e_c = hed[0].reshape(C, C), hed[1].reshape(C, C)
    f[L["texture_coarse"]] = _texture(_grey8(planes8_c).reshape(C, C), _h8(h_c), 1)
    f[L["h_spectrum"]] = _radial_spectrum(h_c)
    f[L["e_spectrum"]] = _radial_spectrum(e_c)
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
        raise ValueError(
            f"patch encoder 'hed-texture' has no weights; got checkpoint={checkpoint!r} (omit it)"
        )
    return HedTextureEncoder()
