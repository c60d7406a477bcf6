"""The region (patch-level) rows of a generation: one per indexed patch, from the work records'
patch vectors (``indexer.records``), in slide-id order then patch order.

Columns: ``slide_id``, ``x``, ``y`` (the patch's top-left corner, level-0 px), ``size_px`` (its
side in level-0 px) and ``size_um`` (its side in µm). Vectors: float16 ``[P, D]``, the
L2-normalised patch features of the index's patch encoder (row i = region FAISS id i), read
record by record when the generation is written (never all in memory at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indexer.records import read_patches

REGION_COLUMNS = ["slide_id", "x", "y", "size_px", "size_um"]


@dataclass
class RegionRows:
    """The region table and where its vectors come from (``chunks``: one float16 ``[n, D]``
    block per record, in table order); ``features`` and ``encoder`` choose the projection region
    search compares them by (``vectorstore.projection``)."""

    table: pd.DataFrame
    dim: int
    sources: list[Path]
    features: str = "auto"  # how region search compares them (vectorstore.projection)
    encoder: str | None = None  # the patch encoder's name (its tissue dimensions)

    def __len__(self) -> int:
        return len(self.table)

    def chunks(self) -> Iterator[np.ndarray]:
        for p in self.sources:
            yield read_patches(p)


def region_table(
    recs: dict, paths: dict, features: str = "auto", encoder: str | None = None
) -> RegionRows | None:
    """The ``RegionRows`` of the records ``recs`` (slide_id → ``SlideRecord``, read without
    their vectors; ``paths``: slide_id → record file) that hold patch vectors; None when none
    does. ``features``, ``encoder``: as ``RegionRows``."""
    frames, sources, dim = [], [], 0
    for sid, r in recs.items():
        if not r.meta.get("has_patches") or len(r.coords) == 0:
            continue
        if not dim:
            first = read_patches(paths[sid])
            if first is None:
                continue
            dim = int(first.shape[1])
        patch = r.meta.get("patch") or {}
        n = len(r.coords)
        frames.append(
            pd.DataFrame(
                {
                    "slide_id": np.full(n, sid, dtype=object),
                    "x": r.coords[:, 0].astype(np.int64),
                    "y": r.coords[:, 1].astype(np.int64),
                    "size_px": np.full(n, patch.get("size_px") or 0, np.int64),
                    "size_um": np.full(n, patch.get("size_um") or np.nan, np.float64),
                }
            )
        )
        sources.append(paths[sid])
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)[REGION_COLUMNS]
    return RegionRows(table, dim, sources, features, encoder)
