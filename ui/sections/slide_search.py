"""Slide search: a slide of the archive or an uploaded slide file → the most similar slides.

The query is shown with its attention heatmap (toggle) and top-attention patches; results as a
gallery (rank, similarity, key metadata), a table and a CSV download. An uploaded slide is
encoded with the index's model (patch features with the model's patch encoder, patch size and
µm/px, then the slide encoder with its attention) and searched by vector.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from ui import images
from ui.common import go_to, guard, show_gallery
from ui.uploads import SLIDE_UPLOAD_EXTENSIONS, UploadError, UploadStore, display_name, scrub

SOURCES = ("A slide of the archive", "Upload a slide file")
N_TOP_PATCHES = 6
QUERY_WIDTH = 400  # px on the page


def upload_store() -> UploadStore:
    """This session's private upload folder."""
    if "uploads" not in st.session_state:
        st.session_state["uploads"] = UploadStore()
    return st.session_state["uploads"]


def patch_encoder(index) -> dict:
    return dict((index.info().get("model") or {}).get("patch_encoder") or {})


def indexed_query(index, slide_id: str) -> images.QuerySlide:
    """The QuerySlide of an indexed slide (its thumbnail from the slide file when readable)."""
    slides = index.slides
    row = slides.loc[slides["slide_id"] == slide_id].iloc[0]
    path = row.get("path")
    path = str(path) if isinstance(path, str) and path and Path(path).exists() else None
    att = index.attention(slide_id)
    pe = patch_encoder(index)
    thumb = None
    if path:
        try:
            thumb = images.slide_thumbnail(path)
        except Exception:  # unreadable now: fall back to the index's thumbnail
            path = None
    if thumb is None and index.thumbnail(slide_id):
        thumb = Image.open(index.thumbnail(slide_id)).convert("RGB")
    return images.QuerySlide(
        label=slide_id,
        slide_id=slide_id,
        path=path,
        width=int(row.get("width") or 0) or (thumb.width if thumb else 1),
        height=int(row.get("height") or 0) or (thumb.height if thumb else 1),
        attention=att,
        patch_l0=images.patch_size_l0(
            pe.get("patch_size"), pe.get("target_mpp"), row.get("mpp"), att
        ),
        thumb=thumb,
    )


def uploaded_query(index, path: Path):
    """(query vector [E], QuerySlide) of an uploaded slide file. Raises ``UploadError``."""
    from threads_search.features import default_config, encode_slide_file
    from threads_search.models.attention import attention_frame
    from threads_search.wsi import SlideError, open_slide

    name = display_name(path)
    try:
        with open_slide(path, require_mpp=False) as s:
            width, height = s.dimensions
            mpp = s.mpp_info.mpp if s.mpp_info is not None else None
    except SlideError as e:
        raise UploadError(
            f"{name} cannot be read as a slide ({e.reason}): {scrub(e.detail, path)}"
        ) from None
    model = index.model
    pe = model.patch_encoder
    cfg = default_config(pe["name"], pe.get("patch_size"), pe.get("target_mpp"))
    try:
        feats, coords = encode_slide_file(path, pe["name"], config=cfg)
    except SlideError as e:
        raise UploadError(f"{name} cannot be used ({e.reason}): {scrub(e.detail, path)}") from None
    except (OSError, ValueError, RuntimeError) as e:  # e.g. a truncated tile deep in the file
        raise UploadError(f"{name} could not be read to the end: {scrub(e, path)}") from None
    emb, att = model.embed_slide(feats, return_attention=True)
    frame = attention_frame(coords, att)  # as the index stores it (x, y, score, score_h<k>)
    q = images.QuerySlide(
        label=f"uploaded: {name}",
        slide_id=None,
        path=str(path),
        width=width,
        height=height,
        attention=frame if "score" in frame else None,
        patch_l0=images.patch_size_l0(pe.get("patch_size"), pe.get("target_mpp"), mpp, frame),
        thumb=images.slide_thumbnail(path),
    )
    return emb, q


def _forget_upload() -> None:
    """Delete the session's uploaded query slide (and stop serving it)."""
    path = st.session_state.pop("ss_upload_path", None)
    if path:
        from ui.common import get_tile_server, settings

        cfg = settings()
        get_tile_server(cfg.host, cfg.tile_port).unregister(path)
        upload_store().delete(path)
    res = st.session_state.get("ss_result")
    if res and res["query"].slide_id is None:
        st.session_state.pop("ss_result", None)


def run(index, filters: dict, cfg, source: str, slide_id, upload, k: int, exclude: bool) -> None:
    if filters["error"]:
        raise UploadError(f"fix the filter first: {filters['error']}")
    if source == SOURCES[0]:
        q = indexed_query(index, slide_id)
        has_patient = index.slides.set_index("slide_id").loc[slide_id].get("patient_id")
        res = index.search_slides(
            slide_id,
            k=k,
            where=filters["slides"],
            exclude_same_patient=bool(exclude and pd.notna(has_patient)),
        )
    else:
        if upload is None:
            raise UploadError("choose a slide file to upload first")
        store = upload_store()
        path = store.save(
            upload.name, upload.getvalue(), SLIDE_UPLOAD_EXTENSIONS, cfg.max_upload_mb
        )
        try:
            vec, q = uploaded_query(index, path)
            res = index.search_slides(vec, k=k, where=filters["slides"], exclude_same_patient=False)
        except BaseException:
            store.delete(path)
            raise
        _forget_upload()
        st.session_state["ss_upload_path"] = str(path)
    st.session_state["ss_result"] = {"query": q, "results": res, "where": filters["slides"]}


def _open_viewer(left: str, right: str) -> None:
    st.session_state["vw_left"], st.session_state["vw_right"] = left, right
    go_to("Viewer")


def show_query(q: images.QuerySlide) -> None:
    c1, c2 = st.columns([1, 1])
    with c1:
        st.subheader(f"Query: {q.label}")
        if q.thumb is None:
            st.info("No thumbnail for this slide.")
        else:
            has_att = q.attention is not None and q.patch_l0 > 0
            on = st.toggle("Attention heatmap", value=True, key="ss_heat", disabled=not has_att)
            img = images.heatmap(q, n_top=N_TOP_PATCHES) if on and has_att else q.thumb
            st.image(img, width=QUERY_WIDTH)
            if on and has_att:
                st.caption(
                    f"Attention per patch (blue low → red high); boxes: the "
                    f"{N_TOP_PATCHES} top-attention patches."
                )
    with c2:
        st.subheader("Top-attention patches")
        gallery = images.patch_gallery(q, N_TOP_PATCHES)
        if not gallery:
            st.caption("Not available (no attention or slide file not readable here).")
        cols = st.columns(3)
        for i, (img, cap) in enumerate(gallery):
            cols[i % 3].image(img, caption=cap, width="stretch")


def render(index, filters: dict, cfg) -> None:
    st.header("Slide search")
    c1, c2, c3, c4 = st.columns([2, 4, 1, 2], vertical_alignment="bottom")
    source = c1.radio("Query", SOURCES, key="ss_source")
    slide_id, upload = None, None
    if source == SOURCES[0]:
        slide_id = c2.selectbox("Query slide", index.slides["slide_id"].tolist(), key="ss_slide")
    else:
        upload = c2.file_uploader(
            f"Slide file ({', '.join(SLIDE_UPLOAD_EXTENSIONS)}; at most {cfg.max_upload_mb} MiB)",
            type=[e[1:] for e in SLIDE_UPLOAD_EXTENSIONS],
            key="ss_upload",
            max_upload_size=cfg.max_upload_mb,
            help="Kept in a private temporary folder while it is this session's query (for the "
            "viewer); deleted when replaced, when you delete it, or when the session ends.",
        )
    k = c3.number_input("Results (k)", min_value=1, max_value=200, value=10, key="ss_k")
    exclude = c4.checkbox(
        "Exclude same patient",
        value=True,
        key="ss_exclude",
        disabled=source != SOURCES[0],
        help="Leave out every slide of the query's patient (an uploaded "
        "slide has no known patient).",
    )
    if st.button("Search", type="primary", key="ss_go"):
        with guard("Slide search"), st.spinner("Searching… (an uploaded slide is encoded first)"):
            run(index, filters, cfg, source, slide_id, upload, int(k), exclude)
    if source == SOURCES[1] and st.session_state.get("ss_upload_path"):
        st.button("Delete the uploaded slide now", on_click=_forget_upload, key="ss_forget")
    res = st.session_state.get("ss_result")
    if not res:
        return
    show_query(res["query"])
    st.subheader("Most similar slides")
    if len(res["results"]):
        q = res["query"]
        left = q.slide_id or q.label
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        match = c1.selectbox(
            "Match to compare with the query", res["results"]["slide_id"].tolist(), key="ss_match"
        )
        c2.button("Open side by side", key="ss_view", on_click=_open_viewer, args=(left, match))
    if res["where"]:
        st.caption(f"Filter: `{res['where']}`")
    show_gallery(res["results"], "slide_search", per_row=5)
