"""Errors a user can cause in the library's models, molecular data, vector store, index, metrics
and UI are ``ThreadsSearchError``s (the CLI prints them as one line, exit code 2), and each keeps
the built-in kind it had, so code catching ``ValueError``/``KeyError``/... still works.
Internal invariants stay plain exceptions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import query_fixtures

from threads_search.device import DeviceUnavailableError, resolve_device
from threads_search.errors import ConfigError, InputError, MissingError, ThreadsSearchError
from threads_search.eval import few_shot_curve, linear_probe
from threads_search.locking import WriterLockedError
from threads_search.models.bundle import BundleError, build_model, load_model, save_model
from threads_search.models.slide_encoders import create_slide_encoder
from threads_search.molecular import MolecularDataError, RnaUnitsError, read_pairs, read_table
from threads_search.paths import UnsafeSlideIdError, check_slide_id
from threads_search.query import FilterError, IndexFormatError, QueryError, open_index
from threads_search.query.catalog import CatalogError
from threads_search.registry import UnknownNameError
from threads_search.vectorstore import build_index, choose_index, create_index_type, load_index
from threads_search.vectorstore.store import (
    IndexLockedError,
    IndexNotFoundError,
    ManifestError,
    read_manifest,
)
from threads_search.vectorstore.vectors import VectorFileError
from threads_search.vectorstore.writer import write_generation
from ui.uploads import UploadError, UploadStore

hand = query_fixtures.hand  # the session fixture

KINDS = [
    (QueryError, ValueError),
    (IndexFormatError, ValueError),
    (FilterError, ValueError),
    (CatalogError, ValueError),
    (IndexNotFoundError, FileNotFoundError),
    (ManifestError, ValueError),
    (WriterLockedError, RuntimeError),
    (IndexLockedError, RuntimeError),
    (UnsafeSlideIdError, ValueError),
    (MolecularDataError, ValueError),
    (RnaUnitsError, ValueError),
    (UploadError, ValueError),
    (BundleError, ValueError),
    (UnknownNameError, KeyError),
    (DeviceUnavailableError, RuntimeError),
    (VectorFileError, RuntimeError),
]


@pytest.mark.parametrize("error,builtin", KINDS, ids=[k[0].__name__ for k in KINDS])
def test_typed_errors_are_threads_search_errors_of_their_old_kind(error, builtin):
    assert issubclass(error, ThreadsSearchError) and issubclass(error, builtin)


def test_an_unknown_name_reads_as_its_message():
    """A registry miss (a user's encoder or index type name) is a ``KeyError`` whose text is the
    message (a plain ``KeyError`` shows it quoted)."""
    with pytest.raises(UnknownNameError) as e:
        create_slide_encoder("no-such-encoder", 8)
    assert isinstance(e.value, KeyError) and isinstance(e.value, ConfigError)
    assert str(e.value).startswith("unknown slide encoder 'no-such-encoder'; available: ")
    with pytest.raises(UnknownNameError, match="unknown index type 'nope'"):
        create_index_type("nope")


def test_bad_bundles_raise_typed_errors(tmp_path):
    with pytest.raises(MissingError, match="folder not found"):
        load_model(tmp_path / "none")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(BundleError, match="not a threads-search-model config"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({"format": "threads-search-model"}))
    with pytest.raises(MissingError, match="missing model.safetensors"):
        load_model(bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="missing or malformed entry"):
        load_model(bad)


def test_the_index_reports_a_bundle_it_cannot_load_as_a_query_error(hand, tmp_path):
    """A model bundle naming a slide encoder this version does not know: before, the registry's
    ``KeyError`` escaped ``Index.model`` (a traceback); now a ``QueryError`` naming it."""
    index, _ = hand
    model = build_model(
        {"name": "test-encoder", "dim": 8},
        slide_config={"heads": 1, "head_dim": 8, "attn_dim": 4, "out_dim": index.dim},
    )
    bundle = save_model(model, tmp_path / "bundle")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["slide_encoder"]["name"] = "future-encoder"
    (bundle / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownNameError, match="future-encoder"):
        load_model(bundle)
    with pytest.raises(QueryError, match="cannot load the index's model bundle.*future-encoder"):
        _ = open_index(index.root, model=bundle).model


def test_damaged_stores_raise_typed_errors(tmp_path):
    (tmp_path / "index.json").write_text("{half")
    with pytest.raises(ManifestError, match="cannot be read.*rebuild"):
        read_manifest(tmp_path)  # before: a bare JSONDecodeError
    (tmp_path / "x.index").write_bytes(b"not faiss")
    with pytest.raises(VectorFileError, match="cannot read FAISS index"):
        load_index(tmp_path / "x.index", mmap=False)
    with pytest.raises(MissingError):
        load_index(tmp_path / "none.index")


@pytest.mark.parametrize(
    "call,kind",
    [
        (lambda: choose_index(10**6, 1024, memory_budget_bytes=1000), ConfigError),
        (lambda: create_index_type("ivf", bogus=1), ConfigError),
        (lambda: build_index(np.full((5, 4), np.nan, np.float32)), InputError),
        (lambda: resolve_device("tpu"), ConfigError),
        (lambda: check_slide_id("../x"), UnsafeSlideIdError),
        (lambda: read_table("/no/such/table.csv"), MissingError),
        (lambda: linear_probe(np.ones((4, 2)), [0] * 4, np.ones((2, 2)), [0] * 2), InputError),
        (
            lambda: few_shot_curve(np.ones((4, 2)), [0, 1] * 2, np.ones((2, 2)), [0, 1], (0,)),
            ConfigError,
        ),
    ],
    ids=["budget", "index-params", "nan-vectors", "device", "slide-id", "table", "probe", "shots"],
)
def test_user_errors_are_typed(call, kind):
    with pytest.raises(kind) as e:
        call()
    assert isinstance(e.value, ThreadsSearchError)


def test_pair_by_and_upload_errors(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"slide_id": ["s"], "sample_id": ["m"]}).to_csv(pairs, index=False)
    with pytest.raises(ConfigError, match="pair_by"):
        read_pairs(pairs, pair_by="sample_or_patient")
    with pytest.raises(UploadError, match="not accepted"):
        UploadStore().save("x.exe", b"1", (".svs",), 1)


def test_damaged_weights_are_a_bundle_error(tmp_path):
    """A truncated ``model.safetensors`` (before: safetensors' own error, neither a
    ``ValueError`` nor a ``ThreadsSearchError``) and weights of another shape."""
    model = build_model({"name": "test-encoder", "dim": 8}, slide_config={"head_dim": 8})
    bundle = save_model(model, tmp_path / "bundle")
    weights = (bundle / "model.safetensors").read_bytes()
    (bundle / "model.safetensors").write_bytes(weights[:40])
    with pytest.raises(BundleError, match="model.safetensors cannot be read"):
        load_model(bundle)
    other = build_model({"name": "test-encoder", "dim": 8}, slide_config={"head_dim": 4})
    save_model(other, tmp_path / "other")
    (bundle / "model.safetensors").write_bytes((tmp_path / "other/model.safetensors").read_bytes())
    with pytest.raises(BundleError, match="weights do not match config.json"):
        load_model(bundle)


def test_damaged_index_files_are_typed_errors(tmp_path):
    """A truncated table or catalog of a committed generation (before: pyarrow's and DuckDB's
    own errors, shown by the CLI as a bug's traceback)."""
    rng = np.random.default_rng(0)
    slides = pd.DataFrame({"slide_id": [f"S{i}" for i in range(6)], "site": list("ABCABC")})
    for name in ("table", "catalog"):
        write_generation(tmp_path / name, slides, rng.normal(size=(6, 8)).astype(np.float32))
    gen = read_manifest(tmp_path / "table")["generation_dir"]
    with open(f"{gen}/slides.parquet", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexFormatError, match="slides.parquet cannot be read"):
        open_index(tmp_path / "table")
    gen = read_manifest(tmp_path / "catalog")["generation_dir"]
    with open(f"{gen}/catalog.duckdb", "r+b") as f:
        f.truncate(100)
    index = open_index(tmp_path / "catalog")  # the catalog is read on the first filter
    with pytest.raises(CatalogError, match="catalog.duckdb cannot be read"):
        index.search_slides("S0", k=2, where="site = 'A'")
