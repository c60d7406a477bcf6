"""Colour measures for tissue detection: glass colour, optical density, H&E stain separation and
marker-ink detection on RGB uint8 thumbnails.

Optical density (OD) per channel is ``-log10(I / I_glass)``, with ``I_glass`` the slide's glass
colour (``glass_colour``): OD is 0 on clean glass whatever the scanner's white balance, and a
pink or grey cast of the whole glass (haze, mounting medium) is divided out.

Stain separation (Ruifrok & Johnston 2001): an OD vector is written as ``h·H + e·E + r·R`` with
the haematoxylin and eosin OD vectors ``H``, ``E`` and their cross product ``R``. Any mixture of
H and E has ``h, e >= 0``. Marker inks and tissue-marking dyes (green, cyan, teal, blue) absorb
red light far more than haematoxylin does, which shows as a *negative* eosin coefficient: the
*red excess* ``-e / OD_sum``. Measured values (red excess; hue in degrees, HSV saturation;
5th/50th/95th percentiles on the real files in ../shared/data/real):

- dense haematoxylin at hue 233, saturation 0.48 (frozen-section breast tumour, the issue's
  measurement): 0.08 (0.12 even at saturation 0.8); Ruifrok haematoxylin itself: 0.0;
- CMU-1 (the CC0 Aperio slide) nuclei, level 0 (hue 253/287/321): -0.25/-0.12/0.01; its
  tissue at 8 µm/px: -0.34/-0.17/-0.01; the frozen TCGA tumour: -0.47/-0.37/-0.25;
- CMU-1 green-blue marking dye on the margin, level 0 (hue 163/188/203, median RGB 63, 136,
  145): 0.21/0.40/0.72; dye specks of the real H&E tile: median 0.27;
- marker pens: blue (35, 70, 175) 0.22, light blue (110, 140, 210) 0.18, green (25, 135, 70)
  0.51, cyan (40, 150, 160) 0.54.

So ink is ``red excess > 0.15`` (``TissueParams.ink_red_excess``) on pixels dense enough to
judge (OD sum > ``min_od``). Black ink, dust and folds are caught by brightness instead; red,
yellow and brown inks cannot be told from eosin by colour and are not detected.
"""

from __future__ import annotations

import numpy as np

_H = np.array([0.650, 0.704, 0.286])  # Ruifrok & Johnston haematoxylin OD (R, G, B)
_E = np.array([0.072, 0.990, 0.105])  # eosin
_H = _H / np.linalg.norm(_H)
_E = _E / np.linalg.norm(_E)
_R = np.cross(_H, _E) / np.linalg.norm(np.cross(_H, _E))
STAIN_FROM_OD = np.linalg.inv(np.stack([_H, _E, _R])).astype(np.float32)  # od @ this → h, e, r

_GLASS_MIN = 200.0  # a glass estimate darker than this in any channel is not glass
_GLASS_MAX_CAST = 0.12  # nor one whose (max - min) / max exceeds this (tissue, not glass)


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """Glass (background) colour of an RGB uint8 ``[h, w, 3]`` image: float ``[3]`` in 0..255.

    The per-channel median of the brightest pixels (sum within 24 levels of the 99.5th
    percentile). Used only when it is bright and nearly neutral (each channel >= 200, a cast
    (max - min) / max <= 0.12); otherwise (an image with no glass, e.g. fully covered by tissue)
    white (255, 255, 255) is returned."""
    flat = np.asarray(rgb)[..., :3].reshape(-1, 3)
    if flat.shape[0] == 0:
        return np.full(3, 255.0)
    step = max(1, flat.shape[0] // 1_000_000)  # a sample is enough for a percentile
    sample = flat[::step].astype(np.int32)
    total = sample.sum(1)
    top = sample[total >= np.percentile(total, 99.5) - 24]
    glass = np.median(top, axis=0).astype(np.float64)
    if glass.min() < _GLASS_MIN or (glass.max() - glass.min()) / glass.max() > _GLASS_MAX_CAST:
        return np.full(3, 255.0)
    return glass


def optical_density(rgb: np.ndarray, glass: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[h, w, 3]`` OD per channel, ``-log10(I / glass)`` clipped at 0 (brighter than
    glass is glass). ``glass``: float ``[3]`` (default white 255)."""
    g = np.full(3, 255.0) if glass is None else np.asarray(glass, np.float64)
    lut = np.empty((3, 256), np.float32)
    levels = np.maximum(np.arange(256, dtype=np.float64), 1.0)
    for c in range(3):
        lut[c] = np.maximum(-np.log10(levels / g[c]), 0.0)
    rgb = np.asarray(rgb)[..., :3]
    out = np.empty(rgb.shape, np.float32)
    for c in range(3):
        out[..., c] = lut[c][rgb[..., c]]
    return out


def colour_measures(rgb: np.ndarray, glass: np.ndarray | None = None):
    """Per-pixel measures of an RGB uint8 ``[h, w, 3]`` image white-balanced to ``glass``
    (float ``[3]``, default white), each float32 ``[h, w]``: ``(value, saturation, od_sum,
    red_excess)`` — HSV value and saturation in 0..1, OD summed over R, G, B, and the red
    excess. Computed channel by channel through lookup tables (no ``[h, w, 3]`` floats)."""
    g = np.full(3, 255.0) if glass is None else np.asarray(glass, np.float64)
    levels = np.arange(256, dtype=np.float64)
    e_weight = STAIN_FROM_OD[:, 1]
    hi = lo = None
    od_sum = e = None
    for c in range(3):
        balanced = np.minimum(levels * (255.0 / g[c]), 255.0)
        od_lut = (-np.log10(np.maximum(balanced, 1.0) / 255.0)).astype(np.float32)
        plane = np.asarray(rgb)[..., c]
        bal = np.rint(balanced).astype(np.uint8)[plane]
        hi = bal if hi is None else np.maximum(hi, bal)
        lo = bal if lo is None else np.minimum(lo, bal)
        od = od_lut[plane]
        od_sum = od if od_sum is None else od_sum + od
        e = od * e_weight[c] if e is None else e + od * e_weight[c]
    value = hi.astype(np.float32) / 255.0
    sat = np.divide(hi.astype(np.float32) - lo, hi, out=np.zeros_like(value), where=hi > 0)
    excess = np.divide(-e, od_sum, out=np.zeros_like(od_sum), where=od_sum > 1e-6)
    return value, sat, od_sum, excess


def red_excess(od: np.ndarray) -> np.ndarray:
    """float32 ``[...]``: ``-e / OD_sum`` (see the module docstring); 0 where OD_sum is 0.
    About 0 or negative for H&E stain, above 0.15 for green, cyan and blue inks."""
    od = np.asarray(od, np.float32)
    e = od @ STAIN_FROM_OD[:, 1]
    total = od.sum(-1)
    return np.divide(-e, total, out=np.zeros_like(total), where=total > 1e-6)


def ink_mask(
    excess: np.ndarray, od_sum: np.ndarray, min_excess: float = 0.15, min_od: float = 0.1
) -> np.ndarray:
    """bool: marker ink or marking dye — red ``excess`` above ``min_excess`` on pixels whose
    ``od_sum`` exceeds ``min_od`` (fainter pixels are too noisy to judge)."""
    return (excess > min_excess) & (od_sum > min_od)
