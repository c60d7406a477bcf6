"""Molecular search: an RNA profile, mutations, an indexed molecular sample or a gene signature
→ the slides whose morphology matches; and, for a slide, its nearest molecular samples.

Results are shown only while the form still shows the query that produced them
(``ui.state``); the query sample's own patient is flagged among them when it is known.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import state, uploads
from ui.common import download_csv, guard, show_gallery
from ui.sections.slide_search import upload_store
from ui.uploads import UploadError

KINDS = (
    "RNA profile (upload)",
    "Mutations (MAF upload or gene list)",
    "Indexed molecular sample",
    "Gene signature (genes up / down)",
)
MAX_K = 200
RESULT, NEAREST = "mol_result", "nm_result"
OWN = "query's patient"  # result column: the slide or sample is of the query's patient
SCALE = (
    "Similarities here are cross-modal: the cosine between a molecular embedding and a "
    "slide's. They run lower than slide-to-slide similarities (Slide search, where similar "
    "slides score near 1); compare ranks within this list, not these numbers with slide "
    "search scores."
)


def _patient(index, sample_id, meta: pd.DataFrame | None = None):
    """The patient of a query sample: its file's ``patient_id`` column, else the indexed
    molecular sample of the same id's; None when unknown."""
    if meta is not None and "patient_id" in meta and sample_id in meta.index:
        value = meta.at[sample_id, "patient_id"]
        if pd.notna(value):
            return str(value)
    mol = index.molecular
    if "patient_id" not in mol:
        return None
    hit = mol.loc[mol["sample_id"].astype(str) == str(sample_id), "patient_id"].dropna()
    return str(hit.iat[0]) if len(hit) else None


def _upload(cfg, key: str, label: str, allowed: tuple[str, ...]):
    """An upload widget accepting any file (a refused one replaces the last; ``UploadError``
    says why) → (stored path or None, its form key)."""
    up = st.file_uploader(label, key=key, max_upload_size=cfg.max_upload_mb)
    if up is None:
        return None, None
    if why := uploads.refusal(up, allowed):
        raise UploadError(why)
    return upload_store().save(up.name, up.getvalue(), allowed, cfg.max_upload_mb), (
        state.file_key(up)
    )


def _pick_sample(samples: list, key: str):
    if len(samples) == 1:
        return samples[0]
    start = state.keep(key, samples[0], samples, "index")
    return st.selectbox("Sample", samples, key=key, **start)


def _rna_query(index, cfg, form: dict):
    """The RNA query from the uploaded file (None until one is given); units default to the
    model's (``Index.rna_units``)."""
    label = "RNA profile: CSV/TSV/Parquet, a sample_id column and one column per gene"
    path, form["file"] = _upload(cfg, "mol_rna_file", label, uploads.RNA_UPLOAD_EXTENSIONS)
    options = ["tpm", "counts", "log"]
    start = state.keep("mol_rna_units", index.rna_units or "tpm", options, "index")
    form["units"] = st.selectbox(
        "Units",
        options,
        **start,
        key="mol_rna_units",
        help="tpm and counts are log1p-transformed; log values are used as is",
    )
    if path is None:
        return None, None
    try:
        matrix = uploads.read_rna_upload(path, form["units"])
    finally:
        upload_store().delete(path)  # parsed: the file is no longer needed
    form["sample"] = sample = _pick_sample(matrix.samples, "mol_rna_sample")
    patient = _patient(index, sample, matrix.metadata)
    return {"rna": uploads.one_rna_sample(matrix, sample)}, patient


def _dna_query(index, cfg, form: dict):
    """Mutated genes of the uploaded file's sample, else of the gene list; only genes of the
    model's DNA panel are searched (none: refused; some outside it: a warning lists them)."""
    label = "MAF or binary mutation matrix (optional)"
    path, form["file"] = _upload(cfg, "mol_dna_file", label, uploads.DNA_UPLOAD_EXTENSIONS)
    text = st.text_area(
        "…or mutated genes (comma / space / line separated)",
        key="mol_dna_genes",
        **state.keep("mol_dna_genes", ""),
    )
    typed = uploads.parse_genes(text)
    patient = None
    if path is not None:
        try:
            matrix = uploads.read_dna_upload(path)
        finally:
            upload_store().delete(path)
        form["sample"] = sample = _pick_sample(list(matrix.index), "mol_dna_sample")
        genes, patient = uploads.mutated_genes(matrix, sample), _patient(index, sample)
        if typed:
            st.info(
                f"Both a file and a gene list are given: the file's sample **{sample}** is "
                "searched and the gene list is ignored (remove the file to search by the list)."
            )
    else:
        form["genes"] = genes = typed
    if not genes:
        return None, None
    with st.spinner("Loading the model…"):
        panel = list(index.model.genes_dna or [])
    if not panel:
        raise UploadError("the index's model has no DNA encoder: mutation queries need one")
    found, unknown = uploads.panel_genes(genes, panel)
    if unknown:
        st.warning(
            f"Not in the model's {len(panel)}-gene DNA panel, ignored: {', '.join(unknown[:20])}"
            + (f" … ({len(unknown)} in all)" if len(unknown) > 20 else "")
        )
    return {"dna": found}, patient


def _sample_query(index, cfg, form: dict):
    mol = index.molecular
    if mol.empty:
        raise UploadError("this index holds no molecular samples")
    labels = [f"{s} ({k})" for s, k in zip(mol["sample_id"], mol["kind"], strict=True)]
    pick = st.selectbox(
        "Molecular sample",
        range(len(labels)),
        format_func=labels.__getitem__,
        key="mol_sample",
        **state.keep("mol_sample", 0, list(range(len(labels))), "index"),
    )
    row = mol.iloc[int(pick)]
    form["sample"] = (str(row["kind"]), str(row["sample_id"]))
    patient = row.get("patient_id")
    return {str(row["kind"]): str(row["sample_id"])}, (str(patient) if pd.notna(patient) else None)


def _signature_query(index, cfg, form: dict):
    c1, c2 = st.columns(2)
    up = c1.text_area("Genes up", key="mol_sig_up", **state.keep("mol_sig_up", ""))
    down = c2.text_area("Genes down", key="mol_sig_down", **state.keep("mol_sig_down", ""))
    up, down = uploads.parse_genes(up), uploads.parse_genes(down)
    form["up"], form["down"] = up, down
    if not up and not down:
        return None, None
    with st.spinner("Loading the model…"):
        model = index.model
    if model.normalizer is None:
        raise UploadError("the index's model has no RNA encoder: gene signatures need one")
    profile, unknown = uploads.signature_profile(model.normalizer, up, down)
    if unknown:
        st.warning(f"Not in the model's RNA vocabulary, ignored: {', '.join(unknown[:20])}")
    return {"rna": profile}, None


READERS = dict(zip(KINDS, (_rna_query, _dna_query, _sample_query, _signature_query), strict=True))


def flag_patient(results: pd.DataFrame, patient) -> pd.DataFrame:
    """``results`` with a column ``OWN`` (True where the row is of ``patient``) when the
    patient is known and the results carry patient ids; else unchanged."""
    if patient is None or "patient_id" not in results:
        return results
    out = results.copy()
    out.insert(min(2, len(out.columns)), OWN, out["patient_id"].astype(str) == str(patient))
    return out


def _own_patient_line(results: pd.DataFrame, patient, what: str) -> None:
    if patient is None or OWN not in results:
        return
    own = results[results[OWN]]
    if len(own):
        hits = ", ".join(f"#{int(r['rank'])} {r[what]}" for _, r in own.iterrows())
        st.markdown(f"**Query's own patient ({patient}):** {hits}.")
    else:
        st.caption(f"No {what.split('_')[0]} of the query's patient ({patient}) in these results.")


def search_section(index, filters: dict, cfg) -> None:
    kind = st.radio(
        "Query", KINDS, key="mol_kind", **state.keep("mol_kind", KINDS[0], KINDS, "index")
    )
    form: dict = {"kind": kind}
    query, patient, failed = None, None, True
    with guard("Reading the molecular query"):
        query, patient = READERS[kind](index, cfg, form)
        failed = False
    c1, c2 = st.columns(2)
    form["k"] = state.number(c1, "Results (k)", "mol_k", 10, 1, MAX_K)
    exclude = c2.checkbox(
        "Exclude the sample's own patient",
        key="mol_exclude",
        **state.keep("mol_exclude", False),
        disabled=kind != KINDS[2],
        help="Only for indexed samples, whose patient is known.",
    )
    form["exclude"] = bool(exclude and kind == KINDS[2])
    form["where"] = filters.get("slides")
    state.notes("mol_k")
    if failed:  # the query's error replaces the last results
        state.clear(RESULT)
    if st.button("Find matching slides", type="primary", key="mol_go"):
        state.clear(RESULT)  # an error replaces the last results
        if not failed:  # a query that could not be read: its one error is shown above
            with guard("Molecular search"), st.spinner("Searching…"):
                if filters["error"]:
                    raise UploadError(f"fix the filter first: {filters['error']}")
                if query is None:
                    raise UploadError("give a query first (upload, genes or a sample)")
                res = index.search_by_molecule(
                    **query,
                    k=form["k"],
                    where=filters["slides"],
                    exclude_same_patient=form["exclude"],
                )
                state.save(RESULT, form, results=flag_patient(res, patient), patient=patient)
    res = state.shown(RESULT, form)
    if res:
        st.subheader(f"Slides matching the query ({kind.split(' (')[0].lower()})")
        st.caption(SCALE)
        _own_patient_line(res["results"], res["patient"], "slide_id")
        show_gallery(res["results"], "molecular_search", per_row=5)


def nearest_samples_section(index, filters: dict) -> None:
    st.subheader("Nearest molecular samples of a slide")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
    ids = index.slides["slide_id"].tolist()
    start = state.keep("nm_slide", ids[0] if ids else None, ids, "index")
    slide = c1.selectbox("Slide", ids, key="nm_slide", **start)
    start = state.keep("nm_kind", "both", ["both", "rna", "dna"], "index")
    kind = c2.selectbox("Kind", ["both", "rna", "dna"], key="nm_kind", **start)
    k = state.number(c3, "k", "nm_k", 10, 1, MAX_K)
    start = state.keep("nm_exclude", True)
    exclude = c4.checkbox("Exclude the slide's own patient", key="nm_exclude", **start)
    state.notes("nm_k")
    patient = index.slides.set_index("slide_id").loc[slide].get("patient_id") if slide else None
    patient = str(patient) if pd.notna(patient) else None
    form = {"slide": slide, "kind": kind, "k": k, "exclude": exclude}
    form["where"] = filters.get("molecular")
    if st.button("Find molecular samples", key="nm_go"):
        state.clear(NEAREST)
        with guard("Nearest molecular samples"), st.spinner("Searching…"):
            res = index.search_molecules(
                slide,
                k=k,
                where=filters["molecular"],
                kind=None if kind == "both" else kind,
                exclude_same_patient=bool(exclude and patient is not None),
            )
            state.save(NEAREST, form, results=flag_patient(res, patient), patient=patient)
    res = state.shown(NEAREST, form)
    if res:
        frame = res["results"]
        if frame.empty:
            st.info("No molecular sample matches.")
        else:
            top = frame.iloc[0]
            st.markdown(
                f"Nearest sample to **{slide}**: **{top['sample_id']}** "
                f"({top['kind']}, similarity {top['score']:.3f})"
            )
            st.caption(SCALE)
            _own_patient_line(frame, res["patient"], "sample_id")
            st.dataframe(frame, hide_index=True, width="stretch")
            download_csv(frame, "nearest_molecular_samples.csv", key="dl_nm")


def render(index, filters: dict, cfg) -> None:
    st.header("Molecular search")
    search_section(index, filters, cfg)
    st.divider()
    nearest_samples_section(index, filters)
