"""threads-search UI (Streamlit entry script).

Run ``threads-search ui INDEX_DIR`` (see ``ui.launch``), or directly
``streamlit run ui/app.py -- INDEX_DIR`` (or with ``THREADS_SEARCH_INDEX`` set); either way the
page sends no usage metrics: ``ui.launch`` passes ``--browser.gatherUsageStats false`` and
``ui/.streamlit/config.toml`` (read by Streamlit from any working directory; also
``.streamlit/config.toml`` at the repository root) sets it for direct starts. Sections in the
sidebar: Archive, Slide search, Region search, Viewer, Molecular search, Molecular prompting, Index info; the
sidebar's filters apply to every section. Only the public API is used: ``open_index`` and the
index's search / classify methods, plus the guarded where-builder.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run ui/app.py`: make `ui` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st

from ui import facets
from ui.common import get_index, readable
from ui.sections import (
    archive,
    info,
    molecular,
    prompting,
    region_search,
    slide_search,
    viewer_section,
)
from ui.settings import settings

SECTIONS = {
    "Archive": archive.render,
    "Slide search": slide_search.render,
    "Region search": region_search.render,
    "Viewer": viewer_section.render,
    "Molecular search": molecular.render,
    "Molecular prompting": prompting.render,
    "Index info": info.render,
}


def main() -> None:
    st.set_page_config(page_title="threads-search", layout="wide")
    cfg = settings()
    if not cfg.index_dir:
        st.error("No index given: start the app with `threads-search ui INDEX_DIR`.")
        st.stop()
    try:
        index = get_index(str(Path(cfg.index_dir).resolve()), cfg.checkpoint)
    except Exception as e:
        st.error(f"**Cannot open the index {cfg.index_dir}.** {readable(e)}")
        st.stop()
    st.sidebar.title("threads-search")
    st.sidebar.caption(
        f"{len(index.slides)} slides · {len(index.molecular)} molecular samples  \n"
        f"`{cfg.index_dir}`"
    )
    if st.sidebar.button("Reload the index", help="After the index was updated on disk"):
        get_index.clear()
        st.rerun()
    if st.session_state.get("section") not in SECTIONS:
        st.session_state["section"] = "Slide search"
    section = st.sidebar.radio("Section", list(SECTIONS), key="section")
    filters = facets.render(index)
    try:
        SECTIONS[section](index, filters, cfg)
    except Exception as e:  # last resort: a readable message, the app keeps working
        st.error(f"**{section} failed.** {readable(e)}")


main()
