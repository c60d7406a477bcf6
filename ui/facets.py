"""Facet filters: one widget per metadata column → a guarded ``where`` clause.

Descriptive columns come first (diagnosis-like ones leading, ``ui.display``) under "Filters";
ids and technical columns (slide_id, µm/px, pixel sizes, patch counts...) under "More filters".

Which widget a column gets (:func:`facets_for`): a multiselect for a categorical column (text,
boolean or category with at most ``MAX_CATEGORIES`` values; missing values offered as
``(missing)``), a range slider for a numeric one, a "contains" text box for a high-cardinality
text column. The clause is built by ``threads_search.query.filters.build_where`` (identifiers
and values quoted by the project's guarded builder, never pasted raw), optionally ANDed with a
free SQL expression that the index's guard (``threads_search.query.sql_guard``) checks. An
invalid SQL expression is reported and left out; the facet filters still apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from threads_search.query.filters import Contains, Range, build_where, combine_where
from ui import display, display_file

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


def nice_step(lo: float, hi: float, n: int = 100) -> float:
    """A 1, 2 or 5 x 10^k step dividing ``lo..hi`` into about ``n`` steps."""
    raw = (hi - lo) / n
    if not raw > 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    mant = raw / 10**exp
    return next(m for m in (1, 2, 5, 10) if m >= mant - 1e-9) * 10**exp


def _slider(f: Facet, key: str, cfg):
    text = display.label(f.column, cfg, with_unit=True)
    if f.integer:
        return st.slider(text, int(f.lo), int(f.hi), (int(f.lo), int(f.hi)), key=key)
    step = nice_step(f.lo, f.hi)
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    lo = math.floor(f.lo / step) * step
    hi = math.ceil(f.hi / step) * step
    lo, hi = round(lo, digits), round(hi, digits)
    return st.slider(
        text, lo, hi, (lo, hi), step=round(step, digits), key=key, format=f"%.{digits}f"
    )


def _widget(f: Facet, cfg):
    """The widget of a facet, labelled per the display settings ``cfg``."""
    key = f"facet:{f.column}"
    text = display.label(f.column, cfg)
    if f.kind == "categories":
        return st.multiselect(
            text, list(f.options), key=key, placeholder="any", format_func=_option_text
        )
    if f.kind == "contains":
        return st.text_input(f"{text} contains", key=key)
    return _slider(f, key, cfg)


def _option_text(v) -> str:
    return v if isinstance(v, str) else display.format_value(v)


def ordered(facets: list[Facet]) -> tuple[list[Facet], list[Facet]]:
    """(main, more): descriptive facets in display order (diagnosis-like first, bookkeeping
    last), then the ids and technical ones."""
    by_col = {f.column: f for f in facets}
    main = [by_col[c] for c in display.default_columns(by_col)]
    return main, [f for f in facets if f not in main]


def render(index) -> dict:
    """The sidebar filter widgets and display settings (``ui.display.sidebar``). Returns
    ``{"slides": where applied, "molecular": where, "error": message or None, "sql_error":
    message or None, "n": matching slides or None, "total": slides}``. An invalid SQL filter
    is left out (``sql_error``, also in ``error``) while the facets stay applied: ``slides``
    and ``n`` are those of the facets alone; ``error`` without ``sql_error`` means no filter
    is applied."""
    slides = index.slides
    columns = index.filter_columns("slides")
    main, more = ordered(facets_for(slides, columns))
    # read once: labels here, then the sidebar
    cfg = display_file.load_config(index.root, slides.columns)
    values = {}
    with st.sidebar.expander("Filters", expanded=False):
        for f in main:
            values[f.column] = _widget(f, cfg)
        sql = st.text_input(
            "SQL filter (advanced)",
            key="facet:sql",
            help="A boolean SQL expression over the metadata columns, e.g. "
            "`subtype = 'subtype_A' AND tissue_area_mm2 > 0.2`",
        )
    if more:
        with st.sidebar.expander("More filters", expanded=False):
            st.caption("Identifiers and technical columns")
            for f in more:
                values[f.column] = _widget(f, cfg)
    out = apply(index, main + more, values, columns, sql)
    if out["sql_error"]:
        st.sidebar.error(
            f"Filter not applied (SQL): {out['sql_error']}  \nThe other filters still apply: "
            f"{out['n']} of {out['total']} slides."
        )
    elif out["error"]:
        st.sidebar.error(f"Filter not applied: {out['error']}")
    elif out["slides"]:
        st.sidebar.caption(f"{out['n']} of {out['total']} slides match `{out['slides']}`")
    display.sidebar(index, cfg)
    return out


def apply(index, facets: list[Facet], values: dict, columns: list[str], sql: str = "") -> dict:
    """The filters dict of :func:`render` for widget ``values`` and free ``sql``: the facets'
    clause ANDed with the SQL when the index accepts it, else the facets' alone."""
    from ui.common import readable

    out = {"slides": None, "molecular": None, "error": None, "sql_error": None, "n": None}
    out["total"] = total = len(index.slides)
    try:
        out["slides"] = facet_where = build(facets, values, columns)
        mol_cols = index.filter_columns("molecular") if len(index.molecular) else []
        out["molecular"] = build(facets, values, mol_cols) if mol_cols else None
        ids = index.filter_ids(facet_where, "slides")
    except Exception as e:  # FilterError and DuckDB errors: shown, no filter is applied
        out.update(slides=None, molecular=None, error=readable(e), n=total)
        return out
    if sql and sql.strip():
        try:
            where = combine_where(facet_where, sql)
            ids = index.filter_ids(where, "slides")
            out["slides"] = where
        except Exception as e:  # the SQL is left out, the facets stay
            out["sql_error"] = out["error"] = readable(e)
    out["n"] = total if ids is None else len(ids)
    return out
