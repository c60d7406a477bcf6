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


def _half(x: np.ndarray) -> np.ndarray:
    """2x2 block mean of a float ``[H, W]`` array with even H, W."""
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) * 0.25


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, std, skewness (0 where the spread is nil, clipped to ±10) of the rows of ``x``."""
    mean = x.mean(axis=1)
    d = x - mean[:, None]
    var = (d * d).mean(axis=1)
    std = np.sqrt(var)
    m3 = (d * d * d).mean(axis=1)
    skew = np.where(std > 1e-3, m3 / np.maximum(std, 1e-3) ** 3, 0.0)
    return mean, std, np.clip(skew, -10, 10)


def _hist_quantiles(counts: np.ndarray, qs) -> np.ndarray:
    """Quantiles (fractions ``qs``) of values binned on the fine OD grid, as bin centres."""
    cum = np.cumsum(counts)
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return _FINE_CENTRES[np.clip(idx, 0, _FINE_BINS - 1)]


@lru_cache(maxsize=1)
def _lbp_lut() -> np.ndarray:
    """Code (8 bits) → rotation-invariant uniform label 0..9 (riu2)."""
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(axis=1)
    return np.where(transitions <= 2, bits.sum(axis=1), 9).astype(np.intp)


_LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _lbp_hist(img: np.ndarray, stride: int = 1) -> np.ndarray:
    """10-bin riu2 LBP histogram (8 neighbours at radius 1, square) of a 2-D array, over every
    ``stride``-th centre pixel in both axes."""
    h, w = img.shape
    s = stride
    c = img[1 : h - 1 : s, 1 : w - 1 : s]
    code = np.zeros(c.shape, np.uint8)
    for k, (dy, dx) in enumerate(_LBP_OFFSETS):
        ge = img[1 + dy : h - 1 + dy : s, 1 + dx : w - 1 + dx : s] >= c
        code |= ge.view(np.uint8) << np.uint8(k)
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


def _freq_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (cycles/px) and angle of the ``rfft2`` grid of a ``size``² image."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.sqrt(fx**2 + fy**2), np.arctan2(fy, fx)


@lru_cache(maxsize=4)
def _gabor_bank(size: int) -> np.ndarray:
    """Log-Gabor squared gains, each summing to 1, on the rfft2 grid: ``[24, size*(size//2+1)]``."""
    r, theta = _freq_grid(size)
    logr = np.log(np.maximum(r, 1e-9))
    sigma_r, sigma_t = 0.35, np.pi / _GABOR_ORIENTS / 2
    bank = []
    for period in _GABOR_PERIODS:
        radial = np.exp(-((logr - np.log(1.0 / period)) ** 2) / (2 * sigma_r**2))
        radial[0, 0] = 0.0
        for k in range(_GABOR_ORIENTS):
            dt = np.angle(np.exp(2j * (theta - np.pi * k / _GABOR_ORIENTS))) / 2  # mod pi
            g2 = (radial * np.exp(-(dt**2) / (2 * sigma_t**2))) ** 2
            bank.append(g2 / g2.sum())
    return np.array(bank, np.float32).reshape(len(bank), -1)


@lru_cache(maxsize=4)
def _radial_bank(size: int, n_bands: int = 8) -> np.ndarray:
    """Mean over each of ``n_bands`` log-spaced radial bands of the rfft2 grid: ``[n_bands, F]``."""
    r, _ = _freq_grid(size)
    edges = np.geomspace(1.0 / size, 0.5, n_bands + 1)
    edges[-1] = 1.0  # the corners (r up to 0.71) go to the last band
    bank = [((r >= lo) & (r < hi)).astype(np.float32) for lo, hi in zip(edges[:-1], edges[1:])]
    return np.array([b / max(b.sum(), 1.0) for b in bank], np.float32).reshape(n_bands, -1)


@lru_cache(maxsize=4)
def _hann(size: int) -> np.ndarray:
    w = np.hanning(size).astype(np.float32)
    return np.outer(w, w)


def _log_power(bank: np.ndarray, img: np.ndarray) -> np.ndarray:
    """``log10`` of the band powers ``bank @ |FFT|²`` of a Hann-windowed, mean-removed image,
    mapped by ``/3 + 1`` to about [-1, 2]."""
    x = (img - img.mean()) * _hann(img.shape[0])
    f = scipy.fft.rfft2(x)
    power = ((f.real * f.real + f.imag * f.imag) / x.size).ravel()
    return np.log10(bank @ power + 1e-7) / 3 + 1


def _texture(grey8: np.ndarray, h8: np.ndarray, stride: int) -> np.ndarray:
    """58 texture features of one scale (see the module docstring) from uint8 ``[S, S]`` grey
    and quantised H (OD x 128) planes; LBP and GLCM sample every ``stride``-th pixel."""
    grey = grey8.astype(np.float32) * np.float32(1 / 255)
    gx = grey[:-1, 1:] - grey[:-1, :-1]
    gy = grey[1:, :-1] - grey[:-1, :-1]
    gmag = np.sqrt(gx * gx + gy * gy)
    grad = [gmag.mean() * 10, gmag.std() * 10, np.count_nonzero(gmag > 0.1) / gmag.size]
    gabor = _log_power(_gabor_bank(grey.shape[0]), grey)
    lbp = [_lbp_hist(grey8, stride), _lbp_hist(h8, stride)]
    return np.concatenate([*lbp, _glcm_features(grey8 >> 4, 2 * stride), grad, gabor])


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
    hi = h > _NUC_THRESHOLDS[1]  # inside ``lo`` wherever it matters (weights below)
    hi &= lo
    n_hi = int(np.count_nonzero(hi))
    labels, n = ndimage.label(lo)
    lab = labels.ravel()
    areas = np.bincount(lab, minlength=n + 1)[1:] * px_area
    cores = np.bincount(lab, weights=hi.ravel(), minlength=n + 1)[1:] * px_area
    keep = areas >= _NUC_MIN_AREA_UM2
    areas, cores = areas[keep], cores[keep]
    cores = cores[cores >= _CORE_MIN_AREA_UM2]
    tissue_um2 = max(n_tissue * px_area, 1.0)

    f_lo[0], f_lo[1] = n_lo / lo.size, n_lo / max(n_tissue, 1)
    f_lo[2] = np.log1p(len(areas) / tissue_um2 * 1000.0)
    _size_stats(areas, _AREA_BINS_UM2, f_lo[3:14])
    f_lo[14] = float(h.ravel() @ lo.ravel().astype(np.float32)) / n_lo
    outside = n_tissue - n_lo
    if outside > 0:
        f_lo[15] = float(e.ravel() @ (tissue & ~lo).ravel().astype(np.float32)) / outside
    f_lo[16] = 1.0 - np.count_nonzero(_interior(lo)) / n_lo

    f_hi[0], f_hi[1] = n_hi / hi.size, n_hi / max(n_tissue, 1)
    f_hi[2] = np.log1p(len(cores) / tissue_um2 * 1000.0)
    f_hi[3] = len(cores) / max(len(areas), 1)
    _size_stats(cores, _AREA_BINS_UM2 / 4, f_hi[4:15])
    if n_hi:
        f_hi[15] = float(h.ravel() @ hi.ravel().astype(np.float32)) / n_hi
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


def _colour(planes8: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the colour slices of ``f`` from uint8 planes ``[3, N]``; returns (od, hed, white)."""
    L = FEATURE_LAYOUT
    od = np.take(_OD_LUT, planes8)  # [3, N]
    hed = _HED_FROM_RGB.T @ od  # [3, N] rows H, E, D
    r8, g8, b8 = planes8
    lo8 = np.minimum(np.minimum(r8, g8), b8)
    hi8 = np.maximum(np.maximum(r8, g8), b8)
    white = lo8 > 215
    n_tissue = int(planes8.shape[1] - np.count_nonzero(white))
    f[L["background"]] = np.count_nonzero(white) / white.size, np.count_nonzero(hi8 < 30) / white.size
    f[L["od_rgb"]] = np.concatenate([od.mean(axis=1), od.std(axis=1)])

    # Stain quantiles, tissue moments and histograms from one fine histogram (0.01 OD bins).
    fine = ((hed - _FINE_LO) * (1.0 / _FINE_STEP)).astype(np.int32)
    np.clip(fine, 0, _FINE_BINS - 1, out=fine)
    fine += (np.arange(3, dtype=np.int32) * _FINE_BINS)[:, None]
    fine += white.astype(np.int32) * np.int32(3 * _FINE_BINS)
    counts = np.bincount(fine.ravel(), minlength=6 * _FINE_BINS).reshape(2, 3, _FINE_BINS)
    c_all, c_tis = counts.sum(axis=0), counts[0].astype(np.float64)
    hed_mean, hed_std = hed.mean(axis=1), hed.std(axis=1)
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    stats = [[hed_mean[c], hed_std[c], *_hist_quantiles(c_all[c], qs)] for c in range(3)]
    f[L["hed_stats"]] = np.ravel(stats)

    rgb = planes8.astype(np.float32) * np.float32(1 / 255)
    f[L["rgb_moments"]] = np.concatenate(_moments(rgb))
    rgb_mean = f[L["rgb_moments"]][:3]
    alpha_mean = rgb_mean[0] - 0.5 * (rgb_mean[1] + rgb_mean[2])
    beta_mean = 0.8660254 * (rgb_mean[1] - rgb_mean[2])
    hi = hi8.astype(np.float32)
    sv = np.stack([(hi - lo8) / np.maximum(hi, 1.0), hi * np.float32(1 / 255)])
    f[L["hsv_moments"]] = np.concatenate([[alpha_mean * 2, beta_mean * 2], *_moments(sv)])
    if n_tissue == 0:
        return od, hed, white
    t_mean = c_tis @ _FINE_CENTRES / n_tissue
    t_std = np.sqrt(np.maximum(c_tis @ _FINE_CENTRES**2 / n_tissue - t_mean**2, 0.0))
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
    cov = float((hed[0] * hed[1]) @ (~white).astype(np.float32)) / n_tissue - t_mean[0] * t_mean[1]
    sd = t_std[0] * t_std[1]
    f[L["stain_balance"].start + 1] = np.clip(cov / sd, -1, 1) if sd > 1e-6 else 0.0
    return od, hed, white


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
    od, hed, white = _colour(planes8_c, f)
    h_c, e_c = hed[0].reshape(C, C), hed[1].reshape(C, C)
    f[L["texture_coarse"]] = _texture(_grey8(planes8_c).reshape(C, C), _h8(h_c), 1)
    f[L["h_spectrum"]] = _log_power(_radial_bank(C), h_c)
    f[L["e_spectrum"]] = _log_power(_radial_bank(C), e_c)
    b = C // 16
    planes = np.stack([hed[0], hed[1], od.mean(axis=0), white.astype(np.float32)])
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
