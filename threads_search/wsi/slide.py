"""Open whole-slide images with OpenSlide and read patches at a target resolution.

Coordinates are level-0 pixels ``(x, y)`` of a region's top-left corner; resolution is µm/px.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from threads_search.wsi.errors import SlideError
from threads_search.wsi.mpp import MppInfo, resolve_mpp
from threads_search.wsi.pixels import RegionReader, rgba_to_rgb
from threads_search.wsi.thumbnail import MAX_READ_PX, ThumbnailTooLarge, read_thumbnail


def _dicom_file(path: Path) -> Path:
    """A DICOM-WSI folder is opened through any one of its ``.dcm`` files."""
    files = sorted(path.glob("*.dcm"))
    if not files:
        raise SlideError(path, "unsupported", "a folder that holds no .dcm files (DICOM WSI)")
    return files[0]


class Slide:
    """An open slide. Use ``open_slide``; close with ``close()`` or a ``with`` block.

    ``dimensions``: level-0 (width, height) px. ``mpp``: level-0 µm/px (see ``mpp_info.source``).
    """

    def __init__(self, path: str | Path, mpp: float | None = None, require_mpp: bool = True):
        self.path = Path(path)
        target = _dicom_file(self.path) if self.path.is_dir() else self.path
        if not self.path.exists():
            raise SlideError(path, "missing", "no such file")
        if (kind := _special_file(target)) is not None:
            raise SlideError(
                path, "unsupported", f"{kind}, not a regular file; give the slide file"
            )
        if target.stat().st_size == 0:
            raise SlideError(path, "empty", "the file is 0 bytes")
        try:
            fmt = openslide.OpenSlide.detect_format(str(target))
        except Exception as e:  # noqa: BLE001 - OpenSlide raises various types on garbage
            raise SlideError(path, "corrupt", f"format detection failed ({describe(e)})") from e
        if fmt is None:
            reason, detail = _why_unreadable(target)
            raise SlideError(path, reason, detail)
        try:
            self._osr = openslide.OpenSlide(str(target))
        except Exception as e:  # noqa: BLE001
            raise SlideError(path, "corrupt", f"OpenSlide could not open it ({describe(e)})") from e
        self._pixels = RegionReader(self._osr)
        self.vendor = fmt
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(self._osr.level_dimensions)
        if any(w <= 0 or h <= 0 for w, h in self.level_dimensions):
            self.close()
            raise SlideError(path, "zero-size", f"level sizes {self.level_dimensions}")
        self.level_downsamples: tuple[float, ...] = tuple(self._osr.level_downsamples)
        self.properties: dict[str, str] = dict(self._osr.properties)
        self.associated_images: list[str] = sorted(self._osr.associated_images)
        try:
            self.mpp_info: MppInfo | None = resolve_mpp(self.properties, mpp)
        except ValueError as e:
            self.close()
            raise SlideError(path, "bad-mpp", str(e)) from e
        if self.mpp_info is None and require_mpp:
            self.close()
            raise SlideError(
                path,
                "no-mpp",
                "no resolution (µm/px) in the file; give it with --mpp-csv (columns slide,mpp)",
            )

    # --- geometry -------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float:
        if self.mpp_info is None:
            raise SlideError(self.path, "no-mpp", "resolution unknown")
        return self.mpp_info.mpp

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """Lowest-resolution level still at least as fine as ``target_mpp`` (level 0 if none)."""
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * (1 + 1e-3):
                best = level
        return best

    def patch_size_level0(self, patch_size: int, target_mpp: float) -> int:
        """Side in level-0 px of a ``patch_size`` px patch at ``target_mpp`` µm/px."""
        return max(1, round(patch_size * target_mpp / self.mpp))

    # --- pixels ---------------------------------------------------------------------------
    def read_region(
        self, x: int, y: int, level: int, size: tuple[int, int], out: np.ndarray | None = None
    ) -> np.ndarray:
        """RGB uint8 ``[h, w, 3]`` at ``level``; ``(x, y)`` level-0 px; outside the slide is white.
        Written into ``out`` (uint8 ``[h, w, 3]``) when given."""
        w, h = int(size[0]), int(size[1])
        try:
            return self._pixels.read(int(x), int(y), int(level), w, h, out=out)
        except Exception as e:  # noqa: BLE001
            raise SlideError(
                self.path,
                "read",
                f"reading {w} x {h} px at ({x}, {y}), level {level}: {describe(e)}",
            ) from e

    def read_patch(
        self,
        x: int,
        y: int,
        patch_size: int = 512,
        target_mpp: float = 0.5,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """uint8 ``[patch_size, patch_size, 3]`` covering ``patch_size * target_mpp`` µm from
        level-0 ``(x, y)``, read from ``best_level`` and resized exactly to ``patch_size``.
        Written into ``out`` when given (no intermediate copy when no resize is needed)."""
        level = self.best_level(target_mpp)
        side0 = patch_size * target_mpp / self.mpp
        side = max(1, round(side0 / self.level_downsamples[level]))
        if side == patch_size:
            return self.read_region(x, y, level, (side, side), out=out)
        arr = self.read_region(x, y, level, (side, side))
        img = Image.fromarray(arr).resize((patch_size, patch_size), Image.BILINEAR)
        if out is None:
            return np.array(img)
        out[...] = np.asarray(img)
        return out

    def thumbnail(
        self, target_mpp: float = 8.0, max_side: int = 8192, max_read_px: int = MAX_READ_PX
    ) -> tuple[np.ndarray, float]:
        """RGB thumbnail near ``target_mpp`` µm/px (capped at ``max_side`` px); returns
        ``(rgb [h, w, 3] uint8, thumbnail µm/px along x)``. Read region by region from the
        coarsest level at least as fine (see ``thumbnail.read_thumbnail``): bounded memory;
        a source level over ``max_read_px`` px raises ``SlideError`` (reason ``too-large``)."""
        w0, h0 = self.dimensions
        scale = min(self.mpp / target_mpp, max_side / max(w0, h0), 1.0)
        size = (max(1, math.floor(w0 * scale)), max(1, math.floor(h0 * scale)))
        arr = self._thumbnail(size, max_read_px)
        return arr, self.mpp * w0 / arr.shape[1]

    def overview(self, max_side: int = 1024, max_read_px: int = MAX_READ_PX) -> np.ndarray:
        """RGB uint8 ``[h, w, 3]`` picture of the whole slide, longest side ``max_side`` px (or
        level 0 when smaller); needs no µm/px. Same reading rules as ``thumbnail``."""
        w0, h0 = self.dimensions
        scale = min(max_side / max(w0, h0), 1.0)
        return self._thumbnail(
            (max(1, math.floor(w0 * scale)), max(1, math.floor(h0 * scale))), max_read_px
        )

    def _thumbnail(self, size: tuple[int, int], max_read_px: int) -> np.ndarray:
        try:
            levels = (self.level_dimensions, self.level_downsamples)
            return read_thumbnail(self.read_region_wh, *levels, size, max_read_px)
        except ThumbnailTooLarge as e:
            raise SlideError(self.path, "too-large", str(e)) from e

    def read_region_wh(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """``read_region`` with the size as two arguments (the thumbnail reader's signature)."""
        return self.read_region(x, y, level, (w, h))

    def associated_image(self, name: str) -> np.ndarray:
        return rgba_to_rgb(self._osr.associated_images[name])

    def summary(self) -> dict:
        """Plain-data description (JSON-able)."""
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp_info.mpp if self.mpp_info else None,
            "mpp_source": self.mpp_info.source if self.mpp_info else None,
            "mpp_estimated": self.mpp_info.estimated if self.mpp_info else None,
            "associated_images": self.associated_images,
        }

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp_info.mpp:.4g}" if self.mpp_info else "?"
        return f"Slide({self.path.name!r}, {self.vendor}, {w}x{h}, {mpp} µm/px)"


def open_slide(path: str | Path, mpp: float | None = None, require_mpp: bool = True) -> Slide:
    """Open a slide in any OpenSlide format; ``mpp`` overrides the file's resolution.

    Raises ``SlideError`` naming the file and the reason.
    """
    return Slide(path, mpp=mpp, require_mpp=require_mpp)


def describe(e: BaseException) -> str:
    """An exception as text that is never empty (OpenSlide sometimes raises with no message)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__} (no message)"


_SPECIAL = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


def _special_file(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file or folder (never opened: a FIFO would
    block), else None."""
    mode = path.stat().st_mode
    for test, what in _SPECIAL.items():
        if test(mode):
            return what
    return None


_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"%PDF": "a PDF document",
}


def _why_unreadable(path: Path) -> tuple[str, str]:
    """Explain why OpenSlide does not recognise ``path``: (reason, detail)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import logging

        import tifffile

        log = logging.getLogger("tifffile")
        level, log.level = log.level, logging.CRITICAL  # its complaints are reported below
        try:
            with tifffile.TiffFile(path) as tif:
                tiled = all(page.is_tiled for page in tif.pages)
                _ = [page.shape for page in tif.pages]
        except Exception as e:  # noqa: BLE001
            return "corrupt", f"a damaged or truncated TIFF ({type(e).__name__}: {e})"
        finally:
            log.level = level
        if not tiled:
            return "unsupported", "an untiled (stripped) TIFF; whole-slide TIFFs must be tiled"
        return "corrupt", "a TIFF that OpenSlide does not recognise (damaged or truncated?)"
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return "unsupported", f"{what} named {path.suffix or '(no extension)'}, not a slide"
    return "unsupported", (
        f"not a whole-slide format OpenSlide reads (extension {path.suffix or 'none'})"
    )
