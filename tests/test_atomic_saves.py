"""The saves of the model bundle, the RNA normaliser, the vector store (``index.json``, FAISS
files, a streaming build's ``streaming.json``) go through ``threads_search.atomic``: every
temporary has its one spelling (so ``remove_orphans`` knows it), a failed save leaves neither a
temporary nor a partial file, and the temporary a killed commit left is cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from threads_search.atomic import is_temporary
from threads_search.models.bundle import build_model, load_model, save_model
from threads_search.molecular import RnaNormalizer
from threads_search.vectorstore import store
from threads_search.vectorstore.streaming import build_streaming, write_shards
from threads_search.vectorstore.vectors import save_index

GENES = [f"G{i}" for i in range(12)]
OUT = {"capture_output": True, "text": True, "check": True}


@pytest.fixture(scope="module")
def normalizer():
    rng = np.random.default_rng(0)
    return RnaNormalizer.fit(pd.DataFrame(rng.normal(size=(20, 12)), columns=GENES), units="log")


@pytest.fixture(scope="module")
def model(normalizer):
    torch.manual_seed(0)
    return build_model(
        {"name": "test-encoder", "dim": 8},
        slide_config={"heads": 1, "head_dim": 8, "attn_dim": 4, "out_dim": 16},
        normalizer=normalizer,
        rna_config={"hidden_dims": [8]},
    ).eval()


def _flat_index():
    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    return index


def _commit(root):
    return store.commit(root, store.new_generation(root), {"trial": 1})


def _streaming(root):
    rng = np.random.default_rng(0)
    shards = write_shards(root / "in", [rng.normal(size=(3000, 8)).astype(np.float32)], 3000)
    return build_streaming(shards, root / "out", index_type="ivf", n_queries=20, n_eval=20)


# (name, writer(folder), the final file the writer renames into place)
WRITERS = [
    ("bundle", lambda d, m, n: save_model(m, d / "bundle"), "bundle/config.json"),
    ("normaliser", lambda d, m, n: n.save(d / "rna_normalization.json"), "rna_normalization.json"),
    ("index.json", lambda d, m, n: _commit(d / "idx"), "idx/index.json"),
    ("FAISS file", lambda d, m, n: save_index(_flat_index(), d / "x.index"), "x.index"),
    ("streaming.json", lambda d, m, n: _streaming(d), "out/streaming.json"),
]


@pytest.mark.parametrize("name,write,final", WRITERS, ids=[w[0] for w in WRITERS])
def test_temporaries_have_the_one_spelling(name, write, final, model, normalizer, tmp_path):
    """Before: five spellings (``.x.tmp-<token>``, ``.x.tmp-<pid>``, ``.x.tmp<pid>``,
    ``x.tmp<pid>``), which ``remove_orphans`` did not recognise."""
    renamed = []
    real = os.replace

    def spy(src, dst):
        renamed.append((os.fspath(src), os.fspath(dst)))
        return real(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", spy)
        write(tmp_path, model, normalizer)
    assert any(dst == str(tmp_path / final) for _, dst in renamed)
    for src, dst in renamed:
        assert is_temporary(src), (name, src)
        assert os.path.dirname(src) == os.path.dirname(dst)


@pytest.mark.parametrize("name,write,final", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_failed_save_leaves_no_temporary(name, write, final, model, normalizer, tmp_path):
    """The rename of the final file fails (disk full, injected): the error reaches the caller,
    the file is not there, and no temporary is left (before: the normaliser, ``index.json`` and
    ``streaming.json`` left theirs)."""
    real = os.replace

    def failing(src, dst):
        if os.fspath(dst) == str(tmp_path / final):
            raise OSError("disk full (injected)")
        return real(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", failing)
        with pytest.raises(OSError, match="injected"):
            write(tmp_path, model, normalizer)
    assert not (tmp_path / final).exists()
    left = [p for p in tmp_path.rglob("*") if is_temporary(p) or ".tmp" in p.name]
    assert left == [], name


def test_saves_round_trip(model, normalizer, tmp_path):
    normalizer.save(tmp_path / "n.json")
    back = RnaNormalizer.load(tmp_path / "n.json")
    assert back.genes == normalizer.genes and np.array_equal(back.mean, normalizer.mean)
    loaded = load_model(save_model(model, tmp_path / "bundle"))
    x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed_slide(x), model.embed_slide(x))
    manifest = _commit(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "index.json").read_text()) == manifest


def test_a_killed_commit_leaves_a_temporary_the_next_writer_removes(tmp_path):
    """A writer killed between writing and renaming ``index.json`` leaves its temporary; the
    next writer's ``remove_uncommitted`` (run under the lock) deletes it, and only it."""
    root = tmp_path / "idx"
    _commit(root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **OUT)
    orphan = root / f".index.tmp-{int(dead.stdout)}-1a2b3c4d.json"  # its writer is gone
    orphan.write_text("{half")
    mine = root / f".index.tmp-{os.getpid()}-5e6f7a8b.json"  # a live writer's: kept
    mine.write_text("{")
    store.remove_uncommitted(root)
    assert not orphan.exists() and mine.exists()
    assert store.read_manifest(root)["trial"] == 1
