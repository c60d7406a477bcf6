"""Molecular search: an RNA profile, mutations, an indexed molecular sample or a gene signature
→ the slides whose morphology matches; and, for a slide, its nearest molecular samples."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import uploads
from ui.common import download_csv, guard, show_gallery
from ui.sections.slide_search import upload_store
from ui.uploads import UploadError

KINDS = (
    "RNA profile (upload)",
    "Mutations (MAF upload or gene list)",
    "Indexed molecular sample",
    "Gene signature (genes up / down)",
)


def _rna_query(cfg, model_units: str | None = None):
    """The RNA query from the uploaded file (None until one is given); units default to the
    model's (``Index.rna_units``)."""
    up = st.file_uploader(
        "RNA profile: CSV/TSV/Parquet, a sample_id column and one column per gene",
        type=[e[1:] for e in uploads.RNA_UPLOAD_EXTENSIONS],
        key="mol_rna_file",
        max_upload_size=cfg.max_upload_mb,
    )
    options = ["tpm", "counts", "log"]
    units = st.selectbox(
        "Units",
        options,
        index=options.index(model_units or "tpm"),
        key="mol_rna_units",
        help="tpm and counts are log1p-transformed; log values are used as is",
    )
    if up is None:
        return None
    store = upload_store()
    path = store.save(up.name, up.getvalue(), uploads.RNA_UPLOAD_EXTENSIONS, cfg.max_upload_mb)
    try:
        matrix = uploads.read_rna_upload(path, units)
    finally:
        store.delete(path)  # parsed: the file is no longer needed
    sample = None
    if len(matrix) > 1:
        sample = st.selectbox("Sample", matrix.samples, key="mol_rna_sample")
    return {"rna": uploads.one_rna_sample(matrix, sample)}


def _dna_query(cfg):
    up = st.file_uploader(
        "MAF or binary mutation matrix (optional)",
        type=[e[1:] for e in uploads.DNA_UPLOAD_EXTENSIONS],
        key="mol_dna_file",
        max_upload_size=cfg.max_upload_mb,
    )
    text = st.text_area("…or mutated genes (comma / space / line separated)", key="mol_dna_genes")
    if up is not None:
        store = upload_store()
        path = store.save(up.name, up.getvalue(), uploads.DNA_UPLOAD_EXTENSIONS, cfg.max_upload_mb)
        try:
            matrix = uploads.read_dna_upload(path)
        finally:
            store.delete(path)
        sample = matrix.index[0]
        if len(matrix) > 1:
            sample = st.selectbox("Sample", list(matrix.index), key="mol_dna_sample")
        return {"dna": matrix.loc[[sample]].reset_index()}
    genes = uploads.parse_genes(text)
    return {"dna": genes} if genes else None


def _sample_query(index):
    mol = index.molecular
    if mol.empty:
        raise UploadError("this index holds no molecular samples")
    labels = [f"{s} ({k})" for s, k in zip(mol["sample_id"], mol["kind"], strict=True)]
    pick = st.selectbox(
        "Molecular sample", range(len(labels)), format_func=labels.__getitem__, key="mol_sample"
    )
    row = mol.iloc[int(pick)]
    return {str(row["kind"]): str(row["sample_id"])}


def _signature_query(index):
    c1, c2 = st.columns(2)
    up = uploads.parse_genes(c1.text_area("Genes up", key="mol_sig_up"))
    down = uploads.parse_genes(c2.text_area("Genes down", key="mol_sig_down"))
    if not up and not down:
        return None
    with st.spinner("Loading the model…"):
        model = index.model
    if model.normalizer is None:
        raise UploadError("the index's model has no RNA encoder: gene signatures need one")
    profile, unknown = uploads.signature_profile(model.normalizer, up, down)
    if unknown:
        st.warning(f"Not in the model's RNA vocabulary, ignored: {', '.join(unknown[:20])}")
    return {"rna": profile}


def search_section(index, filters: dict, cfg) -> None:
    kind = st.radio("Query", KINDS, key="mol_kind")
    query = None
    with guard("Reading the molecular query"):
        if kind == KINDS[0]:
            query = _rna_query(cfg, index.rna_units)
        elif kind == KINDS[1]:
            query = _dna_query(cfg)
        elif kind == KINDS[2]:
            query = _sample_query(index)
        else:
            query = _signature_query(index)
    c1, c2 = st.columns(2)
    k = c1.number_input("Results (k)", 1, 200, 10, key="mol_k")
    exclude = c2.checkbox(
        "Exclude the sample's own patient",
        value=False,
        key="mol_exclude",
        disabled=kind != KINDS[2],
        help="Only for indexed samples, whose patient is known.",
    )
    if st.button("Find matching slides", type="primary", key="mol_go"):
        with guard("Molecular search"), st.spinner("Searching…"):
            if filters["error"]:
                raise UploadError(f"fix the filter first: {filters['error']}")
            if query is None:
                raise UploadError("give a query first (upload, genes or a sample)")
            res = index.search_by_molecule(
                **query,
                k=int(k),
                where=filters["slides"],
                exclude_same_patient=bool(exclude and kind == KINDS[2]),
            )
            st.session_state["mol_result"] = {"results": res, "query": kind}
    res = st.session_state.get("mol_result")
    if res:
        st.subheader(f"Slides matching the query ({res['query'].split(' (')[0].lower()})")
        show_gallery(res["results"], "molecular_search", per_row=5)


def nearest_samples_section(index, filters: dict) -> None:
    st.subheader("Nearest molecular samples of a slide")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
    slide = c1.selectbox("Slide", index.slides["slide_id"].tolist(), key="nm_slide")
    kind = c2.selectbox("Kind", ["both", "rna", "dna"], key="nm_kind")
    k = c3.number_input("k", 1, 200, 10, key="nm_k")
    exclude = c4.checkbox("Exclude the slide's own patient", value=True, key="nm_exclude")
    if st.button("Find molecular samples", key="nm_go"):
        with guard("Nearest molecular samples"), st.spinner("Searching…"):
            patient = index.slides.set_index("slide_id").loc[slide].get("patient_id")
            res = index.search_molecules(
                slide,
                k=int(k),
                where=filters["molecular"],
                kind=None if kind == "both" else kind,
                exclude_same_patient=bool(exclude and pd.notna(patient)),
            )
            st.session_state["nm_result"] = {"slide": slide, "results": res}
    res = st.session_state.get("nm_result")
    if res:
        frame = res["results"]
        if frame.empty:
            st.info("No molecular sample matches.")
        else:
            top = frame.iloc[0]
            st.markdown(
                f"Nearest sample to **{res['slide']}**: **{top['sample_id']}** "
                f"({top['kind']}, similarity {top['score']:.3f})"
            )
            st.dataframe(frame, hide_index=True, width="stretch")
            download_csv(frame, "nearest_molecular_samples.csv", key="dl_nm")


def render(index, filters: dict, cfg) -> None:
    st.header("Molecular search")
    search_section(index, filters, cfg)
    st.divider()
    nearest_samples_section(index, filters)
