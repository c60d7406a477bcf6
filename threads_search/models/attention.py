"""A slide's attention as a table: :func:`attention_frame`, the one layout of the index's
``attention/<slide_id>.parquet`` files and of the UI's heatmaps of an uploaded slide."""

from __future__ import annotations

import numpy as np
import pandas as pd


def attention_frame(coords, attention) -> pd.DataFrame:
    """One row per patch, in ``coords`` order.

    ``coords``: ``[N, 2]`` level-0 px (x, y) of each patch's top-left corner (a feature h5's
    ``coords``). ``attention``: ``[H, N]`` float, one row per attention head (each row of the
    THREADS slide encoder sums to 1 over the slide's N patches), as ``embed_slide(...,
    return_attention=True)`` returns it; None or ``[0, N]`` for an encoder without attention.

    Columns: ``x``, ``y`` (int64, level-0 px) and, when there is attention, ``score`` (float32,
    the mean over heads) and ``score_h<k>`` (float32, head k = 0..H-1)."""
    xy = np.asarray(coords).reshape(-1, 2)
    frame = {"x": xy[:, 0].astype(np.int64), "y": xy[:, 1].astype(np.int64)}
    att = None if attention is None else np.asarray(attention, np.float32)
    if att is not None and att.size:
        att = att.reshape(-1, len(xy))
        frame["score"] = att.mean(axis=0)
        for h, s in enumerate(att):
            frame[f"score_h{h}"] = s
    return pd.DataFrame(frame)
