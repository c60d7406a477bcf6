"""The features stage end to end on real files: CLI, failures, resume, kill -9, h5 import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.features import (
    default_config,
    encode_slide_file,
    extract_features,
    read_features,
)
from threads_search.synth import make_archive, make_slide, write_slide

runner = CliRunner()


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """Three painted slides (TIFF, SVS) and one corrupt file, one folder."""
    root = tmp_path_factory.mktemp("feat_archive")
    slides = make_archive(root, n_slides=3, width=3072, height=2048, mpp=0.5, seed=11)
    (root / "corrupt.svs").write_bytes(b"II*\x00" + os.urandom(4000))
    return root, slides


def _cfg(**kw):
    return default_config("hed-texture", workers=0, batch_size=8, **kw)


def test_cli_writes_layout_and_reports_the_bad_slide(small_archive, tmp_path):
    root, slides = small_archive
    out = tmp_path / "feats"
    res = runner.invoke(app, ["features", str(root), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 1, res.output  # one slide failed
    status = pd.read_parquet(out / "status.parquet").set_index("slide_id")
    assert set(status.index) == {s.slide_id for s in slides} | {"corrupt"}
    assert status.loc["corrupt", "state"] == "failed"
    assert "corrupt" in status.loc["corrupt", "error"]
    for s in slides:
        assert status.loc[s.slide_id, "state"] == "done"
        ff = read_features(out / "h5" / f"{s.slide_id}.h5")
        assert ff.features.dtype == np.float32 and ff.coords.dtype == np.int64
        assert len(ff.features) == status.loc[s.slide_id, "n_patches"] > 0
        a = ff.attrs
        assert a["patch_size"] == 512 and a["target_mpp"] == 0.5 and a["level0_mpp"] == 0.5
        assert a["patch_size_level0"] == 512 and a["encoder"] == "hed-texture"
        assert (a["level0_width"], a["level0_height"]) == (3072, 2048)
        assert (ff.coords[:, 0] + 512 <= 3072).all() and (ff.coords[:, 1] + 512 <= 2048).all()
        assert (out / "thumbnails" / f"{s.slide_id}.jpg").stat().st_size > 0
        geo = json.loads((out / "contours" / f"{s.slide_id}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and geo["features"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["patch_encoder"] == "hed-texture" and cfg["versions"]["torch"]
    assert cfg["encoder_spec"]["dim"] == ff.features.shape[1]
    assert "corrupt" in res.output  # the reason is printed

    # Re-run: nothing is redone; failed slides are not tried again unless --retry-failed, but
    # they are reported as failed again (never as "already done").
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "h5").glob("*.h5")}
    outcomes = extract_features([root], out, _cfg())
    assert {o.slide_id for o in outcomes if o.state == "failed"} == {"corrupt"}
    [again] = [o for o in outcomes if o.state == "failed"]
    assert "corrupt" in again.error and "--retry-failed" in again.error
    assert {o.state for o in outcomes if o.slide_id != "corrupt"} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in (out / "h5").glob("*.h5")} == mtimes
    retry = extract_features([root], out, _cfg(), retry_failed=True)
    assert [o.state for o in retry if o.slide_id == "corrupt"] == ["failed"]
    assert sum(o.state == "skipped" for o in retry) == 3

    # Other settings into the same folder are refused, naming the difference.
    res = runner.invoke(app, ["features", str(root), "--out", str(out), "--patch-size", "256"])
    assert res.exit_code == 2 and "patch_size" in res.output


def test_no_resolution_slide_fails_then_mpp_csv_rescues_it(tmp_path):
    rgb = make_slide(tmp_path / "tmp.tiff", 2048, 1536, 0.5, seed=3).path
    from threads_search.wsi import open_slide

    with open_slide(rgb) as s:
        img = s.read_region(0, 0, 0, s.dimensions)
    write_slide(tmp_path / "slides" / "nores.tiff", img, None)
    out = tmp_path / "feats"
    [o] = extract_features([tmp_path / "slides"], out, _cfg())
    assert o.state == "failed" and "no-mpp" in o.error and "--mpp-csv" in o.error
    csv = tmp_path / "mpp.csv"
    csv.write_text("slide,mpp\nnores,0.5\n")
    [o] = extract_features([tmp_path / "slides"], out, _cfg(), mpp_csv=csv, retry_failed=True)
    assert o.state == "done" and o.n_patches > 0


@pytest.mark.real
def test_real_frozen_slide_failures_are_retried_when_fixed_never_called_done(real_dir, tmp_path):
    """The real frozen TCGA slide has no resolution: it fails; a re-run that gives its µm/px
    tries it again without --retry-failed (and a re-run that gives nothing says it is still
    failed, not "already done"); at 4 µm/px it is too coarse for 1.5 µm/px patches until
    --max-upsample allows it, in the same FEATURES_DIR (an admission limit, not a setting that
    changes features)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    os.symlink(real_dir / "tcga_cr7395_frozen_ts1.svs", slides / "frozen.svs")
    out, csv = tmp_path / "feats", tmp_path / "mpp.csv"
    csv.write_text("slide,mpp\nfrozen,4.0\n")
    base = ["features", str(slides), "--out", str(out), "--workers", "0", "--target-mpp", "1.5"]
    res = runner.invoke(app, base)
    assert res.exit_code == 1 and "no-mpp" in res.output
    res = runner.invoke(app, base)  # nothing new given: still failed, said again
    assert res.exit_code == 1 and "failed 1" in res.output and "earlier run" in res.output
    res = runner.invoke(app, [*base, "--mpp-csv", str(csv)])  # tried again, now too coarse
    assert res.exit_code == 1 and "too-coarse" in res.output and "--max-upsample" in res.output
    res = runner.invoke(app, [*base, "--mpp-csv", str(csv), "--max-upsample", "3"])
    assert res.exit_code == 0, res.output
    status = pd.read_parquet(out / "status.parquet").set_index("slide_id")
    assert status.loc["frozen", "state"] == "done" and status.loc["frozen", "n_patches"] > 50


def test_blank_slide_is_a_clear_failure(tmp_path):
    write_slide(tmp_path / "blank.tiff", np.full((1536, 2048, 3), 242, np.uint8), 0.5)
    [o] = extract_features([tmp_path / "blank.tiff"], tmp_path / "f", _cfg())
    assert o.state == "failed" and o.error.startswith("no-tissue")


def test_encode_slide_file_matches_the_h5(small_archive, tmp_path):
    root, slides = small_archive
    out = tmp_path / "f"
    extract_features([slides[0].path], out, _cfg())
    feats, coords = encode_slide_file(slides[0].path, "hed-texture", device="cpu")
    ff = read_features(out / "h5" / f"{slides[0].slide_id}.h5")
    assert np.array_equal(coords, ff.coords)
    assert np.allclose(feats, ff.features, atol=1e-6)


def _h5_states(out: Path) -> dict:
    return {p.stem: read_features(p).features for p in sorted((out / "h5").glob("*.h5"))}


@pytest.mark.parametrize("delay", [0.8, 2.5])
def test_kill_9_mid_run_leaves_nothing_untrustworthy_and_resumes(tmp_path_factory, delay):
    root = tmp_path_factory.mktemp("kill_archive")
    make_archive(root, n_slides=4, width=3072, height=2048, mpp=0.5, seed=21)
    ref_out = tmp_path_factory.mktemp("ref")
    extract_features([root], ref_out, _cfg())
    reference = _h5_states(ref_out)
    out = tmp_path_factory.mktemp("killed")
    cmd = [
        sys.executable,
        "-m",
        "threads_search",
        "features",
        str(root),
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever is visible under its final name is complete and correct.
    for sid, feats in _h5_states(out).items():
        assert np.allclose(feats, reference[sid])
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    final = _h5_states(out)
    assert final.keys() == reference.keys()
    for sid in reference:
        assert np.allclose(final[sid], reference[sid])
    assert not [p for p in out.rglob(".*tmp*")], "temporary files left behind"
    status = pd.read_parquet(out / "status.parquet")
    assert (status.state == "done").all() and len(status) == 4


def _write_foreign_h5(path, n, dim, attrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        ds = f.create_dataset("coords", data=rng.integers(0, 10000, (n, 2)))
        for k, v in attrs.items():
            ds.attrs[k] = v


def test_import_trident_and_clam_h5(tmp_path):
    src = tmp_path / "src"
    trident = {"patch_size": 512, "patch_size_level0": 1024, "target_magnification": 20}
    _write_foreign_h5(src / "features_conch_v15" / "caseA.h5", 30, 768, trident)
    clam = {"patch_size": 256, "patch_level": 0, "downsample": [1.0, 1.0]}
    _write_foreign_h5(src / "h5_files" / "caseB.h5", 12, 768, clam)
    with h5py.File(src / "broken.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((3, 768), np.float32))
    _write_foreign_h5(src / "other_dim.h5", 5, 1024, trident)
    out = tmp_path / "feats"
    res = runner.invoke(
        app,
        ["features", "--import-h5", str(src), "--out", str(out), "--patch-encoder", "conch_v15"],
    )
    assert res.exit_code == 1, res.output
    status = pd.read_parquet(out / "status.parquet").set_index("slide_id")
    assert status.loc["caseA", "state"] == "done" and status.loc["caseB", "state"] == "done"
    assert "coords" in status.loc["broken", "error"]
    assert "dim" in status.loc["other_dim", "error"]
    a = read_features(out / "h5" / "caseA.h5")
    assert a.features.shape == (30, 768) and a.attrs["patch_size_level0"] == 1024
    assert a.attrs["level0_mpp"] == pytest.approx(0.25) and a.attrs["encoder"] == "conch_v15"
    b = read_features(out / "h5" / "caseB.h5")
    assert b.attrs["patch_size_level0"] == 256
    assert json.loads((out / "config.json").read_text())["patch_encoder"] == "conch_v15"
