"""The Streamlit UI's logic through ``streamlit.testing.v1.AppTest`` on a small real index
(tests/ui_fixtures.py): every section renders, searches show what the Python API returns,
filters are guarded, uploads are checked and deleted, errors are readable messages; plus the
Deep Zoom tile server, the upload store and the facet builder on their own."""

from __future__ import annotations

import stat
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from ui_apptest import errors, goto, ok  # noqa: F401
from ui_fixtures import ui_index  # noqa: F401  (session fixture shared with the browser test)

from ui import facets, images, uploads
from ui.viewer import TileServer, ViewSlide

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
SECTIONS = [
    "Archive",
    "Slide search",
    "Viewer",
    "Molecular search",
    "Molecular prompting",
    "Index info",
]


def text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_every_section_renders(app):
    for section in SECTIONS:
        goto(app, section)
        assert not errors(app), (section, errors(app))
        assert [h.value for h in app.header] == [
            "Side-by-side viewer" if section == "Viewer" else section
        ]


def test_slide_search_shows_the_api_results_without_the_query_patient(app, index, ui_index):  # noqa: F811
    sid = f"{ui_index.probe}-DX1"
    goto(app, "Slide search")
    app.selectbox(key="ss_slide").set_value(sid)
    app.number_input(key="ss_k").set_value(5)
    app.button(key="ss_go").click().run()
    ok(app)
    assert not errors(app)
    want = index.search_slides(sid, k=5)
    shown = app.dataframe[0].value
    assert shown["slide_id"].tolist() == want["slide_id"].tolist()
    assert np.allclose(shown["score"], want["score"])
    assert ui_index.probe not in set(shown["patient_id"])
    assert f"Top match: **{want['slide_id'].iat[0]}**" in text(app)
    assert len(app.get("download_button")) == 1
    assert len(app.image) >= 1 + 5  # query heatmap, gallery thumbnails (+ top patches)
    app.toggle(key="ss_heat").set_value(False).run()  # heatmap off: the page still works
    ok(app)


def test_facets_restrict_archive_and_search(app, index):
    slides = index.slides
    goto(app, "Archive")
    app.multiselect(key="facet:subtype").set_value(["subtype_B"]).run()
    ok(app)
    n_b = int((slides["subtype"] == "subtype_B").sum())
    assert 0 < n_b < len(slides)
    assert f"**{n_b}** of {len(slides)} slides" in text(app)
    assert set(app.dataframe[0].value["subtype"]) == {"subtype_B"}
    goto(app, "Slide search")
    app.button(key="ss_go").click().run()
    ok(app)
    assert set(app.dataframe[0].value["subtype"]) == {"subtype_B"}
    # a numeric range: the archive shows exactly the rows pandas selects
    app.multiselect(key="facet:subtype").set_value([]).run()
    area = slides["tissue_area_mm2"]
    lo, hi = app.slider(key="facet:tissue_area_mm2").value
    cut = round(float(area.median()), 3)
    app.slider(key="facet:tissue_area_mm2").set_value((lo, cut)).run()
    goto(app, "Archive")
    want = sorted(slides.loc[area <= cut, "slide_id"])
    assert sorted(app.dataframe[0].value["slide_id"]) == want


@pytest.mark.parametrize(
    "bad", ["1=1; DROP TABLE slides", "path IN (SELECT * FROM read_csv('/etc/passwd'))"]
)
def test_bad_sql_filter_is_refused_readably_and_the_app_recovers(app, bad):
    goto(app, "Slide search")
    app.text_input(key="facet:sql").input(bad).run()
    ok(app)
    assert any("Filter not applied" in e for e in errors(app))
    app.button(key="ss_go").click().run()
    ok(app)
    assert any("Slide search failed" in e and "fix the filter first" in e for e in errors(app))
    app.text_input(key="facet:sql").input("").run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert not errors(app) and "Top match:" in text(app)


def test_uploaded_slide_finds_itself_and_is_kept_privately(app, ui_index):  # noqa: F811
    sid = f"{ui_index.probe}-DX1"
    data = (ui_index.slides_dir / f"{sid}.tiff").read_bytes()
    goto(app, "Slide search")
    app.radio(key="ss_source").set_value("Upload a slide file").run()
    app.file_uploader(key="ss_upload").upload("my case.tiff", data, "image/tiff").run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert not errors(app)
    res = app.dataframe[0].value
    assert res["slide_id"].iat[0] == sid and res["score"].iat[0] > 0.999
    store = app.session_state["uploads"]
    kept = store.files()
    assert len(kept) == 1 and kept[0].name.endswith("my_case.tiff")
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    app.button(key="ss_forget").click().run()
    ok(app)
    assert store.files() == []


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("corrupt.svs", b"II*\x00" + b"\x00garbage" * 300, "cannot be read as a slide"),
        ("photo.tiff", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "a PNG image"),
        ("empty.tiff", b"", "empty"),
    ],
)
def test_bad_slide_uploads_give_readable_errors(app, name, data, message):
    goto(app, "Slide search")
    app.radio(key="ss_source").set_value("Upload a slide file").run()
    app.file_uploader(key="ss_upload").upload(name, data).run()
    app.button(key="ss_go").click().run()
    ok(app)
    assert any(message in e for e in errors(app)), errors(app)
    assert "Traceback" not in "".join(errors(app))
    if "uploads" in app.session_state:
        assert app.session_state["uploads"].files() == []  # nothing left behind


def test_molecular_search_by_uploaded_profile_and_indexed_sample(app, index, ui_index):  # noqa: F811
    probe = ui_index.probe
    goto(app, "Molecular search")
    csv = ui_index.rna_profile(probe).to_csv(index=False).encode()
    app.file_uploader(key="mol_rna_file").upload("profile.csv", csv, "text/csv").run()
    app.button(key="mol_go").click().run()
    ok(app)
    assert not errors(app)
    assert f"Top match: **{probe}-DX1**" in text(app)
    assert app.session_state["uploads"].files() == []  # parsed, then deleted
    mol = index.molecular
    row = int(np.flatnonzero(mol["sample_id"].to_numpy() == f"{probe}-01R")[0])
    app.radio(key="mol_kind").set_value("Indexed molecular sample").run()
    app.selectbox(key="mol_sample").set_value(row)
    app.button(key="mol_go").click().run()
    ok(app)
    assert app.dataframe[0].value["slide_id"].iat[0] == f"{probe}-DX1"


def test_mutations_and_gene_signature_queries(app, index):
    model = index.model
    goto(app, "Molecular search")
    app.radio(key="mol_kind").set_value("Mutations (MAF upload or gene list)").run()
    app.text_area(key="mol_dna_genes").input(f"{model.genes_dna[0]}, NOTAGENE1").run()
    app.button(key="mol_go").click().run()
    ok(app)
    assert not errors(app)
    assert any("NOTAGENE1" in w.value for w in app.warning)
    want = index.search_by_molecule(dna=[model.genes_dna[0]], k=10)
    assert app.dataframe[0].value["slide_id"].tolist() == want["slide_id"].tolist()
    app.radio(key="mol_kind").set_value("Gene signature (genes up / down)").run()
    app.text_area(key="mol_sig_up").input("NOTAGENE1 NOTAGENE2").run()
    assert any("none of the signature genes" in e for e in errors(app))
    up, down = model.genes_rna[:3], model.genes_rna[3:5]
    app.text_area(key="mol_sig_up").input(" ".join(up + ["NOTAGENE1"])).run()
    app.text_area(key="mol_sig_down").input("\n".join(down)).run()
    app.button(key="mol_go").click().run()
    ok(app)
    assert not [e for e in errors(app)]
    assert any("NOTAGENE1" in w.value for w in app.warning)
    profile, unknown = uploads.signature_profile(model.normalizer, up, down)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = index.search_by_molecule(rna=profile, k=10)
    assert app.dataframe[0].value["slide_id"].tolist() == want["slide_id"].tolist()


def test_nearest_molecular_samples_of_a_slide(app, index, ui_index):  # noqa: F811
    sid = f"{ui_index.probe}-DX1"
    goto(app, "Molecular search")
    app.selectbox(key="nm_slide").set_value(sid)
    app.selectbox(key="nm_kind").set_value("rna")
    app.checkbox(key="nm_exclude").uncheck()
    app.button(key="nm_go").click().run()
    ok(app)
    want = index.search_molecules(sid, k=10, kind="rna", exclude_same_patient=False)
    shown = app.dataframe[-1].value
    assert shown["sample_id"].tolist() == want["sample_id"].tolist()
    assert set(shown["kind"]) == {"rna"}
    app.checkbox(key="nm_exclude").check()
    app.button(key="nm_go").click().run()
    assert ui_index.probe not in set(app.dataframe[-1].value["patient_id"])


@pytest.mark.parametrize("protos", ["molecular", "slide"])
def test_classification_shows_class_sizes_scores_and_agreement(app, index, protos):
    goto(app, "Molecular prompting")
    app.radio(key="cl_proto").set_value(protos).run()
    app.selectbox(key="cl_label").set_value("subtype")
    app.number_input(key="cl_min").set_value(3)
    app.button(key="cl_go").click().run()
    ok(app)
    assert not errors(app)
    want = index.classify("subtype", prototypes=protos, min_samples=3)
    agree = (want["predicted"] == want["subtype"]).mean()
    assert f"Classified **{len(want)}** slides by **subtype** into 2 classes" in text(app)
    assert f"**{agree:.0%}**" in text(app)
    sizes = app.table[0].value
    assert dict(zip(sizes["class"], sizes["prototype samples"], strict=True)) == {
        str(k): v for k, v in want.attrs["class_sizes"].items()
    }
    shown = app.dataframe[0].value
    assert shown["predicted"].tolist() == want["predicted"].tolist()
    # a class size above every class: a readable refusal, not a crash
    app.number_input(key="cl_min").set_value(1000)
    app.button(key="cl_go").click().run()
    ok(app)
    assert any("no class has at least 1000" in e for e in errors(app))


def test_index_info_lists_model_faiss_and_counts(app, index):
    goto(app, "Index info")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Slides"] == str(len(index.slides))
    assert metrics["Molecular samples"] == str(len(index.molecular))
    faiss_table = app.table[1].value
    assert set(faiss_table["table"]) == {"slides", "molecular"}
    assert set(faiss_table["FAISS type"]) == {"flat"}
    assert (faiss_table["measured recall"].astype(float) > 0.9).all()
    assert "hed-texture" in app.table[0].value.to_string()
    regions = app.table[0].value.set_index("").at["Region index", "value"]
    n = len(index.regions.table)
    assert regions.startswith(f"{n} patches of {len(index.slides)} slides; compares auto: raw")


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_tile_server_serves_registered_slides_only(ui_index):  # noqa: F811
    path = sorted(ui_index.slides_dir.glob("*.tiff"))[0]
    server = TileServer("127.0.0.1", 0)
    try:
        token = server.register(path)
        assert server.register(path) == token
        code, mime, body = _get(f"{server.url}/dzi/{token}.dzi")
        assert code == 200 and 'Width="1536"' in body.decode() and "xml" in mime
        top = 11  # ceil(log2(1536)) + 1 levels: level 11 is full resolution
        code, mime, body = _get(f"{server.url}/dzi/{token}_files/{top}/1_2.jpeg")
        assert code == 200 and mime == "image/jpeg"
        tile = Image.open(__import__("io").BytesIO(body))
        assert tile.size == (256, 256) and np.asarray(tile).std() > 1  # real pixels
        assert _get(f"{server.url}/dzi/{token}_files/{top}/99_0.jpeg")[0] == 404
        assert _get(f"{server.url}/dzi/unknown.dzi")[0] == 404
        assert _get(f"{server.url}/static/openseadragon/openseadragon.min.js")[0] == 200
        for bad in ("/static/../viewer.py", "/static/%2e%2e/viewer.py", f"/{path}"):
            assert _get(server.url + bad)[0] == 404, bad
        marks = [{"x": 256, "y": 512, "w": 256, "h": 256, "label": "1"}]
        url = server.view_url([ViewSlide(token, "query <b>", marks)])
        code, _, page = _get(url)
        assert code == 200 and b'"x": 256' in page and b"query &lt;b&gt;" in page
        server.unregister(path)
        assert _get(f"{server.url}/dzi/{token}.dzi")[0] == 404
    finally:
        server.close()


def test_upload_store_checks_and_deletes(tmp_path):
    store = uploads.UploadStore()
    try:
        with pytest.raises(uploads.UploadError, match="not accepted"):
            store.save("x.exe", b"1", (".svs",), 1)
        with pytest.raises(uploads.UploadError, match="above the 1 MiB limit"):
            store.save("x.svs", b"1" * (2 * 2**20), (".svs",), 1)
        p = store.save("../../etc/evil name.svs", b"abc", (".svs",), 1)
        assert p.parent == store.dir and p.read_bytes() == b"abc"
        assert uploads.display_name(p) == "evil_name.svs"
        store.delete(p)
        assert not p.exists()
    finally:
        store.close()
    assert not store.dir.exists()


def test_facets_build_guarded_where(index):
    slides = index.slides
    cols = index.filter_columns("slides")
    by_col = {f.column: f for f in facets.facets_for(slides, cols)}
    assert by_col["subtype"].kind == "categories" and by_col["tissue_area_mm2"].kind == "range"
    assert "path" not in by_col
    evil = "x' OR '1'='1"
    where = facets.build(list(by_col.values()), {"subtype": [evil]}, cols)
    assert len(index.filter_ids(where)) == 0  # quoted as a value, not SQL
    f = by_col["n_patches"]
    mid = int(slides["n_patches"].median())
    where = facets.build([f], {"n_patches": (int(f.lo), mid)}, cols)
    want = np.flatnonzero((slides["n_patches"] <= mid).to_numpy())
    assert index.filter_ids(where).tolist() == want.tolist()
    assert facets.build([f], {"n_patches": (int(f.lo), int(f.hi))}, cols) is None  # full range


def test_signature_profile_shifts_only_the_signature_genes(index):
    norm = index.model.normalizer
    up, down = [norm.genes[0].lower()], [norm.genes[1]]
    profile, unknown = uploads.signature_profile(norm, up + ["NOPE"], down)
    assert unknown == ["NOPE"] and profile.units == "log"
    z = (profile.values.iloc[0].to_numpy() - norm.mean) / norm.std
    assert z[0] == pytest.approx(uploads.SIGNATURE_SHIFT)
    assert z[1] == pytest.approx(-uploads.SIGNATURE_SHIFT)
    assert np.allclose(z[2:], 0)
    with pytest.raises(uploads.UploadError, match="both up and down"):
        uploads.signature_profile(norm, down, down)


def test_heatmap_tints_patches_by_attention(index, ui_index):  # noqa: F811
    from ui.sections.slide_search import indexed_query

    q = indexed_query(index, f"{ui_index.probe}-DX1")
    assert q.patch_l0 == 256 and q.thumb is not None and len(q.attention)
    assert images.grid_step(q.attention) == 256
    top = images.top_patches(q.attention, 3)
    assert top["score"].is_monotonic_decreasing and top["rank"].tolist() == [1, 2, 3]
    plain = np.asarray(q.thumb, np.int16)
    hot = np.asarray(images.heatmap(q), np.int16)[: plain.shape[0]]
    assert hot.shape == plain.shape
    sx = q.thumb.width / q.width
    best = q.attention.nlargest(1, "score").iloc[0]
    x, y = int((best.x + 128) * sx), int((best.y + 128) * sx)  # centre of the best patch
    assert np.abs(hot[y, x] - plain[y, x]).sum() > 30  # tinted
    covered = np.zeros(plain.shape[:2], bool)
    for px, py in q.attention[["x", "y"]].to_numpy():
        covered[
            int(py * sx) : int((py + 256) * sx) + 1, int(px * sx) : int((px + 256) * sx) + 1
        ] = 1
    assert (hot[~covered] == plain[~covered]).all()  # outside the patches: untouched
    assert pd.notna(q.attention["score"]).all()


def test_bad_molecular_upload_is_readable_and_names_the_file_not_the_temp_path(app):
    goto(app, "Molecular search")
    bad = b"sample_id,note\nS1,hello\n"
    app.file_uploader(key="mol_rna_file").upload("bad.csv", bad, "text/csv").run()
    ok(app)
    errs = errors(app)
    assert any("bad.csv: not a readable RNA profile" in e for e in errs), errs
    assert not any("threads-search-ui-" in e for e in errs)
    app.button(key="mol_go").click().run()
    ok(app)
    assert len(errors(app)) == 1 and "bad.csv: not a readable RNA profile" in errors(app)[0]
    assert app.session_state["uploads"].files() == []


def test_widgets_tell_the_browser_their_current_value_on_every_run(app, index):
    """A widget that reaches the page only in a later run (the first run was cut short by a
    click) starts from the start value that run sends; the browser sends it back as the user's
    entry with the next click. Every run must therefore send the current value, never
    Streamlit's own default (0, the first option): a fresh session once searched with k = 0."""
    goto(app, "Slide search")
    ids = index.slides["slide_id"].tolist()

    def starts() -> tuple[int, int, str]:
        k = app.number_input(key="ss_k").proto.default
        slide = app.selectbox(key="ss_slide").proto.default
        return k, slide, app.radio(key="ss_source").value

    assert starts() == (10, 0, "A slide of the archive")
    app.checkbox(key="ss_exclude").uncheck().run()  # a later run, the box's state exists
    assert starts() == (10, 0, "A slide of the archive")
    app.number_input(key="ss_k").set_value(37).run()
    app.selectbox(key="ss_slide").set_value(ids[2]).run()
    app.checkbox(key="ss_exclude").check().run()
    assert starts() == (37, 2, "A slide of the archive")
    goto(app, "Viewer")
    app.selectbox(key="vw_left").set_value(app.selectbox(key="vw_left").options[1]).run()
    app.number_input(key="vw_n").set_value(7).run()
    app.toggle(key="vw_marks").set_value(False).run()
    assert app.selectbox(key="vw_left").proto.default == 1
    assert app.number_input(key="vw_n").proto.default == 7
    assert app.toggle(key="vw_marks").proto.default is False
    goto(app, "Archive")
    app.radio(key="arch_thumbs").set_value("Large").run()
    shown = app.sidebar.multiselect(key="display:columns")
    pick = list(shown.options)[1:3]
    shown.set_value(pick).run()
    goto(app, "Archive")  # a later run
    assert app.radio(key="arch_thumbs").proto.default == 1
    shown = app.sidebar.multiselect(key="display:columns")
    assert [shown.options[i] for i in shown.proto.default] == pick
    goto(app, "Slide search")  # kept across sections, and still sent as the start
    assert starts() == (37, 2, "A slide of the archive")


def test_archive_page_is_kept_and_brought_back_into_range(app, index, monkeypatch):
    from ui.sections import archive

    monkeypatch.setattr(archive, "PAGE_SIZE", 3)
    goto(app, "Archive")
    pages = -(-len(index.slides) // 3)
    app.number_input(key="arch_page").set_value(pages).run()
    assert app.number_input(key="arch_page").proto.default == pages  # the start sent: current
    assert any(f"Page {pages} of {pages}" in c.value for c in app.caption)
    monkeypatch.setattr(archive, "PAGE_SIZE", 5)  # fewer pages now (as after a filter)
    app.run()
    ok(app)
    fewer = -(-len(index.slides) // 5)
    assert app.number_input(key="arch_page").value == fewer
    assert any(f"Page {fewer} of {fewer}" in c.value for c in app.caption)
