"""The parts the two index engines share (``indexer.core``, ``indexer.slide_step``,
``indexer.sources``): typed sources and jobs, the strict index config, one attention frame for
the index and the UI, one read of each feature h5, orphan clean-up of INDEX_DIR, user errors
as ``ThreadsSearchError``, and engines that import only the shared parts. Real slide files,
real h5, FAISS and Parquet throughout."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_bundle

import threads_search as ts
from indexer.build import ENGINES, run_index
from indexer.config import IndexConfig, IndexType
from indexer.core import LostSlidesError, index_session, source_fingerprint
from indexer.profiles import rna_units_for
from indexer.records import list_records, read_record
from indexer.slide_step import SlideJob
from indexer.sources import SlideSource
from threads_search.atomic import temp_path
from threads_search.errors import ConfigError, InputError, MissingError, ThreadsSearchError
from threads_search.features.extract import h5_path
from threads_search.models.attention import attention_frame
from threads_search.synth import make_cohort, make_slide, write_feature_bags
from threads_search.vectorstore import store
from threads_search.vectorstore.faiss_types import list_index_types

INDEXER = Path(__file__).resolve().parent.parent / "indexer"


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """A FEATURES_DIR of 6 synthetic feature bags (16-d) and an untrained bundle for them."""
    root = tmp_path_factory.mktemp("core_bags")
    write_feature_bags(make_cohort(n_patients=6, seed=3), root / "feats", dim=16, n_patches=(8, 16))
    model = make_bundle(root / "model", {"name": "synthetic-features", "dim": 16})
    return root / "feats", model


def test_slide_source_and_job_pickle_round_trip(tmp_path):
    """What crosses to a Ray worker is a typed job, equal after a pickle round trip (standard
    pickle and Ray's cloudpickle), with the record key the driver computed."""
    slide = tmp_path / "x.svs"
    make_slide(slide, 1024, 1024, 0.5, seed=1)
    src = SlideSource("A/x.svs", tmp_path / "h5" / "A" / "x.svs.h5", str(slide), None, None, "in")
    fp = source_fingerprint(src)
    assert fp["of"] == str(slide) and fp["size"] == slide.stat().st_size
    job = SlideJob(src, fp, "0123456789abcdef", tmp_path / "idx")
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.slide_id == "A/x.svs" and isinstance(again.source.h5, Path)
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    assert cloudpickle.loads(cloudpickle.dumps(job)) == job


def test_index_config_is_strict():
    """Choices at construction, ranges in ``check``, unknown keys refused listing the accepted
    ones: each a ``ConfigError`` (a ``ThreadsSearchError``: one line and exit 2 in the CLI)."""
    with pytest.raises(ConfigError, match="engine must be one of 'local', 'ray', got 'spark'"):
        IndexConfig(engine="spark")
    with pytest.raises(ConfigError, match="unknown setting.*'engin'.*accepted: inputs, model"):
        IndexConfig.from_dict({"engin": "ray"})
    for bad in ({"pair_by": "visit"}, {"rna_units": "fpkm"}, {"device": "tpu"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            IndexConfig(**bad)
    for bad in (
        {"workers": -1},
        {"batch_size": 0},
        {"memory_budget_gb": 0.0},
        {"cpus_per_reader": 0.0},
        {"gpus_per_worker": -0.5},
    ):
        with pytest.raises(ConfigError, match=f"IndexConfig.{next(iter(bad))} must be"):
            IndexConfig(**bad)
    assert issubclass(ConfigError, ThreadsSearchError) and issubclass(ConfigError, ValueError)
    # the index types offered are the registry's (plus "auto")
    assert sorted(get_args(IndexType)) == sorted(["auto", *list_index_types()])
    cfg = IndexConfig(inputs=["a"], model="m", out="o", engine="ray", rna_units="counts")
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    cfg.engine = "spark"  # changed after construction: the dispatch refuses it too
    assert sorted(ENGINES) == ["local", "ray"]
    with pytest.raises(ConfigError, match="--engine must be one of local, ray"):
        run_index(cfg)


def test_user_errors_are_threads_search_errors(tmp_path, bags):
    feats, model = bags
    with pytest.raises(MissingError, match="no model bundle"):
        run_index(IndexConfig(inputs=[str(feats)], model=str(tmp_path / "nope"), out=str(tmp_path)))
    with pytest.raises(ConfigError, match="conflicts with the model bundle"):
        rna_units_for("tpm", "counts")
    other = make_bundle(tmp_path / "other", {"name": "other-features", "dim": 16})
    with pytest.raises(InputError, match="model expects patch encoder 'other-features'"):
        run_index(IndexConfig(inputs=[str(feats)], model=str(other), out=str(tmp_path / "i")))
    with pytest.raises(ConfigError, match="no RNA encoder"):
        run_index(
            IndexConfig(
                inputs=[str(feats)],
                model=str(model),
                out=str(tmp_path / "j"),
                rna=str(tmp_path / "rna.csv"),
            )
        )
    half = tmp_path / "half"  # a bundle whose weights are missing: said, not a traceback
    shutil.copytree(model, half)
    (half / "model.safetensors").unlink()
    with pytest.raises(MissingError, match="model.safetensors missing"):
        run_index(IndexConfig(inputs=[str(feats)], model=str(half), out=str(tmp_path / "k")))
    bad = tmp_path / "bad_feats"
    shutil.copytree(feats, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json cannot be read"):
        run_index(IndexConfig(inputs=[str(bad)], model=str(model), out=str(tmp_path / "l")))
    assert issubclass(LostSlidesError, ThreadsSearchError)


def test_each_feature_h5_is_read_once(tmp_path, bags, monkeypatch):
    """Embedding a slide opens its feature h5 once (it was opened twice: by ``embed_slide``
    and again for the coords and attributes)."""
    feats, model = bags
    real, opened = h5py.File, Counter()

    def counting(name, *args, **kwargs):
        opened[Path(name).name] += 1
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting)
    s = run_index(IndexConfig(inputs=[str(feats)], model=str(model), out=str(tmp_path / "i")))
    monkeypatch.undo()
    assert len(s.indexed) == 6 and not s.failed
    assert {f"{sid}.h5": opened[f"{sid}.h5"] for sid in s.indexed} == {
        f"{sid}.h5": 1 for sid in s.indexed
    }


def test_attention_frame_is_the_same_in_the_index_and_the_ui(tmp_path, hed_bundle):
    """The index's ``attention/<slide>.parquet`` and the UI's frame for the same slide file
    uploaded as a query are made by one function: same columns (per-head scores included) and
    values."""
    from ui.sections.slide_search import uploaded_query

    src = tmp_path / "slides"
    make_slide(src / "x.svs", 1536, 1536, 0.5, seed=4)
    out = tmp_path / "idx"
    s = run_index(IndexConfig(inputs=[str(src)], model=str(hed_bundle), out=str(out), workers=0))
    assert s.indexed == ["x"]
    rec = read_record(list_records(out)["x"], "x")
    gen = store.read_manifest(out)["generation_dir"]
    stored = pd.read_parquet(f"{gen}/attention/x.parquet")
    pd.testing.assert_frame_equal(stored, attention_frame(rec.coords, rec.attention))
    heads = len(rec.attention)
    assert heads >= 1 and list(stored.columns) == ["x", "y", "score"] + [
        f"score_h{h}" for h in range(heads)
    ]
    np.testing.assert_allclose(stored.score.sum(), 1, atol=1e-3)
    _, q = uploaded_query(ts.open_index(out), src / "x.svs")
    pd.testing.assert_frame_equal(q.attention, stored, check_exact=False, atol=1e-5)
    empty = attention_frame(rec.coords, None)  # an encoder without attention: x, y only
    assert list(empty.columns) == ["x", "y"] and len(empty) == len(rec.coords)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphan_temporaries_of_index_dir_are_removed_not_features_dir(tmp_path, bags):
    """A killed run's temporaries in INDEX_DIR/work and INDEX_DIR/models are deleted when the
    next run takes the lock; a live writer's are not, nor FEATURES_DIR's inside INDEX_DIR (its
    own lock guards it)."""
    feats, model = bags
    out = tmp_path / "idx"
    dead, live = _dead_pid(), os.getpid()

    def temp(path: Path, pid: int) -> Path:
        name = temp_path(path).name.replace(f"-{live}-", f"-{pid}-")
        p = path.with_name(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    orphan_rec = temp(out / "work" / "slides" / "a.npz", dead)
    orphan_rec.write_bytes(b"half")
    orphan_model = temp(out / "models" / "0123456789abcdef", dead)
    orphan_model.mkdir()
    (orphan_model / "config.json").write_text("{}")
    live_rec = temp(out / "work" / "slides" / "b.npz", live)
    live_rec.write_bytes(b"being written")
    in_features = temp(h5_path(out / "features", "c"), dead)
    in_features.write_bytes(b"the features stage's")
    with index_session(IndexConfig(inputs=[str(feats)], model=str(model), out=str(out))):
        pass
    assert not orphan_rec.exists() and not orphan_model.exists()
    assert live_rec.exists() and in_features.exists()
    assert (out / "models").is_dir() and len(list((out / "models").iterdir())) == 1


IMPORT_RULES = {  # module → indexer modules it may import (function-level imports included)
    "slide_step": {"records", "sources"},
    "local_engine": {"core", "slide_step"},
    "ray_engine": {"core", "slide_step", "ray_tasks", "ray_plan", "ray_cluster"},
    "ray_plan": {"core"},
    "ray_tasks": {"slide_step"},
    "ray_cluster": set(),
}


def _indexer_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        found |= {m.split(".")[1] for m in mods if m.startswith("indexer.")}
    return found


@pytest.mark.parametrize("module", sorted(IMPORT_RULES))
def test_engines_import_only_the_shared_parts(module):
    """The per-slide step imports neither engine, the engines not each other (nor
    ``indexer.build``, which dispatches to them): no import cycle."""
    assert _indexer_imports(INDEXER / f"{module}.py") <= IMPORT_RULES[module]
