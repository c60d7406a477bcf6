"""A slide file replaced at the same path (a new scan, a re-exported file) never keeps the
features of the old one: the features stage, the index (local and the Ray engine's plan) and the
readers of a FEATURES_DIR (index, train) all compare the file with the fingerprint recorded
when its features were made. Real painted SVS files, real OpenSlide, FAISS and Parquet."""

from __future__ import annotations

import contextlib

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import threads_search as ts
from indexer.build import run_index
from indexer.config import IndexConfig
from indexer.core import index_session
from indexer.records import fingerprint as indexer_fingerprint
from indexer.records import list_records, read_record
from threads_search.cli import app
from threads_search.features import default_config, extract_features, read_features
from threads_search.features.extract import h5_path
from threads_search.features.reconcile import feature_sources
from threads_search.synth import make_slide
from threads_search.wsi.fingerprint import fingerprint, from_text, to_text

runner = CliRunner()
SIDE = 1024  # a few 512 px patches per slide
CHANGED = "changed since its features were made"


def _cfg():
    return default_config("hed-texture", workers=0, batch_size=8)


def _status(feats) -> pd.DataFrame:
    return pd.read_parquet(feats / "status.parquet").set_index("slide_id")


def _slides(tmp_path, *names, seed=1):
    src = tmp_path / "slides"
    for i, name in enumerate(names):
        make_slide(src / f"{name}.svs", SIDE, SIDE, 0.5, seed=seed + i)
    return src


def _rescan(path, seed=77):
    """Another slide written at the same path (a new scan)."""
    make_slide(path, SIDE, SIDE, 0.5, seed=seed)


def _fresh(tmp_path, path, name="fresh"):
    """Features of ``path`` computed from scratch in another folder."""
    [o] = extract_features([path], tmp_path / name, _cfg())
    assert o.state == "done"
    return read_features(h5_path(tmp_path / name, o.slide_id))


def test_fingerprint_moved_to_the_library_and_still_importable_from_indexer():
    assert indexer_fingerprint is fingerprint


def test_replaced_slide_is_recomputed_not_skipped(tmp_path):
    src = _slides(tmp_path, "x")
    slide = src / "x.svs"
    feats = tmp_path / "feats"
    [o] = extract_features([src], feats, _cfg())
    assert o.state == "done"
    old = read_features(h5_path(feats, "x"))
    recorded = to_text(fingerprint(slide))
    assert _status(feats).loc["x", "source_fingerprint"] == recorded
    assert old.attrs["source_fingerprint"] == recorded

    _rescan(slide)
    res = runner.invoke(app, ["features", str(src), "--out", str(feats), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert CHANGED in res.output and "x" in res.output
    new = read_features(h5_path(feats, "x"))
    fresh = _fresh(tmp_path, slide)
    assert np.array_equal(new.features, fresh.features)
    assert np.array_equal(new.coords, fresh.coords)
    assert not (
        old.features.shape == new.features.shape and np.allclose(old.features, new.features)
    )
    row = _status(feats).loc["x"]
    assert row.state == "done" and row.source_fingerprint == to_text(fingerprint(slide))
    assert row.n_patches == len(new.coords)
    [o] = extract_features([src], feats, _cfg())  # unchanged since: skipped
    assert o.state == "skipped" and not o.note


def test_replaced_slide_with_a_rowless_h5_is_not_adopted(tmp_path):
    """An h5 whose status row was lost is adopted only when it was made from the file there now
    (its ``source_fingerprint`` attribute)."""
    src = _slides(tmp_path, "x")
    feats = tmp_path / "feats"
    extract_features([src], feats, _cfg())
    old = read_features(h5_path(feats, "x")).features
    (feats / "status.parquet").unlink()
    _rescan(src / "x.svs")
    [o] = extract_features([src], feats, _cfg())
    assert o.state == "done" and CHANGED in o.note
    new = read_features(h5_path(feats, "x")).features
    assert np.array_equal(new, _fresh(tmp_path, src / "x.svs").features)
    assert not (new.shape == old.shape and np.allclose(new, old))


def test_status_written_before_fingerprints_is_trusted_then_tracked(tmp_path):
    """Rows of older versions have no fingerprint: they are trusted (an older run could not
    record one; recomputing a whole archive silently is not an option) and get the file's
    fingerprint, so a later replacement is caught."""
    src = _slides(tmp_path, "x", "y")
    feats = tmp_path / "feats"
    extract_features([src], feats, _cfg())
    st = pd.read_parquet(feats / "status.parquet").drop(columns="source_fingerprint")
    st.to_parquet(feats / "status.parquet", index=False)  # as an older version wrote it
    for sid in ("x", "y"):
        with h5py.File(h5_path(feats, sid), "a") as f:
            del f["coords"].attrs["source_fingerprint"]
    before = read_features(h5_path(feats, "x")).features
    outcomes = extract_features([src], feats, _cfg())
    assert [o.state for o in outcomes] == ["skipped", "skipped"]
    assert np.array_equal(read_features(h5_path(feats, "x")).features, before)
    st = _status(feats)
    assert st.loc["x", "source_fingerprint"] == to_text(fingerprint(src / "x.svs"))
    _rescan(src / "x.svs")
    by_id = {o.slide_id: o for o in extract_features([src], feats, _cfg())}
    assert by_id["x"].state == "done" and CHANGED in by_id["x"].note
    assert by_id["y"].state == "skipped"


def test_index_of_slide_files_embeds_the_new_features(tmp_path, hed_bundle):
    src = _slides(tmp_path, "x", "y")
    out = tmp_path / "idx"
    cfg = IndexConfig(inputs=[str(src)], model=str(hed_bundle), out=str(out), workers=0)
    assert sorted(run_index(cfg).indexed) == ["x", "y"]
    _rescan(src / "x.svs")
    s = run_index(cfg)
    assert s.indexed == ["x"] and s.skipped == ["y"] and not s.failed
    assert s.features_redone == ["x"]
    fresh = _fresh(tmp_path, src / "x.svs")
    rec = read_record(list_records(out)["x"], "x")
    assert np.array_equal(rec.coords, fresh.coords)
    want = ts.load_model(hed_bundle).embed_slide(h5_path(tmp_path / "fresh", "x"))
    np.testing.assert_allclose(rec.embedding, want, atol=1e-5)
    res = runner.invoke(
        app, ["index", str(src), "--model", str(hed_bundle), "--out", str(out), "--workers", "0"]
    )
    assert res.exit_code == 0 and "indexed 0, unchanged 2" in res.output, res.output


def test_ray_plan_recomputes_a_replaced_slide(tmp_path, hed_bundle):
    """The Ray engine's plan makes the same decision (no Ray needed to plan)."""
    from indexer.ray_plan import FeaturesPlan

    src = _slides(tmp_path, "x", "y")
    out = tmp_path / "idx"
    run_index(IndexConfig(inputs=[str(src)], model=str(hed_bundle), out=str(out), workers=0))
    _rescan(src / "x.svs")
    cfg = IndexConfig(inputs=[str(src)], model=str(hed_bundle), out=str(out), engine="ray")
    with index_session(cfg) as sess, contextlib.ExitStack() as locks:
        plan = FeaturesPlan(cfg, sess.index_dir, sess.model, sess.summary, locks)
        assert plan.need_features == {"x"}
        assert sess.summary.features_redone == ["x"]
        now = fingerprint(src / "x.svs")
        assert plan.sources["x"].source_fingerprint == now
        assert from_text(plan.status.get("y")["source_fingerprint"]) == fingerprint(src / "y.svs")


def test_features_dir_with_a_replaced_slide_is_reported_not_reembedded(tmp_path, hed_bundle):
    """``index FEATURES_DIR`` (and ``train``, same reconciliation) after the slide file changed:
    the stale features are not used; the reason says what to do."""
    src = _slides(tmp_path, "x", "y")
    feats = tmp_path / "feats"
    extract_features([src], feats, _cfg())
    out = tmp_path / "idx"
    cfg = IndexConfig(inputs=[str(feats)], model=str(hed_bundle), out=str(out))
    assert sorted(run_index(cfg).indexed) == ["x", "y"]
    _rescan(src / "x.svs")
    s = run_index(cfg)
    assert not s.indexed and s.skipped == ["y"]
    assert CHANGED in s.failed["x"] and "run the features stage" in s.failed["x"]
    found = feature_sources(feats)
    assert sorted(found.sources) == ["y"] and set(found.unusable()) == {"x"}


def test_ray_engine_makes_the_features_of_a_replaced_slide_again(tmp_path, hed_bundle):
    """End to end on a local Ray: the new file's features, h5 attribute and status row."""
    pytest.importorskip("ray")
    src = _slides(tmp_path, "x", "y")
    out = tmp_path / "idx"
    cfg = IndexConfig(
        inputs=[str(src)], model=str(hed_bundle), out=str(out), workers=1, engine="ray"
    )
    assert sorted(run_index(cfg).indexed) == ["x", "y"]
    _rescan(src / "x.svs")
    s = run_index(cfg)
    assert s.indexed == ["x"] and s.skipped == ["y"] and s.features_redone == ["x"]
    new = read_features(h5_path(out / "features", "x"))
    fresh = _fresh(tmp_path, src / "x.svs")
    np.testing.assert_allclose(new.features, fresh.features, atol=1e-6)
    assert new.attrs["source_fingerprint"] == to_text(fingerprint(src / "x.svs"))
    st = _status(out / "features")
    assert st.loc["x", "source_fingerprint"] == to_text(fingerprint(src / "x.svs"))
    rec = read_record(list_records(out)["x"], "x")
    assert st.loc["x", "n_patches"] == len(new.coords) == len(rec.coords)
