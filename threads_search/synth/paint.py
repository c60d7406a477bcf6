"""Synthetic H&E-like tissue images with known ground truth (tissue mask, per-pixel class map).

Painting works in stain space: a haematoxylin and an eosin concentration per pixel (uint8), turned
into RGB by Beer-Lambert optical density through a 256 x 256 lookup table. Every length is in µm
and converted with ``mpp`` (µm/px), so one morphology painted at 0.25 and 0.5 µm/px looks the same
at equal physical scale. Smooth fields (tissue shape, regions, fibre waviness) live on coarse
physical grids and are bilinearly upsampled strip by strip; nuclei are stamped as soft ellipses
with vectorised index arithmetic. Deterministic from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

TISSUE_CLASSES = ("background", "stroma", "tumour", "gland", "fat")
"""Label values of ``class_map``: 0 background (glass, pen marks), 1 stroma (pink fibres, sparse
spindle nuclei), 2 tumour (solid sheets of dense, large, dark nuclei), 3 gland (pale lumens ringed
by epithelium and nuclei, in stroma), 4 fat (white vacuoles with thin pink borders)."""
BACKGROUND, STROMA, TUMOUR, GLAND, FAT = range(5)

_BG_RGB = np.array([242.0, 241.0, 239.0])
_H_OD = np.array([0.65, 0.70, 0.29])  # Ruifrok & Johnston stain vectors (optical density)
_E_OD = np.array([0.07, 0.99, 0.11])
_CONC_MAX = 1.6  # stain concentration stored as uint8 255
_COARSE_UM = 16.0  # grid spacing of region fields
_FINE_UM = 4.0  # grid spacing of fibre-waviness and stain-variation fields
_STRIP_PX = 1 << 18  # pixels rendered at once (small temporaries stay in cache)
# nuclei per 1000 µm² by class (tumour is scaled by Morphology.nuclear_density)
_DENSITY = {STROMA: 1.1, TUMOUR: 5.0, GLAND: 1.1, FAT: 0.25}
_POSITIVE = ("nuclear_density", "nuclear_size_um", "eosin_intensity", "haematoxylin_intensity")


@dataclass
class Morphology:
    """Appearance parameters (later driven from a molecular latent state). Fractions in [0, 1]."""

    nuclear_density: float = 1.0  # relative nuclei per area in tumour regions
    nuclear_size_um: float = 7.0  # nucleus diameter in µm (tumour nuclei are ~1.3x this)
    stain_hue: float = 0.0  # shift of the H/E hue, about -1 (redder) .. 1 (bluer)
    gland_fraction: float = 0.2  # share of tumour area laid out as glands
    tumour_fraction: float = 0.35  # share of tissue area that is tumour (solid + glands)
    fat_fraction: float = 0.15  # share of the non-tumour tissue that is fat (interior only)
    eosin_intensity: float = 1.0  # multiplies eosin concentration
    haematoxylin_intensity: float = 1.0  # multiplies haematoxylin concentration
    pleomorphism: float = 0.25  # log-normal spread of tumour nuclear size
    inflammation: float = 0.0  # share of non-tumour tissue with dense lymphocytes (confounder)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        for name, v in vars(self).items():
            frac = name.endswith("_fraction") or name == "inflammation"
            if (frac and not 0.0 <= v <= 1.0) or (name == "pleomorphism" and v < 0):
                raise ValueError(f"Morphology.{name}={v} must be {'in [0, 1]' if frac else '>= 0'}")
            if name in _POSITIVE and v <= 0:
                raise ValueError(f"Morphology.{name}={v} must be > 0")


@dataclass
class PaintedTissue:
    """A painted image and its ground truth. ``nuclei``: float32 ``[N, 3]`` rows of (x, y) centre
    in px and class label; ``pen_mask``: bool ``[H, W]`` of pen ink (never tissue)."""

    rgb: np.ndarray = field(repr=False)  # uint8 [H, W, 3], background ~ (242, 241, 239)
    tissue_mask: np.ndarray = field(repr=False)  # bool [H, W], lumens/vacuoles included
    class_map: np.ndarray = field(repr=False)  # uint8 [H, W], TISSUE_CLASSES index
    mpp: float
    nuclei: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32), repr=False)
    pen_mask: np.ndarray | None = field(default=None, repr=False)


def blank(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A white glass slide: uint8 ``[height, width, 3]`` near (242, 241, 239) with faint noise."""
    rng = np.random.default_rng(seed)
    shade = ndi.zoom(rng.standard_normal((8, 8)), (height / 8, width / 8), order=1, mode="nearest")
    shade = shade[:height, :width, None] * 1.5 + rng.integers(-1, 2, (height, width, 1))
    return np.clip(_BG_RGB + shade, 0, 255).astype(np.uint8)


def paint_tissue(
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    morphology: Morphology | None = None,
    n_pieces: int | None = None,
    tissue_fraction: float = 0.35,
    pen_marks: bool = False,
) -> PaintedTissue:
    """Paint ``n_pieces`` (default 1-3) irregular tissue pieces covering about
    ``tissue_fraction`` of a ``width`` x ``height`` px image at ``mpp`` µm/px, with stroma,
    tumour, gland and fat regions. ``pen_marks`` adds a green or blue marker stroke on glass."""
    m = morphology or Morphology()
    m.validate()
    if width < 16 or height < 16 or mpp <= 0:
        raise ValueError(
            f"paint_tissue: need width, height >= 16 and mpp > 0, got {width}x{height}"
        )
    if not 0.0 < tissue_fraction <= 0.8:
        raise ValueError(f"tissue_fraction {tissue_fraction} must be in (0, 0.8]")
    rng = np.random.default_rng(seed)
    n_pieces = int(n_pieces or rng.integers(1, 4))

    cs = _COARSE_UM / mpp  # coarse spacing in px
    fs = _FINE_UM / mpp
    cshape = (int(np.ceil(height / cs)) + 2, int(np.ceil(width / cs)) + 2)
    fshape = (int(np.ceil(height / fs)) + 2, int(np.ceil(width / fs)) + 2)
    tissue_f = _tissue_field(rng, cshape, cs, width, height, n_pieces, tissue_fraction)
    region_f, coarse_tissue = _region_fields(rng, tissue_f, cs * mpp, m)
    phase = _smooth(rng, fshape, 60.0 / _FINE_UM) * 25.0  # fibre waviness, µm
    stain_var = _smooth(rng, fshape, 40.0 / _FINE_UM)
    bundles = _smooth(rng, fshape, 20.0 / _FINE_UM)
    theta0 = float(rng.uniform(0, np.pi))
    cos0, sin0 = float(np.cos(theta0)), float(np.sin(theta0))

    # ---- strips: class map and base stain concentrations
    class_map = np.zeros((height, width), np.uint8)
    hmap = np.zeros((height, width), np.uint8)
    emap = np.zeros((height, width), np.uint8)
    regions = [_Upsampled(g, width, cs) for g in (tissue_f, *region_f)]
    textures = [_Upsampled(g, width, fs) for g in (phase, bundles, stain_var)]
    fat_jit = rng.random((int(height * mpp / 55) + 3, int(width * mpp / 55) + 3, 2))
    strip = max(8, _STRIP_PX // width)
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        if regions[0].any_positive(y0, y1):
            cls, e, h = _render_strip(y0, y1, regions, textures, fat_jit, mpp, (cos0, sin0))
            class_map[y0:y1] = cls
            emap[y0:y1] = _quant(e * m.eosin_intensity)
            hmap[y0:y1] = _quant(h * m.haematoxylin_intensity)

    # ---- glands, nuclei, colour
    gland_part, ring = _paint_glands(rng, class_map, hmap, emap, mpp, m)
    nuclei = _place_nuclei(rng, class_map, gland_part, mpp, m, phase, fs, theta0)
    nuclei = np.concatenate([nuclei, ring]) if len(ring) else nuclei
    if m.inflammation > 0:  # drawn only when asked: other images stay as they were
        infl = _lymphocytes(rng, class_map, tissue_f, region_f[0], cs, mpp, m.inflammation)
        nuclei = np.concatenate([nuclei, infl])
    del gland_part
    _stamp(hmap, nuclei, class_map > 0)
    rgb = _to_rgb(hmap, emap, m.stain_hue)
    del hmap, emap
    pen = _pen_stroke(rng, rgb, coarse_tissue, cs) if pen_marks else None
    centres = nuclei[:, [0, 1, 6]].astype(np.float32)  # x, y, class
    return PaintedTissue(rgb, class_map > 0, class_map, float(mpp), centres, pen)


def _render_strip(y0, y1, regions, textures, fat_jit, mpp, direction):
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
        e[fy, fx], h[fy, fx] = _fat_cells((fx + 0.5) * mpp, (fy + y0 + 0.5) * mpp, fat_jit)
    return cls, e * var, h * var


class _Upsampled:
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


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit std, float32."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return ((n - n.mean()) / max(float(n.std()), 1e-6)).astype(np.float32)


def _tissue_field(rng, shape, s, width, height, n_pieces, fraction) -> np.ndarray:
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
    field_ += 0.12 * _smooth(rng, shape, 160.0 / _COARSE_UM)
    margin = 0.06 * min(width, height)
    d = np.minimum(np.minimum(xx, yy), np.minimum(width - xx, height - yy))
    field_ -= 2.0 * np.clip(1.0 - d / margin, 0.0, None)
    inside = (xx < width) & (yy < height)
    return field_ - np.quantile(field_[inside], 1.0 - fraction)


def _region_fields(rng, tissue_f, s_um, m: Morphology):
    """Coarse fields whose sign marks tumour (of tissue), gland (of tumour) and fat (of non-tumour
    tissue at least 150 µm inside) with the requested area shares; also the coarse tissue mask."""
    tis = tissue_f > 0
    t = _smooth(rng, tissue_f.shape, 400.0 / _COARSE_UM)
    g = _smooth(rng, tissue_f.shape, 250.0 / _COARSE_UM)
    f = _smooth(rng, tissue_f.shape, 200.0 / _COARSE_UM)
    t -= _share_threshold(t, tis, m.tumour_fraction)
    tum = tis & (t > 0)
    g -= _share_threshold(g, tum, m.gland_fraction)
    depth = ndi.distance_transform_edt(tis) * s_um - 150.0
    inner = tis & ~tum & (depth > 0)
    share = m.fat_fraction * (tis & ~tum).sum() / max(int(inner.sum()), 1)
    f -= _share_threshold(f, inner, min(share, 1.0))
    f = np.minimum(f, depth.astype(np.float32) / 150.0)
    return (t, g, f), tis


def _share_threshold(values: np.ndarray, where: np.ndarray, share: float) -> float:
    """Threshold above which ``share`` of ``values[where]`` lies (beyond the range for 0 / 1)."""
    if share <= 0.0 or not where.any():
        return float(values.max()) + 1.0
    if share >= 1.0:
        return float(values.min()) - 1.0
    return float(np.quantile(values[where], 1.0 - share))


def _quant(conc: np.ndarray) -> np.ndarray:
    return np.clip(conc * (255.0 / _CONC_MAX) + 0.5, 0, 255).astype(np.uint8)


def _fat_cells(x_um, y_um, jit, cell: float = 55.0, border: float = 3.0):
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


def _paint_glands(rng, class_map, hmap, emap, mpp, m: Morphology):
    """Stamp glands (pale lumen, epithelial ring) on a jittered 95 µm grid inside gland regions.
    Returns ``gland_part`` (uint8 [H, W], 1 lumen, 2 epithelium) and ring nuclei rows."""
    height, width = class_map.shape
    part = np.zeros_like(class_map)
    spacing = 95.0
    gy, gx = np.mgrid[: int(height * mpp / spacing) + 1, : int(width * mpp / spacing) + 1]
    cx = ((gx + 0.5 + rng.uniform(-0.15, 0.15, gx.shape)) * spacing / mpp).ravel()
    cy = ((gy + 0.5 + rng.uniform(-0.15, 0.15, gy.shape)) * spacing / mpp).ravel()
    inb = (cx < width) & (cy < height)
    cx, cy = cx[inb], cy[inb]
    keep = class_map[cy.astype(np.intp), cx.astype(np.intp)] == GLAND
    rings = []
    nuc = m.nuclear_size_um
    lumen_e, epi_e = _quant(0.05 * m.eosin_intensity), _quant(0.42 * m.eosin_intensity)
    epi_h = _quant(0.10 * m.haematoxylin_intensity)
    for x, y in zip(cx[keep], cy[keep], strict=True):
        rl, t = rng.uniform(14.0, 30.0), rng.uniform(10.0, 14.0)
        a2, a3 = np.float32(rng.uniform(0, 0.12)), np.float32(rng.uniform(0, 0.08))
        p2, p3 = rng.uniform(0, 6.3, 2).astype(np.float32)
        rad = int(np.ceil((rl * 1.25 + t + 2.0) / mpp))
        ys = slice(max(0, int(y) - rad), min(height, int(y) + rad + 1))
        xs = slice(max(0, int(x) - rad), min(width, int(x) + rad + 1))
        dx = ((np.arange(xs.start, xs.stop, dtype=np.float32) + 0.5 - x) * mpp)[None, :]
        dy = ((np.arange(ys.start, ys.stop, dtype=np.float32) + 0.5 - y) * mpp)[:, None]
        r = np.sqrt(dx * dx + dy * dy) + np.float32(1e-6)
        c1, s1 = dx / r, dy / r  # cos, sin of the polar angle; no trig per pixel
        c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
        c3, s3 = c1 * (4 * c1 * c1 - 3), s1 * (3 - 4 * s1 * s1)
        lumen_r = rl * (
            1 + a2 * (c2 * np.cos(p2) - s2 * np.sin(p2)) + a3 * (c3 * np.cos(p3) - s3 * np.sin(p3))
        )
        own = class_map[ys, xs] == GLAND
        lum, epi = own & (r < lumen_r), own & (r >= lumen_r) & (r < lumen_r + t)
        part[ys, xs][lum], part[ys, xs][epi] = 1, 2
        emap[ys, xs][lum], hmap[ys, xs][lum] = lumen_e, 0
        emap[ys, xs][epi], hmap[ys, xs][epi] = epi_e, epi_h
        n = max(6, int(2 * np.pi * (rl + 0.55 * t) / (nuc * 1.15)))
        ang = (np.arange(n) + rng.uniform(-0.2, 0.2, n)) * (2 * np.pi / n)
        rr = rl * (1 + a2 * np.cos(2 * ang + p2) + a3 * np.cos(3 * ang + p3)) + 0.55 * t
        major = np.full(n, 0.5 * nuc * 1.3 / mpp)
        rows = [x + rr * np.cos(ang) / mpp, y + rr * np.sin(ang) / mpp, major, major * 0.55, ang]
        rings.append(np.stack([*rows, np.full(n, 0.95), np.full(n, GLAND)], 1))
    ring = np.concatenate(rings) if rings else np.zeros((0, 7))
    inb = _inside(ring[:, 0], ring[:, 1], height, width)
    ring = ring[inb]
    own = class_map[ring[:, 1].astype(np.intp), ring[:, 0].astype(np.intp)] == GLAND
    return part, ring[own]


def _jittered_grid(rng, height, width, spacing_um, mpp, jitter):
    """Points of a square grid ``spacing_um`` apart covering ``height`` x ``width`` px, each
    moved by up to ``jitter`` spacings: x, y in px ``[n]`` (some just outside the image)."""
    gy, gx = np.mgrid[: int(height * mpp / spacing_um) + 1, : int(width * mpp / spacing_um) + 1]
    x = ((gx + 0.5 + rng.uniform(-jitter, jitter, gx.shape)) * spacing_um / mpp).ravel()
    y = ((gy + 0.5 + rng.uniform(-jitter, jitter, gy.shape)) * spacing_um / mpp).ravel()
    return x, y


def _inside(x, y, height, width):
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def _place_nuclei(rng, class_map, gland_part, mpp, m: Morphology, phase, fs, theta0):
    """Nuclei on a jittered grid thinned by class density. Rows: x, y (px), major and minor
    semi-axes (px), angle (rad), intensity (concentration), class."""
    height, width = class_map.shape
    dens = dict(_DENSITY)
    dens[TUMOUR] *= m.nuclear_density
    dmax = max(dens.values())
    x, y = _jittered_grid(rng, height, width, np.sqrt(1000.0 / dmax), mpp, 0.4)
    u = rng.random(x.size)
    inb = _inside(x, y, height, width)
    x, y, u = x[inb], y[inb], u[inb]
    xi, yi = x.astype(np.intp), y.astype(np.intp)
    cls = class_map[yi, xi]
    p = np.zeros(len(dens) + 1)
    for c, d in dens.items():
        p[c] = d / dmax
    keep = (u < p[cls]) & (gland_part[yi, xi] == 0)
    x, y, cls = x[keep], y[keep], cls[keep]
    n = x.size
    r0 = 0.5 * m.nuclear_size_um / mpp
    major, minor = np.full(n, r0 * 1.5), np.full(n, r0 * 0.45)  # stroma: spindle
    inten = np.full(n, 0.85)
    # spindles follow the fibres: perpendicular to grad(psi)
    gpy, gpx = np.gradient(phase, _FINE_UM)
    coords = np.stack([(y + 0.5) / fs, (x + 0.5) / fs])
    gxv = np.cos(theta0) + ndi.map_coordinates(gpx, coords, order=1)
    gyv = np.sin(theta0) + ndi.map_coordinates(gpy, coords, order=1)
    ang = np.arctan2(gyv, gxv) + np.pi / 2
    tum = cls == TUMOUR
    size = r0 * 1.3 * rng.lognormal(0.0, m.pleomorphism, n)
    aspect = rng.uniform(1.0, 1.35, n)
    major[tum], minor[tum] = size[tum] * np.sqrt(aspect[tum]), size[tum] / np.sqrt(aspect[tum])
    ang[tum] = rng.uniform(0, np.pi, n)[tum]
    inten[tum] = rng.uniform(0.95, 1.1, n)[tum]
    fat = cls == FAT
    major[fat], minor[fat], inten[fat] = r0 * 1.2, r0 * 0.35, 0.8
    return np.stack([x, y, major, minor, ang, inten, cls.astype(float)], 1)


def _lymphocytes(rng, class_map, tissue_f, tumour_f, cs, mpp, share, density=14.0, size=5.0):
    """Dense small round dark nuclei (a lymphocytic infiltrate) in stroma, over a smooth region
    covering ``share`` of the non-tumour tissue: tumour-like nuclear density outside the tumour.
    ``density`` nuclei per 1000 µm², ``size`` µm diameter. Rows as from ``_place_nuclei``."""
    height, width = class_map.shape
    field_ = _smooth(rng, tissue_f.shape, 150.0 / _COARSE_UM)
    normal = (tissue_f > 0) & (tumour_f <= 0)
    field_ -= _share_threshold(field_, normal, share)
    x, y = _jittered_grid(rng, height, width, np.sqrt(1000.0 / density), mpp, 0.35)
    inb = _inside(x, y, height, width)
    x, y = x[inb], y[inb]
    here = ndi.map_coordinates(field_, [(y + 0.5) / cs, (x + 0.5) / cs], order=1)
    keep = (here > 0) & (class_map[y.astype(np.intp), x.astype(np.intp)] == STROMA)
    x, y = x[keep], y[keep]
    n = x.size
    r = 0.5 * size / mpp * rng.lognormal(0.0, 0.08, n)
    return np.stack([x, y, r * 1.05, r / 1.05, rng.uniform(0, np.pi, n),
                     rng.uniform(1.15, 1.35, n), np.full(n, float(STROMA))], 1)  # fmt: skip


def _stamp(hmap, nuclei, tissue, budget: int = 4_000_000) -> None:
    """Max-composite soft ellipses (1 px edge, darker rim) into ``hmap`` in place, clipped to
    ``tissue`` (bool [H, W]); ``nuclei`` rows as from ``_place_nuclei``. Chunks of similar size
    keep the offset grids small."""
    height, width = hmap.shape
    flat, inside = hmap.reshape(-1), tissue.reshape(-1)
    nuclei = nuclei[np.argsort(nuclei[:, 2], kind="stable")].astype(np.float32)
    rads = np.ceil(nuclei[:, 2] + 1.5).astype(np.intp)
    start = 0
    while start < len(nuclei):
        rad = rads[start]
        k = (2 * int(rad * 1.25) + 1) ** 2
        stop = min(int(np.searchsorted(rads, rad * 1.25, "right")), start + max(1, budget // k))
        chunk = nuclei[start:stop]
        rad = int(rads[stop - 1])  # sorted: the last is the largest
        off = np.arange(-rad, rad + 1)
        ox, oy = np.meshgrid(off, off)
        ix = np.floor(chunk[:, :1]).astype(np.intp) + ox.ravel()
        iy = np.floor(chunk[:, 1:2]).astype(np.intp) + oy.ravel()
        u = (ix + 0.5).astype(np.float32) - chunk[:, :1]
        v = (iy + 0.5).astype(np.float32) - chunk[:, 1:2]
        c, s = np.cos(chunk[:, 4:5]), np.sin(chunk[:, 4:5])
        a, b = chunk[:, 2:3], chunk[:, 3:4]
        rho = np.sqrt(((u * c + v * s) / a) ** 2 + ((v * c - u * s) / b) ** 2)
        edge = np.clip((1.0 - rho) * b + 0.5, 0.0, 1.0)
        ok = (edge > 0) & (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        idx = (iy * width + ix)[ok]
        on = inside[idx]
        rho, edge, idx = rho[ok][on], edge[ok][on], idx[on]
        val = np.broadcast_to(chunk[:, 5:6], ok.shape)[ok][on] * edge * (0.78 + 0.22 * rho**2)
        np.maximum.at(flat, idx, _quant(val))
        start = stop


def _lut(stain_hue: float) -> np.ndarray:
    """uint8 ``[65536, 3]``: RGB for (haematoxylin, eosin) uint8 concentration pairs."""
    s = float(np.clip(stain_hue, -1.5, 1.5))
    h_od = np.clip(_H_OD + s * np.array([0.15, 0.0, -0.10]), 0.02, None)
    e_od = np.clip(_E_OD + np.array([0.0, 0.0, -0.06 * s + 0.1 * max(-s, 0.0)]), 0.02, None)
    conc = np.arange(256) * (_CONC_MAX / 255.0)
    od = conc[:, None, None] * h_od + conc[None, :, None] * e_od
    return np.clip(_BG_RGB * np.exp(-od) + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3)


def _to_rgb(hmap: np.ndarray, emap: np.ndarray, stain_hue: float) -> np.ndarray:
    lut = _lut(stain_hue)
    rgb = np.empty((*hmap.shape, 3), np.uint8)
    strip = max(8, _STRIP_PX // hmap.shape[1])
    for y0 in range(0, hmap.shape[0], strip):
        idx = (hmap[y0 : y0 + strip].astype(np.uint16) << 8) | emap[y0 : y0 + strip]
        np.take(lut, idx, axis=0, out=rgb[y0 : y0 + strip])
    return rgb


def _pen_stroke(rng, rgb, coarse_tissue, cs) -> np.ndarray:
    """Blend a wavy green or blue marker stroke along the image border band, away from tissue
    (at least 40 µm-ish, judged on the coarse tissue grid). Returns the pen mask."""
    height, width = rgb.shape[:2]
    side = min(width, height)
    half_w = max(2.0, 0.008 * side)
    top = rng.random() < 0.5
    yc = 0.03 * height if top else 0.97 * height
    amp, period, ph = 0.008 * side, rng.uniform(0.2, 0.4) * width, rng.uniform(0, 6.3)
    x0, x1 = int(0.15 * width), int(0.85 * width)
    y0, y1 = int(max(0, yc - amp - half_w - 2)), int(min(height, yc + amp + half_w + 3))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    f = yc + amp * np.sin(2 * np.pi * xx / period + ph)
    slope = amp * 2 * np.pi / period * np.cos(2 * np.pi * xx / period + ph)
    d = np.abs(yy - f) / np.sqrt(1 + slope**2)
    alpha = np.clip(half_w - d + 0.5, 0.0, 1.0) * 0.85
    far = ~ndi.binary_dilation(coarse_tissue, iterations=3)
    ni = np.clip(np.rint(yy / cs).astype(np.intp), 0, far.shape[0] - 1)
    nj = np.clip(np.rint(xx / cs).astype(np.intp), 0, far.shape[1] - 1)
    alpha *= far[ni, nj]
    colour = np.array([25.0, 135.0, 70.0]) if rng.random() < 0.5 else np.array([35.0, 70.0, 175.0])
    box, alpha = rgb[y0:y1, x0:x1].astype(np.float32), alpha[..., None]
    rgb[y0:y1, x0:x1] = (box * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = alpha[..., 0] > 0
    return mask
