"""Molecular prompting: zero-shot classification of slides by class prototypes (mean embedding
of each class's molecular samples, or of its slides), per-class scores, class sizes, export."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.common import ID_COLUMNS, TECH_COLUMNS, download_csv, guard
from ui.uploads import UploadError

MAX_CLASSES = 50


def label_columns(frame: pd.DataFrame) -> list[str]:
    """Columns usable as class labels: 2..MAX_CLASSES distinct non-null values."""
    out = []
    for c in frame.columns:
        if c in ID_COLUMNS or c in TECH_COLUMNS:
            continue
        n = frame[c].dropna().nunique()
        if 2 <= n <= MAX_CLASSES and (
            frame[c].dtype == bool
            or frame[c].dtype.kind in "OUSbi"
            or isinstance(frame[c].dtype, pd.StringDtype)
        ):
            out.append(c)
    return out


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


def render(index, filters: dict, cfg) -> None:
    st.header("Molecular prompting")
    st.caption(
        "Each class's prototype is the mean embedding of its samples; a slide is assigned "
        "to the most similar prototype (cosine)."
    )
    c1, c2 = st.columns(2)
    protos = c1.radio(
        "Prototypes from",
        ["molecular", "slide"],
        horizontal=True,
        key="cl_proto",
        format_func={"molecular": "molecular samples", "slide": "slides (leave-one-out)"}.get,
    )
    source = index.molecular if protos == "molecular" else index.slides
    labels = label_columns(source)
    if not labels:
        st.info(f"No label column with 2–{MAX_CLASSES} classes in the {protos} table.")
        return
    label = c2.selectbox("Label column", labels, key="cl_label")
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox(
        "Molecular kind", ["both", "rna", "dna"], key="cl_kind", disabled=protos != "molecular"
    )
    min_samples = c2.number_input("Smallest class (samples)", 1, 1000, 5, key="cl_min")
    chosen = c3.multiselect(
        "Slides to score (default: all matching the filters)",
        index.slides["slide_id"].tolist(),
        key="cl_slides",
    )
    if st.button("Classify", type="primary", key="cl_go"):
        with guard("Classification"), st.spinner("Building prototypes and scoring…"):
            if filters["error"]:
                raise UploadError(f"fix the filter first: {filters['error']}")
            res = index.classify(
                label,
                prototypes=protos,
                where=filters["slides"],
                slides=chosen or None,
                min_samples=int(min_samples),
                kind=None if kind == "both" or protos != "molecular" else kind,
            )
            st.session_state["cl_result"] = res
    res = st.session_state.get("cl_result")
    if res is None:
        return
    show_result(res)


def show_result(res: pd.DataFrame) -> None:
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
    st.markdown("**Class sizes (prototype samples)**")
    st.table(class_table(res))
    if not len(res):
        st.info("No slide to score (check the filters).")
        return
    st.dataframe(res, hide_index=True, width="stretch")
    download_csv(res, f"classify_{label}.csv", key="dl_classify")
    pick = st.selectbox("Per-class scores of slide", res["slide_id"].tolist(), key="cl_chart")
    row = res.loc[res["slide_id"] == pick].iloc[0]
    chart = pd.DataFrame({"class": classes, "score": [row[s] for s in scores]})
    st.bar_chart(chart, x="class", y="score", sort=False)
    st.markdown("**Mean score per class over the scored slides**")
    st.bar_chart(
        pd.DataFrame({"class": classes, "mean score": res[scores].mean().to_numpy()}),
        x="class",
        y="mean score",
        sort=False,
    )
