"""What the UI shows of a metadata table: which columns, in which order, under which labels and
with which number formats; one place for every section.

Each column has a role (:func:`role`, from its name):

- ``key``: the row's identity and score (rank, slide_id, sample_id, score, patient_id), first
  in tables;
- ``diagnosis``: a name with a diagnosis-like word (``DIAGNOSIS_WORDS``: diagnosis, OncoTree,
  subtype, tumour, grade, stage, site, organ, tissue, label...), ordered by that word;
- ``descriptive``: any other metadata;
- ``bookkeeping``: split, fold, other ids, ``has_*``/``n_*`` counts, ``*_index``: last in tables,
  never in captions nor the case line;
- ``technical``: file paths, thumbnails, level-0 pixel sizes and coordinates, µm/px, patch
  counts, tissue area: shown only under "Technical details" and filtered under "More filters".

The shown columns come from, first to last: the sidebar's "Columns shown" (:func:`sidebar`, kept
in session state), ``INDEX_DIR/ui_display.json`` (``{"columns": [...], "labels": {"col":
"Label"}}``, read by ``ui.display_file.load_config``; bad content is ignored with a warning
naming it), the roles above. Labels: the file's map, else ``LABELS``, else snake_case in sentence case. Numbers:
3 significant digits, thousands grouped, with the column's unit (``UNITS``: µm/px, px, µm, mm²).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CONFIG_NAME = "ui_display.json"
KEY = ("rank", "slide_id", "sample_id", "score", "patient_id")
DIAGNOSIS_WORDS = (
    "diagnosis",
    "oncotree",
    "subtype",
    "histolog",
    "disease",
    "cancer",
    "tumor",
    "tumour",
    "grade",
    "stage",
    "label",
    "class",
    "organ",
    "tissue",
    "primary",
    "site",
)
TECHNICAL = frozenset(
    {"path", "thumbnail", "mpp", "width", "height", "n_patches", "tissue_area_mm2", "x", "y"}
    | {"size_px", "size_um", "crop", "embedding", "level0_width", "level0_height", "seconds"}
)
TECHNICAL_TOKENS = frozenset({"path", "file", "filename", "uri", "url", "md5", "sha256", "mpp"})
BOOKKEEPING = frozenset({"split", "fold", "folds", "cv_fold", "partition", "seed", "kind"})
BOOKKEEPING_LAST = frozenset({"id", "ids", "uuid", "index", "idx", "barcode", "fold", "split"})
LABELS = {
    "rank": "Rank",
    "slide_id": "Slide",
    "sample_id": "Sample",
    "patient_id": "Patient",
    "score": "Similarity",
    "path": "Slide file",
    "thumbnail": "Thumbnail file",
    "mpp": "Resolution",
    "width": "Width",
    "height": "Height",
    "n_patches": "Patches",
    "tissue_area_mm2": "Tissue area",
    "size_px": "Patch size",
    "size_um": "Field",
    "n_hits": "Matching patches",
    "oncotree_code": "OncoTree code",
}
UNITS = {
    "mpp": "µm/px",
    "width": "px",
    "height": "px",
    "x": "px",
    "y": "px",
    "size_px": "px",
    "size_um": "µm",
    "tissue_area_mm2": "mm²",
}
SUFFIX_UNITS = (("_mm2", "mm²"), ("_um2", "µm²"), ("_mpp", "µm/px"), ("_um", "µm"), ("_px", "px"))
MISSING = "—"
STATE_KEY = "display:config"
WIDGET_KEY = "display:columns"


@dataclass(frozen=True)
class DisplayConfig:
    """``columns``: the metadata columns shown, in order (None: by role); ``labels``: column →
    label overrides; ``warning``: what of ``ui_display.json`` was ignored, or None."""

    columns: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None


DEFAULT = DisplayConfig()


def _tokens(column: str) -> list[str]:
    """Lower-case words of a column name (snake_case, kebab, spaces, camelCase)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(column))
    return [t for t in re.split(r"[^0-9a-zA-Z]+", spaced.lower()) if t]


def _diagnosis_rank(column: str) -> int | None:
    """Position in ``DIAGNOSIS_WORDS`` of the first word the name matches, or None."""
    toks = _tokens(column)
    for i, word in enumerate(DIAGNOSIS_WORDS):
        if any(t.startswith(word) for t in toks):
            return i
    return None


def role(column: str) -> str:
    """ "key", "technical", "bookkeeping", "diagnosis" or "descriptive" (module docstring)."""
    name = str(column)
    toks = _tokens(name)
    if name in KEY:
        return "key"
    if name in TECHNICAL or TECHNICAL_TOKENS & set(toks) or name.endswith(("_px", "_mpp")):
        return "technical"
    if name.lower() in BOOKKEEPING or (toks and toks[-1] in BOOKKEEPING_LAST):
        return "bookkeeping"
    if toks and toks[0] in ("n", "num", "has") and len(toks) > 1:
        return "bookkeeping"
    return "diagnosis" if _diagnosis_rank(name) is not None else "descriptive"


def default_columns(columns: Iterable[str]) -> list[str]:
    """The metadata columns shown by default, in order: diagnosis-like (by word), descriptive,
    bookkeeping; key and technical columns left out."""
    cols = [str(c) for c in columns]
    diag = sorted((c for c in cols if role(c) == "diagnosis"), key=_diagnosis_rank)
    desc = [c for c in cols if role(c) == "descriptive"]
    return diag + desc + [c for c in cols if role(c) == "bookkeeping"]


def shown_columns(columns: Iterable[str], config: DisplayConfig | None = None) -> list[str]:
    """Metadata columns of a table shown after its key columns (``config`` or the defaults)."""
    cols = [str(c) for c in columns]
    config = config or DEFAULT
    if config.columns is None:
        return default_columns(cols)
    have = set(cols)
    return [c for c in config.columns if c in have and c not in KEY]


def caption_columns(
    columns: Iterable[str], config: DisplayConfig | None = None, limit: int = 3
) -> list[str]:
    """Up to ``limit`` columns for a result's caption: the first shown ones, bookkeeping left
    out unless chosen explicitly."""
    config = config or DEFAULT
    shown = shown_columns(columns, config)
    if config.columns is None:
        shown = [c for c in shown if role(c) != "bookkeeping"]
    return shown[:limit]


def unit(column: str) -> str | None:
    """The unit of a column's values (µm/px, px, µm, mm²), or None."""
    name = str(column)
    if name in UNITS:
        return UNITS[name]
    return next((u for suffix, u in SUFFIX_UNITS if name.endswith(suffix)), None)


def label(column: str, config: DisplayConfig | None = None, with_unit: bool = False) -> str:
    """A human label: the config's override, else ``LABELS``, else sentence case (``n_slides``
    → "Number of slides", ``oncotree_code`` → "Oncotree code"); ``with_unit`` appends
    " (unit)" when the column has one."""
    name = str(column)
    text = (config or DEFAULT).labels.get(name) or LABELS.get(name)
    if not text:
        base = name
        for suffix, _ in SUFFIX_UNITS:
            if base.endswith(suffix) and len(base) > len(suffix):
                base = base[: -len(suffix)]
                break
        base = re.sub(r"^n_(?=.)", "number of ", base)
        words = [w for w in re.split(r"[_\s]+", base) if w]
        text = " ".join(words) or name
        text = text[0].upper() + text[1:] if text[:1].islower() else text
    u = unit(name)
    return f"{text} ({u})" if with_unit and u else text


def is_missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.api.types.is_scalar(v) and pd.isna(v))
    except (TypeError, ValueError):
        return False


def number(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; thousands grouped, never in e-notation at or
    above 1."""
    if not math.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def format_value(value, unit: str | None = None) -> str:
    """A metadata value as text: — for missing, yes/no for booleans, integers grouped
    ("1,536"), floats to 3 significant digits, then `` unit`` when given."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        text = f"{int(value):,}"
    elif isinstance(value, (float, np.floating)):
        text = number(float(value))
        if text == MISSING:
            return text
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def value_text(column: str, value) -> str:
    """``format_value`` with the column's unit."""
    return format_value(value, unit(column))


def _row_columns(row) -> list[str]:
    return [str(c) for c in (row.index if isinstance(row, pd.Series) else row.keys())]


def case_line(row, config: DisplayConfig | None = None, limit: int = 3) -> str:
    """A slide's case context, e.g. "LUAD · site_2 · patient P-01": up to ``limit`` values of its
    diagnosis-like columns (or the configured ones), then its patient; "" when none is known."""
    config = config or DEFAULT
    cols = caption_columns(_row_columns(row), config, limit=max(limit * 3, limit))
    if config.columns is None:
        cols = [c for c in cols if role(c) == "diagnosis"]
    parts = []
    for c in cols:
        v = row[c]
        if is_missing(v):
            continue
        if isinstance(v, str):
            parts.append(v)
        else:
            parts.append(f"{label(c, config)} {value_text(c, v)}")
        if len(parts) == limit:
            break
    pid = row["patient_id"] if "patient_id" in _row_columns(row) else None
    if not is_missing(pid):
        parts.append(f"patient {pid}")
    return " · ".join(parts)


def caption_lines(row, config: DisplayConfig | None = None, limit: int = 3) -> list[str]:
    """``Label: value`` lines of a result's caption columns (missing values left out)."""
    cols = caption_columns(_row_columns(row), config, limit)
    return [f"{label(c, config)}: {value_text(c, row[c])}" for c in cols if not is_missing(row[c])]


def split(frame: pd.DataFrame, config: DisplayConfig | None = None):
    """(shown, technical) parts of a table, columns unrenamed: shown = key columns then the
    shown metadata; technical = the identity column(s) then every other column (paths,
    pixel sizes...); ``technical`` is None when nothing is left for it."""
    cols = [str(c) for c in frame.columns]
    key = [c for c in KEY if c in cols]
    shown = key + shown_columns(cols, config)
    ident = [c for c in ("slide_id", "sample_id") if c in cols]
    rest = [c for c in cols if c not in shown]
    tech = frame[ident + rest] if rest else None
    return frame[shown], tech


def column_config(frame: pd.DataFrame, config: DisplayConfig | None = None) -> dict:
    """``st.dataframe`` column settings: each column's label and, for numbers, a readable
    format with its unit (similarity to 3 decimals, others to 3 significant digits)."""
    import streamlit as st

    out = {}
    for c in frame.columns:
        name, s = str(c), frame[c]
        text = label(name, config)
        if pd.api.types.is_bool_dtype(s):
            out[c] = st.column_config.CheckboxColumn(text)
        elif pd.api.types.is_numeric_dtype(s):
            out[c] = st.column_config.NumberColumn(text, format=_number_format(name, s))
        else:
            out[c] = st.column_config.Column(text)
    return out


def _number_format(column: str, s: pd.Series) -> str:
    """A printf format for a numeric column: integers plain, similarity ``%.3f``, floats
    ``%.3g`` (``%.0f`` at or above 1000), then the unit."""
    if column == "score":
        fmt = "%.3f"
    elif pd.api.types.is_integer_dtype(s):
        fmt = "%d"
    else:
        v = pd.to_numeric(s, errors="coerce").abs()
        fmt = "%.0f" if len(v.dropna()) and v.max() >= 1000 else "%.3g"
    u = unit(column)
    return f"{fmt} {u}" if u else fmt


def current() -> DisplayConfig:
    """The session's display settings (set by :func:`sidebar`), else the defaults."""
    import streamlit as st

    cfg = st.session_state.get(STATE_KEY)
    return cfg if isinstance(cfg, DisplayConfig) else DEFAULT


def sidebar(index, base: DisplayConfig) -> DisplayConfig:
    """The sidebar's "Columns shown" control (default: ``base``, the index's
    ``ui.display_file.load_config``, else by role); the choice is kept in session state for
    every section (:func:`current`) and given to the widget as its start on every run (see
    ``ui.state.keep``)."""
    import streamlit as st

    cols = [str(c) for c in index.slides.columns]
    default = list(base.columns) if base.columns is not None else default_columns(cols)
    options = default + [c for c in cols if c not in default and c not in KEY]
    kept = st.session_state.get(WIDGET_KEY)
    if isinstance(kept, list) and not set(kept) <= set(options):  # the index lost columns
        kept = st.session_state[WIDGET_KEY] = [c for c in kept if c in options]
    with st.sidebar.expander("Display", expanded=False):
        chosen = st.multiselect(
            "Columns shown",
            options,
            default=kept if isinstance(kept, list) else default,
            key=WIDGET_KEY,
            format_func=lambda c: label(c, base),
            help="Metadata shown in captions (the first three), the case line and tables, in "
            "this order; the others stay under Technical details. Defaults come from "
            f"{CONFIG_NAME} in the index folder when present.",
        )
    if base.warning:
        st.sidebar.warning(base.warning)
    cfg = DisplayConfig(tuple(chosen), base.labels, base.warning)
    st.session_state[STATE_KEY] = cfg
    return cfg


def query_row(index, slide_id: str | None):
    """The slide table row of an indexed slide (for :func:`case_line`), or None."""
    if not slide_id:
        return None
    slides = index.slides
    hit = slides.loc[slides["slide_id"] == slide_id]
    return hit.iloc[0] if len(hit) else None
