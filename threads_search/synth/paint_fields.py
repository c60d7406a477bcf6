"""Smooth fields of a painted slide (``synth.paint``): tissue shape, tumour / gland / fat regions,
fibrous stroma and fat cells, rendered strip by strip as class labels and stain concentrations.

Lengths in µm, converted with ``mpp`` (µm/px); coarse fields live on a ``COARSE_UM`` grid, fibre
waviness and stain variation on a ``FINE_UM`` grid, both bilinearly upsampled (``Upsampled``).
Stain concentrations are stored as uint8 (``quant``: ``CONC_MAX`` is 255).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

TISSUE_CLASSES = ("background", "stroma", "tumour", "gland", "fat")
"""Label values of ``class_map``: 0 background (glass, pen marks), 1 stroma (pink fibres, sparse
spindle nuclei), 2 tumour (solid sheets of dense, large, dark nuclei), 3 gland (pale lumens ringed
by epithelium and nuclei, in stroma), 4 fat (white vacuoles with thin pink borders)."""
BACKGROUND, STROMA, TUMOUR, GLAND, FAT = range(5)

CONC_MAX = 1.6  # stain concentration stored as uint8 255
COARSE_UM = 16.0  # grid spacing of region fields
FINE_UM = 4.0  # grid spacing of fibre-waviness and stain-variation fields


def render_strip(y0, y1, regions, textures, fat_jit, mpp, direction):
    """Rows ``y0:y1``: class labels (uint8) and base eosin / haematoxylin concentrations (float32
    ``[y1 - y0, width]``): fibrous stroma, tumour cytoplasm, fat cells; glands and nuclei later."""
    tis_u, tum_u, gla_u, fat_u = regions
    phase_u, bund_u, var_u = textures
    tis = tis_u.rows(y0, y1) > 0
    tum = tis & (tum_u.rows(y0, y1) > 0) if tum_u.any_positive(y0, y1) else np.zeros_like(tis)
    gla = tum & (gla_u.rows(y0, y1) > 0) if tum.any() else tum
    fat = np.zeros_like(tis)
    if fat_u.any_positive(y0, y1):
        fat = tis & ~tum & (fat_u.rows(y0, y1) > 0)
    cls = np.where(tis, np.uint8(STROMA), np.uint8(BACKGROUND))
    cls[tum] = TUMOUR
    cls[gla] = GLAND
    cls[fat] = FAT

    width = tis.shape[1]
    xs_um = (np.arange(width, dtype=np.float32) + 0.5) * np.float32(mpp)
    ys_um = ((np.arange(y0, y1, dtype=np.float32) + 0.5) * np.float32(mpp))[:, None]
    psi = xs_um * direction[0] + ys_um * direction[1] + phase_u.rows(y0, y1)
    fibre = (0.5 + 0.5 * np.sin(psi * np.float32(2 * np.pi / 9.0))) ** 2
    fibre_amp = min(max((9.0 / mpp - 2.0) / 4.0, 0.0), 1.0)  # fade fibres below ~4 px period
    amp = np.clip(0.25 + 0.3 * bund_u.rows(y0, y1), 0.05, 0.5) * fibre_amp
    var = 1.0 + 0.07 * var_u.rows(y0, y1)
    e = np.where(tis, 0.58 * (1.0 - amp + amp * fibre), np.float32(0.0))
    h = np.where(tis, np.float32(0.03), np.float32(0.0))
    solid = tum & ~gla
    e[solid], h[solid] = 0.30, 0.13
    fy, fx = np.nonzero(fat)
    if fy.size:
        e[fy, fx], h[fy, fx] = fat_cells((fx + 0.5) * mpp, (fy + y0 + 0.5) * mpp, fat_jit)
    return cls, e * var, h * var


class Upsampled:
    """Bilinear upsampling of a grid (node (i, j) at pixel-centre coordinate (j*s, i*s)) to image
    rows: columns are interpolated once (``[grid rows, width]``), rows per call."""

    def __init__(self, grid: np.ndarray, width: int, spacing_px: float):
        gx = (np.arange(width) + 0.5) / spacing_px
        j0 = np.floor(gx).astype(np.intp)
        wx = (gx - j0).astype(np.float32)
        left = grid[:, j0].astype(np.float32)
        self.a = left + (grid[:, j0 + 1] - left) * wx
        self.d = np.diff(self.a, axis=0)
        self.s = spacing_px
        self.positive_rows = (grid > 0).any(axis=1)

    def any_positive(self, y0: int, y1: int) -> bool:
        """Whether any grid node that rows ``y0:y1`` interpolate from is > 0."""
        i0, i1 = int((y0 + 0.5) / self.s), int((y1 - 0.5) / self.s) + 2
        return bool(self.positive_rows[i0:i1].any())

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """float32 ``[y1 - y0, width]``."""
        gy = (np.arange(y0, y1) + 0.5) / self.s
        i0 = np.floor(gy).astype(np.intp)
        return self.a[i0] + self.d[i0] * (gy - i0).astype(np.float32)[:, None]


def smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit std, float32."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return ((n - n.mean()) / max(float(n.std()), 1e-6)).astype(np.float32)


def tissue_field(rng, shape, s, width, height, n_pieces, fraction) -> np.ndarray:
    """Coarse field, > 0 inside tissue: union of distorted ellipses plus smooth noise, kept off
    the image border and thresholded at the quantile giving ``fraction`` of the image area."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32) * np.float32(s)
    long_x = width >= height
    field_ = np.full(shape, -np.inf, np.float32)
    for k in range(n_pieces):
        t = (k + 0.5 + rng.uniform(-0.15, 0.15)) / n_pieces
        cx = width * (t if long_x else rng.uniform(0.4, 0.6))
        cy = height * (rng.uniform(0.4, 0.6) if long_x else t)
        r = np.sqrt(fraction * width * height / n_pieces / np.pi) * rng.uniform(0.8, 1.2)
        # pieces elongated across the long image axis, like serial sections side by side
        ang, aspect = np.pi / 2 * long_x + rng.uniform(-0.4, 0.4), rng.uniform(1.0, 1.5)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        phi = np.arctan2(v, u)
        wobble = sum(
            rng.uniform(0, 0.12 / n) * np.cos(n * phi + rng.uniform(0, 6.3)) for n in (2, 3, 4, 5)
        )
        field_ = np.maximum(field_, 1.0 - np.hypot(u / aspect, v * aspect) / (r * (1 + wobble)))
    field_ += 0.12 * smooth(rng, shape, 160.0 / COARSE_UM)
    margin = 0.06 * min(width, height)
    d = np.minimum(np.minimum(xx, yy), np.minimum(width - xx, height - yy))
    field_ -= 2.0 * np.clip(1.0 - d / margin, 0.0, None)
    inside = (xx < width) & (yy < height)
    return field_ - np.quantile(field_[inside], 1.0 - fraction)


def region_fields(rng, tissue_f, s_um, m):
    """Coarse fields whose sign marks tumour (of tissue), gland (of tumour) and fat (of non-tumour
    tissue at least 150 µm inside) with the requested area shares; also the coarse tissue mask."""
    tis = tissue_f > 0
    t = smooth(rng, tissue_f.shape, 400.0 / COARSE_UM)
    g = smooth(rng, tissue_f.shape, 250.0 / COARSE_UM)
    f = smooth(rng, tissue_f.shape, 200.0 / COARSE_UM)
    t -= share_threshold(t, tis, m.tumour_fraction)
    tum = tis & (t > 0)
    g -= share_threshold(g, tum, m.gland_fraction)
    depth = ndi.distance_transform_edt(tis) * s_um - 150.0
    inner = tis & ~tum & (depth > 0)
    share = m.fat_fraction * (tis & ~tum).sum() / max(int(inner.sum()), 1)
    f -= share_threshold(f, inner, min(share, 1.0))
    f = np.minimum(f, depth.astype(np.float32) / 150.0)
    return (t, g, f), tis


def share_threshold(values: np.ndarray, where: np.ndarray, share: float) -> float:
    """Threshold above which ``share`` of ``values[where]`` lies (beyond the range for 0 / 1)."""
    if share <= 0.0 or not where.any():
        return float(values.max()) + 1.0
    if share >= 1.0:
        return float(values.min()) - 1.0
    return float(np.quantile(values[where], 1.0 - share))


def quant(conc: np.ndarray) -> np.ndarray:
    return np.clip(conc * (255.0 / CONC_MAX) + 0.5, 0, 255).astype(np.uint8)


def fat_cells(x_um, y_um, jit, cell: float = 55.0, border: float = 3.0):
    """Adipocytes as Voronoi cells of jittered seeds (``cell`` µm apart): (eosin, haematoxylin)
    concentrations at the given points, pink at cell borders, nearly white inside."""
    ci, cj = np.floor(y_um / cell).astype(np.intp), np.floor(x_um / cell).astype(np.intp)
    d1 = np.full(x_um.shape, np.inf, np.float32)
    d2 = d1.copy()
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = np.clip(ci + di, 0, jit.shape[0] - 1), np.clip(cj + dj, 0, jit.shape[1] - 1)
            sy, sx = (i + 0.15 + 0.7 * jit[i, j, 0]) * cell, (j + 0.15 + 0.7 * jit[i, j, 1]) * cell
            d = np.hypot(x_um - sx, y_um - sy).astype(np.float32)
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
    rim = np.clip(1.0 - ((d2 - d1) - border) / 1.5, 0.0, 1.0)
    return 0.03 + 0.6 * rim, 0.02 * rim
