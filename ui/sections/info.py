"""Index info: model, encoders, counts, FAISS types and measured recall, build date."""

from __future__ import annotations

import pandas as pd
import streamlit as st


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
    with st.expander("Versions and raw index.json summary"):
        st.json(info)
