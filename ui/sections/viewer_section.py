"""Side-by-side viewer: two slides in OpenSeadragon over Deep Zoom tiles from the local tile
server (``ui.viewer``), zoomable to full resolution, top-attention patches boxed and numbered.

Each panel is labelled by its role: ``query`` and ``match`` (with its similarity) when the pair
comes from the last slide search, ``query`` and ``hit`` from a region search, else ``slide``;
with the slide's case line (diagnosis-like metadata). Panels opened from a search start linked
(same physical field, µm); the page has the "link panels" box, a scale bar and magnification
readout per panel (``ui/static/viewer.js``).
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from ui import display, images, state
from ui.common import get_tile_server
from ui.sections.slide_search import patch_encoder
from ui.viewer import ViewSlide

HEIGHT = 560  # px of the viewer frame: controls and panels fit a 1280×720 window
SCROLL_TOP = """<script>(function () {
  const d = window.parent.document;
  for (const s of ['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]', 'section.main'])
    { const e = d.querySelector(s); if (e) e.scrollTop = 0; }
  window.parent.scrollTo(0, 0);
})();</script>"""


def _upload(label: str):
    """The session's uploaded query (QuerySlide) when ``label`` names it, else None."""
    res = st.session_state.get("ss_result")
    q = res["query"] if res else None
    return q if q is not None and q.slide_id is None and q.label == label else None


def _options(index) -> dict[str, str | None]:
    """Label → slide path (None when the file is not readable here)."""
    out = {}
    up = st.session_state.get("ss_upload_path")
    res = st.session_state.get("ss_result")
    if res and _upload(res["query"].label) and up and Path(up).exists():
        out[res["query"].label] = up
    for sid, path in zip(index.slides["slide_id"], index.slides["path"], strict=True):
        out[str(sid)] = str(path) if isinstance(path, str) and Path(path).exists() else None
    return out


def slide_mpp(index, label: str, path: str) -> float | None:
    """Level-0 µm/px of a panel's slide: the index's, else the upload's, else its file's (None:
    scale unknown)."""
    slides = index.slides.set_index("slide_id")
    mpp = slides.at[label, "mpp"] if label in slides.index else None
    up = _upload(label)
    return images.resolve_mpp(mpp if up is None else up.mpp, path)


def _marks(index, label: str, n: int, mpp: float | None) -> list[dict]:
    """The ``n`` top-attention patches of a panel's slide as numbered boxes (level-0 px)."""
    up = _upload(label)
    if up is not None:
        att, size = up.attention, up.patch_l0
    elif label in set(index.slides["slide_id"]):
        att, pe = index.attention(label), patch_encoder(index)
        size = images.patch_size_l0(pe.get("patch_size"), pe.get("target_mpp"), mpp, att)
    else:
        return []
    if size <= 0:
        return []
    return [
        {"x": int(r.x), "y": int(r.y), "w": size, "h": size, "label": str(r.rank)}
        for r in images.top_patches(att, n).itertuples()
    ]


def roles(index, left: str, right: str, region: bool = False) -> tuple[list[str], list[str], bool]:
    """(role per side, details per side, from a slide search). ``query``/``match`` only when
    the pair is the last slide search's query and one of its results (details: the
    similarity), else both ``slide`` (``region``: a region search's pair, whose titles say query /
    hit, gets no slide similarity); details end with the slide's case line."""
    res = None if region else st.session_state.get("ss_result")
    sides, extra, searched = ["slide", "slide"], ["", ""], False
    if res:
        q = res["query"]
        hits = res["results"]
        row = hits.loc[hits["slide_id"].astype(str) == right]
        if left == (q.slide_id or q.label) and len(row) and right != left:
            sides, searched = ["query", "match"], True
            extra[1] = f"similarity {float(row['score'].iat[0]):.3f}"
    slides = index.slides.set_index("slide_id", drop=False)
    details = []
    for label, more in zip((left, right), extra, strict=True):
        line = (
            display.case_line(slides.loc[label], display.current()) if label in slides.index else ""
        )
        if _upload(label) is not None:
            line = "uploaded slide"
        details.append(" · ".join(t for t in (more, line) if t))
    return sides, details, searched


def region_focus(index, left: str, right: str, mpps: list[float | None]) -> dict | None:
    """What a region-search hit opened (``vw_focus``), while the viewer still shows its slides:
    per side the level-0 field to open on (``field_um`` wide at that slide's µm/px ``mpps``,
    centred on the box; without µm/px three box widths, said so), the box as a mark and a
    panel title; ``hit``: the hit's similarity when ``vw_focus`` has its ``score``; a caption."""
    f = st.session_state.get("vw_focus")
    if not f or (f["left"][0], f["right"][0]) != (left, right):
        return None
    out = {}
    for side, mpp in zip(("left", "right"), mpps, strict=True):
        label, (x, y, w, h), what = f[side]
        if mpp:
            side_px = f["field_um"] / mpp
            title = f"{what}: {label} ({w * mpp:.0f} µm box, field {f['field_um']:.0f} µm)"
        else:
            side_px = 3 * max(w, h)
            title = f"{what}: {label} ({w} px box, scale unknown)"
        cx, cy = x + w / 2, y + h / 2
        field = {"x": cx - side_px / 2, "y": cy - side_px / 2, "w": side_px, "h": side_px}
        mark = {"x": x, "y": y, "w": w, "h": h, "label": what}
        out[side] = (field, mark, title)
    out["hit"] = f"similarity {f['score']:.3f}" if f.get("score") is not None else ""
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


def _server(cfg):
    """The tile server, or None after a readable error (e.g. its fixed port is taken)."""
    try:
        return get_tile_server(cfg.host, cfg.tile_port)
    except OSError as e:
        st.error(
            f"**The viewer cannot start its tile server** on {cfg.host}:{cfg.tile_port or 'any'}"
            f" ({e.strerror or e}). Start the app with another `--tile-port`."
        )
        return None


def render(index, filters: dict, cfg) -> None:
    components.html(SCROLL_TOP, height=0)  # arriving from a button far down: show the top
    st.header("Side-by-side viewer")
    opts = _options(index)
    labels = list(opts)
    for key, default in (("vw_left", 0), ("vw_right", min(1, len(labels) - 1))):
        if st.session_state.get(key) not in opts:
            st.session_state[key] = labels[default]
    c1, c2, c3, c4 = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
    at = {k: labels.index(st.session_state[k]) for k in ("vw_left", "vw_right")}  # see state.keep
    left = c1.selectbox("Left panel", labels, key="vw_left", index=at["vw_left"])
    right = c2.selectbox("Right panel", labels, key="vw_right", index=at["vw_right"])
    show = c3.toggle("Mark top patches", key="vw_marks", **state.keep("vw_marks", True))
    n = c4.number_input(
        "Patches to mark",
        help="The highest-attention patches of each slide, boxed and numbered by rank.",
        min_value=1,
        max_value=50,
        key="vw_n",
        disabled=not show,
        **state.keep("vw_n", images.N_MARKED),
    )
    missing = [lab for lab in (left, right) if opts[lab] is None]
    if missing:
        st.warning(
            "The slide file of " + ", ".join(missing) + " is not readable from this machine "
            "(the path stored in the index does not exist); the viewer needs the original file."
        )
        return
    server = _server(cfg)
    if server is None:
        return
    mpps = [slide_mpp(index, lab, opts[lab]) for lab in (left, right)]
    focus = region_focus(index, left, right, mpps)
    sides, details, searched = roles(index, left, right, region=focus is not None)
    if focus is not None and focus["hit"]:
        details[1] = " · ".join(t for t in (focus["hit"], details[1]) if t)
    panels = []
    for i, (side, lab) in enumerate((("left", left), ("right", right))):
        mpp = mpps[i]
        marks = _marks(index, lab, int(n), mpp) if show else []
        box, title = None, f"{sides[i]}: {lab}"
        if focus is not None:
            box, mark, title = focus[side]
            marks = [*marks, mark]
        panels.append(ViewSlide(server.register(opts[lab]), title, marks, box, mpp, details[i]))
    url = server.view_url(panels, link=searched or focus is not None)
    embed(url, cfg.host)
    if focus is not None:
        st.caption(focus["caption"])
    st.caption(
        "Scroll or use the + / − buttons to zoom up to full resolution; drag to pan. Scale bar "
        "and magnification-equivalent (20× = 0.5 µm per screen pixel) per panel. "
        f"[Open the viewer in its own tab]({url})"
    )
