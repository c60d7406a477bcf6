"""The patch-feature bag of each indexed slide, for the baselines that start from the same patch
features as the index (mean pooling, the untrained encoder).

Source, per slide: the feature ``.h5`` the index was built from (``FEATURES_DIR/h5/<slide_id>.h5``
of a FEATURES_DIR input of the index run, its ``--features-dir``, or ``INDEX_DIR/features``, as
named in ``index.json``'s ``config``), else the index's region index (the slide's L2-normalised
patch features, float16). ``source`` tells which was used (``h5`` | ``regions`` | ``mixed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.query.errors import QueryError


def feature_dirs(index) -> list[Path]:
    """FEATURES_DIRs named by the index's build config (existing folders only)."""
    cfg = index.manifest.get("config") or {}
    cands = [Path(p) for p in cfg.get("inputs") or []]
    if cfg.get("features_dir"):
        cands.append(Path(cfg["features_dir"]))
    cands.append(Path(index.root) / "features")
    out = []
    for d in cands:
        d = d if d.is_absolute() else Path(index.root) / d
        if (d / "h5").is_dir() and d not in out:
            out.append(d)
    return out


class Bags:
    """Patch features ``[n_patches, D]`` float32 of the index's slides, by slide_id."""

    def __init__(self, index) -> None:
        self.index = index
        self.dirs = feature_dirs(index)
        self.used: set[str] = set()
        self._regions = None

    def _h5(self, slide_id: str) -> np.ndarray | None:
        from threads_search.features.extract import h5_path
        from threads_search.features.h5io import read_features
        from threads_search.paths import UnsafeSlideIdError

        for d in self.dirs:
            try:
                p = h5_path(d, slide_id)
            except UnsafeSlideIdError:
                return None
            if p.is_file():
                return np.asarray(read_features(p).features, np.float32)
        return None

    def _region(self, slide_id: str) -> np.ndarray | None:
        if self._regions is None:
            try:
                self._regions = self.index.regions
            except QueryError:  # no region index: the h5 files are the only source
                self._regions = False
        if self._regions is False:
            return None
        rows = self._regions.rows_of(slide_id)
        return np.asarray(self._regions.features[rows], np.float32) if len(rows) else None

    def get(self, slide_id: str) -> np.ndarray:
        """The slide's bag; ``InputError`` when neither source has it."""
        for name, fn in (("h5", self._h5), ("regions", self._region)):
            bag = fn(slide_id)
            if bag is not None and len(bag):
                self.used.add(name)
                return bag
        raise InputError(
            f"no patch features for slide {slide_id!r}: neither its feature .h5 (looked in "
            f"{', '.join(map(str, self.dirs)) or 'no FEATURES_DIR named by the index'}) nor a "
            "region index; the patch-feature baselines need one of them"
        )

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for sid in self.index.slides["slide_id"].astype(str):
            yield sid, self.get(sid)

    @property
    def source(self) -> str:
        return "mixed" if len(self.used) > 1 else next(iter(self.used), "none")
