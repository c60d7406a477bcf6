"""Query engine: open_index, search_slides / search_by_molecule / search_molecules / classify on
small synthetic indexes with known ground truth, exact filtered search, same-patient exclusion,
new slides embedded on the fly, thread safety, format errors and the CLI commands."""

from __future__ import annotations

import json
import threading
import warnings
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from threads_search.cli.query import register
from threads_search.query import (
    FilterError,
    IndexFormatError,
    QueryError,
    SmallClassWarning,
    open_index,
)
from threads_search.query.filters import Contains, NotNull, Range, build_where, combine_where
from threads_search.vectorstore import store
from threads_search.vectorstore.store import IndexNotFoundError
from threads_search.vectorstore.writer import write_generation

E = 32
N_PATIENTS = 30


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _class_of(p: int) -> int:
    return 0 if p < 14 else (1 if p < 24 else 2)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """30 patients x 2 slides around 3 class centres; an RNA sample per patient (near the
    patient's slides) and a DNA sample for even patients. No model bundle on disk."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hand")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(3, E)) * 2.0
    base = np.array([centres[_class_of(p)] + rng.normal(size=E) for p in range(N_PATIENTS)])
    slides, s_emb = [], []
    for p in range(N_PATIENTS):
        for j in (1, 2):
            slides.append(
                {
                    "slide_id": f"P{p:03d}-DX{j}", "path": f"/archive/P{p:03d}-DX{j}.svs",
                    "patient_id": f"P{p:03d}", "mpp": 0.5, "width": 1000, "height": 800,
                    "n_patches": 10 + p, "tissue_area_mm2": 1.5,
                    "subtype": f"class_{_class_of(p)}", "site": "ABC"[p % 3],
                    "age": 30 + p, "grade": None if p % 4 == 0 else f"G{1 + p % 3}",
                }
            )  # fmt: skip
            s_emb.append(base[p] + 0.15 * rng.normal(size=E))
    mol, m_emb = [], []
    for p in range(N_PATIENTS):
        for kind in ("rna", "dna") if p % 2 == 0 else ("rna",):
            mol.append({"sample_id": f"P{p:03d}-{kind[0].upper()}", "patient_id": f"P{p:03d}",
                        "kind": kind, "subtype": f"class_{_class_of(p)}",
                        "site": "ABC"[p % 3]})  # fmt: skip
            m_emb.append(base[p] + 0.15 * rng.normal(size=E))
    thumbs = {}
    for s in slides[:4]:
        path = root / f"{s['slide_id']}.jpg"
        Image.new("RGB", (8, 8), (200, 100, 100)).save(path)
        thumbs[s["slide_id"]] = path
    att = {slides[0]["slide_id"]: pd.DataFrame({"x": [0, 512], "y": [0, 0], "score": [0.3, 0.7]})}
    index_dir = root / "index"
    write_generation(index_dir, pd.DataFrame(slides), np.array(s_emb, np.float32),
                     pd.DataFrame(mol), np.array(m_emb, np.float32), attention=att,
                     thumbnails=thumbs, manifest={"model": {"dir": "model"}})  # fmt: skip
    index = open_index(index_dir)
    vec_s = _unit(np.array(s_emb))[np.argsort([s["slide_id"] for s in slides], kind="stable")]
    return index, vec_s


def _brute(vecs, q, ids, k):
    sc = vecs[ids] @ _unit(q)
    order = np.lexsort((ids, -sc))[:k]
    return ids[order], sc[order]


def test_open_tables_manifest_and_files(hand):
    index, vecs = hand
    s, m = index.slides, index.molecular
    assert len(s) == 2 * N_PATIENTS and list(s["slide_id"]) == sorted(s["slide_id"])
    assert {"subtype", "site", "age", "grade"} <= set(s.columns)
    assert len(m) == N_PATIENTS + N_PATIENTS // 2 and set(m["kind"]) == {"rna", "dna"}
    assert index.manifest["counts"] == {"slides": 60, "molecular": 45}
    assert index.dim == E
    t = index.thumbnail("P000-DX1")
    assert t and Path(t).is_absolute() and Path(t).is_file()
    assert index.thumbnail("P029-DX2") is None
    assert list(index.attention("P000-DX1")["score"]) == [0.3, 0.7]
    info = index.info()
    assert info["counts"]["slides"] == 60 and info["faiss"]["slides"]["type"] == "flat"
    assert info["faiss"]["slides"]["recall_at_k"] == pytest.approx(1.0)


def test_search_slides_by_id_excludes_self_and_patient(hand):
    index, vecs = hand
    ids = list(index.slides["slide_id"])
    q = ids.index("P005-DX1")
    df = index.search_slides("P005-DX1", k=8)
    assert list(df["rank"]) == list(range(1, 9))
    assert list(df.columns[:3]) == ["rank", "score", "slide_id"] and "thumbnail" in df
    assert not (df["patient_id"] == "P005").any()
    assert df["score"].is_monotonic_decreasing
    allowed = np.array([i for i, s in enumerate(ids) if not s.startswith("P005")])
    want, sc = _brute(vecs, vecs[q], allowed, 8)
    assert list(df["slide_id"]) == [ids[i] for i in want]
    np.testing.assert_allclose(df["score"], sc, atol=1e-5)
    # without patient exclusion the other slide of the same patient comes first, never itself
    df2 = index.search_slides("P005-DX1", k=3, exclude_same_patient=False)
    assert df2["slide_id"].iloc[0] == "P005-DX2" and "P005-DX1" not in set(df2["slide_id"])
    # a vector query: nothing excluded, the slide itself first with cosine 1
    df3 = index.search_slides(vecs[q] * 3.0, k=3)
    assert df3["slide_id"].iloc[0] == "P005-DX1" and df3["score"].iloc[0] == pytest.approx(1)
    # the path of an indexed slide is that slide
    df4 = index.search_slides(Path("/archive/P005-DX1.svs"), k=8)
    assert list(df4["slide_id"]) == list(df["slide_id"])


FILTERS = [
    ("site = 'A'", lambda s: s.site == "A"),
    ("age > 50 AND subtype <> 'class_0'", lambda s: (s.age > 50) & (s.subtype != "class_0")),
    ("grade IS NULL", lambda s: s.grade.isna()),
    ("subtype IN ('class_1', 'class_2') OR age BETWEEN 31 AND 33",
     lambda s: s.subtype.isin(["class_1", "class_2"]) | s.age.between(31, 33)),
    ("lower(site) LIKE 'b%' OR (coalesce(grade, 'none') = 'none' AND NOT (age < 40))",
     lambda s: (s.site == "B") | (s.grade.isna() & (s.age >= 40))),
]  # fmt: skip


@pytest.mark.parametrize("where,mask", FILTERS, ids=[f[0] for f in FILTERS])
def test_filters_restrict_exactly(hand, where, mask):
    index, vecs = hand
    s = index.slides
    ids = np.flatnonzero(mask(s).fillna(False).to_numpy())
    np.testing.assert_array_equal(index.filter_ids(where), ids)
    assert list(index.select(where)["slide_id"]) == list(s["slide_id"].iloc[ids])
    for query in ("P003-DX2", "P020-DX1", "P027-DX1"):
        q = int(np.flatnonzero(s["slide_id"] == query)[0])
        allowed = np.array([i for i in ids if s["patient_id"].iat[i] != s["patient_id"].iat[q]])
        df = index.search_slides(query, k=7, where=where)
        want, sc = _brute(vecs, vecs[q], allowed, 7)
        assert list(df["slide_id"]) == list(s["slide_id"].iloc[want])
        np.testing.assert_allclose(df["score"], sc, atol=1e-5)


def test_filter_selecting_nothing_and_unknown_column(hand):
    index, _ = hand
    assert index.search_slides("P001-DX1", where="age > 1000").empty
    with pytest.raises(FilterError, match="unknown column 'nope'.*available columns: age"):
        index.search_slides("P001-DX1", where="nope = 1")
    with pytest.raises(FilterError, match="failed on the slides table"):
        index.search_slides("P001-DX1", where="site > 3")  # type error, raised by DuckDB


def test_facet_filters(hand):
    index, _ = hand
    s = index.slides
    cols = index.filter_columns("slides")
    where = build_where({"site": ["A", "B"], "age": Range(35, 48), "grade": NotNull,
                         "subtype": Contains("SS_1")}, cols)  # fmt: skip
    mask = (s.site.isin(["A", "B"]) & s.age.between(35, 48) & s.grade.notna()
            & (s.subtype == "class_1"))  # fmt: skip
    np.testing.assert_array_equal(index.filter_ids(where), np.flatnonzero(mask))
    quoted = build_where({"site": "it's", "grade": None}, cols)
    assert index.filter_ids(quoted).size == 0
    assert index.filter_ids(build_where({"site": []}, cols)).size == 0
    both = combine_where(where, "age < 40", None)
    np.testing.assert_array_equal(index.filter_ids(both), np.flatnonzero(mask & (s.age < 40)))
    with pytest.raises(FilterError, match="unknown facet column"):
        build_where({"nope": 1}, cols)
    with pytest.raises(FilterError, match="unbalanced"):
        combine_where("site = 'A'", "1=1) OR (1=1")


def test_search_by_molecule_sample_ids(hand):
    index, _ = hand
    df = index.search_by_molecule(rna="P006-R", k=4)
    assert set(df["slide_id"].iloc[:2]) == {"P006-DX1", "P006-DX2"}
    both = index.search_by_molecule(rna="P006-R", dna="P006-D", k=2)
    assert set(both["slide_id"]) == {"P006-DX1", "P006-DX2"}
    ex = index.search_by_molecule(rna="P006-R", k=4, exclude_same_patient=True)
    assert not (ex["patient_id"] == "P006").any()
    filt = index.search_by_molecule(rna="P006-R", k=50, where="site = 'B'")
    assert set(filt["site"]) == {"B"} and len(filt) == 20
    with pytest.raises(QueryError, match="it is a dna sample"):
        index.search_by_molecule(rna="P006-D")
    with pytest.raises(QueryError, match="no such sample"):
        index.search_by_molecule(dna="nope")
    with pytest.raises(QueryError, match="give rna= and/or dna="):
        index.search_by_molecule()


def test_search_molecules(hand):
    index, _ = hand
    df = index.search_molecules("P010-DX1", k=5, exclude_same_patient=True)
    assert list(df.columns[:3]) == ["rank", "score", "sample_id"]
    assert not (df["patient_id"] == "P010").any()
    own = index.search_molecules("P010-DX1", k=2)
    assert set(own["sample_id"]) == {"P010-R", "P010-D"}
    dna = index.search_molecules("P010-DX1", k=40, kind="dna", where="site <> 'A'")
    assert set(dna["kind"]) == {"dna"} and "A" not in set(dna["site"])
    assert len(dna) == len(index.select("kind = 'dna' AND site <> 'A'", "molecular"))


def test_cross_modal_searches_share_the_same_patient_rule(hand):
    """Both cross-modal directions keep the query patient's own results by default (they are
    the expected match) and drop them with exclude_same_patient=True; only slide → slide
    search drops them by default. Before, search_molecules dropped them by default while
    search_by_molecule kept them."""
    index, _ = hand
    to_samples = index.search_molecules("P010-DX1", k=2)
    to_slides = index.search_by_molecule(rna="P010-R", k=2)
    assert set(to_samples["patient_id"]) == set(to_slides["patient_id"]) == {"P010"}
    for df in (
        index.search_molecules("P010-DX1", k=10, exclude_same_patient=True),
        index.search_by_molecule(rna="P010-R", k=10, exclude_same_patient=True),
        index.search_slides("P010-DX1", k=10),
    ):
        assert len(df) == 10 and "P010" not in set(df["patient_id"])


def test_classify_molecular_prototypes(hand):
    index, vecs = hand
    with pytest.warns(SmallClassWarning, match="class_2 \\(9\\)"):
        df = index.classify("subtype", min_samples=10)
    assert df.attrs["class_sizes"] == {"class_0": 21, "class_1": 15, "class_2": 9}
    assert df.attrs["excluded_classes"] == {"class_2": 9}
    assert list(df.columns) == ["slide_id", "predicted", "score_class_0", "score_class_1",
                                "subtype"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = index.classify("subtype", min_samples=3)
    assert (df["predicted"] == df["subtype"]).mean() == 1.0
    m = index.molecular
    mv = _unit(np.array([index._m.rows([i])[0] for i in range(len(m))]))
    for c in ["class_0", "class_1", "class_2"]:
        proto = _unit(mv[(m["subtype"] == c).to_numpy()].mean(0))
        np.testing.assert_allclose(df[f"score_{c}"], vecs @ proto, atol=1e-5)
    sub = index.classify("subtype", where="site = 'C'", slides=["P002-DX1", "P003-DX1"],
                         min_samples=3)  # fmt: skip
    assert list(sub["slide_id"]) == ["P002-DX1"]
    rna_only = index.classify("subtype", kind="rna", min_samples=3)
    assert rna_only.attrs["class_sizes"] == {"class_0": 14, "class_1": 10, "class_2": 6}
    with pytest.raises(QueryError, match="no column 'nope' in the molecular table"):
        index.classify("nope")
    with pytest.raises(QueryError, match="no class has at least 100"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.classify("subtype", min_samples=100)


def test_classify_slide_prototypes_leave_one_out(hand):
    index, vecs = hand
    df = index.classify("grade", prototypes="slide", min_samples=2)
    s = index.slides
    labels = s["grade"].fillna("").to_numpy()
    for i in (2, 5, 13):  # rows with a grade
        assert labels[i]
        for c in sorted(set(labels) - {""}):
            members = np.flatnonzero((labels == c) & (np.arange(len(s)) != i))
            want = vecs[i] @ _unit(vecs[members].mean(0))
            assert df[f"score_{c}"].iat[i] == pytest.approx(want, abs=1e-5)
    assert df.attrs["prototypes"] == "slide" and sum(df.attrs["class_sizes"].values()) == 44
    assert df["grade"].isna().sum() == 16  # unlabelled slides are scored, not used


def test_concurrent_queries_match_serial(hand):
    index, vecs = hand
    jobs = [
        lambda i=i: index.search_slides(f"P{i:03d}-DX1", k=5, where="age > 35" if i % 2 else None)
        for i in range(12)
    ] + [lambda i=i: index.search_by_molecule(rna=f"P{i:03d}-R", k=3) for i in range(6)]
    jobs += [lambda i=i: index.search_molecules(vecs[i], k=4, where=f"site = '{'ABC'[i % 3]}'")
             for i in range(6)]  # fmt: skip
    serial = [j() for j in jobs]
    fresh = open_index(index.root)  # lazy parts built concurrently too
    warmed = open_index(index.root)
    warmed.warm()
    assert warmed.search_slides("P001-DX1", k=5, where="age > 35").equals(serial[1])
    results: dict[tuple, tuple[int, pd.DataFrame]] = {}
    errors = []

    def worker(t):
        try:
            results[(t, "fresh")] = (1, fresh.search_slides("P001-DX1", k=5, where="age > 35"))
            for i, j in enumerate(jobs):
                if (i + t) % 2 == 0:
                    results[(t, i)] = (i, j())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 * (1 + len(jobs) // 2)
    for _, (i, got) in results.items():
        pd.testing.assert_frame_equal(got, serial[i])


def test_query_errors(hand, tmp_path):
    index, _ = hand
    with pytest.raises(QueryError, match="neither a slide_id of this index"):
        index.search_slides("no-such-slide")
    with pytest.raises(QueryError, match="shape \\(5,\\)"):
        index.search_slides(np.ones(5))
    with pytest.raises(QueryError, match="k must be >= 1"):
        index.search_slides("P001-DX1", k=0)
    with pytest.raises(QueryError, match="needs a query whose patient is known"):
        index.search_slides(np.ones(E), exclude_same_patient=True)
    f = tmp_path / "new.h5"
    f.write_bytes(b"not a slide")
    with pytest.raises(QueryError, match="cannot load the index's model bundle"):
        index.search_slides(f)  # the model is only needed (and loaded) now


def test_missing_and_wrong_version(hand, tmp_path):
    with pytest.raises(IndexNotFoundError, match="index.json is missing"):
        open_index(tmp_path / "nothing")
    index, _ = hand
    src = index.root
    for version, hint in ((store.FORMAT_VERSION + 1, "upgrade threads-search"), (0, "rebuild")):
        doc = json.loads((src / store.INDEX_JSON).read_text())
        doc["format_version"] = version
        (tmp_path / "v").mkdir(exist_ok=True)
        (tmp_path / "v" / store.INDEX_JSON).write_text(json.dumps(doc))
        (tmp_path / "v" / store.GENERATIONS).mkdir(exist_ok=True)
        link = tmp_path / "v" / store.GENERATIONS / doc["generation"]
        if not link.exists():
            link.symlink_to(Path(index.generation_dir))
        with pytest.raises(IndexFormatError, match=f"format version {version}.*{hint}"):
            open_index(tmp_path / "v")


# -- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)
    return app


def test_cli_search_formats(hand, cli):
    index, _ = hand
    runner = CliRunner()
    r = runner.invoke(cli, ["search", str(index.root), "--slide", "P004-DX1", "-k", "3",
                            "--format", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    want = index.search_slides("P004-DX1", k=3)
    assert [x["slide_id"] for x in rows] == list(want["slide_id"])
    r = runner.invoke(cli, ["search", str(index.root), "--slide", "P004-DX1", "--where",
                            "site = 'C'", "--format", "csv"])  # fmt: skip
    got = pd.read_csv(StringIO(r.stdout))
    assert r.exit_code == 0 and set(got["site"]) == {"C"} and len(got) == 10
    r = runner.invoke(cli, ["search", str(index.root), "--slide", "P004-DX1"])
    assert r.exit_code == 0 and want["slide_id"].iloc[0] in r.stdout
    r = runner.invoke(cli, ["search", str(index.root), "--sample", "P008-R", "-k", "2",
                            "--format", "json"])  # fmt: skip
    assert {x["slide_id"] for x in json.loads(r.stdout)} == {"P008-DX1", "P008-DX2"}
    r = runner.invoke(cli, ["search", str(index.root), "--slide", "P004-DX1", "--molecules",
                            "--same-patient", "-k", "2", "--format", "json"])  # fmt: skip
    assert {x["sample_id"] for x in json.loads(r.stdout)} == {"P004-R", "P004-D"}
    r = runner.invoke(cli, ["search", str(index.root), "--slide", "P004-DX1", "-k", "3",
                            "--columns", "slide_id, site", "--format", "csv"])  # fmt: skip
    got = pd.read_csv(StringIO(r.stdout))
    assert r.exit_code == 0 and list(got.columns) == ["rank", "score", "slide_id", "site"]
    assert list(got["slide_id"]) == list(want["slide_id"])


def test_cli_classify_info_and_errors(hand, cli):
    index, _ = hand
    runner = CliRunner()
    r = runner.invoke(cli, ["classify", str(index.root), "--label", "subtype", "--format",
                            "json", "--min-samples", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 60 and all(x["predicted"] == x["subtype"] for x in rows)
    assert "accuracy on 60 labelled slides: 1.000" in r.stderr
    r = runner.invoke(cli, ["classify", str(index.root), "--label", "subtype", "--prototypes",
                            "slide", "--where", "site = 'A'"])  # fmt: skip
    assert r.exit_code == 0 and "P000-DX1" in r.stdout
    r = runner.invoke(cli, ["info", str(index.root)])
    assert r.exit_code == 0 and "flat" in r.stdout and index.manifest["generation"] in r.stdout
    r = runner.invoke(cli, ["info", str(index.root), "--format", "json"])
    assert json.loads(r.stdout)["counts"] == {"slides": 60, "molecular": 45}
    for args, msg in (
        (["search", str(index.root), "--slide", "zzz"], "neither a slide_id"),
        (["search", str(index.root), "--slide", "P001-DX1", "--where", "x; DROP"], "';'"),
        (["search", str(index.root)], "give --slide"),
        (["search", str(index.root) + "-missing", "--slide", "a"], "index.json is missing"),
        (["classify", str(index.root), "--label", "nope"], "no column 'nope'"),
        (["search", str(index.root), "--slide", "P001-DX1", "--format", "xml"], "--format"),
        (
            ["search", str(index.root), "--slide", "P001-DX1", "--columns", "slide_id,nope"],
            "no column 'nope'",
        ),
    ):
        r = runner.invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.stderr, (args, r.stderr)


# -- queries embedded on the fly with the index's model ---------------------------------------
@pytest.fixture(scope="module")
def modelled(tmp_path_factory):
    """A make_cohort index whose model (untrained, seeded, hed-texture features) lives in
    INDEX_DIR/model. Slide embeddings = the patient's RNA embedding + small noise, so a profile
    must retrieve its own patient's slide; TWIN-H5 / TWIN-SLIDE are the model's embeddings of a
    feature file and of a painted slide file kept outside the index's paths."""
    import torch

    from threads_search.features import write_features
    from threads_search.models.bundle import build_model, save_model
    from threads_search.molecular import RnaNormalizer
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth import make_cohort, make_slide

    root = tmp_path_factory.mktemp("modelled")
    cohort = make_cohort(n_patients=12, n_genes=40, n_panel=12, modality=(0.75, 0.25, 0.0),
                         seed=3)  # fmt: skip
    spec = get_patch_encoder_spec("hed-texture")
    torch.manual_seed(0)
    rna = cohort.rna.set_index("sample_id")
    model = build_model(
        {"name": spec.name, "dim": spec.dim},
        slide_config={"heads": 1, "head_dim": 32, "attn_dim": 16, "dropout": 0.0},
        normalizer=RnaNormalizer.fit(np.log1p(rna), units="tpm"),
        rna_config={"hidden_dims": [64]},
        genes_dna=list(cohort.truth["panel"]),
        dna_config={"hidden_dims": [32]},
    ).eval()
    index_dir = root / "index"
    save_model(model, index_dir / "model")
    rna_emb = model.embed_rna(cohort.rna)
    dna = cohort.dna_matrix()
    dna_emb = model.embed_dna(dna)
    gaps = np.linalg.norm(rna_emb[:, None] - rna_emb[None], axis=-1)
    noise = 0.05 * gaps[~np.eye(len(gaps), dtype=bool)].min() / np.sqrt(rna_emb.shape[1])
    rng = np.random.default_rng(0)
    rna_of = dict(zip(cohort.samples.query("kind == 'rna'")["patient_id"], range(len(rna)),
                      strict=True))  # fmt: skip
    slides = cohort.slides[cohort.slides["patient_id"].isin(rna_of)][["slide_id", "patient_id"]]
    emb = [
        rna_emb[rna_of[p]] + noise * rng.normal(size=rna_emb.shape[1]) for p in slides.patient_id
    ]
    h5 = root / "new.h5"
    feats = rng.normal(size=(20, spec.dim)).astype(np.float32)
    write_features(h5, feats, np.zeros((20, 2), np.int64), {"patch_encoder": spec.name,
                                                             "target_mpp": 0.5})  # fmt: skip
    slide = make_slide(root / "new.tiff", 1536, 1024, 0.5, seed=1).path
    twins = {"TWIN-H5": model.embed_slide(h5), "TWIN-SLIDE": model.embed_slide(slide)}
    table = pd.concat([slides, pd.DataFrame({"slide_id": list(twins), "patient_id": ["X1", "X2"]})])
    table["path"] = "/archive/" + table["slide_id"] + ".svs"
    mol = pd.concat([pd.DataFrame({"sample_id": rna.index, "kind": "rna"}),
                     pd.DataFrame({"sample_id": dna.index, "kind": "dna"})])  # fmt: skip
    mol["patient_id"] = mol["sample_id"].str[:12]
    write_generation(index_dir, table, np.vstack(emb + list(twins.values())), mol,
                     np.vstack([rna_emb, dna_emb]), manifest={"model": {"dir": "model"}})  # fmt: skip
    return open_index(index_dir), cohort, h5, Path(slide)


def test_profile_retrieves_its_own_slide(modelled):
    index, cohort, _, _ = modelled
    rna = cohort.rna.set_index("sample_id")
    for i, sid in enumerate(rna.index[:6]):
        profile = [rna.loc[sid].to_dict(), rna.loc[sid], rna.loc[[sid]].reset_index()][i % 3]
        df = index.search_by_molecule(rna=profile, k=3)
        assert df["patient_id"].iloc[0] == sid[:12], (sid, df)
        assert df["score"].iloc[0] > 0.99
        by_id = index.search_by_molecule(rna=sid, k=3)
        assert list(by_id["slide_id"]) == list(df["slide_id"])
        np.testing.assert_allclose(by_id["score"], df["score"], atol=1e-5)
    with pytest.raises(QueryError, match="one profile"):
        index.search_by_molecule(rna=rna.iloc[:2].reset_index())


def test_dna_profile_and_combined_query(modelled):
    index, cohort, _, _ = modelled
    dna = cohort.dna_matrix()
    sid = dna.index[dna.sum(axis=1).to_numpy().argmax()]
    genes = [g for g in dna.columns if dna.loc[sid, g]]
    by_profile = index.search_by_molecule(dna=genes, k=4)
    by_id = index.search_by_molecule(dna=sid, k=4)
    assert list(by_profile["slide_id"]) == list(by_id["slide_id"])
    rna_id = sid[:12] + "-01R"
    both = index.search_by_molecule(rna=rna_id, dna=genes, k=4)
    q = (index._m.rows([np.flatnonzero(index.molecular["sample_id"] == rna_id)[0]])[0]
         + index.model.embed_dna(genes)) / 2  # fmt: skip
    assert list(both["slide_id"]) == list(index.search_slides(q, k=4)["slide_id"])


def test_new_slide_files_are_embedded(modelled, tmp_path):
    index, _, h5, slide = modelled
    df = index.search_slides(h5, k=3)
    assert df["slide_id"].iloc[0] == "TWIN-H5" and df["score"].iloc[0] == pytest.approx(1, abs=1e-4)
    df = index.search_slides(str(slide), k=3)
    assert df["slide_id"].iloc[0] == "TWIN-SLIDE"
    assert df["score"].iloc[0] == pytest.approx(1, abs=1e-4)
    mol = index.search_molecules(h5, k=2)
    assert len(mol) == 2 and mol["score"].is_monotonic_decreasing
    for name, data in (("bad.h5", b"not hdf5"), ("bad.svs", b"not a slide")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(QueryError, match=f"cannot embed slide .*{name}"):
            index.search_slides(tmp_path / name)


def test_cli_search_profile_files(modelled, tmp_path):
    index, cohort, _, _ = modelled
    app = typer.Typer()
    register(app)
    rna_file = tmp_path / "rna.csv"
    cohort.rna.to_csv(rna_file, index=False)
    sid = cohort.rna["sample_id"].iloc[2]
    r = CliRunner().invoke(app, ["search", str(index.root), "--rna", str(rna_file), "--sample",
                                 sid, "-k", "1", "--format", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["patient_id"] == sid[:12]
    r = CliRunner().invoke(app, ["search", str(index.root), "--rna", str(rna_file)])
    assert r.exit_code == 2 and "choose one with --sample" in r.stderr


def test_model_dimension_mismatch(hand, modelled):
    index, _ = hand
    other, _, h5, _ = modelled
    wrong = open_index(index.root, model=other.model)  # 1024-d model over a 32-d index
    with pytest.raises(QueryError, match="embeds in 1024-d, the index holds 32-d"):
        wrong.search_slides(h5)
    assert len(wrong.search_slides("P001-DX1", k=2)) == 2  # stored vectors need no model


def test_cli_same_patient_flag_and_flag_names_in_errors(hand, cli):
    """--same-patient/--no-same-patient reach every search; library advice naming a Python
    argument (min_samples) reads as the CLI flag (--min-samples)."""
    index, _ = hand
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "search",
            str(index.root),
            "--sample",
            "P008-R",
            "-k",
            "4",
            "--no-same-patient",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "P008" not in {x["patient_id"] for x in json.loads(r.stdout)}
    with pytest.warns(SmallClassWarning):
        r = runner.invoke(
            cli, ["classify", str(index.root), "--label", "subtype", "--min-samples", "100"]
        )
    assert r.exit_code == 2
    err = " ".join(r.stderr.split())
    assert "lower --min-samples" in err and "min_samples" not in err


def test_metadata_named_like_result_columns_keeps_results_valid(tmp_path, cli):
    """An index whose slide table has ``score``/``rank`` columns (written before they were
    renamed at index time): results carry them as meta_score/meta_rank, and --format json works
    (before: two 'score' columns, and to_json refused the frame)."""
    rng = np.random.default_rng(0)
    slides = pd.DataFrame(
        {"slide_id": [f"S{i}" for i in range(6)], "score": range(6), "rank": list("abcdef")}
    )
    write_generation(tmp_path / "idx", slides, rng.normal(size=(6, 8)).astype(np.float32))
    df = open_index(tmp_path / "idx").search_slides("S0", k=3)
    assert list(df.columns[:2]) == ["rank", "score"] and df["rank"].tolist() == [1, 2, 3]
    assert {"meta_score", "meta_rank"} <= set(df.columns) and df.columns.is_unique
    r = CliRunner().invoke(
        cli, ["search", str(tmp_path / "idx"), "--slide", "S0", "-k", "3", "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    assert [x["slide_id"] for x in json.loads(r.stdout)] == list(df["slide_id"])
