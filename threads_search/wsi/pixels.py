"""Region pixels from an OpenSlide handle as RGB uint8, with as few passes over them as possible.

OpenSlide fills a buffer of premultiplied ARGB ``uint32`` (native byte order). The public
``read_region`` converts it to an RGBA ``PIL.Image``; the patch reader then needs RGB, a check
for transparency (outside the slide → white) and a copy into its batch, which together cost
about a fifth as much as decoding the JPEG tiles. The fast path here reads into a buffer reused
across calls, checks opacity on the ``uint32`` words (alpha is the top byte) and unpacks the
opaque case straight to RGB in one C pass (PIL's ``BGRX`` raw mode on little-endian machines);
regions whose pixels are each opaque or fully transparent (outside the slide, missing tiles)
are unpacked with transparent as white. Partly transparent pixels, big-endian machines and
OpenSlide builds without the low-level entry point take the public route, which gives the same
pixels.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import openslide
from PIL import Image

try:  # low-level entry point of openslide-python (stable since 1.0, private name)
    from openslide.lowlevel import _read_region as _ll_read_region
except ImportError:  # pragma: no cover - other openslide-python builds
    _ll_read_region = None

_WHITE = (255, 255, 255)
_OPAQUE = np.uint32(0xFF000000)


def rgba_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]`` (writable); transparent pixels are composited on white."""
    if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] < 255:
        bg = Image.new("RGB", img.size, _WHITE)
        bg.paste(img, mask=img.getchannel("A"))
        img = bg
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)


def _opaque_or_clear(words: np.ndarray, w: int, h: int) -> np.ndarray | None:
    """RGB of premultiplied ARGB ``words`` whose pixels are each either opaque or fully
    transparent (outside the slide, missing tiles; premultiplied, those words are 0):
    transparent becomes white. None when some pixel is partly transparent (the public route
    composites those)."""
    if not words.any():  # all transparent
        return np.full((h, w, 3), 255, np.uint8)
    if ((words - np.uint32(1)) < _OPAQUE - np.uint32(1)).any():  # 0 < word < 0xFF000000
        return None
    filled = np.where(words == 0, np.uint32(0xFFFFFFFF), words)
    return np.asarray(Image.frombuffer("RGB", (w, h), filled, "raw", "BGRX", 0, 1))


class RegionReader:
    """Reads regions of one ``openslide.OpenSlide`` into RGB arrays (one per process/thread)."""

    def __init__(self, osr: openslide.OpenSlide) -> None:
        self._osr = osr
        self._handle = getattr(osr, "_osr", None)
        self._buf = None
        self.fast = (
            _ll_read_region is not None and self._handle is not None and sys.byteorder == "little"
        )

    def _buffer(self, n: int):
        if self._buf is None or len(self._buf) < n:
            self._buf = (ctypes.c_uint32 * n)()
        return self._buf

    def read(
        self, x: int, y: int, level: int, w: int, h: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """RGB uint8 ``[h, w, 3]`` of the region at ``level`` whose top-left is level-0
        ``(x, y)``; written into ``out`` when given (shape ``[h, w, 3]``, uint8)."""
        rgb = None
        if self.fast and w > 0 and h > 0:
            buf = self._buffer(w * h)
            _ll_read_region(self._handle, buf, x, y, level, w, h)
            words = np.frombuffer(buf, dtype=np.uint32, count=w * h)
            if words.min() >= _OPAQUE:  # every pixel opaque: premultiplied == straight
                img = Image.frombuffer("RGB", (w, h), buf, "raw", "BGRX", 0, 1)
                rgb = np.asarray(img)
            else:
                rgb = _opaque_or_clear(words, w, h)
        if rgb is None:
            rgb = rgba_to_rgb(self._osr.read_region((x, y), level, (w, h)))
        if out is None:
            return rgb if rgb.flags.writeable else rgb.copy()
        out[...] = rgb
        return out
