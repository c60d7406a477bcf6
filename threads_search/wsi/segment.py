"""One slide from file to patch plan: open, resolve µm/px, detect tissue, lay the patch grid."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from threads_search.wsi.grid import GridParams, patch_grid
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
        return cls(TissueParams(**d.get("tissue", {})), GridParams(**d.get("grid", {})))


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

    def patch_size_level0(self, grid: GridParams) -> int:
        return max(1, round(grid.patch_size * grid.target_mpp / self.mpp))


def plan_slide(
    path: str | Path,
    slide_id: str | None = None,
    mpp: float | None = None,
    config: SegmentConfig | None = None,
) -> SlidePlan:
    """Open ``path`` and compute its tissue mask and patch grid. Raises ``SlideError``."""
    cfg = config or SegmentConfig()
    with open_slide(path, mpp=mpp) as slide:
        thumb, thumb_mpp = slide.thumbnail(cfg.tissue.thumb_mpp)
        tissue = detect_tissue(thumb, thumb_mpp, slide.mpp, cfg.tissue, slide.dimensions)
        coords = patch_grid(tissue.mask, tissue.mask_mpp, slide.mpp, slide.dimensions, cfg.grid)
        summary = slide.summary()
    return SlidePlan(
        slide_id or Path(path).stem, Path(path), summary, tissue, coords, thumb, thumb_mpp
    )
