"""The end-of-run summary of ``threads-search features`` tells what happened: patches *encoded*
when slides were read and encoded, patches *imported* (nothing encoded) with ``--import-h5``."""

from __future__ import annotations

import h5py
import numpy as np
from typer.testing import CliRunner

from threads_search.cli import app

runner = CliRunner()


def _summary(output: str) -> str:
    """The summary line, whatever the console width wrapped."""
    flat = " ".join(output.split())
    start = flat.index("done ")
    return flat[start:]


def _write_trident_h5(path, n, dim=768):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        ds = f.create_dataset("coords", data=rng.integers(0, 10000, (n, 2)))
        ds.attrs.update(patch_size=512, patch_size_level0=1024, target_magnification=20)


def test_import_summary_says_imported_not_encoded(tmp_path):
    src = tmp_path / "trident"
    _write_trident_h5(src / "caseA.h5", 30)
    _write_trident_h5(src / "caseB.h5", 12)
    out = tmp_path / "feats"
    res = runner.invoke(
        app,
        ["features", "--import-h5", str(src), "--out", str(out), "--patch-encoder", "conch_v15"],
    )
    assert res.exit_code == 0, res.output
    line = _summary(res.output)
    assert line.startswith("done 2, skipped 0 (already done), failed 0 — 42 patches imported")
    assert "nothing encoded" in line and "patches encoded" not in line


def test_encode_summary_says_encoded(slide_factory, tmp_path):
    slide = slide_factory(width=1536, height=1024)
    out = tmp_path / "feats"
    res = runner.invoke(app, ["features", str(slide.path), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    line = _summary(res.output)
    assert line.startswith("done 1, skipped 0 (already done), failed 0 — ")
    assert "patches encoded" in line and "imported" not in line
    n = int(line.split("— ")[1].split()[0])
    with h5py.File(out / "h5" / f"{slide.path.stem}.h5") as f:
        assert n == len(f["coords"]) > 0
