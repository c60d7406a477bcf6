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

from ui import display, images, state, uploads
from ui.common import go_to, guard, show_gallery
from ui.uploads import (
    SLIDE_UPLOAD_EXTENSIONS,
    EmbedProgress,
    UploadError,
    UploadStore,
    display_name,
    scrub,
)

SOURCES = ("A slide of the archive", "Upload a slide file")
N_TOP_PATCHES = images.N_MARKED  # the same boxes as the viewer's
QUERY_WIDTH = 400  # px on the page
MAX_K = 200
RESULT = "ss_result"
MPP_LABEL = "µm per pixel (slides that do not record it)"


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
        mpp=row.get("mpp"),
    )


def uploaded_query(index, path: Path, mpp: float | None = None, progress=None):
    """(query vector [E], QuerySlide) of an uploaded slide file; ``mpp`` (µm/px of level 0)
    is used only when the file does not record its resolution. ``progress(stage, done,
    total)`` (e.g. ``uploads.EmbedProgress``) hears the stages: reading, tissue, patches n of
    N, slide. Raises ``UploadError``."""
    from threads_search.features import default_config, encode_slide_file
    from threads_search.models.attention import attention_frame
    from threads_search.wsi import SlideError, open_slide

    report = progress or (lambda stage, done=0, total=1: None)
    name = display_name(path)
    report("reading")
    try:
        with open_slide(path, require_mpp=False) as s:
            width, height = s.dimensions
            file_mpp = s.mpp_info.mpp if s.mpp_info is not None else None
    except SlideError as e:
        raise UploadError(
            f"{name} cannot be read as a slide ({e.reason}): {scrub(e.detail, path)}"
        ) from None
    if file_mpp is None and not mpp:
        raise UploadError(
            f"{name} does not record its resolution: enter its µm per pixel in the form "
            f"(“{MPP_LABEL}”) and search again"
        )
    model = index.model
    pe = model.patch_encoder
    cfg = default_config(pe["name"], pe.get("patch_size"), pe.get("target_mpp"))
    override = None if file_mpp is not None else float(mpp)
    try:
        feats, coords = encode_slide_file(
            path, pe["name"], config=cfg, mpp=override, progress=report
        )
    except SlideError as e:
        raise UploadError(_slide_refusal(name, e, path)) from None
    except (OSError, ValueError, RuntimeError) as e:  # e.g. a truncated tile deep in the file
        raise UploadError(f"{name} could not be read to the end: {scrub(e, path)}") from None
    report("slide")
    emb, att = model.embed_slide(feats, return_attention=True)
    frame = attention_frame(coords, att)  # as the index stores it (x, y, score, score_h<k>)
    q = images.QuerySlide(
        label=f"uploaded: {name}",
        slide_id=None,
        path=str(path),
        width=width,
        height=height,
        attention=frame if "score" in frame else None,
        patch_l0=images.patch_size_l0(
            pe.get("patch_size"), pe.get("target_mpp"), file_mpp or override, frame
        ),
        thumb=images.slide_thumbnail(path),
        mpp=file_mpp or override,
    )
    return emb, q


def _slide_refusal(name: str, e, path: Path) -> str:
    """A web user's reason for a ``SlideError`` (no command-line options in it)."""
    detail = scrub(e.detail, path)
    if e.reason == "too-coarse":
        detail = detail.split(" (limit --max-upsample")[0]
        return f"{name} is too coarse for the model ({detail}): upload a scan at a higher magnification"
    return f"{name} cannot be used ({e.reason}): {detail}"


def _forget_upload() -> None:
    """Delete the session's uploaded query slide (and stop serving it)."""
    path = st.session_state.pop("ss_upload_path", None)
    if path:
        from ui.common import get_tile_server
        from ui.settings import settings

        cfg = settings()
        get_tile_server(cfg.host, cfg.tile_port).unregister(path)
        upload_store().delete(path)
    res = st.session_state.get(RESULT)
    if res and res["query"].slide_id is None:
        state.clear(RESULT)


def run(index, filters: dict, cfg, form: dict, upload) -> None:
    """Search with the values of ``form`` (source, slide, k, exclude, mpp) and store the result
    with them; an uploaded slide is encoded first, its stages on a progress bar."""
    if filters["error"]:
        raise UploadError(f"fix the filter first: {filters['error']}")
    k = form["k"]
    if form["source"] == SOURCES[0]:
        slide_id = form["slide"]
        q = indexed_query(index, slide_id)
        has_patient = index.slides.set_index("slide_id").loc[slide_id].get("patient_id")
        res = index.search_slides(
            slide_id,
            k=k,
            where=filters["slides"],
            exclude_same_patient=bool(form["exclude"] and pd.notna(has_patient)),
        )
    else:
        if upload is None:
            raise UploadError("choose a slide file to upload first")
        store = upload_store()
        path = store.save(
            upload.name, upload.getvalue(), SLIDE_UPLOAD_EXTENSIONS, cfg.max_upload_mb
        )
        bar = st.progress(0.0, text="Reading the slide…")
        progress = EmbedProgress(lambda f, text: bar.progress(min(1.0, f), text=text))
        try:
            vec, q = uploaded_query(index, path, form["mpp"], progress)
            progress("search")
            res = index.search_slides(vec, k=k, where=filters["slides"], exclude_same_patient=False)
        except BaseException:
            store.delete(path)
            raise
        finally:
            bar.empty()
        _forget_upload()
        st.session_state["ss_upload_path"] = str(path)
    state.save(RESULT, form, query=q, results=res, where=filters["slides"])


def _open_viewer(left: str, right: str) -> None:
    st.session_state["vw_left"], st.session_state["vw_right"] = left, right
    go_to("Viewer")


@st.cache_data(show_spinner="Reading every slide's attention…", max_entries=4)
def index_attention_scale(index_dir: str, generation: str) -> tuple[float, float]:
    """(0, highest attention score over every slide of the index): the shared colour scale.
    ``generation`` keys the cache to the index's current contents."""
    from ui.common import get_index

    index = get_index(index_dir)
    return images.attention_scale(index.attention(s) for s in index.slides["slide_id"])


def show_query(q: images.QuerySlide, index=None) -> None:
    c1, c2 = st.columns([1, 1])
    with c1:
        st.subheader(f"Query: {q.label}")
        if q.thumb is None:
            st.info("No thumbnail for this slide.")
        else:
            has_att = q.attention is not None and q.patch_l0 > 0
            t1, t2 = st.columns(2)
            on = t1.toggle("Attention heatmap", value=True, key="ss_heat", disabled=not has_att)
            shared = t2.toggle(
                "Same colour scale for all slides",
                value=False,
                key="ss_heat_shared",
                disabled=not (on and has_att and index is not None),
                help="Colours on one scale (0 to the highest attention in the index) instead "
                "of stretched over this slide's own range, so slides can be compared.",
            )
            scale = None
            if on and has_att and shared and index is not None:
                scale = index_attention_scale(str(index.root.resolve()), str(index.generation_dir))
            if on and has_att:
                st.image(images.heatmap(q, n_top=N_TOP_PATCHES, scale=scale), width=QUERY_WIDTH)
                st.caption(images.heatmap_caption(q, N_TOP_PATCHES, scale))
            else:
                st.image(images.scaled_thumbnail(q), width=QUERY_WIDTH)
    with c2:
        st.subheader("Top-attention patches")
        gallery = images.patch_gallery(q, N_TOP_PATCHES)
        if not gallery:
            st.caption("Not available (no attention or slide file not readable here).")
        else:
            st.caption(images.field_caption(q))
        cols = st.columns(3)
        for i, (img, cap) in enumerate(gallery):
            cols[i % 3].image(img, caption=cap, width="stretch")


def _form(index, cfg) -> tuple[dict, object, str | None]:
    """Draw the query form; (its values, the uploaded file or None, why that file is refused
    or None). Values are kept while another section is shown."""
    c1, c2, c3, c4 = st.columns([2, 4, 1, 2], vertical_alignment="bottom")
    start = state.keep("ss_source", SOURCES[0], SOURCES, "index")
    source = c1.radio("Query", SOURCES, key="ss_source", **start)
    form: dict = {"source": source}
    upload, refused = None, None
    if source == SOURCES[0]:
        ids = index.slides["slide_id"].tolist()
        start = state.keep("ss_slide", ids[0] if ids else None, ids, "index")
        form["slide"] = c2.selectbox("Query slide", ids, key="ss_slide", **start)
    else:
        upload = c2.file_uploader(  # any file: a refused one replaces the last, with a reason
            f"Slide file ({', '.join(SLIDE_UPLOAD_EXTENSIONS)}; at most {cfg.max_upload_mb} MiB)",
            key="ss_upload",
            max_upload_size=cfg.max_upload_mb,
            help="Kept in a private temporary folder while it is this session's query (for the "
            "viewer); deleted when replaced, when you delete it, or when the session ends.",
        )
        form["file"] = state.file_key(upload)
        refused = uploads.refusal(upload, SLIDE_UPLOAD_EXTENSIONS)
    form["k"] = state.number(c3, "Results (k)", "ss_k", 10, 1, MAX_K)
    exclude = c4.checkbox(
        "Exclude same patient",
        key="ss_exclude",
        **state.keep("ss_exclude", True),
        disabled=source != SOURCES[0],
        help="Leave out every slide of the query's patient (an uploaded "
        "slide has no known patient).",
    )
    if source == SOURCES[0]:
        form["exclude"] = exclude
    else:
        form["mpp"] = state.number(
            st,
            MPP_LABEL,
            "ss_mpp",
            None,
            0.05,
            20.0,
            empty_ok=True,
            step=0.05,
            format="%.3f",
            help="Used only for a slide file that does not record its resolution; about 0.25 "
            "for a 40x and 0.5 for a 20x scan.",
        )
    state.notes("ss_k", "ss_mpp")
    if refused:
        st.error(refused)
    return form, upload, refused


def render(index, filters: dict, cfg) -> None:
    st.header("Slide search")
    form, upload, refused = _form(index, cfg)
    form["where"] = filters.get("slides")
    if st.button("Search", type="primary", key="ss_go"):
        state.clear(RESULT)  # an error replaces the last results
        if not refused:  # a refused file: its reason is shown above
            with guard("Slide search"), st.spinner("Searching…"):
                run(index, filters, cfg, form, upload)
    if form["source"] == SOURCES[1] and st.session_state.get("ss_upload_path"):
        st.button("Delete the uploaded slide now", on_click=_forget_upload, key="ss_forget")
    res = state.shown(RESULT, form)
    if not res:
        return
    show_query(res["query"], index)
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
    query = display.query_row(index, res["query"].slide_id)
    show_gallery(res["results"], "slide_search", per_row=5, query=query)
