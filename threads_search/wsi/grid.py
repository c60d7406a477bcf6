"""Patch grid: level-0 top-left corners of patches that hold enough tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threads_search.config import StrictConfig
from threads_search.errors import ConfigError


@dataclass
class GridParams(StrictConfig):
    """``patch_size`` px at ``target_mpp`` µm/px; ``overlap`` px (at target mpp) shared by
    neighbours; a patch is kept when its tissue fraction is at least ``min_tissue``.
    ``max_upsample``: a slide whose level-0 µm/px exceeds ``target_mpp`` by more than this
    factor is refused (its patches would be blown up from few pixels; 2 admits 10x scans at
    1 µm/px for 0.5 µm/px patches; see ``upsample_problem``). Ranges are checked when the
    settings are made (``check``: ``ConfigError``, a ValueError, naming the setting)."""

    patch_size: int = 512
    target_mpp: float = 0.5
    overlap: int = 0
    min_tissue: float = 0.25
    max_upsample: float = 2.0

    def check(self) -> None:
        if not self.patch_size >= 1:
            raise ConfigError(f"patch_size {self.patch_size} must be >= 1 (px)")
        if not self.target_mpp > 0:
            raise ConfigError(f"target_mpp {self.target_mpp} must be > 0 (µm/px)")
        if not 0 <= self.overlap < self.patch_size:
            raise ConfigError(
                f"overlap {self.overlap} must be in [0, patch_size={self.patch_size})"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue {self.min_tissue} must be in [0, 1]")
        if not self.max_upsample >= 1.0:
            raise ConfigError(f"max_upsample {self.max_upsample} must be >= 1")


def upsample_problem(level0_mpp: float, params: GridParams, source: str = "") -> str:
    """Why patches at ``params.target_mpp`` should not be cut from a slide at ``level0_mpp``
    µm/px (upsampled more than ``params.max_upsample`` times), or ``""`` when they may.
    ``source``: where the slide's µm/px came from, for the message."""
    factor = level0_mpp / params.target_mpp
    if factor <= params.max_upsample * (1 + 1e-6):
        return ""
    side0 = params.patch_size * params.target_mpp / level0_mpp
    src = f" ({source})" if source else ""
    return (
        f"level 0 is {level0_mpp:.4g} µm/px{src} but patches are {params.target_mpp:g} µm/px: "
        f"each {params.patch_size} px patch would be blown up {factor:.1f}x from "
        f"{side0:.0f} px of the slide (limit --max-upsample {params.max_upsample:g}). If the "
        "µm/px is wrong, give the right one (--mpp-csv); if the slide really is this coarse, "
        f"use patches at its resolution (--target-mpp {level0_mpp:.4g}) or accept upsampled "
        f"patches (--max-upsample {math.ceil(factor)})"
    )


def patch_grid(
    mask: np.ndarray,
    mask_mpp: float,
    level0_mpp: float,
    level0_size: tuple[int, int],
    params: GridParams | None = None,
) -> np.ndarray:
    """Coordinates ``[N, 2]`` int64 (x, y) in level-0 px, row-major (y, then x).

    ``mask``: bool ``[h, w]`` tissue mask at ``mask_mpp`` µm/px covering the slide from (0, 0).
    Only whole patches inside ``level0_size`` = (width, height) are returned.
    """
    p = params or GridParams()
    p.check()  # again: the fields of a GridParams may have been set since it was made
    side0 = p.patch_size * p.target_mpp / level0_mpp
    step0 = (p.patch_size - p.overlap) * p.target_mpp / level0_mpp
    w0, h0 = level0_size
    xs = np.floor(np.arange(0, w0 - side0 + 1e-6, step0)).astype(np.int64)
    ys = np.floor(np.arange(0, h0 - side0 + 1e-6, step0)).astype(np.int64)
    if xs.size == 0 or ys.size == 0:
        return np.zeros((0, 2), np.int64)
    frac = _tissue_fraction(mask.astype(bool), level0_mpp / mask_mpp, xs, ys, side0)
    keep_y, keep_x = np.nonzero(frac >= p.min_tissue - 1e-9)
    return np.stack([xs[keep_x], ys[keep_y]], axis=1).astype(np.int64)


def _tissue_fraction(mask, scale, xs, ys, side0) -> np.ndarray:
    """Mean of ``mask`` over each patch; ``scale`` = mask px per level-0 px. ``[len(ys), len(xs)]``."""
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)

    def bounds(starts, limit):
        lo = np.clip(np.floor(starts * scale).astype(np.int64), 0, limit)
        hi = np.clip(np.ceil((starts + side0) * scale).astype(np.int64), 0, limit)
        hi = np.maximum(hi, np.minimum(lo + 1, limit))
        return lo, hi

    x0, x1 = bounds(xs, w)
    y0, y1 = bounds(ys, h)
    total = (
        integral[np.ix_(y1, x1)]
        - integral[np.ix_(y0, x1)]
        - integral[np.ix_(y1, x0)]
        + integral[np.ix_(y0, x0)]
    )
    area = np.outer(y1 - y0, x1 - x0).astype(np.float64)
    return np.divide(total, area, out=np.zeros_like(total), where=area > 0)
