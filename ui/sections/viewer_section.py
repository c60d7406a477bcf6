"""Side-by-side viewer: two slides in OpenSeadragon over Deep Zoom tiles from the local tile
server (``ui.viewer``), zoomable to full resolution, top-attention patches boxed and numbered."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from ui import images
from ui.common import get_tile_server
from ui.sections.slide_search import indexed_query
from ui.viewer import ViewSlide

HEIGHT = 600


def _options(index) -> dict[str, str | None]:
    """Label → slide path (None when the file is not readable here)."""
    out = {}
    res = st.session_state.get("ss_result")
    up = st.session_state.get("ss_upload_path")
    if res and res["query"].slide_id is None and up and Path(up).exists():
        out[res["query"].label] = up
    for sid, path in zip(index.slides["slide_id"], index.slides["path"], strict=True):
        out[str(sid)] = str(path) if isinstance(path, str) and Path(path).exists() else None
    return out


def _marks(index, label: str, n: int) -> list[dict]:
    res = st.session_state.get("ss_result")
    if res and res["query"].label == label and res["query"].slide_id is None:
        q = res["query"]
    else:
        q = indexed_query(index, label)
    if q.patch_l0 <= 0:
        return []
    size = q.patch_l0
    return [
        {"x": int(r.x), "y": int(r.y), "w": size, "h": size, "label": str(r.rank)}
        for r in images.top_patches(q.attention, n).itertuples()
    ]


def region_focus(index, left: str, right: str) -> dict | None:
    """What a region-search hit opened (``vw_focus``), while the viewer still shows its slides:
    per side the level-0 field to open on (``field_um`` wide at that slide's µm/px, centred on
    the box), the box as a mark and a panel title; and a caption."""
    f = st.session_state.get("vw_focus")
    if not f or (f["left"][0], f["right"][0]) != (left, right):
        return None
    slides = index.slides.set_index("slide_id")
    out = {}
    for side in ("left", "right"):
        label, (x, y, w, h), what = f[side]
        mpp = float(slides.at[label, "mpp"]) if label in slides.index else 0.5
        side_px = f["field_um"] / mpp
        cx, cy = x + w / 2, y + h / 2
        field = {"x": cx - side_px / 2, "y": cy - side_px / 2, "w": side_px, "h": side_px}
        mark = {"x": x, "y": y, "w": w, "h": h, "label": what}
        title = f"{what}: {label} ({w * mpp:.0f} µm box, field {f['field_um']:.0f} µm)"
        out[side] = (field, mark, title)
    out["caption"] = (
        f"Both panels open on a field {f['field_um']:.0f} µm wide around the boxed regions "
        "(the same physical scale, whatever each scan's µm/px)."
    )
    return out


def embed(url: str, host: str) -> None:
    """Show the viewer page. A wildcard bind address (0.0.0.0) is reached through the host name
    the browser used for the app; otherwise the URL is used as is."""
    if host in ("", "0.0.0.0", "::"):
        path = url.split("/", 3)[3]
        port = url.rsplit(":", 1)[1].split("/", 1)[0]
        components.html(
            "<iframe id='v' style='width:100%;height:" + str(HEIGHT - 10) + "px;border:0'></iframe>"
            "<script>const h=(window.parent||window).location.hostname||'127.0.0.1';"
            f"document.getElementById('v').src='http://'+h+':{port}/'+{json.dumps(path)};"
            "</script>",
            height=HEIGHT,
        )
    else:
        st.iframe(url, height=HEIGHT)


def render(index, filters: dict, cfg) -> None:
    st.header("Side-by-side viewer")
    opts = _options(index)
    labels = list(opts)
    for key, default in (("vw_left", 0), ("vw_right", min(1, len(labels) - 1))):
        if st.session_state.get(key) not in opts:
            st.session_state[key] = labels[default]
    c1, c2 = st.columns(2)
    left = c1.selectbox("Left (query)", labels, key="vw_left")
    right = c2.selectbox("Right (match)", labels, key="vw_right")
    c1, c2 = st.columns(2)
    show = c1.toggle("Mark top-attention patches", value=True, key="vw_marks")
    n = c2.number_input(
        "Patches to mark", min_value=1, max_value=50, value=8, key="vw_n", disabled=not show
    )
    missing = [lab for lab in (left, right) if opts[lab] is None]
    if missing:
        st.warning(
            "The slide file of " + ", ".join(missing) + " is not readable from this machine "
            "(the path stored in the index does not exist); the viewer needs the original file."
        )
        return
    server = get_tile_server(cfg.host, cfg.tile_port)
    focus = region_focus(index, left, right)
    panels = []
    for side, lab in (("left", left), ("right", right)):
        marks = _marks(index, lab, int(n)) if show else []
        box, title = None, f"{'query' if side == 'left' else 'match'}: {lab}"
        if focus is not None:
            box, mark, title = focus[side]
            marks = [*marks, mark]
        panels.append(ViewSlide(server.register(opts[lab]), title, marks, box))
    url = server.view_url(panels)
    embed(url, cfg.host)
    if focus is not None:
        st.caption(focus["caption"])
    st.caption(
        f"Scroll or use the + / − buttons to zoom up to full resolution; drag to pan. "
        f"[Open the viewer in its own tab]({url})"
    )
