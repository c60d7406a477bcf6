"""Texture primitives for hand-crafted patch features: uniform LBP histograms, grey-level
co-occurrence (GLCM) properties and Fourier-domain (log-Gabor, radial) band energies.

All work on square 2-D arrays (uint8 levels or float32), are deterministic, use numpy/scipy
without spawning threads, and are written for speed on one core: comparisons run over flattened
contiguous rows, and filter-bank energies come from one FFT by Parseval's theorem (the mean
squared response of a filter is the power spectrum weighted by the filter's squared gain), pooled
once into polar bins so a bank costs a small matrix product.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

GLCM_LEVELS = 16
GABOR_PERIODS = (4.0, 8.0, 16.0, 32.0)  # px
GABOR_ORIENTS = 6
N_RADIAL, N_ANGLE = 24, 24  # polar bins of the power spectrum


@lru_cache(maxsize=1)
def _lbp_lut() -> np.ndarray:
    """One-hot ``[256, 10]``: 8-bit code → rotation-invariant uniform label 0..9 (riu2)."""
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(axis=1)
    label = np.where(transitions <= 2, bits.sum(axis=1), 9)
    return (label[:, None] == np.arange(10)).astype(np.float64)


def lbp_hist(imgs: np.ndarray, stride: int = 1) -> np.ndarray:
    """10-bin riu2 LBP histograms (8 neighbours at radius 1, square) of a stack of 2-D arrays
    ``[k, h, w]`` → ``[k, 10]``, over the centre pixels of every ``stride``-th row (all columns
    but the first and last).

    The rows above, at and below the centres are flattened so that every comparison runs over
    one contiguous 1-D array (neighbour x±1 is flat index ±1); codes of the first and last
    column, whose neighbours would wrap to the adjacent row, are dropped before counting."""
    k_img, h, w = imgs.shape
    up, mid, down = (
        np.ascontiguousarray(imgs[:, k : h - 2 + k : stride]).ravel() for k in range(3)
    )
    c = mid[1:-1]
    code = np.zeros(c.shape, np.uint8)
    ge = np.empty(c.shape, bool)
    bit = np.empty(c.shape, np.uint8)
    # Neighbours in circular order: UL, U, UR, R, DR, D, DL, L.
    for k, (row, dx) in enumerate(
        ((up, -1), (up, 0), (up, 1), (mid, 1), (down, 1), (down, 0), (down, -1), (mid, -1))
    ):
        np.greater_equal(row[1 + dx : len(row) - 1 + dx], c, out=ge)
        np.left_shift(ge.view(np.uint8), k, out=bit)
        code |= bit
    code = np.concatenate([code, code[:2]]).reshape(k_img, -1, w)[:, :, :-2]  # columns 1..w-2
    per_code = np.bincount((code + _IMAGE_OFFSET[:k_img]).ravel(), minlength=256 * k_img)
    return per_code.reshape(k_img, 256) @ _lbp_lut() / (code.size // k_img)


_IMAGE_OFFSET = (np.arange(8, dtype=np.uint16) * 256)[:, None, None]


_GLCM_I, _GLCM_J = (g.ravel().astype(np.float64) for g in np.indices((16, 16)))
_GLCM_WEIGHTS = np.stack(  # p @ W: contrast (scaled to [0, 1]), homogeneity, E[ij], E[i], E[i²]
    [
        (_GLCM_I - _GLCM_J) ** 2 / 225,
        1 / (1 + (_GLCM_I - _GLCM_J) ** 2),
        _GLCM_I * _GLCM_J,
        _GLCM_I,
        _GLCM_I**2,
    ],
    axis=1,
)
# Partner pixel offsets (dy, dx): distance 1 then 2, each at 0, 45, 90, 135 degrees.
_GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, 2), (2, 2), (2, 0), (2, -2))


def glcm_features(q: np.ndarray, stride: int = 1) -> np.ndarray:
    """GLCM of uint8 levels ``q`` (< 16, even width): 5 props at d = 1, 2 (mean of 4 angles) and
    the contrast anisotropy (max - min over the 4 angles at d = 1) → ``[11]``.

    Pairs start on every ``stride``-th row, every other column (a sample: the props are
    averages). As in ``lbp_hist``, rows are flattened (zero-padded by 2) so each offset is one
    strided 1-D slice; pairs starting in the outer two columns, which would wrap, are dropped.
    """
    n = GLCM_LEVELS
    h, w = q.shape
    pad = np.zeros(2, np.uint8)
    rows = [np.concatenate([pad, q[k : h - 2 + k : stride].ravel(), pad]) for k in range(3)]
    first = rows[0][2:-2:2].astype(np.uint16) * np.uint16(n)
    codes = np.empty((len(_GLCM_OFFSETS), len(first)), np.uint16)
    for k, (dy, dx) in enumerate(_GLCM_OFFSETS):
        np.add(first, rows[dy][2 + dx : len(rows[dy]) - 2 + dx : 2], out=codes[k])
        codes[k] += np.uint16(k * n * n)
    codes = codes.reshape(len(_GLCM_OFFSETS), -1, w // 2)[:, :, 1:-1]
    c = np.bincount(codes.ravel(), minlength=len(_GLCM_OFFSETS) * n * n)
    c = c.reshape(len(_GLCM_OFFSETS), n, n).astype(np.float64)
    p = c + c.transpose(0, 2, 1)  # symmetric: row and column marginals are equal
    p = p.reshape(len(_GLCM_OFFSETS), n * n) / np.maximum(p.sum(axis=(1, 2)), 1.0)[:, None]
    contrast, homog, e_ij, mu, e_ii = (p @ _GLCM_WEIGHTS).T
    energy = np.sqrt((p * p).sum(axis=1))
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1) / np.log(n * n)
    var = e_ii - mu * mu
    corr = np.where(var > 1e-9, (e_ij - mu * mu) / np.maximum(var, 1e-9), 1.0)
    props = np.stack([contrast, homog, energy, corr, entropy]).reshape(5, 2, 4).mean(axis=2)
    return np.concatenate([props.T.ravel(), [contrast[:4].max() - contrast[:4].min()]])


@lru_cache(maxsize=4)
def polar_bins(size: int) -> tuple[np.ndarray, ...]:
    """Polar binning of the ``rfft2`` grid of a ``size``² image: per frequency the bin index
    (``N_RADIAL`` log-spaced radii from 1/size cycles/px, x ``N_ANGLE`` orientations mod pi;
    the DC term goes to an extra last bin), per bin its count, centre radius and angle, and the
    frequency bin index repeated twice (for interleaved real and imaginary parts)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    r = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(1.0 / size, 0.5, N_RADIAL + 1)
    r_bin = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, N_RADIAL - 1)
    theta = np.mod(np.arctan2(fy, fx), np.pi)
    t_bin = np.minimum((theta / (np.pi / N_ANGLE)).astype(np.intp), N_ANGLE - 1)
    idx = np.where(r > 0, r_bin * N_ANGLE + t_bin, N_RADIAL * N_ANGLE).ravel()
    counts = np.bincount(idx, minlength=N_RADIAL * N_ANGLE + 1)[:-1].astype(np.float64)
    r_c = np.repeat(np.sqrt(edges[:-1] * edges[1:]), N_ANGLE)
    t_c = np.tile((np.arange(N_ANGLE) + 0.5) * np.pi / N_ANGLE, N_RADIAL)
    return idx, counts, r_c, t_c, np.repeat(idx, 2)


@lru_cache(maxsize=4)
def gabor_bank(size: int) -> np.ndarray:
    """Log-Gabor squared gains on the polar bins, each filter summing to 1 over the frequency
    grid: ``[len(GABOR_PERIODS) * GABOR_ORIENTS, N_RADIAL * N_ANGLE]``."""
    _, counts, r_c, t_c, _ = polar_bins(size)
    sigma_r, sigma_t = 0.35, np.pi / GABOR_ORIENTS / 2
    bank = []
    for period in GABOR_PERIODS:
        radial = np.exp(-((np.log(r_c * period)) ** 2) / (2 * sigma_r**2))
        for k in range(GABOR_ORIENTS):
            dt = np.angle(np.exp(2j * (t_c - np.pi * k / GABOR_ORIENTS))) / 2  # mod pi
            g2 = (radial * np.exp(-(dt**2) / (2 * sigma_t**2))) ** 2
            bank.append(g2 / max(g2 @ counts, 1e-12))
    return np.array(bank)


def polar_power(img: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Power spectrum (``|FFT|² / n``) of the Hann-windowed, mean-removed square image
    ``img * scale``, summed per polar bin (see ``polar_bins``): ``[N_RADIAL * N_ANGLE]``."""
    x = img.astype(np.float32)
    x -= x.mean()
    x *= _hann(img.shape[0])
    sq = scipy.fft.rfft2(x).view(np.float32).ravel()  # interleaved real, imaginary parts
    sq *= sq
    idx2 = polar_bins(img.shape[0])[4]
    pooled = np.bincount(idx2, weights=sq, minlength=N_RADIAL * N_ANGLE + 1)[:-1]
    return pooled * (scale * scale / x.size)


def scaled_log10(x) -> np.ndarray:
    """``log10`` of a power, mapped by ``/3 + 1`` to about [-1, 2] (floor 1e-7)."""
    return np.log10(np.asarray(x) + 1e-7) / 3 + 1


def radial_spectrum(img: np.ndarray, n_bands: int = 8) -> np.ndarray:
    """Mean power in ``n_bands`` log-spaced radial bands (see ``polar_power``), ``scaled_log10``-ed."""
    counts = polar_bins(img.shape[0])[1]
    pooled = polar_power(img).reshape(n_bands, -1).sum(axis=1)
    return scaled_log10(pooled / np.maximum(counts.reshape(n_bands, -1).sum(axis=1), 1.0))


@lru_cache(maxsize=4)
def _hann(size: int) -> np.ndarray:
    w = np.hanning(size).astype(np.float32)
    return np.outer(w, w)
