"""Index info: model, encoders, counts, FAISS types and measured recall, build date, how
visible a batch (site, scanner) is in the slide embeddings beside chosen labels, and the
metadata columns with their labels and where the UI shows them (``ui.display``)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import display
from ui.common import guard


def faiss_table(info: dict) -> pd.DataFrame:
    rows = []
    for name, f in (info.get("faiss") or {}).items():
        rows.append(
            {
                "table": name,
                "FAISS type": f.get("type"),
                "params": ", ".join(f"{k}={v}" for k, v in (f.get("params") or {}).items()) or "—",
                "measured recall": f.get("recall_at_k"),
                "at k": f.get("k"),
                "target recall": f.get("target_recall"),
                "memory (MiB)": round((f.get("memory_bytes") or 0) / 2**20, 2),
            }
        )
    return pd.DataFrame(rows)


def batch_table(report: dict) -> pd.DataFrame:
    """One row per column of a ``batch_effects`` report (batch first)."""
    from threads_search.eval.batch_effects import column_note

    rows = []
    for r in report["columns"].values():
        note = column_note(r)
        rows.append(
            {
                "column": r["column"],
                "role": r["role"],
                "slides": r["n_used"],
                "probe bal. acc.": r["probe_balanced_accuracy"],
                "probe chance": r["probe_chance"],
                "kNN same share": r["knn_same_share"],
                "kNN chance": r["knn_chance"],
                "lift": r["knn_lift"],
                "note": note or "—",
            }
        )
    return pd.DataFrame(rows)


@st.cache_data(show_spinner="Measuring batch effects…", max_entries=64)
def _report(_index, generation: str, column: str, labels: tuple[str, ...]) -> dict:
    """The index's batch-effect report, once per generation and choice of columns."""
    return _index.batch_effects(column, list(labels))


def _batch_effects(index) -> None:
    from threads_search.query.batch import TSS_COLUMN, default_column

    st.markdown("**Batch effects**")
    slides = index.slides
    cfg = display.current()
    default = default_column(slides) if len(slides) else None
    if default is None:
        st.caption(
            "No `site` column (nor TCGA-shaped slide ids): choose a batch column to measure "
            "how well the embeddings predict it."
        )
    options = display.default_columns(slides.columns)  # diagnosis-like first, no paths
    if default == TSS_COLUMN:
        options = [TSS_COLUMN, *options]
    c1, c2 = st.columns(2)
    column = c1.selectbox(
        "Batch column",
        options,
        index=options.index(default) if default in options else None,
        key="bx_column",
        format_func=lambda c: display.label(c, cfg),
        help="Hospital site, scanner, lab: something the search should not find slides by.",
    )
    labels = c2.multiselect(
        "Label columns",
        [c for c in options if c != column],
        key="bx_labels",
        format_func=lambda c: display.label(c, cfg),
        help="What the embeddings should encode (e.g. subtype), for comparison.",
    )
    if column is None:
        return
    with guard("Measuring batch effects"):
        report = _report(index, str(index.generation_dir), column, tuple(labels))
        table = batch_table(report)
        table["column"] = [display.label(c, cfg) for c in table["column"]]
        st.table(table)
        st.caption(
            "Linear probe: balanced accuracy in a stratified cross-validation (up to 5 folds, "
            "grouped by patient when known); kNN: share of the "
            f"{report['k']} nearest slides "
            f"{'of other patients ' if report['exclude_same'] else ''}with the same value, "
            "chance = sum of squared value shares, lift = share − chance."
        )
        if report.get("warning"):
            st.warning(report["warning"])


ROLE_TEXT = {
    "key": "identity (always shown)",
    "diagnosis": "case context (captions, case line)",
    "descriptive": "description",
    "bookkeeping": "bookkeeping (last)",
    "technical": "technical details",
}


def columns_table(slides: pd.DataFrame, cfg: display.DisplayConfig) -> pd.DataFrame:
    """One row per metadata column: label, role, whether tables show it, an example value."""
    shown = set(display.split(slides.head(0), cfg)[0].columns)
    rows = []
    for c in slides.columns:
        values = slides[c].dropna()
        rows.append(
            {
                "column": c,
                "label": display.label(c, cfg, with_unit=True),
                "kind": ROLE_TEXT[display.role(c)],
                "shown in tables": "yes" if c in shown else "under Technical details",
                "distinct values": int(values.nunique()),
                "example": display.value_text(c, values.iloc[0]) if len(values) else "—",
            }
        )
    return pd.DataFrame(rows)


def _columns(index) -> None:
    cfg = display.current()
    with st.expander("Metadata columns and how they are shown"):
        st.dataframe(columns_table(index.slides, cfg), hide_index=True, width="stretch")
        st.caption(
            "Choose the shown columns in the sidebar (Display), or for everyone in "
            f"`{display.CONFIG_NAME}` in the index folder: "
            '`{"columns": ["diagnosis", "site"], "labels": {"oncotree_code": "OncoTree code"}}`.'
        )


def _regions_text(r: dict | None, missing: str | None) -> str:
    """The region index's size and what region search compares (``vectorstore.projection``),
    or why there is none."""
    if not r:
        return f"none, region search is off: {missing}"
    return f"{r['count']} patches of {r['slides']} slides; compares {r['projection']['reason']}"


def render(index, filters: dict, cfg) -> None:
    st.header("Index info")
    info = index.info()
    counts = info.get("counts") or {}
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Slides", counts.get("slides", len(index.slides)))
    c2.metric("Molecular samples", counts.get("molecular", len(index.molecular)))
    c3.metric("Embedding size", info.get("dim"))
    built = str(info.get("built") or "—")
    c4.metric("Built", built.split("T")[0], help=f"committed {built.replace('T', ' ')}")
    model = info.get("model") or {}
    pe = model.get("patch_encoder") or {}
    pe_text = "—"
    if pe:
        pe_text = f"{pe.get('name')} ({pe.get('dim')}-d, {pe.get('patch_size')} px at "
        pe_text += f"{pe.get('target_mpp')} µm/px)"
    rows = {
        "Model bundle": str(model.get("path") or model.get("dir") or "—"),
        "Patch encoder": pe_text,
        "Slide encoder": str(model.get("slide_encoder") or "—"),
        "Molecular encoders": ", ".join(model.get("molecular_encoders") or []) or "—",
        "Region index": _regions_text(info.get("regions"), info.get("regions_missing")),
        "Generation": str(info.get("generation") or "—"),
        "Index folder": str(info.get("index_dir")),
    }
    st.table(pd.DataFrame({"": list(rows), "value": list(rows.values())}))
    st.markdown("**FAISS indexes**")
    table = faiss_table(info)
    if table.empty:
        st.caption("No FAISS index (empty index).")
    else:
        st.table(table)
    _batch_effects(index)
    _columns(index)
    with st.expander("Versions and raw index.json summary"):
        st.json(info)
