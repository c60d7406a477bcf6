"""Index info: model, encoders, counts, FAISS types and measured recall, build date, and how
visible a batch (site, scanner) is in the slide embeddings beside chosen labels."""

from __future__ import annotations

import pandas as pd
import streamlit as st

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
    default = default_column(slides) if len(slides) else None
    if default is None:
        st.caption(
            "No `site` column (nor TCGA-shaped slide ids): choose a batch column to measure "
            "how well the embeddings predict it."
        )
    options = [c for c in slides.columns if c not in ("slide_id", "path")]
    if default == TSS_COLUMN:
        options = [TSS_COLUMN, *options]
    c1, c2 = st.columns(2)
    column = c1.selectbox(
        "Batch column",
        options,
        index=options.index(default) if default in options else None,
        key="bx_column",
        help="Hospital site, scanner, lab: something the search should not find slides by.",
    )
    labels = c2.multiselect(
        "Label columns",
        [c for c in options if c != column],
        key="bx_labels",
        help="What the embeddings should encode (e.g. subtype), for comparison.",
    )
    if column is None:
        return
    with guard("Measuring batch effects"):
        report = _report(index, str(index.generation_dir), column, tuple(labels))
        st.table(batch_table(report))
        st.caption(
            "Linear probe: balanced accuracy in a stratified cross-validation (up to 5 folds, "
            "grouped by patient when known); kNN: share of the "
            f"{report['k']} nearest slides "
            f"{'of other patients ' if report['exclude_same'] else ''}with the same value, "
            "chance = sum of squared value shares, lift = share − chance."
        )
        if report.get("warning"):
            st.warning(report["warning"])


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
    with st.expander("Versions and raw index.json summary"):
        st.json(info)
