"""One slide from file to patch plan: open, resolve µm/px, detect tissue, lay the patch grid."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from threads_search.wsi.errors import SlideError
from threads_search.wsi.grid import GridParams, patch_grid, upsample_problem
from threads_search.wsi.slide import open_slide
from threads_search.wsi.tissue import TissueParams, TissueResult, detect_tissue


@dataclass
class SegmentConfig:
    """Tissue detection and patch grid settings; saved beside every artifact that uses them."""

    tissue: TissueParams = field(default_factory=TissueParams)
    grid: GridParams = field(default_factory=GridParams)

    def to_dict(self) -> dict:
        return {"tissue": asdict(self.tissue), "grid": asdict(self.grid)}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentConfig:
        """Settings from ``to_dict``; keys that no longer exist (written by older versions, e.g.
        ``exclude_pen``) are dropped, missing ones take today's defaults."""
        return cls(_known(TissueParams, d.get("tissue", {})), _known(GridParams, d.get("grid", {})))


def apply_options(cfg: SegmentConfig, **options) -> SegmentConfig:
    """A copy of ``cfg`` with the given settings (None: keep) replaced: ``min_tissue`` and
    ``max_upsample`` go to the grid, the rest to ``TissueParams`` by name. ValueError names a
    setting that does not exist or is out of range."""
    given = {k: v for k, v in options.items() if v is not None}
    grid_keys = {f.name for f in fields(GridParams)} - {"patch_size", "target_mpp"}
    tissue_keys = {f.name for f in fields(TissueParams)}
    unknown = sorted(set(given) - grid_keys - tissue_keys)
    if unknown:
        raise ValueError(f"unknown segmentation settings: {', '.join(unknown)}")
    grid = replace(cfg.grid, **{k: v for k, v in given.items() if k in grid_keys})
    tissue = replace(cfg.tissue, **{k: v for k, v in given.items() if k in tissue_keys})
    tissue.validate()
    if not 0.0 <= grid.min_tissue <= 1.0:
        raise ValueError(f"min_tissue {grid.min_tissue} must be in [0, 1]")
    if not grid.max_upsample >= 1.0:
        raise ValueError(f"max_upsample {grid.max_upsample} must be >= 1")
    return SegmentConfig(tissue, grid)


def _known(kind, values: dict):
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in values.items() if k in names})


@dataclass
class SlidePlan:
    """What the features stage needs for one slide. ``coords``: ``[N, 2]`` int64 level-0 (x, y);
    ``thumb``: RGB uint8 at ``thumb_mpp`` µm/px."""

    slide_id: str
    path: Path
    summary: dict
    tissue: TissueResult
    coords: np.ndarray
    thumb: np.ndarray = field(repr=False)
    thumb_mpp: float = 0.0

    @property
    def mpp(self) -> float:
        return float(self.summary["mpp"])

    def require_patches(self) -> SlidePlan:
        """``self`` when the grid holds at least one patch, else ``SlideError`` ``no-tissue`` (the
        one place this failure is raised)."""
        if len(self.coords) == 0:
            raise SlideError(self.path, "no-tissue", "no tissue patches found (blank slide?)")
        return self

    def patch_size_level0(self, grid: GridParams) -> int:
        return max(1, round(grid.patch_size * grid.target_mpp / self.mpp))


def plan_slide(
    path: str | Path,
    slide_id: str | None = None,
    mpp: float | None = None,
    config: SegmentConfig | None = None,
) -> SlidePlan:
    """Open ``path`` and compute its tissue mask and patch grid. Raises ``SlideError``
    (``too-coarse`` when patches would be upsampled past ``config.grid.max_upsample``)."""
    cfg = config or SegmentConfig()
    with open_slide(path, mpp=mpp) as slide:
        if problem := upsample_problem(slide.mpp, cfg.grid, slide.mpp_info.source):
            raise SlideError(path, "too-coarse", problem)
        thumb, thumb_mpp = slide.thumbnail(cfg.tissue.thumb_mpp)
        tissue = detect_tissue(thumb, thumb_mpp, slide.mpp, cfg.tissue, slide.dimensions)
        coords = patch_grid(tissue.mask, tissue.mask_mpp, slide.mpp, slide.dimensions, cfg.grid)
        summary = slide.summary()
    return SlidePlan(
        slide_id or Path(path).stem, Path(path), summary, tissue, coords, thumb, thumb_mpp
    )
