"""Real archives give right answers: slide ids from several input folders, non-UTF-8 file names,
inputs that cannot be slides, FEATURES_DIR reconciliation, lost slides, generation order.
Real slide files (painted pyramidal TIFF/SVS), real OpenSlide, FAISS and Parquet throughout."""

from __future__ import annotations

import json
import os
import shutil
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_bundle
from typer.testing import CliRunner

import threads_search as ts
from indexer.build import run_index
from indexer.config import IndexConfig
from indexer.core import LostSlidesError, commit, index_session
from indexer.records import list_records, record_path
from threads_search.cli import app
from threads_search.features import default_config, extract_features, read_features
from threads_search.features.extract import h5_path
from threads_search.paths import UnsafeSlideIdError, check_slide_id, slide_file
from threads_search.synth import make_cohort, make_slide, write_feature_bags
from threads_search.vectorstore import store
from threads_search.vectorstore.writer import write_generation
from threads_search.wsi import discover_slides

runner = CliRunner()
SIDE = 1024  # small painted slides: a few 512 px patches each


def _cfg():
    return default_config("hed-texture", workers=0, batch_size=8)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _table(index_dir):
    gen = store.read_manifest(index_dir)["generation_dir"]
    return pd.read_parquet(f"{gen}/slides.parquet")


def test_same_file_name_in_two_folders(tmp_path, hed_bundle):
    a, b = tmp_path / "A", tmp_path / "B"
    make_slide(a / "x.svs", SIDE, SIDE, 0.5, seed=1)
    make_slide(b / "x.svs", SIDE, SIDE, 0.5, seed=2)
    before = {d: _files(d) for d in (a, b)}
    feats = tmp_path / "feats"
    res = runner.invoke(app, ["features", str(a), str(b), "--out", str(feats), "--workers", "0"])
    assert res.exit_code == 0, res.output
    st = pd.read_parquet(feats / "status.parquet")
    assert sorted(st.slide_id) == ["A/x.svs", "B/x.svs"] and (st.state == "done").all()
    assert {d: _files(d) for d in (a, b)} == before  # nothing written next to the slides
    fa, fb = (read_features(h5_path(feats, s)) for s in ("A/x.svs", "B/x.svs"))
    assert not np.array_equal(fa.features, fb.features)  # two slides, not one overwritten

    out = tmp_path / "idx"
    args = [
        "index",
        str(a),
        str(b),
        "--model",
        str(hed_bundle),
        "--out",
        str(out),
        "--workers",
        "0",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "indexed 2" in res.output and "index: 2 slides" in res.output
    assert sorted(_table(out).slide_id) == ["A/x.svs", "B/x.svs"]
    assert {d: _files(d) for d in (a, b)} == before
    assert sorted(list_records(out)) == ["A/x.svs", "B/x.svs"]
    res = runner.invoke(app, args)  # a re-run re-embeds nothing
    assert res.exit_code == 0 and "indexed 0, unchanged 2" in res.output, res.output
    index = ts.open_index(out)
    assert index.thumbnail("A/x.svs") and index.attention("B/x.svs") is not None
    assert index.thumbnail("../../x") is None and index.thumbnail("/etc/hostname") is None
    assert index.attention("/etc/x") is None and index.attention("A/../../x") is None


def test_same_name_from_another_folder_in_a_later_run_is_not_taken_for_done(tmp_path):
    make_slide(tmp_path / "A" / "x.svs", SIDE, SIDE, 0.5, seed=1)
    make_slide(tmp_path / "B" / "x.svs", SIDE, SIDE, 0.5, seed=2)
    feats = tmp_path / "feats"
    [first] = extract_features([tmp_path / "A"], feats, _cfg())
    assert first.slide_id == "x" and first.state == "done"
    before = read_features(h5_path(feats, "x")).features
    [o] = extract_features([tmp_path / "B"], feats, _cfg())  # not "skipped (already done)"
    assert o.state == "failed" and o.error.startswith("id-conflict") and "A/x.svs" in o.error
    assert np.array_equal(read_features(h5_path(feats, "x")).features, before)
    st = pd.read_parquet(feats / "status.parquet")
    assert list(st.path) == [str(tmp_path / "A" / "x.svs")]  # the row is still A's
    (tmp_path / "A").rename(tmp_path / "A2")  # a moved archive is the same slide
    [o] = extract_features([tmp_path / "A2"], feats, _cfg())
    assert o.state == "skipped"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by discovery")
    return path


def test_slide_id_rule_with_several_roots(tmp_path):
    for rel in (
        "r1/data/x.svs",
        "r2/data/x.svs",
        "r1/B/x.svs",
        "r1/B/sub/y.svs",
        "r1/B/other/y.svs",
        "r1/C/z.tiff",
        "r1/C/sub/z.tiff",
    ):
        _touch(tmp_path / rel)
    inputs = [tmp_path / "r1/data", tmp_path / "r2/data", tmp_path / "r1/B", tmp_path / "r1/C"]
    refs = discover_slides(inputs)
    ids = {r.path.relative_to(tmp_path).as_posix(): r.slide_id for r in refs}
    assert ids == {
        "r1/data/x.svs": "r1/data/x.svs",  # same name, same folder name: parent folders too
        "r2/data/x.svs": "r2/data/x.svs",
        "r1/B/x.svs": "B/x.svs",  # same path under its root as under data/: folder name
        "r1/B/sub/y.svs": "sub/y.svs",  # stems collide: path relative to the root
        "r1/B/other/y.svs": "other/y.svs",
        "r1/C/z.tiff": "z.tiff",
        "r1/C/sub/z.tiff": "sub/z.tiff",
    }
    for sid in ids.values():
        assert check_slide_id(sid) == sid and not os.path.isabs(sid)
    # stable: the same inputs in another order give the same ids
    assert {r.slide_id for r in discover_slides(inputs[::-1])} == set(ids.values())
    # a file reachable from two inputs is taken once, under the outermost input
    nested = discover_slides([tmp_path / "r1/B/sub", tmp_path / "r1/B"])
    assert [r.slide_id for r in nested] == ["other/y.svs", "sub/y.svs", "x"]
    # files given directly from two folders
    direct = discover_slides([tmp_path / "r1/B/x.svs", tmp_path / "r1/data/x.svs"])
    assert sorted(r.slide_id for r in direct) == ["B/x.svs", "data/x.svs"]


def test_slide_file_refuses_ids_that_leave_the_folder(tmp_path):
    assert slide_file(tmp_path, "a/b.svs", ".h5") == tmp_path / "a" / "b.svs.h5"
    bad = [
        "",
        "/abs/x",
        "../x",
        "a/../../x",
        "a//b",
        "a/./b",
        "./a",
        ".hidden",
        "a/.tmp1",
        "nul\x00x",
        "new\nline",
        "back\\slash",
        "caf\udce9",
    ]
    for sid in bad:
        with pytest.raises(UnsafeSlideIdError):
            slide_file(tmp_path, sid, ".h5")
        with pytest.raises(UnsafeSlideIdError):
            record_path(tmp_path, sid)
        with pytest.raises(UnsafeSlideIdError):
            h5_path(tmp_path, sid)


def test_non_utf8_file_name_is_one_more_slide(tmp_path, hed_bundle):
    slides = tmp_path / "slides"
    good = make_slide(slides / "ok.svs", SIDE, SIDE, 0.5, seed=3).path
    odd = os.fsencode(slides) + b"/caf\xe9 \xff.svs"  # not UTF-8: Linux allows it
    shutil.copyfile(make_slide(tmp_path / "src.svs", SIDE, SIDE, 0.5, seed=4).path, odd)
    feats = tmp_path / "feats"
    res = runner.invoke(app, ["features", str(slides), "--out", str(feats), "--workers", "0"])
    assert res.exit_code == 0, res.output
    st = pd.read_parquet(feats / "status.parquet").set_index("slide_id")
    assert sorted(st.index) == ["caf%E9 %FF", "ok"] and (st.state == "done").all()
    assert st.loc["caf%E9 %FF", "path"].endswith("caf\\xe9 \\xff.svs")
    assert read_features(h5_path(feats, "caf%E9 %FF")).features.shape[0] > 0
    assert good.exists()
    out = tmp_path / "idx"
    cfg = IndexConfig(inputs=[str(slides)], model=str(hed_bundle), out=str(out), workers=0)
    s = run_index(cfg)
    assert sorted(s.indexed) == ["caf%E9 %FF", "ok"] and not s.failed
    table = _table(out).set_index("slide_id")
    assert table.loc["caf%E9 %FF", "n_patches"] > 0
    s = run_index(cfg)
    assert not s.indexed and sorted(s.skipped) == ["caf%E9 %FF", "ok"]  # stable id, no re-embed


def test_inputs_that_cannot_be_slides_are_reported(tmp_path):
    good = make_slide(tmp_path / "in" / "good.svs", SIDE, SIDE, 0.5, seed=5).path
    loop = tmp_path / "loop.svs"
    os.symlink(loop, loop)  # a link to itself
    folder = tmp_path / "folder.svs"
    folder.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    os.symlink(tmp_path / "gone.svs", tmp_path / "in" / "dangling.svs")
    out = tmp_path / "feats"
    outcomes = extract_features([loop, folder, empty, tmp_path / "in"], out, _cfg())
    by_id = {o.slide_id: o for o in outcomes}
    assert by_id["good"].state == "done"
    assert by_id["loop"].state == "failed" and by_id["loop"].error.startswith("symlink-loop")
    assert by_id["folder"].state == "failed" and "not a slide file" in by_id["folder"].error
    assert by_id["empty"].state == "failed" and "no slide files" in by_id["empty"].error
    assert by_id["dangling"].state == "failed" and "does not exist" in by_id["dangling"].error
    st = pd.read_parquet(out / "status.parquet").set_index("slide_id")
    assert set(st.index) == set(by_id) and st.loc["good", "state"] == "done"
    assert good.exists()


@pytest.fixture(scope="module")
def small_bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    cohort = make_cohort(n_patients=8, seed=5)
    write_feature_bags(cohort, root / "feats", dim=16, n_patches=(10, 20))
    model = make_bundle(root / "model", {"name": "synthetic-features", "dim": 16})
    return root, model


def test_features_dir_h5_without_status_row_is_adopted_or_reported(tmp_path, small_bags):
    root, model = small_bags
    feats = tmp_path / "feats"
    shutil.copytree(root / "feats", feats)
    st = pd.read_parquet(feats / "status.parquet")
    ids = sorted(st.slide_id)
    rowless, foreign, missing = ids[:3], ids[3], ids[4]
    st[~st.slide_id.isin([*rowless, foreign])].to_parquet(feats / "status.parquet", index=False)
    with h5py.File(h5_path(feats, foreign), "a") as f:
        f["coords"].attrs["config_hash"] = "0123456789abcdef"
    h5_path(feats, missing).unlink()
    s = run_index(IndexConfig(inputs=[str(feats)], model=str(model), out=str(tmp_path / "i")))
    assert sorted(s.adopted) == rowless
    assert set(s.failed) == {foreign, missing}
    assert "no status row" in s.failed[foreign] and "0123456789abcdef" in s.failed[foreign]
    assert "missing" in s.failed[missing]
    assert sorted(_table(tmp_path / "i").slide_id) == sorted(set(ids) - {foreign, missing})
    res = runner.invoke(
        app, ["index", str(feats), "--model", str(model), "--out", str(tmp_path / "i")]
    )
    assert res.exit_code == 1 and "adopted" in res.output and foreign in res.output


def test_commit_refuses_to_lose_slides(tmp_path, small_bags):
    root, model = small_bags
    out = tmp_path / "idx"
    cfg = IndexConfig(inputs=[str(root / "feats")], model=str(model), out=str(out))
    first = run_index(cfg)
    gen = store.read_manifest(out)["generation"]
    with index_session(cfg) as sess:
        sess.summary.indexed = [first.indexed[0], "ghost"]  # reported, but no work record
        with pytest.raises(LostSlidesError, match="ghost"):
            commit(sess)
    assert store.read_manifest(out)["generation"] == gen  # nothing committed


def _commit(out, n):
    slides = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "path": ""})
    emb = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
    return write_generation(out, slides, emb)["generation"]


@pytest.fixture
def restore_tz():
    old = os.environ.get("TZ")
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_generations_are_ordered_by_sequence_not_clock(tmp_path, restore_tz):
    out = tmp_path / "idx"
    names = []
    for i, tz in enumerate(["UTC-10", "UTC+10", "UTC+10", "UTC-3", "UTC+12", "UTC+12"]):
        os.environ["TZ"] = tz  # the clock seen by a writer jumps back and forth
        time.tzset()
        names.append(_commit(out, 3 + i))
        gens = {p.name for p in (out / store.GENERATIONS).iterdir()}
        assert names[-1] in gens and (len(names) < 2 or names[-2] in gens), (names, gens)
        assert len(gens) <= 2
        assert len(ts.open_index(out).slides) == 3 + i
    seqs = [store.generation_key(n)[0] for n in names]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # a generation left by a killed writer is the newest by sequence: removed before the next
    leftover = store.new_generation(out)
    store.remove_uncommitted(out)
    assert not leftover.exists() and (out / store.GENERATIONS / names[-1]).exists()


def test_index_written_with_time_named_generations_still_opens_and_updates(tmp_path):
    out = tmp_path / "idx"
    gen = _commit(out, 4)
    old = "20991231T235959-abcdef12"  # the previous version's names sort after any new one
    os.rename(out / store.GENERATIONS / gen, out / store.GENERATIONS / old)
    manifest = json.loads((out / store.INDEX_JSON).read_text())
    manifest["generation"] = old
    manifest.pop("generation_sequence", None)
    (out / store.INDEX_JSON).write_text(json.dumps(manifest))
    stray = out / store.GENERATIONS / "20991231T235960-00000000"  # uncommitted, old style
    stray.mkdir()
    assert len(ts.open_index(out).slides) == 4
    store.remove_uncommitted(out)
    assert not stray.exists() and (out / store.GENERATIONS / old).exists()
    new = _commit(out, 5)
    assert store.generation_key(new) > store.generation_key(old)
    assert (out / store.GENERATIONS / old).exists()  # the previous one is kept
    assert len(ts.open_index(out).slides) == 5
    newer = _commit(out, 6)
    assert not (out / store.GENERATIONS / old).exists()
    assert {p.name for p in (out / store.GENERATIONS).iterdir()} == {new, newer}


def test_feature_bags_refuse_an_unsafe_slide_id(tmp_path):
    """Synthetic feature bags name their files through ``h5_path`` like every writer."""
    cohort = make_cohort(n_patients=4, seed=5)
    cohort.slides.loc[cohort.slides.index[0], "slide_id"] = "../escape"
    with pytest.raises(UnsafeSlideIdError, match="escape"):
        write_feature_bags(cohort, tmp_path / "f", dim=16, n_patches=(5, 8))
    assert not (tmp_path / "f" / "escape.h5").exists()
    assert not list(tmp_path.rglob("escape*"))
