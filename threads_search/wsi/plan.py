"""One slide from file to patch plan: open, resolve µm/px, detect tissue, lay the patch grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.config import StrictConfig
from threads_search.errors import ConfigError
from threads_search.wsi.errors import SlideError
from threads_search.wsi.grid import GridParams, patch_grid, upsample_problem
from threads_search.wsi.slide import open_slide
from threads_search.wsi.tissue import TissueParams, TissueResult, detect_tissue

# Settings earlier versions saved that no longer exist (their features were made without them
# mattering); dropped when such a saved config is read back (``SegmentConfig.from_saved``).
REMOVED_KEYS = {"tissue": ("exclude_pen", "pen_dilate_um"), "grid": ()}


@dataclass
class SegmentConfig(StrictConfig):
    """Tissue detection and patch grid settings; saved beside every artifact that uses them.
    ``from_dict`` is strict (an unknown key is refused, listing the accepted ones)."""

    tissue: TissueParams = field(default_factory=TissueParams)
    grid: GridParams = field(default_factory=GridParams)

    @classmethod
    def from_saved(cls, d: dict) -> SegmentConfig:
        """Settings saved beside an artifact by this or an earlier version: the keys earlier
        versions wrote that no longer exist (``REMOVED_KEYS``, e.g. ``exclude_pen``) are
        dropped, missing ones take today's defaults; any other unknown key is refused."""
        clean = dict(d) if isinstance(d, dict) else d
        for part, gone in REMOVED_KEYS.items():
            if isinstance(d, dict) and isinstance(d.get(part), dict):
                clean[part] = {k: v for k, v in d[part].items() if k not in gone}
        return cls.from_dict(clean)


def apply_options(cfg: SegmentConfig, **options) -> SegmentConfig:
    """A copy of ``cfg`` with the given settings (None: keep) replaced: ``min_tissue`` and
    ``max_upsample`` go to the grid, the rest to ``TissueParams`` by name. ``ConfigError`` (a
    ValueError) names a setting that does not exist or is out of range."""
    given = {k: v for k, v in options.items() if v is not None}
    grid_keys = set(GridParams.fields()) - {"patch_size", "target_mpp"}
    tissue_keys = set(TissueParams.fields())
    unknown = sorted(set(given) - grid_keys - tissue_keys)
    if unknown:
        accepted = ", ".join(sorted(grid_keys | tissue_keys))
        raise ConfigError(
            f"unknown segmentation settings: {', '.join(unknown)}; accepted: {accepted}"
        )
    grid = cfg.grid.replace(**{k: v for k, v in given.items() if k in grid_keys})
    tissue = cfg.tissue.replace(**{k: v for k, v in given.items() if k in tissue_keys})
    return SegmentConfig(tissue, grid)


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
