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

from threads_search.errors import ConfigError
from threads_search.synth.paint_cells import lymphocytes, paint_glands, place_nuclei, stamp
from threads_search.synth.paint_fields import (
    BACKGROUND,
    COARSE_UM,
    CONC_MAX,
    FAT,
    FINE_UM,
    GLAND,
    STROMA,
    TISSUE_CLASSES,
    TUMOUR,
    Upsampled,
    quant,
    region_fields,
    render_strip,
    smooth,
    tissue_field,
)

__all__ = [
    "BACKGROUND",
    "FAT",
    "GLAND",
    "STROMA",
    "TISSUE_CLASSES",
    "TUMOUR",
    "Morphology",
    "PaintedTissue",
    "blank",
    "paint_tissue",
]

_BG_RGB = np.array([242.0, 241.0, 239.0])
_H_OD = np.array([0.65, 0.70, 0.29])  # Ruifrok & Johnston stain vectors (optical density)
_E_OD = np.array([0.07, 0.99, 0.11])
_STRIP_PX = 1 << 18  # pixels rendered at once (small temporaries stay in cache)
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
    # scanner/lab look: H and E optical-density vectors (3 floats each, > 0 in sum; None: the
    # Ruifrok & Johnston ones) and an RGB multiplier of the illumination (tints glass and tissue)
    stain_vectors: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ValueError) naming the first field out of range."""
        if self.stain_vectors is not None:
            vecs = np.asarray(self.stain_vectors, dtype=float)
            if vecs.shape != (2, 3) or not np.isfinite(vecs).all() or (vecs.sum(1) <= 0).any():
                raise ConfigError(
                    f"Morphology.stain_vectors={self.stain_vectors} must be two 3-vectors (H, E "
                    "optical density per R, G, B) with positive sums"
                )
        tint = np.asarray(self.tint, dtype=float)
        if tint.shape != (3,) or not ((tint > 0.5) & (tint <= 1.05)).all():
            raise ConfigError(f"Morphology.tint={self.tint} must be 3 floats in (0.5, 1.05]")
        for name, v in vars(self).items():
            if name in ("stain_vectors", "tint"):
                continue
            frac = name.endswith("_fraction") or name == "inflammation"
            if (frac and not 0.0 <= v <= 1.0) or (name == "pleomorphism" and v < 0):
                raise ConfigError(
                    f"Morphology.{name}={v} must be {'in [0, 1]' if frac else '>= 0'}"
                )
            if name in _POSITIVE and v <= 0:
                raise ConfigError(f"Morphology.{name}={v} must be > 0")


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
        raise ConfigError(
            f"paint_tissue: need width, height >= 16 and mpp > 0, got {width}x{height}"
        )
    if not 0.0 < tissue_fraction <= 0.8:
        raise ConfigError(f"tissue_fraction {tissue_fraction} must be in (0, 0.8]")
    rng = np.random.default_rng(seed)
    n_pieces = int(n_pieces or rng.integers(1, 4))

    cs = COARSE_UM / mpp  # coarse spacing in px
    fs = FINE_UM / mpp
    cshape = (int(np.ceil(height / cs)) + 2, int(np.ceil(width / cs)) + 2)
    fshape = (int(np.ceil(height / fs)) + 2, int(np.ceil(width / fs)) + 2)
    tissue_f = tissue_field(rng, cshape, cs, width, height, n_pieces, tissue_fraction)
    region_f, coarse_tissue = region_fields(rng, tissue_f, cs * mpp, m)
    phase = smooth(rng, fshape, 60.0 / FINE_UM) * 25.0  # fibre waviness, µm
    stain_var = smooth(rng, fshape, 40.0 / FINE_UM)
    bundles = smooth(rng, fshape, 20.0 / FINE_UM)
    theta0 = float(rng.uniform(0, np.pi))
    cos0, sin0 = float(np.cos(theta0)), float(np.sin(theta0))

    # ---- strips: class map and base stain concentrations
    class_map = np.zeros((height, width), np.uint8)
    hmap = np.zeros((height, width), np.uint8)
    emap = np.zeros((height, width), np.uint8)
    regions = [Upsampled(g, width, cs) for g in (tissue_f, *region_f)]
    textures = [Upsampled(g, width, fs) for g in (phase, bundles, stain_var)]
    fat_jit = rng.random((int(height * mpp / 55) + 3, int(width * mpp / 55) + 3, 2))
    strip = max(8, _STRIP_PX // width)
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        if regions[0].any_positive(y0, y1):
            cls, e, h = render_strip(y0, y1, regions, textures, fat_jit, mpp, (cos0, sin0))
            class_map[y0:y1] = cls
            emap[y0:y1] = quant(e * m.eosin_intensity)
            hmap[y0:y1] = quant(h * m.haematoxylin_intensity)

    # ---- glands, nuclei, colour
    gland_part, ring = paint_glands(rng, class_map, hmap, emap, mpp, m)
    nuclei = place_nuclei(rng, class_map, gland_part, mpp, m, phase, fs, theta0)
    nuclei = np.concatenate([nuclei, ring]) if len(ring) else nuclei
    if m.inflammation > 0:  # drawn only when asked: other images stay as they were
        infl = lymphocytes(rng, class_map, tissue_f, region_f[0], cs, mpp, m.inflammation)
        nuclei = np.concatenate([nuclei, infl])
    del gland_part
    stamp(hmap, nuclei, class_map > 0)
    rgb = _to_rgb(hmap, emap, m.stain_hue, m.stain_vectors, m.tint)
    del hmap, emap
    pen = _pen_stroke(rng, rgb, coarse_tissue, cs) if pen_marks else None
    centres = nuclei[:, [0, 1, 6]].astype(np.float32)  # x, y, class
    return PaintedTissue(rgb, class_map > 0, class_map, float(mpp), centres, pen)


def stain_od(stain_hue: float, stain_vectors=None) -> tuple[np.ndarray, np.ndarray]:
    """The haematoxylin and eosin optical-density vectors ``[3]`` (per unit concentration,
    natural log) a Morphology paints with: ``stain_vectors`` (or Ruifrok & Johnston's) shifted by
    ``stain_hue``."""
    h0, e0 = (_H_OD, _E_OD) if stain_vectors is None else np.asarray(stain_vectors, float)
    s = float(np.clip(stain_hue, -1.5, 1.5))
    h_od = np.clip(h0 + s * np.array([0.15, 0.0, -0.10]), 0.02, None)
    e_od = np.clip(e0 + np.array([0.0, 0.0, -0.06 * s + 0.1 * max(-s, 0.0)]), 0.02, None)
    return h_od, e_od


def glass_rgb(tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """RGB ``[3]`` (0-255 floats) of bare glass under illumination ``tint``."""
    return _BG_RGB * np.asarray(tint, float)


def _lut(stain_hue: float, stain_vectors=None, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """uint8 ``[65536, 3]``: RGB for (haematoxylin, eosin) uint8 concentration pairs, through
    ``stain_od`` under illumination ``glass_rgb(tint)``."""
    h_od, e_od = stain_od(stain_hue, stain_vectors)
    conc = np.arange(256) * (CONC_MAX / 255.0)
    od = conc[:, None, None] * h_od + conc[None, :, None] * e_od
    return np.clip(glass_rgb(tint) * np.exp(-od) + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3)


def _to_rgb(hmap, emap, stain_hue: float, stain_vectors=None, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    lut = _lut(stain_hue, stain_vectors, tint)
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
