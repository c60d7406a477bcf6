"""Molecular prompting: zero-shot classification of slides by class prototypes (mean embedding
of each class's molecular samples, or of its slides), per-class scores, class sizes, export."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from threads_search.errors import InputError
from ui import display, state
from ui.common import download_csv, guard
from ui.uploads import UploadError

MAX_CLASSES = 50
MIN_LABEL = "Smallest class (samples)"
RESULT = "cl_result"
LABEL_ROLES = ("diagnosis", "descriptive")
SOURCES = {"molecular": "molecular samples", "slide": "slides (leave-one-out)"}
KIND_WORDS = {"both": "RNA and DNA", "rna": "RNA", "dna": "DNA"}


def label_columns(frame: pd.DataFrame) -> list[str]:
    """Columns usable as class labels: 2..MAX_CLASSES distinct non-null values, describing
    the case (``display.role``: not an id, path, technical or bookkeeping column such as
    split, fold, has_*, n_*)."""
    out = []
    for c in frame.columns:
        if display.role(c) not in LABEL_ROLES:
            continue
        n = frame[c].dropna().nunique()
        if 2 <= n <= MAX_CLASSES and (
            frame[c].dtype == bool
            or frame[c].dtype.kind in "OUSbi"
            or isinstance(frame[c].dtype, pd.StringDtype)
        ):
            out.append(c)
    return out


def source_words(protos: str, kind: str) -> str:
    """Which prototypes a classification used, in words."""
    if protos == "molecular":
        return f"{KIND_WORDS[kind]} molecular samples"
    return SOURCES[protos]


def class_table(result: pd.DataFrame) -> pd.DataFrame:
    """One row per class: prototype samples, kept or left out, slides predicted."""
    sizes = result.attrs.get("class_sizes", {})
    excluded = result.attrs.get("excluded_classes", {})
    predicted = result["predicted"].value_counts()
    return pd.DataFrame(
        {
            "class": [str(c) for c in sizes],
            "prototype samples": list(sizes.values()),
            "used": ["no (too few)" if c in excluded else "yes" for c in sizes],
            "slides predicted": [int(predicted.get(c, 0)) for c in sizes],
        }
    )


def _classify(index, filters: dict, form: dict) -> pd.DataFrame:
    if filters["error"]:
        raise UploadError(f"fix the filter first: {filters['error']}")
    try:
        return index.classify(
            form["label"],
            prototypes=form["protos"],
            where=filters["slides"],
            slides=form["slides"] or None,
            min_samples=form["min"],
            kind=None if form["kind"] == "both" else form["kind"],
        )
    except InputError as e:  # in the words of the form, not of the API
        raise UploadError(str(e).replace("min_samples", f"“{MIN_LABEL}”")) from None


def render(index, filters: dict, cfg) -> None:
    st.header("Molecular prompting")
    st.caption(
        "Each class's prototype is the mean embedding of its samples; a slide is assigned "
        "to the most similar prototype (cosine)."
    )
    c1, c2 = st.columns(2)
    protos = c1.radio(
        "Prototypes from",
        list(SOURCES),
        horizontal=True,
        key="cl_proto",
        format_func=SOURCES.get,
        **state.keep("cl_proto", "molecular", list(SOURCES), "index"),
    )
    source = index.molecular if protos == "molecular" else index.slides
    labels = label_columns(source)
    if not labels:
        st.info(f"No label column with 2–{MAX_CLASSES} classes in the {protos} table.")
        return
    start = state.keep("cl_label", labels[0], labels, "index")
    label = c2.selectbox("Label column", labels, key="cl_label", **start)
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox(
        "Molecular kind",
        list(KIND_WORDS),
        key="cl_kind",
        disabled=protos != "molecular",
        **state.keep("cl_kind", "both", list(KIND_WORDS), "index"),
    )
    min_samples = state.number(c2, MIN_LABEL, "cl_min", 5, 1, 1000)
    ids = index.slides["slide_id"].tolist()
    chosen = c3.multiselect(
        "Slides to score (default: all matching the filters)",
        ids,
        key="cl_slides",
        **state.keep("cl_slides", [], ids, "default"),
    )
    state.notes("cl_min")
    form = {
        "protos": protos,
        "label": label,
        "kind": kind if protos == "molecular" else "both",
        "min": min_samples,
        "slides": list(chosen),
        "where": filters.get("slides"),
    }
    if st.button("Classify", type="primary", key="cl_go"):
        state.clear(RESULT)  # an error replaces the last results
        with guard("Classification"), st.spinner("Building prototypes and scoring…"):
            state.save(RESULT, form, result=_classify(index, filters, form))
    res = state.shown(RESULT, form)
    if res is not None:
        show_result(res["result"], source_words(protos, form["kind"]))


def _bars(frame: pd.DataFrame, value: str) -> None:
    """Horizontal bars, one per class (class names read horizontally)."""
    st.bar_chart(frame, x="class", y=value, sort=False, horizontal=True)


def show_result(res: pd.DataFrame, source: str) -> None:
    label = res.attrs.get("label")
    scores = [c for c in res.columns if c.startswith("score_")]
    classes = [c[len("score_") :] for c in scores]
    summary = f"Classified **{len(res)}** slides by **{label}** into {len(classes)} classes"
    if label in res.columns and len(res):
        known = res[res[label].notna()]
        if len(known):
            agree = (known["predicted"].astype(str) == known[label].astype(str)).mean()
            summary += f"; agreement with the slides' own {label}: **{agree:.0%}**"
    st.markdown(summary + ".")
    st.markdown(f"**Class sizes: prototypes from {source}**")
    st.table(class_table(res))
    if not len(res):
        st.info("No slide to score (check the filters).")
        return
    st.dataframe(res, hide_index=True, width="stretch")
    download_csv(res, f"classify_{label}.csv", key="dl_classify")
    ids = res["slide_id"].tolist()
    start = state.keep("cl_chart", ids[0], ids, "index")
    pick = st.selectbox("Per-class scores of slide", ids, key="cl_chart", **start)
    row = res.loc[res["slide_id"] == pick].iloc[0]
    _bars(pd.DataFrame({"class": classes, "score": [row[s] for s in scores]}), "score")
    st.markdown("**Mean score per class over the scored slides**")
    _bars(
        pd.DataFrame({"class": classes, "mean score": res[scores].mean().to_numpy()}),
        "mean score",
    )
