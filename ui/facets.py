"""Facet filters: one widget per metadata column → a guarded ``where`` clause.

Which widget a column gets (:func:`facets_for`): a multiselect for a categorical column (text,
boolean or category with at most ``MAX_CATEGORIES`` values; missing values offered as
``(missing)``), a range slider for a numeric one, a "contains" text box for a high-cardinality
text column. The clause is built by ``threads_search.query.filters.build_where`` (identifiers
and values quoted by the project's guarded builder, never pasted raw), optionally ANDed with a
free SQL expression that the index's guard (``threads_search.query.sql_guard``) checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from threads_search.query.filters import Contains, Range, build_where, combine_where

MAX_CATEGORIES = 30
MISSING = "(missing)"
SKIP = ("path", "thumbnail")


@dataclass(frozen=True)
class Facet:
    """``kind``: "categories" (``options``), "range" (``lo``..``hi``, ``integer``) or
    "contains"."""

    column: str
    kind: str
    options: tuple = ()
    lo: float = 0.0
    hi: float = 0.0
    integer: bool = False


def facets_for(frame: pd.DataFrame, columns: list[str] | None = None) -> list[Facet]:
    """The facet of each usable column of ``frame`` (restricted to ``columns`` when given)."""
    out = []
    allowed = None if columns is None else set(columns)
    for col in frame.columns:
        if col in SKIP or (allowed is not None and col not in allowed):
            continue
        s = frame[col]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            values = s.dropna().unique().tolist()
            if not values:
                continue
            if len(values) <= MAX_CATEGORIES:
                opts = sorted(values, key=str) + ([MISSING] if s.isna().any() else [])
                out.append(Facet(col, "categories", tuple(opts)))
            else:
                out.append(Facet(col, "contains"))
            continue
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0 or v.min() == v.max():
            continue
        integer = pd.api.types.is_integer_dtype(s)
        out.append(Facet(col, "range", lo=float(v.min()), hi=float(v.max()), integer=integer))
    return out


def condition(facet: Facet, value):
    """The build_where condition of a widget value, or None when the widget does not filter."""
    if facet.kind == "categories":
        if not value:
            return None
        return [None if v == MISSING else v for v in value]
    if facet.kind == "contains":
        return Contains(value.strip()) if value and value.strip() else None
    lo, hi = value
    if lo <= facet.lo and hi >= facet.hi:
        return None
    return Range(lo if lo > facet.lo else None, hi if hi < facet.hi else None)


def build(facets: list[Facet], values: dict, columns: list[str], sql: str = "") -> str | None:
    """AND of the facets' conditions (only columns in ``columns``) and the free ``sql``."""
    conds = {}
    for f in facets:
        if f.column in columns and f.column in values:
            c = condition(f, values[f.column])
            if c is not None:
                conds[f.column] = c
    return combine_where(build_where(conds, columns) if conds else None, sql or None)


def _slider(f: Facet, key: str):
    if f.integer:
        return st.slider(f.column, int(f.lo), int(f.hi), (int(f.lo), int(f.hi)), key=key)
    step = (f.hi - f.lo) / 100.0
    digits = max(0, 2 - int(math.floor(math.log10(step)))) if step > 0 else 2
    scale = 10**digits
    lo, hi = math.floor(f.lo * scale) / scale, math.ceil(f.hi * scale) / scale
    return st.slider(f.column, lo, hi, (lo, hi), step=10**-digits, key=key, format=f"%.{digits}f")


def render(index) -> dict:
    """The sidebar filter widgets. Returns ``{"slides": where, "molecular": where, "error":
    message or None, "n": matching slides or None}``."""
    slides = index.slides
    columns = index.filter_columns("slides")
    facets = facets_for(slides, columns)
    values = {}
    with st.sidebar.expander("Filters", expanded=False):
        for f in facets:
            key = f"facet:{f.column}"
            if f.kind == "categories":
                values[f.column] = st.multiselect(
                    f.column, list(f.options), key=key, placeholder="any"
                )
            elif f.kind == "contains":
                values[f.column] = st.text_input(f"{f.column} contains", key=key)
            else:
                values[f.column] = _slider(f, key)
        sql = st.text_input(
            "SQL filter (advanced)",
            key="facet:sql",
            help="A boolean SQL expression over the metadata columns, e.g. "
            "`subtype = 'subtype_A' AND tissue_area_mm2 > 0.2`",
        )
    out = {"slides": None, "molecular": None, "error": None, "n": None}
    try:
        out["slides"] = build(facets, values, columns, sql)
        mol_cols = index.filter_columns("molecular") if len(index.molecular) else []
        out["molecular"] = build(facets, values, mol_cols) if mol_cols else None
        ids = index.filter_ids(out["slides"], "slides")
        out["n"] = len(slides) if ids is None else len(ids)
    except Exception as e:  # FilterError and DuckDB errors: shown, the filter is not applied
        from ui.common import readable

        out.update(slides=None, molecular=None, error=readable(e))
    if out["error"]:
        st.sidebar.error(f"Filter not applied: {out['error']}")
    elif out["slides"]:
        st.sidebar.caption(f"{out['n']} of {len(slides)} slides match `{out['slides']}`")
    return out
