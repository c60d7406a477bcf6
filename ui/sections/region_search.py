"""Region search: a region of an archive slide, or a photo of a field → the most similar tissue
in every slide of the archive (``Index.search_regions``).

A region is a box in level-0 px on the query slide (it starts on the slide's top-attention
patch), shown on the slide's thumbnail with its size in µm; a photo is read with the µm per
pixel the user gives. Hits: a gallery of crops (1 µm/px) with similarity, slide and key
metadata, or the slides ranked by their hits; a hit opens the side-by-side viewer on the query
region and the hit, both panels showing the same field width in µm.
"""

from __future__ import annotations

import io

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw, UnidentifiedImageError

from ui import display, images, state, uploads
from ui.common import go_to, guard
from ui.uploads import UploadError

SOURCES = ("A region of an archive slide", "Upload a photo of a field")
PHOTO_TYPES = ("png", "jpg", "jpeg")
FIELD_FACTOR = 3  # the viewer shows a field this many times the query region's width
PREVIEW_WIDTH = 360
MAX_K = 100
RESULT = "rs_result"


def has_regions(index) -> bool:
    return bool(index.info().get("regions"))


def _slide_row(index, slide_id: str):
    slides = index.slides
    return slides.loc[slides["slide_id"] == slide_id].iloc[0]


def default_box(index, slide_id: str) -> tuple[int, int, int, int]:
    """Two patches square around the slide's top-attention patch (else its first patch)."""
    reg = index.regions
    rows = reg.rows_of(slide_id)
    size = int(reg.table["size_px"].iat[rows[0]]) if len(rows) else 512
    att = index.attention(slide_id)
    top = images.top_patches(att, 1)
    if len(top):
        x, y = int(top["x"].iat[0]), int(top["y"].iat[0])
    elif len(rows):
        x, y = int(reg.table["x"].iat[rows[0]]), int(reg.table["y"].iat[rows[0]])
    else:
        x, y = 0, 0
    return max(0, x - size // 2), max(0, y - size // 2), 2 * size, 2 * size


def preview(index, slide_id: str, box) -> Image.Image | None:
    """The slide's thumbnail with ``box`` (level-0 px) drawn."""
    row = _slide_row(index, slide_id)
    path = row.get("path")
    thumb = None
    try:
        thumb = images.slide_thumbnail(path) if isinstance(path, str) else None
    except Exception:  # unreadable here: the index's thumbnail
        thumb = None
    if thumb is None and index.thumbnail(slide_id):
        thumb = Image.open(index.thumbnail(slide_id)).convert("RGB")
    if thumb is None:
        return None
    sx = thumb.width / max(1, int(row.get("width") or thumb.width))
    sy = thumb.height / max(1, int(row.get("height") or thumb.height))
    x, y, w, h = box
    img = thumb.copy()
    ImageDraw.Draw(img).rectangle(
        [x * sx, y * sy, (x + w) * sx, (y + h) * sy], outline=(0, 229, 255), width=3
    )
    return img


def read_photo(upload, max_mb: int) -> np.ndarray:
    """RGB uint8 of an uploaded photo; ``UploadError`` saying why not."""
    data = upload.getvalue()
    if len(data) > max_mb * 2**20:
        raise UploadError(f"{upload.name} is larger than {max_mb} MiB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise UploadError(
            f"{upload.name} is not a readable image: upload a PNG or JPEG photo of a field"
        ) from None


def _run(index, filters, query, form: dict, label, where_from) -> None:
    """Search with the values of ``form`` (k, cap, by_slide, mpp) and keep the results with
    them and what the viewer needs: ``where_from`` = (query slide or None, box or None, field
    width in µm)."""
    if filters["error"]:
        raise UploadError(f"fix the filter first: {filters['error']}")
    res = index.search_regions(
        query,
        k=form["k"],
        where=filters["slides"],
        per_slide=form["cap"] or None,
        aggregate="slide" if form["by_slide"] else None,
        image_mpp=form.get("mpp"),
    )
    qslide, box, field_um = where_from
    state.save(
        RESULT,
        form,
        results=res,
        label=label,
        slides=form["by_slide"],
        query_slide=qslide,
        box=box,
        field_um=field_um,
    )


def _open_viewer(query_slide, box, hit: dict, field_um: float) -> None:
    """The viewer on the query region (left; the hit's slide when the query was a photo) and
    the hit (right), both panels showing a field ``field_um`` µm wide centred on the boxes."""
    hit_box = (hit["x"], hit["y"], hit["size"], hit["size"])
    left = query_slide or hit["slide_id"]
    st.session_state["vw_left"], st.session_state["vw_right"] = left, hit["slide_id"]
    st.session_state["vw_marks"] = False  # the query and hit boxes only
    st.session_state["vw_focus"] = {
        "left": (left, tuple(box) if query_slide else hit_box, "query" if query_slide else "hit"),
        "right": (hit["slide_id"], hit_box, "hit"),
        "field_um": float(field_um),
        "score": hit.get("score"),
    }
    go_to("Viewer")


def _gallery(index, res: dict, per_row: int = 5) -> None:
    out = res["results"]
    if out.empty:
        st.info("No region matches (check the filters).")
        return
    cfg = display.current()
    by_slide = res["slides"]
    for start in range(0, len(out), per_row):
        cols = st.columns(per_row)
        for col, r in zip(cols, out.iloc[start : start + per_row].itertuples(), strict=False):
            with col:
                pic = None if by_slide else getattr(r, "crop", None)
                if pic is None:
                    pic = index.thumbnail(r.slide_id)
                if pic:
                    st.image(pic, width="stretch")
                lines = [f"**#{r.rank} {r.slide_id}**", f"similarity {r.score:.3f}"]
                if by_slide:
                    lines.append(f"{r.n_hits} matching patches")
                else:
                    um = r.size_um / r.size_px  # µm per level-0 px of the hit's slide
                    lines.append(f"field {r.size_um:.0f} µm at ({r.x * um:.0f}, {r.y * um:.0f}) µm")
                lines += display.caption_lines(r._asdict(), cfg)
                st.markdown("  \n".join(lines))


def render(index, filters: dict, cfg) -> None:
    st.header("Region search")
    if not has_regions(index):
        st.info(f"This index has no region index: {index.info().get('regions_missing')}.")
        return
    start = state.keep("rs_source", SOURCES[0], SOURCES, "index")
    source = st.radio("Query", SOURCES, key="rs_source", horizontal=True, **start)
    form: dict = {"source": source}
    query, label, where_from, refused = None, None, None, None
    if source == SOURCES[0]:
        ids = index.slides["slide_id"].tolist()
        start = state.keep("rs_slide", ids[0] if ids else None, ids, "index")
        qslide = st.selectbox("Query slide", ids, key="rs_slide", **start)
        row = _slide_row(index, qslide)
        keys = ("rs_x", "rs_y", "rs_w", "rs_h")
        if st.session_state.get("rs_box_of") != qslide:  # a new slide: its own default box
            for k, v in zip(keys, default_box(index, qslide), strict=True):
                st.session_state[k] = st.session_state[state.KEPT + k] = v
            st.session_state["rs_box_of"] = qslide
        width, height = int(row.get("width") or 10**6), int(row.get("height") or 10**6)
        c = st.columns(4)
        x = state.number(c[0], "x (level-0 px)", "rs_x", 0, 0, width - 1)
        y = state.number(c[1], "y (level-0 px)", "rs_y", 0, 0, height - 1)
        w = state.number(c[2], "width (px)", "rs_w", 512, 1, width)
        h = state.number(c[3], "height (px)", "rs_h", 512, 1, height)
        state.notes(*keys)
        box = (int(x), int(y), int(w), int(h))
        form.update(slide=qslide, box=box)
        mpp = row.get("mpp")
        img = preview(index, qslide, box)
        if img is not None:
            st.image(img, width=PREVIEW_WIDTH)
        size = f"{w * mpp:.0f} × {h * mpp:.0f} µm" if mpp else f"{w} × {h} px"
        st.caption(f"Query region (cyan box): {size} at level-0 ({x}, {y}) of {qslide}.")
        query, label = (qslide, box), f"{qslide} ({size})"
        where_from = (qslide, box, max(w, h) * (mpp or 0.5))
    else:
        upload = st.file_uploader(  # any file: a refused one replaces the last, with a reason
            f"Photo of a field ({', '.join(PHOTO_TYPES)}; at most {cfg.max_upload_mb} MiB)",
            key="rs_upload",
        )
        form["mpp"] = state.number(
            st,
            "µm per pixel of the photo",
            "rs_mpp",
            0.5,
            0.05,
            20.0,
            step=0.05,
            format="%.3f",
            help="About 0.25 for a 40x and 0.5 for a 20x objective on a microscope camera "
            "(check your camera's calibration). Tissue is compared at the same physical scale.",
        )
        state.notes("rs_mpp")
        form["file"] = state.file_key(upload)
        refused = uploads.refusal(upload, tuple(f".{t}" for t in PHOTO_TYPES))
        if refused:
            st.error(refused)
        elif upload is not None:
            query, label = upload, f"photo {upload.name}"
    c = st.columns([1, 1, 2], vertical_alignment="bottom")
    form["k"] = state.number(c[0], "Results (k)", "rs_k", 20, 1, MAX_K)
    form["cap"] = state.number(c[1], "At most per slide (0: no cap)", "rs_cap", 3, 0, MAX_K)
    start = state.keep("rs_by_slide", False)
    form["by_slide"] = c[2].toggle("Rank slides instead of regions", key="rs_by_slide", **start)
    form["where"] = filters.get("slides")
    state.notes("rs_k", "rs_cap")
    if st.button("Search regions", type="primary", key="rs_go"):
        state.clear(RESULT)  # an error replaces the last results
        if not refused:  # a refused file: its reason is shown above
            with guard("Region search"), st.spinner("Searching every indexed patch…"):
                if query is None:
                    raise UploadError("choose a photo to upload first")
                if source == SOURCES[1]:
                    query = read_photo(query, cfg.max_upload_mb)
                    where_from = (None, None, max(query.shape[:2]) * float(form["mpp"]))
                _run(index, filters, query, form, label, where_from)
    res = state.shown(RESULT, form)
    if not res:
        return
    st.subheader(f"Most similar {'slides' if res['slides'] else 'regions'} to {res['label']}")
    out = res["results"]
    if len(out) and not res["slides"]:
        c = st.columns([3, 1], vertical_alignment="bottom")
        pick = c[0].selectbox("Hit to compare with the query", out["rank"].tolist(), key="rs_pick")
        hit = out.loc[out["rank"] == pick].iloc[0]
        hit = {
            "slide_id": str(hit["slide_id"]),
            "x": int(hit["x"]),
            "y": int(hit["y"]),
            "size": int(hit["size_px"]),
            "score": float(hit["score"]),
        }
        c[1].button(
            "Open side by side",
            key="rs_view",
            on_click=_open_viewer,
            args=(res["query_slide"], res["box"], hit, res["field_um"] * FIELD_FACTOR),
        )
    _gallery(index, res)
