"""Patch-feature files in the TRIDENT/CLAM layout.

``h5/<slide_id>.h5``: dataset ``features`` ``[N, D]`` float32 (or float16), dataset ``coords``
``[N, 2]`` int64 level-0 (x, y); attrs on ``coords``: ``patch_size``, ``patch_size_level0``,
``target_mpp``, ``level0_mpp``, ``level0_width``, ``level0_height`` (+ ``encoder``,
``config_hash`` when written here). Files appear atomically (``threads_search.atomic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from threads_search.atomic import atomic_path
from threads_search.errors import InputError

REQUIRED_ATTRS = ("patch_size", "patch_size_level0", "target_mpp", "level0_mpp")


class FeatureFileError(InputError):
    """An h5 that does not hold valid patch features; the message names the file and the fault
    (a ``ValueError`` too)."""


@dataclass
class FeatureFile:
    """Contents of one feature h5: ``features`` ``[N, D]``, ``coords`` ``[N, 2]`` int64."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``features`` ``[N, D]``, ``coords`` ``[N, 2]`` (level-0 px) with ``attrs`` on
    ``coords`` (and the datasets ``extra``, name → array) atomically: a reader (or a re-run
    after kill -9) never sees a partial file; on an error neither the file nor a temporary
    is left."""
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"features {features.shape} and coords {coords.shape} disagree")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        ds = f.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            ds.attrs[k] = v
        for name, data in (extra or {}).items():
            f.create_dataset(name, data=data)
        f.attrs["complete"] = True


def read_features(path: str | Path, validate: bool = True) -> FeatureFile:
    """Read a feature h5 (ours, TRIDENT's or CLAM's). Raises ``FeatureFileError``."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise FeatureFileError(
                    f"{path}: needs datasets 'features' and 'coords', found {sorted(f.keys())}"
                )
            feats = f["features"][()]
            coords = f["coords"][()]
            attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
            attrs.update({f"file.{k}": _plain(v) for k, v in f.attrs.items()})
    except (OSError, KeyError) as e:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({e})") from e
    # CLAM/TRIDENT sometimes store a leading batch axis: [1, N, D].
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if validate:
        _validate(path, feats, coords)
    return FeatureFile(feats, coords.astype(np.int64), attrs)


def read_views(path: str | Path) -> np.ndarray | None:
    """The stain views ``[V, N, D]`` of a feature h5 (``features --stain-views``), None when it
    has none (or they are not finite). Raises ``FeatureFileError`` when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            if "features_views" not in f:
                return None
            views = f["features_views"][()]
    except (OSError, KeyError) as e:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({e})") from e
    if views.ndim != 3 or not np.isfinite(views).all():
        return None
    return views


def _validate(path: Path, feats: np.ndarray, coords: np.ndarray) -> None:
    if feats.ndim != 2:
        raise FeatureFileError(f"{path}: 'features' must be [N, D], got shape {feats.shape}")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FeatureFileError(f"{path}: 'coords' must be [N, 2], got shape {coords.shape}")
    if len(feats) != len(coords):
        raise FeatureFileError(f"{path}: {len(feats)} feature rows but {len(coords)} coords")
    if not np.issubdtype(feats.dtype, np.floating):
        raise FeatureFileError(f"{path}: 'features' must be floating point, got {feats.dtype}")
    if len(feats) and not np.isfinite(feats).all():
        raise FeatureFileError(f"{path}: 'features' hold NaN or inf values")


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
