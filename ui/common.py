"""Shared pieces of the Streamlit app (its settings: ``ui.settings``): the opened index and the
tile server (one per server process), readable errors, result galleries and CSV export."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import pandas as pd
import streamlit as st

from threads_search.errors import ThreadsSearchError
from ui import display

log = logging.getLogger("threads_search.ui")


@st.cache_resource(show_spinner="Opening the index…")
def get_index(index_dir: str, checkpoint: str | None = None):
    """The index, opened once per server process (``Index`` is thread-safe); ``checkpoint``:
    its pretrained patch encoder's weights, for uploaded slides and images."""
    import threads_search as ts

    return ts.open_index(index_dir, checkpoint=checkpoint)


@st.cache_resource(show_spinner=False)
def get_tile_server(host: str, port: int):
    """The Deep Zoom tile server of this process (a daemon thread, started on first use)."""
    from ui.viewer import TileServer

    return TileServer(host, port)


def readable(e: BaseException) -> str:
    """A one-paragraph message for an exception (never a traceback): the message alone for a
    user's error (a ``ThreadsSearchError``: query, filter, upload, slide, molecular data,
    index...; or a ``ValueError``/``FileNotFoundError``), else prefixed by the exception's type."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, (ThreadsSearchError, ValueError, FileNotFoundError)):
        return msg
    return f"{type(e).__name__}: {msg}"


@contextlib.contextmanager
def guard(what: str):
    """Run a step; an exception becomes an ``st.error`` naming ``what`` (the app goes on).
    Warnings raised inside are shown as ``st.warning``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except Exception as e:  # Streamlit's rerun/stop are BaseException: they pass
            log.warning("%s failed", what, exc_info=True)
            st.error(f"**{what} failed.** {readable(e)}")
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen and not issubclass(w.category, (DeprecationWarning, FutureWarning)):
            seen.add(text)
            st.warning(text)


def key_columns(frame: pd.DataFrame, limit: int = 3) -> list[str]:
    """Up to ``limit`` metadata columns for captions: the session's shown columns, diagnosis-like
    first (``ui.display``)."""
    return display.caption_columns(frame.columns, display.current(), limit)


def fmt(v) -> str:
    """A metadata value for a caption: 3 significant digits for floats, — for missing."""
    return display.format_value(v)


@st.cache_data(show_spinner=False, max_entries=2000)
def gallery_thumb(path, thumbnail, side: int = 320):
    """A result's picture: a thumbnail of its slide file when readable here, else the index's
    thumbnail (path), else None."""
    if isinstance(path, str) and path and Path(path).is_file():
        from ui.images import slide_thumbnail

        try:
            return slide_thumbnail(path, side)
        except Exception:  # unreadable now: fall back to the index's thumbnail
            pass
    return thumbnail if isinstance(thumbnail, str) and Path(thumbnail).is_file() else None


NO_MATCH = "No slides match these filters."
PICTURE_SIZES = {"Small": 1, "Large": 2}  # pictures per row divided by this


def show_gallery(results: pd.DataFrame, key: str, per_row: int = 4, query=None) -> None:
    """Pictures of result slides with rank, similarity and case context (the session's shown
    columns, ``ui.display``); a size control (larger pictures, fewer per row; each picture also
    opens full screen); the table with paths and pixel sizes under "Technical details"; a CSV
    download. ``query``: the query slide's metadata row (``display.query_row``), shown as a
    case line above the results."""
    cfg = display.current()
    if query is not None:
        line = display.case_line(query, cfg)
        st.markdown(f"Query: **{query['slide_id']}**" + (f" — {line}" if line else ""))
    if results.empty:
        st.info(NO_MATCH)
        return
    top = results.iloc[0]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.markdown(
        f"Top match: **{top['slide_id']}** (similarity {top['score']:.3f}) · {len(results)} results"
    )
    size = c2.radio("Picture size", list(PICTURE_SIZES), horizontal=True, key=f"{key}_pic")
    per_row = max(1, per_row // PICTURE_SIZES.get(size, 1))
    side = 320 if per_row > 2 else 768
    for start in range(0, len(results), per_row):
        cols = st.columns(per_row)
        for col, (_, r) in zip(
            cols, results.iloc[start : start + per_row].iterrows(), strict=False
        ):
            with col:
                thumb = gallery_thumb(r.get("path"), r.get("thumbnail"), side)
                if thumb is not None:
                    st.image(thumb, width="stretch")
                lines = [f"**#{int(r['rank'])} {r['slide_id']}**", f"similarity {r['score']:.3f}"]
                if "patient_id" in r and not display.is_missing(r["patient_id"]):
                    lines.append(f"patient {r['patient_id']}")
                lines += display.caption_lines(r, cfg)
                st.markdown("  \n".join(lines))
    table = results.drop(columns=["thumbnail"], errors="ignore")
    show_table(table, cfg)
    download_csv(table, f"{key}.csv", key=f"dl_{key}")


def show_table(frame: pd.DataFrame, cfg=None, extra_config: dict | None = None, **kwargs):
    """A metadata table: the shown columns with human labels and readable numbers (plus
    ``extra_config`` column settings); paths, pixel sizes and other internals in a "Technical
    details" expander below. ``kwargs`` go to the main ``st.dataframe``, whose value (a
    selection event when ``on_select`` is given) is returned."""
    cfg = cfg or display.current()
    extra = extra_config or {}
    lead = [c for c in frame.columns if c in extra]  # e.g. a picture column, first
    shown, tech = display.split(frame.drop(columns=lead), cfg)
    shown = frame[lead + list(shown.columns)]
    conf = {**display.column_config(shown, cfg), **extra}
    event = st.dataframe(shown, hide_index=True, width="stretch", column_config=conf, **kwargs)
    if tech is not None:
        with st.expander("Technical details"):
            st.dataframe(
                tech,
                hide_index=True,
                width="stretch",
                column_config=display.column_config(tech, cfg),
            )
    return event


def download_csv(frame: pd.DataFrame, name: str, key: str, label: str = "Download CSV") -> None:
    st.download_button(
        label, frame.to_csv(index=False).encode(), file_name=name, mime="text/csv", key=key
    )


def go_to(section: str) -> None:
    """Switch the sidebar section (use as a button callback)."""
    st.session_state["section"] = section
