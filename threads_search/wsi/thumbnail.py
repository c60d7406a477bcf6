"""Downsampled whole-slide images (thumbnails) read within a fixed budget of memory and work.

OpenSlide's ``get_thumbnail`` reads its whole source level into one image: on a file with no
reduced levels that is all of level 0 (a 30000 x 30000 px file: 3.6 GB of RGBA before any
conversion). Here the source is the coarsest level at least as fine as the output, read in
regions of at most ``REGION_SIDE`` x ``REGION_SIDE`` px that are block-averaged as they arrive;
a last area-average resize gives the exact output size. Memory: one region (about 50 MB) plus
an intermediate image of at most 4x the output's pixels. Work: every pixel of the source level
is decoded once, so a source level over ``MAX_READ_PX`` pixels is refused with a
``ThumbnailTooLarge`` naming the sizes and the fix instead of being read for minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from threads_search.errors import InputError

MAX_READ_PX = 1 << 30  # source-level pixels a thumbnail may decode (32768 x 32768, 1.07 G px)
REGION_SIDE = 2048  # side of one read, px of the source level


class ThumbnailTooLarge(InputError):
    """Making the thumbnail would decode more than the allowed number of pixels (a
    ``ValueError`` too)."""


def thumbnail_source(
    level_dimensions: Sequence[tuple[int, int]],
    level_downsamples: Sequence[float],
    size: tuple[int, int],
) -> tuple[int, int]:
    """``(level, factor)``: the coarsest level whose downsample is at most the output's (level 0
    if none), and the integer block factor (>= 1) that takes it closest to ``size`` (width,
    height) without going coarser."""
    w0, h0 = level_dimensions[0]
    ds_out = max(w0 / max(size[0], 1), h0 / max(size[1], 1), 1.0)
    fine_enough = [i for i, ds in enumerate(level_downsamples) if ds <= ds_out * (1 + 1e-3)]
    level = max(fine_enough, key=lambda i: level_downsamples[i], default=0)
    factor = max(1, math.floor(ds_out / level_downsamples[level] + 1e-6))
    return level, factor


def read_thumbnail(
    read: Callable[[int, int, int, int, int], np.ndarray],
    level_dimensions: Sequence[tuple[int, int]],
    level_downsamples: Sequence[float],
    size: tuple[int, int],
    max_read_px: int = MAX_READ_PX,
) -> np.ndarray:
    """RGB uint8 ``[size[1], size[0], 3]`` covering the whole slide.

    ``read(x, y, level, w, h)`` returns RGB uint8 ``[h, w, 3]`` of a region whose top-left is
    level-0 ``(x, y)`` (outside the slide white). Raises ``ThumbnailTooLarge``."""
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"thumbnail size must be at least 1 x 1 px, got {width} x {height}")
    level, f = thumbnail_source(level_dimensions, level_downsamples, (width, height))
    wl, hl = level_dimensions[level]
    if wl * hl > max_read_px:
        raise ThumbnailTooLarge(_too_large(level_dimensions, level, (width, height), max_read_px))
    ds = float(level_downsamples[level])
    step = f * max(1, REGION_SIDE // f)  # a whole number of blocks per read
    inter = np.empty((math.ceil(hl / f), math.ceil(wl / f), 3), np.uint8)
    for ty in range(0, hl, step):
        th = min(step, hl - ty)
        for tx in range(0, wl, step):
            tw = min(step, wl - tx)
            region = read(round(tx * ds), round(ty * ds), level, tw, th)
            if f > 1:
                region = np.asarray(Image.fromarray(region).reduce(f))
            inter[ty // f : ty // f + region.shape[0], tx // f : tx // f + region.shape[1]] = region
    if inter.shape[:2] == (height, width):
        return inter
    img = Image.fromarray(inter).resize((width, height), Image.Resampling.BOX)
    return np.asarray(img).copy()


def _too_large(level_dimensions, level: int, size: tuple[int, int], max_read_px: int) -> str:
    wl, hl = level_dimensions[level]
    levels = ", ".join(f"{w} x {h}" for w, h in level_dimensions)
    what = "level 0" if level == 0 else f"level {level}"
    pyramid = (
        "the file has no reduced-resolution levels"
        if len(level_dimensions) == 1
        else f"its levels are {levels} px"
    )
    return (
        f"{what} is {wl} x {hl} px and {pyramid}: a {size[0]} x {size[1]} px thumbnail would "
        f"decode {wl * hl / 1e9:.2f} G px ({wl * hl * 4 / 2**30:.1f} GiB of RGBA), over the "
        f"limit of {max_read_px / 1e9:.2f} G px. If the dimensions are real, convert the slide "
        "to a pyramidal TIFF (e.g. `vips tiffsave IN OUT.tiff --tile --pyramid --compression "
        "jpeg`); if they are not, the file is damaged"
    )
