"""Batch effects made visible (issue 14, item 3): ``batch_effect_report`` on embeddings with and
without a planted site effect, ``Index.batch_effects`` on real indexes (real FAISS, real store),
``threads-search info --batch-column`` and the UI's Index info page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from query_fixtures import cli, hand, invoke  # noqa: F401  (session fixtures)
from streamlit.testing.v1 import AppTest
from ui_fixtures import ui_index  # noqa: F401  (session fixture shared with the UI tests)

from threads_search.errors import InputError
from threads_search.eval import batch_effect_report
from threads_search.query import open_index
from threads_search.query.errors import QueryError
from threads_search.vectorstore.writer import write_generation

E = 32


def _cohort(site_effect: float, n_patients: int = 120, seed: int = 0):
    """Two slides per patient: a weak subtype signal, a site offset of ``site_effect``, a
    patient effect and noise. Returns (embeddings [2n, E], frame)."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), 2)
    sub = rng.integers(0, 2, n_patients)[pid]
    site = rng.integers(0, 3, n_patients)[pid]
    centres, sites = rng.normal(size=(2, E)) * 0.6, rng.normal(size=(3, E))
    patient = rng.normal(size=(n_patients, E)) * 0.5
    x = centres[sub] + site_effect * sites[site] + patient[pid] + rng.normal(size=(len(pid), E))
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{p:03d}" for p in pid],
            "site": [f"site_{s + 1}" for s in site],
            "subtype": [f"subtype_{'AB'[s]}" for s in sub],
        }
    )
    return x, frame


def _row(report: dict, column: str) -> dict:
    assert report["columns"][column]["column"] == column
    return report["columns"][column]


def test_planted_site_effect_is_flagged_and_its_absence_is_not():
    x, frame = _cohort(site_effect=2.0)
    rep = batch_effect_report(x, frame, "site", ["subtype"], k=10)
    site, sub = _row(rep, "site"), _row(rep, "subtype")
    assert rep["exclude_same"] == "patient_id" and site["role"] == "batch"
    assert site["probe_balanced_accuracy"] > 0.9 and site["probe_chance"] == pytest.approx(1 / 3)
    assert site["knn_lift"] > 0.4 and site["knn_same_share"] > 0.75
    freq = frame["site"].value_counts(normalize=True)
    assert site["knn_chance"] == pytest.approx(float((freq**2).sum()))
    assert sub["probe_balanced_accuracy"] < site["probe_balanced_accuracy"]
    assert rep["warning"] and "site is more predictable" in rep["warning"]
    assert "than subtype" in rep["warning"]
    json.dumps(rep)  # JSON-ready: no numpy scalars, no NaN

    x0, frame0 = _cohort(site_effect=0.0)
    rep0 = batch_effect_report(x0, frame0, "site", ["subtype"], k=10)
    site0 = _row(rep0, "site")
    assert abs(site0["knn_lift"]) < 0.06, site0
    assert site0["probe_balanced_accuracy"] < site0["probe_chance"] + 0.1
    assert _row(rep0, "subtype")["knn_lift"] > 0.1  # the labels are still there
    assert rep0["warning"] is None
    # without label columns a clearly predictable site still warns, an invisible one does not
    assert batch_effect_report(x, frame, "site")["warning"].startswith("site is predictable")
    assert batch_effect_report(x0, frame0, "site")["warning"] is None


def test_neighbours_of_the_same_patient_are_left_out():
    # twin slides per patient, random sites: a twin always shares its patient's site
    rng = np.random.default_rng(3)
    base = rng.normal(size=(100, E))
    x = np.repeat(base, 2, axis=0) + 0.01 * rng.normal(size=(200, E))
    pid = np.repeat([f"P{i}" for i in range(100)], 2)
    site = np.repeat(rng.choice(["a", "b", "c", "d"], 100), 2)
    with_patient = pd.DataFrame({"patient_id": pid, "site": site})
    rep = batch_effect_report(x, with_patient, "site", k=10)
    assert rep["exclude_same"] == "patient_id"
    assert abs(_row(rep, "site")["knn_lift"]) < 0.08
    naive = batch_effect_report(x, with_patient[["site"]], "site", k=1)
    assert naive["exclude_same"] is None and _row(naive, "site")["knn_same_share"] == 1.0
    # the probe is cross-validated by patient: twins never sit in a training and a test fold
    assert _row(rep, "site")["probe_balanced_accuracy"] < 0.5


def test_missing_values_and_unusable_columns_are_reported_not_fatal():
    x, frame = _cohort(site_effect=2.0, n_patients=40)
    frame["site"] = frame["site"].where(frame.index % 10 != 0)  # 8 of 80 missing
    frame["scanner"] = "AT2"
    frame["slide_no"] = np.arange(len(frame))
    frame["lab"] = np.where(frame["patient_id"] == "P000", "rare", "common")
    frame["empty"] = None
    x[5] = np.nan
    labels = ["scanner", "slide_no", "lab", "empty", "subtype"]
    rep = batch_effect_report(x, frame, "site", labels, k=5)
    assert rep["n_excluded_embeddings"] == 1
    site = _row(rep, "site")
    assert site["status"] == "ok" and site["n_missing"] == 8 and site["n_used"] == 71
    reasons = {
        r["column"]: r["reason"] for r in rep["columns"].values() if r["status"] == "skipped"
    }
    assert set(reasons) == {"scanner", "slide_no", "lab", "empty"}
    assert "a single value ('AT2')" in reasons["scanner"]
    assert "0 of its 79 values have >= 2 patients"  # row 5: NaN embedding in reasons["slide_no"]
    assert _row(rep, "lab")["rare_values"] == ["rare"]
    assert "every value is missing" in reasons["empty"]
    assert _row(rep, "empty")["n_missing"] == 80
    assert list(rep["columns"]) == ["site", *labels]  # batch first, then the labels in order
    for r in rep["columns"].values():
        if r["status"] == "skipped":
            assert r["probe_balanced_accuracy"] is None and r["knn_lift"] is None
    assert "than subtype" in rep["warning"]  # skipped labels do not count against the batch
    with pytest.raises(InputError, match="no column 'nope'.*columns: patient_id, site"):
        batch_effect_report(x, frame, "nope")
    with pytest.raises(InputError, match="79 rows but there are 80"):
        batch_effect_report(x, frame.iloc[1:], "site")


def _write_index(root: Path, slides: pd.DataFrame, emb: np.ndarray) -> Path:
    empty = pd.DataFrame({c: pd.Series(dtype=str) for c in ("sample_id", "patient_id", "kind")})
    write_generation(root, slides, emb.astype(np.float32), empty, np.zeros((0, E), np.float32))
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A real index (FAISS + Parquet store) of 240 slides with a planted site effect."""
    x, frame = _cohort(site_effect=2.0)
    slides = frame.assign(
        slide_id=[f"{p}-DX{i % 2 + 1}" for i, p in enumerate(frame["patient_id"])],
        path="/archive/x.svs",
    )
    return _write_index(tmp_path_factory.mktemp("planted") / "index", slides, x)


def test_index_batch_effects_reads_the_store_and_resolves_the_column(planted, hand, tmp_path):  # noqa: F811
    rep = open_index(planted).batch_effects(labels=["subtype"])
    assert rep["batch_column"] == "site" and rep["source"] == "metadata"
    assert rep["n_slides"] == rep["n_measured"] == 240 and rep["warning"]
    hand_rep = hand[0].batch_effects("site", ["subtype"], k=5)
    assert hand_rep["warning"] is None and _row(hand_rep, "subtype")["knn_lift"] > 0.5

    # no site column: TCGA-shaped ids give the tissue source site; other ids a clear error
    x, frame = _cohort(site_effect=2.0, n_patients=30)
    tss = frame["site"].map({"site_1": "A1", "site_2": "B2", "site_3": "C3"})
    tcga = pd.DataFrame(
        {
            "slide_id": [f"TCGA-{t}-{i:04d}-01Z-00-DX1" for i, t in enumerate(tss)],
            "patient_id": [f"TCGA-{t}-{i:04d}" for i, t in enumerate(tss)],
            "path": "/x.svs",
        }
    )
    rep = open_index(_write_index(tmp_path / "tcga", tcga, x)).batch_effects()
    assert rep["batch_column"] == "tissue_source_site" and rep["source"] == "TCGA slide ids"
    assert _row(rep, "tissue_source_site")["knn_lift"] > 0.4
    other = tcga.assign(slide_id=[f"S{i}" for i in range(len(tcga))])
    index = open_index(_write_index(tmp_path / "other", other, x))
    with pytest.raises(QueryError, match="no column 'site'.*TCGA.*slide_id, patient_id, path"):
        index.batch_effects()
    with pytest.raises(QueryError, match="no label column 'grade'"):
        index.batch_effects("patient_id", ["grade"])


def test_cli_info_prints_the_batch_effect_table_and_json(planted, hand, cli):  # noqa: F811
    r = invoke(cli, "info --batch-column site --label-column subtype", planted)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "batch effects" in out and "site" in out and "subtype" in out and "lift" in out
    rep = open_index(planted).batch_effects("site", ["subtype"])
    site = _row(rep, "site")
    assert f"{site['probe_balanced_accuracy']:.2f} ({site['probe_chance']:.2f})" in out
    assert f"{site['knn_lift']:+.2f}" in out
    assert "warning: site is more predictable from the embeddings than subtype" in out
    r = invoke(cli, "info --format json --label-column subtype", planted)
    got = json.loads(r.stdout)["batch_effects"]
    assert got["columns"] == rep["columns"] and got["warning"] == rep["warning"]

    root = hand[0].root  # a site column: shown by default, no warning (site is noise there)
    r = invoke(cli, "info", root)
    assert r.exit_code == 0 and "batch effects" in r.stdout and "warning" not in r.stdout
    r = invoke(cli, "info --no-batch-effects", root)
    assert r.exit_code == 0 and "batch effects" not in r.stdout
    assert "batch_effects" not in json.loads(
        invoke(cli, "info --format json --no-batch-effects", root).stdout
    )
    r = invoke(cli, "info --batch-column nope", root)
    assert r.exit_code == 2 and "no column 'nope'" in r.stderr and "subtype" in r.stderr


def test_ui_index_info_shows_the_batch_effects(ui_index, monkeypatch):  # noqa: F811
    from ui.settings import ENV_INDEX

    monkeypatch.setenv(ENV_INDEX, str(ui_index.index_dir))
    app = Path(__file__).resolve().parents[1] / "ui" / "app.py"
    at = AppTest.from_file(str(app), default_timeout=120)
    at.run()
    at.sidebar.radio(key="section").set_value("Index info").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="bx_column").value == "site"  # the fixture's metadata has a site
    at.multiselect(key="bx_labels").set_value(["subtype"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    want = open_index(ui_index.index_dir).batch_effects("site", ["subtype"])
    shown = at.table[2].value
    assert shown["column"].tolist() == ["Site", "Subtype"]  # human labels (ui.display)
    assert shown["role"].tolist() == ["batch", "label"]
    for col, key in (("probe bal. acc.", "probe_balanced_accuracy"), ("lift", "knn_lift")):
        got = pd.to_numeric(shown[col], errors="coerce").tolist()
        expected = [np.nan if r[key] is None else r[key] for r in want["columns"].values()]
        assert got == pytest.approx(expected, nan_ok=True)
    assert [w.value for w in at.warning] == ([want["warning"]] if want["warning"] else [])
    assert "Batch effects" in "\n".join(m.value for m in at.markdown)
