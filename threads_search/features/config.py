"""Configuration of a features run, saved as ``FEATURES_DIR/config.json``.

``config.json`` holds :meth:`FeaturesConfig.to_dict` plus what :meth:`FeaturesConfig.save` and
the writers add beside the settings (``SAVED_KEYS``: the hash, package versions, the encoder's
spec, the import marker and feature dimension, a synthetic folder's knobs).
:meth:`FeaturesConfig.from_saved` reads such a file back (also one written by an earlier
version); :meth:`FeaturesConfig.from_dict` is strict.
The hash covers only the settings that change the features (``output_key``) and is the same
for the same settings in every version, so folders made before stay usable.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from threads_search.atomic import write_text
from threads_search.config import StrictConfig
from threads_search.errors import ConfigError
from threads_search.wsi.plan import SegmentConfig
from threads_search.wsi.stain_norm import StainConfig

CONFIG_NAME = "config.json"
# Keys written into config.json beside the settings (by ``save`` and its callers: the features
# stage, ``--import-h5``, the Ray engine, ``synth.write_feature_bags``).
SAVED_KEYS = ("config_hash", "versions", "encoder_spec", "imported", "feature_dim", "synthetic")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_VERSIONED = (
    "threads-search",
    "openslide-python",
    "openslide-bin",
    "torch",
    "timm",
    "numpy",
    "scikit-image",
    "torchstain",
)


class FeaturesConfigError(ConfigError):
    """A FEATURES_DIR made with other settings than the ones asked for now, or whose
    ``config.json`` cannot be read (a ``ValueError`` too)."""


def versions() -> dict:
    """Versions of the packages that shape the outputs."""
    import importlib.metadata as md

    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class FeaturesConfig(StrictConfig):
    """What made a FEATURES_DIR. ``segment.grid`` holds patch size (px) and target µm/px;
    ``dtype`` of the features on disk; ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (checked in ``check``, as ``cuda:N`` is no fixed choice); ``stain``: stain normalisation of
    the patches before encoding (``threads_search.wsi.stain_norm``; default ``none``);
    ``stain_views``: re-stained feature copies per slide for training
    (``threads_search.features.stain_views``; 0: none) at jitter strength ``stain_jitter``."""

    patch_encoder: str = "hed-texture"
    checkpoint: str | None = None
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    stain: StainConfig = field(default_factory=StainConfig)
    stain_views: int = 0
    stain_jitter: float = 1.0

    def check(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ConfigError(
                f"FeaturesConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                f"got {self.device!r}"
            )
        if not self.batch_size >= 1:
            raise ConfigError(f"FeaturesConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.workers >= 0:
            raise ConfigError(f"FeaturesConfig.workers must be >= 0, got {self.workers}")
        if not isinstance(self.stain_views, int) or not 0 <= self.stain_views <= 16:
            raise ConfigError(f"--stain-views must be 0 to 16, got {self.stain_views!r}")
        if not 0 < self.stain_jitter <= 3:
            raise ConfigError(f"--stain-jitter must be in (0, 3], got {self.stain_jitter!r}")

    def views_key(self) -> dict:
        """The stain-view settings: not in the hash (``features`` do not change with them), but
        one FEATURES_DIR holds one setting (``features.extract.check_config``)."""
        return {"stain_views": self.stain_views, "stain_jitter": self.stain_jitter}

    def output_key(self) -> dict:
        """The settings that change the features (not batch size, workers, device, nor
        ``max_upsample``, which only decides which slides are refused). ``stain`` is in it only
        when a method is set, so folders made without it (and before it existed) keep their
        hash."""
        ckpt = None
        if self.checkpoint:
            p = Path(self.checkpoint)
            ckpt = {"name": p.name, "size": p.stat().st_size if p.exists() else None}
        segment = self.segment.to_dict()
        segment["grid"].pop("max_upsample", None)  # which slides are refused, not their features
        key = {
            "patch_encoder": self.patch_encoder,
            "checkpoint": ckpt,
            "segment": segment,
            "dtype": self.dtype,
        }
        stain = self.stain.key()
        if stain is not None:
            key["stain"] = stain
        return key

    def hash(self) -> str:
        """16 hex digits of the SHA-256 of ``output_key`` (sorted-key JSON)."""
        blob = json.dumps(self.output_key(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_saved(cls, d: dict) -> FeaturesConfig:
        """The settings of a ``config.json`` written by ``save`` in this or an earlier version:
        ``SAVED_KEYS`` are skipped and segmentation keys that no longer exist dropped
        (``SegmentConfig.from_saved``); any other unknown key is refused (``ConfigError``)."""
        if not isinstance(d, dict):
            raise ConfigError(f"FeaturesConfig: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        if isinstance(d.get("segment"), dict):
            d["segment"] = SegmentConfig.from_saved(d["segment"])
        return cls.from_dict(d, ignore=SAVED_KEYS)

    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` atomically with the hash and package versions (+ ``extra``)."""
        path = Path(out_dir) / CONFIG_NAME
        payload = {**self.to_dict(), "config_hash": self.hash(), "versions": versions()}
        payload.update(extra or {})
        return write_text(path, json.dumps(payload, indent=2))


def load_config(features_dir: str | Path) -> dict | None:
    """The raw ``config.json`` of a FEATURES_DIR, or None when there is none;
    ``FeaturesConfigError`` when it is not a JSON object."""
    path = Path(features_dir) / CONFIG_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        data = e
    if not isinstance(data, dict):
        why = data if isinstance(data, Exception) else f"a JSON {type(data).__name__}"
        raise FeaturesConfigError(
            f"{path} is not a readable features config ({why}); this folder was not written "
            "by threads-search or was damaged: use another --out folder"
        )
    return data
