"""Write pyramidal tiled-JPEG slides that OpenSlide opens with correct levels and µm/px.

Generic TIFF: reduced levels as top-level pages (``subfiletype=1``; OpenSlide sees only one
level of a SubIFD pyramid) with resolution tags in centimetres. Aperio SVS: ImageDescription
with ``AppMag`` and ``MPP``, a thumbnail page after level 0 and a macro image at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from threads_search.atomic import atomic_path
from threads_search.errors import ConfigError

_APERIO = "Aperio Image Library v12.0.15 \r\n"


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample ``[H, W, 3]`` uint8 by an integer ``factor`` (edges padded white)."""
    if factor == 1:
        return rgb
    h, w = rgb.shape[:2]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), constant_values=255)
    hh, ww = rgb.shape[0] // factor, rgb.shape[1] // factor
    blocks = rgb.reshape(hh, factor, ww, factor, 3).astype(np.float32).mean(axis=(1, 3))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)


def _pyramid(rgb: np.ndarray, factor: int, min_side: int) -> list[tuple[int, np.ndarray]]:
    levels = [(1, rgb)]
    while max(levels[-1][1].shape[:2]) // factor >= min_side:
        ds, img = levels[-1]
        levels.append((ds * factor, downsample(img, factor)))
    return levels


def write_slide(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None,
    fmt: str = "tiff",
    tile: int = 256,
    quality: int = 85,
    app_mag: float | None = None,
    min_side: int = 512,
) -> Path:
    """Write ``rgb`` (uint8 ``[H, W, 3]``, level 0 at ``mpp`` µm/px) as a pyramidal slide.

    ``fmt``: ``tiff`` (generic, 2x levels) or ``svs`` (Aperio, 4x levels). ``mpp=None`` writes
    no resolution at all (for missing-resolution tests). The file appears atomically
    (``threads_search.atomic``). ``ConfigError`` for another ``fmt``.
    """
    if fmt not in ("tiff", "svs"):
        raise ConfigError(f"unknown slide format {fmt!r}: use 'tiff' or 'svs'")
    path = Path(path)
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}, "photometric": "rgb"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tw:
        if fmt == "tiff":
            _write_tiff(tw, rgb, mpp, tile, min_side, jpeg)
        else:
            _write_svs(tw, rgb, mpp, tile, quality, app_mag, min_side, path.stem, jpeg)
    return path


def _write_tiff(tw, rgb, mpp, tile: int, min_side: int, jpeg: dict) -> None:
    """Generic TIFF: 2x levels as top-level pages, resolution in pixels per centimetre."""
    for i, (ds, img) in enumerate(_pyramid(rgb, 2, min_side)):
        res = {"resolution": None, "resolutionunit": None}
        if mpp is not None:
            res = {"resolution": (1e4 / (mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
        tw.write(img, tile=(tile, tile), subfiletype=1 if i else 0, metadata=None, **res, **jpeg)


def _write_svs(tw, rgb, mpp, tile, quality, app_mag, min_side, stem: str, jpeg: dict) -> None:
    """Aperio SVS: level 0, thumbnail page, 4x levels, macro image; ``AppMag`` and ``MPP`` in
    the ImageDescription."""
    h, w = rgb.shape[:2]
    mag = app_mag if app_mag is not None else (10.0 / mpp if mpp else None)
    head = f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    if mag:
        head += f"|AppMag = {mag:g}"
    if mpp:
        head += f"|MPP = {mpp:g}"
    head += f"|Filename = {stem}"
    levels = _pyramid(rgb, 4, min_side)
    tw.write(rgb, tile=(tile, tile), description=_APERIO + head, metadata=None, **jpeg)
    thumb = np.asarray(Image.fromarray(rgb).reduce(max(1, max(h, w) // 768)))
    desc = _APERIO + f"{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}"
    tw.write(thumb, description=desc, metadata=None, **jpeg)
    for _, img in levels[1:]:
        desc = _APERIO + f"{w}x{h} [0,0 {w}x{h}] -> {img.shape[1]}x{img.shape[0]}"
        tw.write(img, tile=(tile, tile), description=desc, subfiletype=1, metadata=None, **jpeg)
    macro = np.full((256, 640, 3), 200, np.uint8)
    macro[:, 440:] = np.asarray(Image.fromarray(rgb).resize((200, 256)))
    desc = _APERIO + "macro 640x256"
    tw.write(macro, description=desc, subfiletype=9, metadata=None, **jpeg)


def write_broken_slides(out_dir: str | Path, rgb: np.ndarray | None = None) -> dict[str, Path]:
    """Deliberately unusable files for error tests: ``truncated``, ``zero_bytes``,
    ``wrong_extension`` (a PNG named .svs), ``text_as_tiff``, ``untiled`` (a plain stripped TIFF),
    ``no_resolution`` (valid pyramid, no µm/px anywhere). Returns name → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rng = np.random.default_rng(0)
        rgb = rng.integers(120, 255, (1024, 1536, 3), dtype=np.uint8)
    files: dict[str, Path] = {}
    good = write_slide(out / "truncated.tiff", rgb, 0.5)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) * 2 // 5])
    files["truncated"] = good
    files["zero_bytes"] = out / "zero_bytes.svs"
    files["zero_bytes"].write_bytes(b"")
    files["wrong_extension"] = out / "wrong_extension.svs"
    Image.fromarray(rgb[:256, :256]).save(files["wrong_extension"], format="PNG")
    files["text_as_tiff"] = out / "text_as_tiff.tiff"
    files["text_as_tiff"].write_text("this is not a slide\n")
    files["untiled"] = out / "untiled.tif"
    tifffile.imwrite(files["untiled"], rgb[:512, :512], photometric="rgb")
    files["no_resolution"] = write_slide(out / "no_resolution.tiff", rgb, None)
    return files
