"""``threads-search index``: real slides and FEATURES_DIRs → FAISS + Parquet + DuckDB, with
incremental updates, removal, kill -9 resume, locking and the metadata join."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import faiss
import numpy as np
import pandas as pd
import pytest
from conftest import make_bundle
from typer.testing import CliRunner

from indexer.build import run_index
from indexer.config import IndexConfig
from indexer.records import list_records
from threads_search.cli import app
from threads_search.synth import make_archive, make_cohort, write_feature_bags
from threads_search.vectorstore import store
from threads_search.vectorstore.store import IndexLock, IndexLockedError
from threads_search.vectorstore.writer import read_embeddings

runner = CliRunner()


def _gen(index_dir):
    return store.read_manifest(index_dir)["generation_dir"]


def _tables(index_dir):
    gen = _gen(index_dir)
    slides = pd.read_parquet(f"{gen}/slides.parquet")
    ids, emb = read_embeddings(f"{gen}/slide_embeddings.parquet")
    return slides, ids, emb


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """A feature-level cohort (30 patients) and a bundle for its 32-d synthetic features."""
    root = tmp_path_factory.mktemp("idx_bags")
    cohort = make_cohort(n_patients=30, seed=4)
    paths = cohort.write(root / "cohort")
    write_feature_bags(cohort, root / "feats", dim=32, n_patches=(30, 80))
    genes = [c for c in cohort.rna.columns if c != "sample_id"]
    panel = sorted(cohort.maf.Hugo_Symbol.unique())
    model = make_bundle(root / "model", {"name": "synthetic-features", "dim": 32}, genes, panel)
    return root, paths, model


def test_index_from_slides_with_real_svs(tmp_path, hed_bundle, real_dir):
    slides = make_archive(tmp_path / "slides", n_slides=2, width=2048, height=1536, seed=2)
    (tmp_path / "slides" / "broken.svs").write_bytes(b"II*\x00garbage" * 50)
    real = tmp_path / "slides" / "cmu_small_region.svs"
    os.symlink(real_dir / "cmu_small_region.svs", real)
    out = tmp_path / "idx"
    res = runner.invoke(
        app,
        [
            "index",
            str(tmp_path / "slides"),
            "--model",
            str(hed_bundle),
            "--out",
            str(out),
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 1, res.output  # the broken file is reported
    assert "broken" in res.output and "indexed 3" in res.output
    table, ids, emb = _tables(out)
    assert sorted(table.slide_id) == sorted([s.slide_id for s in slides] + ["cmu_small_region"])
    assert list(ids.slide_id) == list(table.slide_id)
    assert emb.shape == (3, 1024) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    real_row = table.set_index("slide_id").loc["cmu_small_region"]
    assert real_row["mpp"] == pytest.approx(0.499, abs=1e-3) and real_row["n_patches"] > 0
    assert real_row["width"] == 2220 and real_row["tissue_area_mm2"] > 0
    gen = _gen(out)
    assert os.path.getsize(f"{gen}/thumbnails/cmu_small_region.jpg") > 1000
    att = pd.read_parquet(f"{gen}/attention/cmu_small_region.parquet")
    assert len(att) == real_row["n_patches"] and att.score.sum() == pytest.approx(1, abs=1e-3)
    index = faiss.read_index(f"{gen}/faiss/slides.index")
    assert index.ntotal == 3
    con = duckdb.connect(f"{gen}/catalog.duckdb", read_only=True)
    con.execute(f"SET file_search_path = '{gen}'")
    assert con.execute("SELECT count(*) FROM slides WHERE n_patches > 0").fetchone()[0] == 3
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["counts"]["slides"] == 3 and manifest["model"]["hash"]
    assert manifest["slides"]["faiss"]["type"] == "flat"


def test_features_dir_molecular_and_metadata_join(tmp_path, bags):
    root, paths, model = bags
    meta = pd.read_csv(paths["metadata"])[["patient_id", "subtype", "site"]]
    extra = pd.DataFrame(
        {"slide_id": [meta.patient_id[0] + "-DX1"], "subtype": ["override"], "site": ["site_x"]}
    )
    ghost = pd.DataFrame({"patient_id": ["NOBODY"], "subtype": ["x"], "site": ["y"]})
    pd.concat([meta, extra, ghost]).to_csv(tmp_path / "meta.csv", index=False)
    cfg = IndexConfig(
        inputs=[str(root / "feats")],
        model=str(model),
        out=str(tmp_path / "idx"),
        metadata=str(tmp_path / "meta.csv"),
        pairs=str(paths["pairs"]),
        rna=str(paths["rna"]),
        dna=str(paths["maf"]),
    )
    s = run_index(cfg)
    assert len(s.indexed) == 30 and not s.failed
    assert s.unmatched_metadata == 1  # the NOBODY row is reported
    table, _, _ = _tables(tmp_path / "idx")
    by_id = table.set_index("slide_id")
    first = meta.patient_id[0] + "-DX1"
    assert by_id.loc[first, "subtype"] == "override"  # slide_id row wins over the patient row
    truth = meta.set_index("patient_id").subtype
    others = by_id.drop(index=first)
    assert (others.subtype.to_numpy() == truth.loc[others.patient_id].to_numpy()).all()
    mol = pd.read_parquet(f"{_gen(tmp_path / 'idx')}/molecular.parquet")
    assert set(mol.kind) == {"rna", "dna"} and mol.subtype.notna().all()
    assert (mol.subtype.to_numpy() == truth.loc[mol.patient_id].to_numpy()).all()


def test_incremental_add_change_remove_prune(tmp_path, hed_bundle):
    src = tmp_path / "slides"
    make_archive(src, n_slides=2, width=2048, height=1536, seed=30)
    out = tmp_path / "idx"
    base = dict(model=str(hed_bundle), out=str(out), workers=0)
    assert len(run_index(IndexConfig(inputs=[str(src)], **base)).indexed) == 2
    before = {k: p.stat().st_mtime_ns for k, p in list_records(out).items()}
    new = tmp_path / "new"
    added = make_archive(new, n_slides=3, width=2048, height=1536, seed=40)
    for s in added:  # distinct ids from the first batch
        s.path.rename(s.path.with_name("new_" + s.path.name))
    s = run_index(IndexConfig(inputs=[str(new)], **base))
    assert sorted(s.indexed) == sorted("new_" + a.slide_id for a in added)
    after = {k: p.stat().st_mtime_ns for k, p in list_records(out).items()}
    assert all(after[k] == v for k, v in before.items())  # old records untouched
    assert len(_tables(out)[0]) == 5
    # A changed file is re-embedded; unchanged ones are skipped.
    victim = sorted(src.glob("*"))[0]
    from threads_search.synth import make_slide

    make_slide(victim, 2048, 1536, 0.5, seed=99)
    s = run_index(IndexConfig(inputs=[str(src)], **base))
    assert s.indexed == [victim.stem] and len(s.skipped) == 1
    # Removal by id, and pruning of vanished files.
    s = run_index(IndexConfig(inputs=[], remove=[victim.stem], **base))
    assert s.removed == [victim.stem] and victim.stem not in set(_tables(out)[0].slide_id)
    gone = sorted(new.glob("*"))[0]
    gone.unlink()
    s = run_index(IndexConfig(inputs=[], prune=True, **base))
    assert s.removed == [gone.stem] and len(_tables(out)[0]) == 3


def test_remove_of_an_id_not_in_the_index_is_reported(tmp_path, bags):
    """A typo in ``--remove`` is visible: listed as not in the index, exit code 1; the other
    removals given with it are done."""
    root, _, model = bags
    out = tmp_path / "idx"
    feats = str(root / "feats")
    first = run_index(IndexConfig(inputs=[feats], model=str(model), out=str(out)))
    ids = sorted(first.indexed)
    res = runner.invoke(
        app, ["index", feats, "--model", str(model), "--out", str(out), "--remove", "no-such-slide"]
    )
    assert res.exit_code == 1, res.output
    assert "not in the index: 'no-such-slide'" in res.output
    assert "unchanged 30" in res.output and len(_tables(out)[0]) == 30
    s = run_index(
        IndexConfig(
            inputs=[], model=str(model), out=str(out), remove=[ids[0], "no-such-slide", ids[0]]
        )
    )
    assert s.removed == [ids[0]] and s.not_in_index == ["no-such-slide"]
    assert sorted(_tables(out)[0].slide_id) == ids[1:]


def test_lock_refuses_a_second_writer(tmp_path, bags):
    root, _, model = bags
    out = tmp_path / "idx"
    with (
        IndexLock(out, command="test holder"),
        pytest.raises(IndexLockedError, match=f"pid {os.getpid()}.*test holder"),
    ):
        run_index(IndexConfig(inputs=[str(root / "feats")], model=str(model), out=str(out)))
    # A stale lock (dead pid) is taken over.
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert (
        len(
            run_index(
                IndexConfig(inputs=[str(root / "feats")], model=str(model), out=str(out))
            ).indexed
        )
        == 30
    )


def _check_readable(out):
    """If an index is committed, it is complete and consistent."""
    if not (out / "index.json").exists():
        return 0
    table, ids, emb = _tables(out)
    index = faiss.read_index(f"{_gen(out)}/faiss/slides.index")
    assert len(table) == len(ids) == len(emb) == index.ntotal
    return len(table)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_random_points_then_resume(tmp_path, bags, seed):
    root, paths, model = bags
    ref = tmp_path / "ref"
    run_index(
        IndexConfig(
            inputs=[str(root / "feats")],
            model=str(model),
            out=str(ref),
            rna=str(paths["rna"]),
            pairs=str(paths["pairs"]),
        )
    )
    ref_table, _, ref_emb = _tables(ref)
    out = tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "threads_search",
        "index",
        str(root / "feats"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--rna",
        str(paths["rna"]),
        "--pairs",
        str(paths["pairs"]),
    ]
    rng = np.random.default_rng(seed)
    for delay in rng.uniform(1.0, 6.0, size=2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _check_readable(out)
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert _check_readable(out) == 30
    table, _, emb = _tables(out)
    pd.testing.assert_frame_equal(table, ref_table)
    assert np.allclose(emb, ref_emb, atol=1e-6)
    gens = list((out / store.GENERATIONS).iterdir())
    assert 1 <= len(gens) <= 2 and not (out / ".lock").exists()
