"""Settings and files of the features stage: the strict config base (unknown keys and choices
refused, config.json of earlier versions still read, the hash unchanged), the typed errors, and
atomic h5 writes that leave nothing behind on failure."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from threads_search.errors import ConfigError, InputError, MissingError, ThreadsSearchError
from threads_search.features import FeaturesConfig, FeaturesConfigError, default_config
from threads_search.features.extract import check_config
from threads_search.features.h5io import FeatureFileError, read_features, write_features
from threads_search.features.importer import import_h5

# config.json of a FEATURES_DIR as the version before the strict config base wrote it (features
# in float16, 256 px patches), with the keys earlier versions saved beside the settings and the
# tissue settings an older version had (exclude_pen, pen_dilate_um; removed since).
OLD_CONFIG_JSON = {
    "patch_encoder": "hed-texture",
    "checkpoint": None,
    "segment": {
        "tissue": {
            "thumb_mpp": 8.0,
            "min_saturation": 0.05,
            "max_saturation": 0.15,
            "min_od": 0.12,
            "black_value": 0.15,
            "median_um": 24.0,
            "close_um": 32.0,
            "open_um": 0.0,
            "max_hole_area_mm2": 0.5,
            "min_area_mm2": 0.02,
            "keep_near_um": 64.0,
            "exclude_ink": True,
            "ink_red_excess": 0.15,
            "ink_on_tissue_um": 48.0,
            "simplify_px": 0.5,
            "exclude_pen": True,
            "pen_dilate_um": 16.0,
        },
        "grid": {
            "patch_size": 256,
            "target_mpp": 0.5,
            "overlap": 0,
            "min_tissue": 0.25,
            "max_upsample": 2.0,
        },
    },
    "dtype": "float16",
    "batch_size": 32,
    "workers": 2,
    "device": "auto",
    "config_hash": "0000000000000000",
    "versions": {"threads-search": "0.1.0", "numpy": "2.1.0"},
    "encoder_spec": {"name": "hed-texture", "dim": 256},
}


def test_features_config_refuses_unknown_keys_listing_the_accepted_ones():
    with pytest.raises(ConfigError) as e:
        FeaturesConfig.from_dict({"patch_encoder": "hed-texture", "dtyp": "float16"})
    msg = str(e.value)
    assert "'dtyp'" in msg and "accepted: patch_encoder, checkpoint, segment, dtype" in msg
    with pytest.raises(ConfigError, match="'min_sat'.*accepted: thumb_mpp, min_saturation"):
        FeaturesConfig.from_dict({"segment": {"tissue": {"min_sat": 0.1}}})
    # keys saved beside the settings are no settings: only reading a saved file skips them
    with pytest.raises(ConfigError, match="'config_hash'"):
        FeaturesConfig.from_dict(FeaturesConfig().to_dict() | {"config_hash": "x"})
    assert FeaturesConfig.from_dict(FeaturesConfig().to_dict()) == FeaturesConfig()


def test_features_config_choices_and_ranges_are_checked_when_made():
    with pytest.raises(ConfigError, match="dtype must be one of 'float32', 'float16'.*float64"):
        FeaturesConfig(dtype="float64")
    with pytest.raises(ConfigError, match="device.*'gpu'"):
        FeaturesConfig(device="gpu")
    assert FeaturesConfig(device="cuda:1").device == "cuda:1"  # a GPU by number stays usable
    with pytest.raises(ConfigError, match="batch_size"):
        default_config("hed-texture", batch_size=0)
    with pytest.raises(ConfigError, match="overlap 512"):  # was found only when laying the grid
        FeaturesConfig.from_dict({"segment": {"grid": {"overlap": 512}}})
    with pytest.raises(ConfigError, match="min_od=-1"):
        FeaturesConfig.from_dict({"segment": {"tissue": {"min_od": -1}}})
    assert isinstance(FeaturesConfigError("x"), ValueError)  # callers of earlier versions


def test_features_hash_is_unchanged_for_the_same_settings():
    """FEATURES_DIRs written before keep their hash: the values below are what the version
    before the strict config base computed (and wrote into config.json and every h5)."""
    assert FeaturesConfig().hash() == "2c7a272876453d78"
    assert default_config("hed-texture").hash() == "2c7a272876453d78"
    assert default_config("uni").hash() == "47d3f007a578b481"
    assert FeaturesConfig(dtype="float16").hash() == "9d21d98093f0eab1"
    saved = json.loads(json.dumps(FeaturesConfig(dtype="float16").to_dict()))
    assert FeaturesConfig.from_saved(saved).hash() == "9d21d98093f0eab1"


def test_config_json_of_an_earlier_version_gives_the_readable_refusal(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OLD_CONFIG_JSON))
    old = FeaturesConfig.from_saved(OLD_CONFIG_JSON)
    assert old.dtype == "float16" and old.segment.grid.patch_size == 256
    with pytest.raises(FeaturesConfigError) as e:
        check_config(tmp_path, default_config("hed-texture"))
    msg = str(e.value)
    assert "holds features made with other settings" in msg and "another --out" in msg
    assert "dtype: 'float16' -> 'float32'" in msg and "'patch_size': 256" in msg
    # features made with settings that no longer exist (exclude_pen...) are refused too, named
    with pytest.raises(FeaturesConfigError, match="config_hash: '0000000000000000' -> '"):
        check_config(tmp_path, old)


def _foreign_h5(path, n, dim):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((n, dim), np.float32))
        ds = f.create_dataset("coords", data=np.arange(2 * n).reshape(n, 2))
        ds.attrs.update({"patch_size": 512, "patch_size_level0": 1024})


def test_imported_features_dir_refuses_other_settings_readably(tmp_path):
    """An --import-h5 folder's config.json holds ``imported`` and ``feature_dim``: features with
    other settings are refused naming them (this crashed with a TypeError before)."""
    _foreign_h5(tmp_path / "src" / "a.h5", 4, 768)
    out = tmp_path / "feats"
    [o] = import_h5(tmp_path / "src", out, default_config("conch_v15"))
    assert o.state == "done"
    saved = json.loads((out / "config.json").read_text())
    assert saved["imported"] is True and saved["feature_dim"] == 768
    with pytest.raises(FeaturesConfigError, match="patch_encoder: 'conch_v15' -> 'hed-texture'"):
        check_config(out, default_config("hed-texture"))
    with pytest.raises(MissingError, match="no .h5 files under"):
        import_h5(tmp_path / "empty", tmp_path / "f2", default_config("conch_v15"))


def test_damaged_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FeaturesConfigError, match="config.json is not a readable features config"):
        check_config(tmp_path, default_config("hed-texture"))


def test_user_errors_of_features_and_encoders_are_threads_search_errors(tmp_path):
    from threads_search.patch_encoders import (
        UnknownPatchEncoderError,
        create_patch_encoder,
        get_patch_encoder_spec,
    )
    from threads_search.patch_encoders.checkpoint import CheckpointError

    for call in (lambda: create_patch_encoder("nope"), lambda: get_patch_encoder_spec("nope")):
        with pytest.raises(UnknownPatchEncoderError) as e:
            call()
        assert isinstance(e.value, ConfigError) and isinstance(e.value, KeyError)
        assert str(e.value).startswith("unknown patch encoder 'nope'; available: ")  # not quoted
        assert "hed-texture" in str(e.value)
    with pytest.raises(ConfigError, match="has no weights"):
        create_patch_encoder("hed-texture", checkpoint="w.bin")
    with pytest.raises(CheckpointError) as e:
        create_patch_encoder("uni", device="cpu")
    assert isinstance(e.value, InputError)
    with pytest.raises(MissingError, match="does not exist"):
        create_patch_encoder("uni", checkpoint=tmp_path / "none.bin", device="cpu")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError) as e:
        read_features(bad)
    assert isinstance(e.value, ThreadsSearchError) and isinstance(e.value, ValueError)


def test_write_features_that_fails_leaves_neither_file_nor_temporary(tmp_path):
    folder = tmp_path / "h5"
    path = folder / "s.h5"
    feats, coords = np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64)
    with pytest.raises(TypeError):  # an attribute h5py cannot store, after the datasets
        write_features(path, feats, coords, {"patch_size": 512, "bad": object()})
    assert not path.exists() and list(folder.iterdir()) == []
    write_features(path, feats, coords, {"patch_size": 512})
    before = path.read_bytes()
    with pytest.raises(TypeError):  # a failed rewrite keeps the file that was there
        write_features(path, feats * 2, coords, {"bad": object()})
    assert path.read_bytes() == before and [p.name for p in folder.iterdir()] == ["s.h5"]
    truth = {"is_signal": np.array([True, False, True])}
    write_features(path, feats, coords, {"patch_size": 512}, truth)
    with h5py.File(path) as f:
        assert f["is_signal"][()].tolist() == [True, False, True]
    assert [p.name for p in folder.iterdir()] == ["s.h5"]


def test_slide_error_keeps_its_parts_across_processes():
    from threads_search.wsi import SlideError

    e = pickle.loads(pickle.dumps(SlideError("x.svs", "no-mpp", "give --mpp-csv")))
    assert isinstance(e, ThreadsSearchError)
    assert (e.path, e.reason, e.detail) == ("x.svs", "no-mpp", "give --mpp-csv")
    assert str(e) == "x.svs: no-mpp — give --mpp-csv"
    from threads_search.wsi.thumbnail import ThumbnailTooLarge

    assert issubclass(ThumbnailTooLarge, InputError)  # and so a ValueError, as before
