"""Synthetic slide archives: painted H&E-like tissue written as pyramidal TIFF/SVS files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.synth.tiff import write_broken_slides, write_slide


@dataclass
class SyntheticSlide:
    """A written slide and its ground truth. ``tissue_mask``/``class_map`` are level-0 sized
    (``[height, width]``) and kept in memory only."""

    path: Path
    slide_id: str
    mpp: float
    fmt: str
    width: int
    height: int
    seed: int
    tissue_mask: np.ndarray = field(repr=False)
    class_map: np.ndarray = field(repr=False)


def make_slide(
    path: str | Path,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    fmt: str | None = None,
    seed: int = 0,
    morphology=None,
    pen_marks: bool = False,
    tissue_fraction: float = 0.35,
    write_mpp: bool = True,
) -> SyntheticSlide:
    """Paint and write one slide; ``fmt`` defaults from the suffix (``.svs`` → Aperio)."""
    from threads_search.synth.paint import paint_tissue

    path = Path(path)
    fmt = fmt or ("svs" if path.suffix.lower() == ".svs" else "tiff")
    painted = paint_tissue(
        width,
        height,
        mpp=mpp,
        seed=seed,
        morphology=morphology,
        pen_marks=pen_marks,
        tissue_fraction=tissue_fraction,
    )
    write_slide(path, painted.rgb, mpp if write_mpp else None, fmt=fmt)
    return SyntheticSlide(
        path, path.stem, mpp, fmt, width, height, seed, painted.tissue_mask, painted.class_map
    )


def make_archive(
    out_dir: str | Path,
    n_slides: int = 4,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    formats: tuple[str, ...] = ("tiff", "svs"),
    seed: int = 0,
    broken: bool = False,
) -> list[SyntheticSlide]:
    """Write ``n_slides`` slides (formats alternate) into ``out_dir``; with ``broken`` also the
    deliberately unusable files of ``write_broken_slides`` under ``out_dir/broken``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slides = []
    for i in range(n_slides):
        fmt = formats[i % len(formats)]
        ext = "svs" if fmt == "svs" else "tiff"
        slides.append(
            make_slide(out / f"slide_{i:03d}.{ext}", width, height, mpp, fmt, seed=seed + i)
        )
    if broken:
        write_broken_slides(out / "broken")
    return slides
