"""Results always match the form (``ui.state``), searches refuse nonsense, long work shows its
stages: the Streamlit app through ``streamlit.testing.v1.AppTest`` on the small real fixture
index (tests/ui_fixtures.py), plus ``encode_slide_file``'s progress callback and the upload
helpers on real slide files written by the fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ui_apptest import errors, goto, infos, ok  # noqa: F401
from ui_fixtures import ui_index  # noqa: F401  (session fixture shared with the browser tests)

from ui import uploads
from ui.sections.molecular import OWN, SCALE
from ui.state import CHANGED


@pytest.fixture(scope="module")
def unscaled_slide(ui_index, tmp_path_factory):  # noqa: F811
    """(path, slide_id): a copy of a fixture slide's pixels written without any resolution."""
    from threads_search.synth.tiff import write_slide
    from threads_search.wsi import open_slide

    sid = f"{ui_index.probe}-DX1"
    with open_slide(ui_index.slides_dir / f"{sid}.tiff") as s:
        rgb = s.read_region(0, 0, 0, s.dimensions)
    path = tmp_path_factory.mktemp("unscaled") / "no resolution.tiff"
    write_slide(path, np.ascontiguousarray(rgb), None)
    return path, sid


def text(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


# -- results match the form -----------------------------------------------------------------
def test_slide_search_round_trip_keeps_the_form_and_its_results(app, index, ui_index):  # noqa: F811
    sid = index.slides["slide_id"].iat[3]
    goto(app, "Slide search")
    app.selectbox(key="ss_slide").set_value(sid)
    app.number_input(key="ss_k").set_value(5)
    app.button(key="ss_go").click().run()
    ok(app)
    want = index.search_slides(sid, k=5)["slide_id"].tolist()
    assert app.dataframe[0].value["slide_id"].tolist() == want
    goto(app, "Index info")
    goto(app, "Slide search")
    assert app.selectbox(key="ss_slide").value == sid
    assert app.number_input(key="ss_k").value == 5
    assert app.dataframe[0].value["slide_id"].tolist() == want
    # another k in the form: the old results go, with a line saying why
    app.number_input(key="ss_k").set_value(3).run()
    assert len(app.dataframe) == 0 and CHANGED in infos(app)
    app.number_input(key="ss_k").set_value(5).run()  # the form of the results again
    assert app.dataframe[0].value["slide_id"].tolist() == want
    # a failed search replaces the results with its error
    app.text_input(key="facet:sql").input("1=1; DROP TABLE slides").run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert any("Slide search failed" in e for e in errors(app))
    assert len(app.dataframe) == 0
    app.text_input(key="facet:sql").input("").run()
    assert len(app.dataframe) == 0  # nothing comes back until searched again


def test_refused_upload_replaces_the_previous_file_and_its_results(app, ui_index):  # noqa: F811
    sid = f"{ui_index.probe}-DX1"
    goto(app, "Slide search")
    app.radio(key="ss_source").set_value("Upload a slide file").run()
    data = (ui_index.slides_dir / f"{sid}.tiff").read_bytes()
    app.file_uploader(key="ss_upload").upload("case.tiff", data, "image/tiff").run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert app.dataframe[0].value["slide_id"].iat[0] == sid
    app.file_uploader(key="ss_upload").upload("report.pdf", b"%PDF-1.4 x", "application/pdf")
    app.run()
    assert errors(app) == [
        "report.pdf: file type .pdf is not accepted here; use one of "
        + ", ".join(uploads.SLIDE_UPLOAD_EXTENSIONS)
    ]
    assert len(app.dataframe) == 0
    app.button(key="ss_go").click().run()  # never re-runs case.tiff
    ok(app)
    assert len(errors(app)) == 1 and len(app.dataframe) == 0
    assert "ss_result" not in app.session_state


def test_molecular_and_classification_errors_replace_results(app, index, ui_index):  # noqa: F811
    goto(app, "Molecular prompting")
    app.selectbox(key="cl_label").set_value("subtype")
    app.number_input(key="cl_min").set_value(3)
    app.button(key="cl_go").click().run()
    ok(app)
    assert len(app.dataframe) >= 1
    app.number_input(key="cl_min").set_value(1000)
    app.button(key="cl_go").click().run()
    ok(app)
    (err,) = errors(app)
    assert "no class has at least 1000" in err and "“Smallest class (samples)”" in err
    assert "min_samples" not in err
    assert len(app.dataframe) == 0 and len(app.table) == 0
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value("Indexed molecular sample").run()
    app.button(key="mol_go").click().run()
    assert len(app.dataframe) >= 1
    app.radio(key="mol_kind").set_value("Mutations (MAF upload or gene list)").run()
    app.text_area(key="mol_dna_genes").input("NOTAGENE1").run()
    app.button(key="mol_go").click().run()
    ok(app)
    assert len(app.dataframe) == 0 and len(errors(app)) == 1
    app.radio(key="mol_kind").set_value("Indexed molecular sample").run()
    assert len(app.dataframe) == 0  # the failed query cleared them


# -- searches that would return nonsense ----------------------------------------------------
def test_mutation_list_with_no_panel_gene_is_refused_naming_the_panel(app, index):
    panel = index.model.genes_dna
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value("Mutations (MAF upload or gene list)").run()
    app.text_area(key="mol_dna_genes").input("NOTAGENE1, NOTAGENE2").run()
    app.button(key="mol_go").click().run()
    ok(app)
    (err,) = errors(app)
    assert "NOTAGENE1" in err and f"{len(panel)}-gene DNA panel" in err and panel[0] in err
    assert len(app.dataframe) == 0
    # some genes in the panel: searched with those, the others listed
    app.text_area(key="mol_dna_genes").input(f"{panel[1].lower()} NOTAGENE3").run()
    app.button(key="mol_go").click().run()
    assert not errors(app)
    assert any("NOTAGENE3" in w.value and "DNA panel" in w.value for w in app.warning)
    want = index.search_by_molecule(dna=[panel[1]], k=10)
    assert app.dataframe[0].value["slide_id"].tolist() == want["slide_id"].tolist()


def test_file_and_gene_list_say_which_is_used(app, index, ui_index, tmp_path):  # noqa: F811
    maf = Path(ui_index.paths["maf"]).read_text()
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value("Mutations (MAF upload or gene list)").run()
    app.file_uploader(key="mol_dna_file").upload("cohort.maf", maf.encode(), "text/plain").run()
    app.text_area(key="mol_dna_genes").input(index.model.genes_dna[0]).run()
    ok(app)
    assert any("the gene list is ignored" in i for i in infos(app))


@pytest.mark.parametrize(
    ("section", "kind", "data"),
    [
        ("RNA profile (upload)", "mol_rna_file", b""),
        ("RNA profile (upload)", "mol_rna_file", b"sample_id\n"),
        ("Mutations (MAF upload or gene list)", "mol_dna_file", b"sample_id\n"),
    ],
)
def test_an_empty_csv_gives_one_error(app, section, kind, data):
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value(section).run()
    app.file_uploader(key=kind).upload("empty.csv", data, "text/csv").run()
    app.button(key="mol_go").click().run()
    ok(app)
    (err,) = errors(app)
    assert "empty.csv" in err and "Error" not in err.split("**")[-1]


@pytest.mark.parametrize(
    ("section", "key", "hi"),
    [
        ("Slide search", "ss_k", 200),
        ("Molecular search", "mol_k", 200),
        ("Molecular search", "nm_k", 200),
        ("Molecular prompting", "cl_min", 1000),
        ("Region search", "rs_k", 100),
    ],
)
def test_out_of_range_numbers_are_set_to_the_limit_with_a_message(app, section, key, hi):
    goto(app, section)
    app.number_input(key=key).set_value(hi + 300).run()
    ok(app)
    assert app.number_input(key=key).value == hi
    assert any(f"at most {hi}" in w.value and f"set to {hi}" in w.value for w in app.warning)
    app.number_input(key=key).set_value(0 if key != "cl_min" else -5).run()
    assert app.number_input(key=key).value == 1


def test_upload_without_resolution_uses_the_form_field(app, unscaled_slide):
    path, sid = unscaled_slide
    goto(app, "Slide search")
    app.radio(key="ss_source").set_value("Upload a slide file").run()
    app.file_uploader(key="ss_upload").upload(path.name, path.read_bytes(), "image/tiff").run()
    app.button(key="ss_go").click().run()
    ok(app)
    (err,) = errors(app)
    assert "does not record its resolution" in err and "µm per pixel" in err
    assert "--mpp-csv" not in err and len(app.dataframe) == 0
    app.number_input(key="ss_mpp").set_value(0.5).run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert not errors(app)
    res = app.dataframe[0].value
    assert res["slide_id"].iat[0] == sid and res["score"].iat[0] > 0.999


# -- molecular pages ------------------------------------------------------------------------
def test_molecular_results_flag_the_query_patient_and_explain_the_scale(app, index, ui_index):  # noqa: F811
    probe = ui_index.probe
    mol = index.molecular
    row = int(np.flatnonzero(mol["sample_id"].to_numpy() == f"{probe}-01R")[0])
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value("Indexed molecular sample").run()
    app.selectbox(key="mol_sample").set_value(row)
    app.button(key="mol_go").click().run()
    ok(app)
    want = index.search_by_molecule(rna=f"{probe}-01R", k=10)
    rank = int(want.loc[want["patient_id"] == probe, "rank"].iat[0])
    shown = next(d.value for d in app.dataframe if OWN in d.value)  # the table or its details
    assert shown.loc[shown[OWN], "slide_id"].tolist() == [f"{probe}-DX1"]
    assert f"Query's own patient ({probe}):** #{rank} {probe}-DX1" in text(app)
    assert SCALE in text(app)
    # an uploaded profile whose sample id is indexed: its patient is known too
    app.radio(key="mol_kind").set_value("RNA profile (upload)").run()
    csv = ui_index.rna_profile(probe).to_csv(index=False).encode()
    app.file_uploader(key="mol_rna_file").upload("profile.csv", csv, "text/csv").run()
    app.button(key="mol_go").click().run()
    assert f"Query's own patient ({probe})" in text(app)


def test_prompting_offers_no_bookkeeping_labels_and_names_the_prototypes(app, index):
    from ui.sections.prompting import label_columns

    for frame in (index.molecular, index.slides):
        labels = label_columns(frame)
        assert "subtype" in labels
        assert not {"split", "has_rna", "has_dna", "n_slides"} & set(labels)
        assert not [c for c in labels if c.endswith("_id")]
    goto(app, "Molecular prompting")
    assert "split" not in app.selectbox(key="cl_label").options
    app.selectbox(key="cl_label").set_value("subtype")
    app.selectbox(key="cl_kind").set_value("rna")
    app.number_input(key="cl_min").set_value(3)
    app.button(key="cl_go").click().run()
    ok(app)
    assert "**Class sizes: prototypes from RNA molecular samples**" in text(app)
    want = index.classify("subtype", min_samples=3, kind="rna")
    assert app.dataframe[0].value["predicted"].tolist() == want["predicted"].tolist()
    app.radio(key="cl_proto").set_value("slide").run()
    assert CHANGED in infos(app)  # the results of molecular prototypes are not shown
    app.button(key="cl_go").click().run()
    assert "**Class sizes: prototypes from slides (leave-one-out)**" in text(app)


# -- progress of an uploaded slide's embedding ----------------------------------------------
def test_encode_slide_file_reports_tissue_then_every_patch(ui_index):  # noqa: F811
    from threads_search.features import default_config, encode_slide_file

    path = sorted(ui_index.slides_dir.glob("*.tiff"))[0]
    cfg = default_config("hed-texture", patch_size=256)
    cfg.batch_size = 8
    calls = []
    feats, coords = encode_slide_file(
        path, "hed-texture", config=cfg, progress=lambda *a: calls.append(a)
    )
    n = len(coords)
    assert calls[0] == ("tissue", 0, 1)
    patches = [c for c in calls[1:] if c[0] == "patches"]
    assert len(patches) == len(calls) - 1
    done = [c[1] for c in patches]
    assert done[0] == 0 and done[-1] == n and done == sorted(done)
    assert {c[2] for c in patches} == {n} and len(done) >= 1 + -(-n // 8)
    plain, plain_coords = encode_slide_file(path, "hed-texture", config=cfg)  # no callback
    assert np.array_equal(plain_coords, coords) and np.allclose(plain, feats)


def test_uploaded_slide_shows_every_stage(index, unscaled_slide):
    from ui.sections.slide_search import uploaded_query

    path, sid = unscaled_slide
    with pytest.raises(uploads.UploadError, match="does not record its resolution"):
        uploaded_query(index, path)
    bars = []
    progress = uploads.EmbedProgress(lambda f, t: bars.append((f, t)))
    vec, q = uploaded_query(index, path, 0.5, progress)
    seen = progress.seen
    assert seen[0] == "Reading the slide…" and seen[1] == "Finding tissue…"
    assert seen[-1] == "Embedding the slide…"
    n = len(q.attention)
    assert (
        seen[2] == f"Embedding patches: 0 of {n}…" and seen[-2] == f"Embedding patches: {n} of {n}…"
    )
    fractions = [f for f, _ in bars]
    assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] <= 1
    assert index.search_slides(vec, k=1)["slide_id"].iat[0] == sid


def test_panel_genes_refuses_an_empty_profile():
    found, unknown = uploads.panel_genes(["tp53", "NOPE"], ["TP53", "KRAS"])
    assert found == ["TP53"] and unknown == ["NOPE"]
    with pytest.raises(uploads.UploadError, match="2-gene DNA panel: TP53, KRAS"):
        uploads.panel_genes(["NOPE"], ["TP53", "KRAS"])
