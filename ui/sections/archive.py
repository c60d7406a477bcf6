"""Archive: the indexed slides matching the sidebar filters, a page at a time ("Page 2 of 7
(150 slides)"), with thumbnails (small or large rows), the shown metadata columns (``ui.display``;
paths and pixel sizes under "Technical details"); a selected row is previewed large with its
case line and can be searched with or opened in the viewer."""

from __future__ import annotations

import base64
import io
import math

import streamlit as st

from ui import display, state
from ui.common import NO_MATCH, gallery_thumb, go_to, guard, show_table
from ui.sections.slide_search import SOURCES

PAGE_SIZE = 25
ROW_HEIGHTS = {"Small": 64, "Large": 160}  # px of a table row (thumbnail height)
PREVIEW_SIDE = 768  # px, the selected slide's picture


@st.cache_data(show_spinner=False, max_entries=20_000)
def thumb_uri(path: str | None, thumbnail: str | None = None, side: int = 0) -> str | None:
    """A table thumbnail as a data URI: the index's thumbnail JPEG (~100 px) when ``side`` is 0
    or the slide file is not readable here, else a ``side`` px picture of the slide file."""
    pic = gallery_thumb(path, thumbnail, side) if side else thumbnail
    if pic is None:
        return None
    if isinstance(pic, str):
        with open(pic, "rb") as f:
            return "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    buf = io.BytesIO()
    pic.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _search_with(slide_id: str) -> None:
    st.session_state["ss_source"] = SOURCES[0]
    st.session_state["ss_slide"] = slide_id
    go_to("Slide search")


def _view(slide_id: str) -> None:
    st.session_state["vw_left"] = slide_id
    go_to("Viewer")


def _summary(index, filters: dict, n: int) -> str:
    text = f"**{n}** of {len(index.slides)} slides"
    return text + (f" match `{filters['slides']}`" if filters["slides"] else "")


def render(index, filters: dict, cfg) -> None:
    st.header("Archive")
    with guard("Filtering the archive"):
        if filters.get("sql_error"):
            st.error(
                f"**SQL filter not applied:** {filters['sql_error']}  \nShowing the slides "
                "that match the other filters."
            )
        elif filters["error"]:
            st.error(f"**Filter not applied:** {filters['error']}  \nShowing every slide.")
        applied = filters["slides"] if filters.get("sql_error") or not filters["error"] else None
        frame = index.select(applied)
        if frame.empty:
            st.markdown(_summary(index, filters, 0))
            st.info(NO_MATCH)
            return
        n_pages = max(1, math.ceil(len(frame) / PAGE_SIZE))
        c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
        c1.markdown(_summary(index, filters, len(frame)))
        page = _page_box(c2, n_pages)
        sizes = list(ROW_HEIGHTS)
        start = state.keep("arch_thumbs", sizes[0], sizes, "index")
        size = c3.radio("Thumbnails", sizes, horizontal=True, key="arch_thumbs", **start)
        c1.caption(f"Page {page} of {n_pages} ({len(frame)} slides)")
        _table(index, frame.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE], size)


def _page_box(container, n_pages: int) -> int:
    """The page number box (1 when there is one page), started from the current page, brought
    back into range when the filters left fewer pages."""
    if n_pages <= 1:
        return 1
    if st.session_state.get("arch_page", 1) > n_pages:
        st.session_state["arch_page"] = n_pages
    start = state.keep("arch_page", 1)
    return container.number_input("Page", 1, n_pages, key="arch_page", **start)


def _table(index, part, size: str) -> None:
    """The page's rows with thumbnails; a selected row's preview and actions below."""
    height = ROW_HEIGHTS.get(size, ROW_HEIGHTS["Small"])
    side = 0 if height <= 64 else 2 * height
    part = part.copy()
    thumbs = [index.thumbnail(s) for s in part["slide_id"]]
    paths = part["path"] if "path" in part else [None] * len(part)
    part.insert(0, "picture", [thumb_uri(p, t, side) for p, t in zip(paths, thumbs, strict=True)])
    event = show_table(
        part,
        extra_config={"picture": st.column_config.ImageColumn("Thumbnail", width=height + 4)},
        key="arch_table",
        on_select="rerun",
        selection_mode="single-row",
        row_height=height,
        height=min(40 + (height + 1) * len(part), 760),
    )
    rows = event.selection.rows if event is not None else []
    if not rows:
        st.caption("Select a row to see the slide larger, search with it or open it in the viewer.")
        return
    row = part.iloc[rows[0]]
    sid = str(row["slide_id"])
    c1, c2 = st.columns([2, 1])
    pic = gallery_thumb(row.get("path"), thumbs[rows[0]], PREVIEW_SIDE)
    if pic is not None:
        c1.image(pic, width="stretch")
    line = display.case_line(row, display.current())
    c2.markdown(f"**{sid}**" + (f"  \n{line}" if line else ""))
    c2.button(
        f"Search with {sid}", key="arch_search", on_click=_search_with, args=(sid,), type="primary"
    )
    c2.button(f"Open {sid} in the viewer", key="arch_view", on_click=_view, args=(sid,))
