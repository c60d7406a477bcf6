"""Batch effects of an index's slide embeddings (:meth:`Index.batch_effects
<threads_search.query.index.Index.batch_effects>`): which column is the batch, and the report of
:func:`threads_search.eval.batch_effect_report` over the slide vectors read back from the store.

The batch column: a metadata column by name; by default ``site`` when the slide table has one,
else the TCGA tissue-source-site code (characters 6–7 of ``TCGA-XX-XXXX``, as
``tissue_source_site``) when every slide id is TCGA-shaped. Large indexes are measured on a
seeded sample of ``MAX_SLIDES`` slides (the probe and the neighbour search are quadratic-ish).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from threads_search.query.errors import QueryError

DEFAULT_COLUMN = "site"
TSS_COLUMN = "tissue_source_site"
MAX_SLIDES = 5000
_TCGA = re.compile(r"^TCGA-([A-Z0-9]{2})-[A-Z0-9]{4}", re.IGNORECASE)


def tcga_sites(slide_ids) -> pd.Series | None:
    """The tissue-source-site code of each TCGA-shaped id (``TCGA-A2-...`` → ``A2``, upper
    case), or None when any id is not TCGA-shaped (or there are none)."""
    codes = [m.group(1).upper() if (m := _TCGA.match(str(s))) else None for s in slide_ids]
    return None if not codes or None in codes else pd.Series(codes, dtype=object)


def default_column(slides: pd.DataFrame) -> str | None:
    """The batch column measured by default: ``site`` when the table has it, else
    ``tissue_source_site`` when every slide id is TCGA-shaped, else None."""
    if DEFAULT_COLUMN in slides.columns:
        return DEFAULT_COLUMN
    if len(slides) and tcga_sites(slides["slide_id"]) is not None:
        return TSS_COLUMN
    return None


def _frame(slides: pd.DataFrame, column: str) -> tuple[pd.DataFrame, str]:
    """The slide table with the batch column resolved, and where the column comes from."""
    if column in slides.columns:
        return slides, "metadata"
    if column in (DEFAULT_COLUMN, TSS_COLUMN):
        tss = tcga_sites(slides["slide_id"])
        if tss is not None:
            return slides.assign(**{TSS_COLUMN: tss.to_numpy()}), "TCGA slide ids"
    cols = ", ".join(map(str, slides.columns))
    hint = (
        " (nor TCGA-shaped slide ids to read the tissue source site from)"
        if column == DEFAULT_COLUMN
        else ""
    )
    raise QueryError(
        f"no column {column!r} in the slide metadata{hint}; choose a batch column from: {cols}"
    )


def slide_batch_effects(
    space, column: str = DEFAULT_COLUMN, labels=None, k: int = 10, max_slides: int = MAX_SLIDES
) -> dict:
    """The batch-effect report (``threads_search.eval.batch_effect_report``) of the slide
    ``space``'s embeddings for ``column`` and the ``labels`` columns, plus ``source`` (metadata
    | TCGA slide ids), ``n_slides`` and ``n_measured`` (a seeded sample above ``max_slides``)."""
    from threads_search.eval.batch_effects import batch_effect_report

    table = space.table
    if not len(table):
        raise QueryError("the index holds no slides: nothing to measure batch effects on")
    frame, source = _frame(table, column)
    if column not in frame.columns:  # "site" asked, read from TCGA ids
        column = TSS_COLUMN
    labels = [labels] if isinstance(labels, str) else list(labels or [])
    unknown = [c for c in labels if c not in frame.columns]
    if unknown:
        raise QueryError(
            f"no label column {', '.join(map(repr, unknown))} in the slide metadata "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    ids = np.arange(len(frame))
    if len(ids) > max_slides:
        ids = np.sort(np.random.default_rng(0).choice(len(ids), max_slides, replace=False))
    emb = space.rows(ids)
    report = batch_effect_report(emb, frame.iloc[ids].reset_index(drop=True), column, labels, k)
    report.update(source=source, n_slides=int(len(frame)), n_measured=int(len(ids)))
    return report
