"""Configuration of a features run, saved as ``FEATURES_DIR/config.json``."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from threads_search.wsi.plan import SegmentConfig

CONFIG_NAME = "config.json"


def versions() -> dict:
    """Versions of the packages that shape the outputs."""
    import importlib.metadata as md

    out = {}
    for pkg in ("threads-search", "openslide-python", "openslide-bin", "torch", "timm", "numpy",
                "scikit-image"):  # fmt: skip
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class FeaturesConfig:
    """What made a FEATURES_DIR. ``segment.grid`` holds patch size (px) and target µm/px."""

    patch_encoder: str = "hed-texture"
    checkpoint: str | None = None
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    dtype: str = "float32"
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"

    def output_key(self) -> dict:
        """The settings that change the features (not batch size, workers, device, nor
        ``max_upsample``, which only decides which slides are refused)."""
        ckpt = None
        if self.checkpoint:
            p = Path(self.checkpoint)
            ckpt = {"name": p.name, "size": p.stat().st_size if p.exists() else None}
        segment = self.segment.to_dict()
        segment["grid"].pop("max_upsample", None)  # which slides are refused, not their features
        return {
            "patch_encoder": self.patch_encoder,
            "checkpoint": ckpt,
            "segment": segment,
            "dtype": self.dtype,
        }

    def hash(self) -> str:
        blob = json.dumps(self.output_key(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segment"] = self.segment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeaturesConfig:
        d = dict(d)
        d.pop("config_hash", None)
        d.pop("versions", None)
        d.pop("encoder_spec", None)
        d["segment"] = SegmentConfig.from_dict(d.get("segment", {}))
        return cls(**d)

    def save(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` atomically with the hash and package versions."""
        path = Path(out_dir) / CONFIG_NAME
        payload = {**self.to_dict(), "config_hash": self.hash(), "versions": versions()}
        payload.update(extra or {})
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)
        return path


def load_config(features_dir: str | Path) -> dict | None:
    """The raw ``config.json`` of a FEATURES_DIR, or None when there is none."""
    path = Path(features_dir) / CONFIG_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())
