"""Archive: the indexed slides matching the sidebar filters, with thumbnails and metadata; a
selected row can be searched with or opened in the viewer."""

from __future__ import annotations

import base64
import math

import streamlit as st

from ui.common import go_to, guard
from ui.sections.slide_search import SOURCES

PAGE_SIZE = 25


@st.cache_data(show_spinner=False, max_entries=20_000)
def thumb_uri(path: str | None) -> str | None:
    """The thumbnail JPEG as a data URI (small: index thumbnails are ~100 px)."""
    if not path:
        return None
    with open(path, "rb") as f:
        return "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()


def _search_with(slide_id: str) -> None:
    st.session_state["ss_source"] = SOURCES[0]
    st.session_state["ss_slide"] = slide_id
    go_to("Slide search")


def _view(slide_id: str) -> None:
    st.session_state["vw_left"] = slide_id
    go_to("Viewer")


def render(index, filters: dict, cfg) -> None:
    st.header("Archive")
    with guard("Filtering the archive"):
        frame = index.select(filters["slides"] if not filters["error"] else None)
        n_pages = max(1, math.ceil(len(frame) / PAGE_SIZE))
        c1, c2 = st.columns([3, 1])
        c1.markdown(
            f"**{len(frame)}** of {len(index.slides)} slides"
            + (f" match `{filters['slides']}`" if filters["slides"] else "")
        )
        page = c2.number_input("Page", 1, n_pages, 1, key="arch_page") if n_pages > 1 else 1
        part = frame.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE].copy()
        part.insert(0, "thumbnail", [thumb_uri(index.thumbnail(s)) for s in part["slide_id"]])
        part = part.drop(columns=["path"], errors="ignore")
        event = st.dataframe(
            part,
            hide_index=True,
            width="stretch",
            key="arch_table",
            on_select="rerun",
            selection_mode="single-row",
            row_height=64,
            height=min(40 + 65 * len(part), 720),
            column_config={"thumbnail": st.column_config.ImageColumn("thumbnail", width="small")},
        )
        rows = event.selection.rows if event is not None else []
        if rows:
            sid = str(part.iloc[rows[0]]["slide_id"])
            c1, c2 = st.columns(2)
            c1.button(
                f"Search with {sid}",
                key="arch_search",
                on_click=_search_with,
                args=(sid,),
                type="primary",
            )
            c2.button(f"Open {sid} in the viewer", key="arch_view", on_click=_view, args=(sid,))
        else:
            st.caption("Select a row to search with that slide or open it in the viewer.")
