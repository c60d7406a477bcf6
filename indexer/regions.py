"""The region (patch-level) table of a generation: one row per indexed patch, built from the work
records' patch vectors (``indexer.records``), in slide-id order then patch order.

Columns: ``slide_id``, ``x``, ``y`` (the patch's top-left corner, level-0 px), ``size_px`` (its
side in level-0 px) and ``size_um`` (its side in µm). Vectors: float16 ``[P, D]``, the
L2-normalised patch features of the index's patch encoder (row i = region FAISS id i).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REGION_COLUMNS = ["slide_id", "x", "y", "size_px", "size_um"]


def region_table(recs: dict) -> tuple[pd.DataFrame, np.ndarray] | None:
    """(table, vectors float16 ``[P, D]``) of the records ``recs`` (slide_id → ``SlideRecord``)
    that hold patch vectors; None when none does."""
    frames, vectors = [], []
    for sid, r in recs.items():
        if r.patches is None or len(r.patches) == 0:
            continue
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
        vectors.append(np.asarray(r.patches, np.float16))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)[REGION_COLUMNS], np.concatenate(vectors)
