"""The model bundle on disk: ``build_model``, ``save_model``, ``load_model`` of a
:class:`~threads_search.models.threads_model.ThreadsModel` (re-exported here).

``MODEL_DIR`` layout (DESIGN.md "Model bundle"):

- ``config.json``: ``format``/``format_version``, ``slide_encoder`` {name, config},
  ``molecular_encoders`` {rna: {name, config, units}, dna: {name, config}} (each optional),
  ``embedding_dim``, ``patch_encoder`` {name, dim, patch_size, target_mpp} (the features the slide
  encoder expects), ``training`` (free dict), ``versions``, ``created``.
- ``model.safetensors``: all weights, keys prefixed ``slide.``, ``rna.``, ``dna.``.
- ``genes_rna.txt`` / ``genes_dna.txt``: vocabularies, one gene per line, in model order.
- ``rna_normalization.json``: :class:`~threads_search.molecular.RnaNormalizer`.

Saving is atomic: every file is first written (and flushed to disk) under a temporary name
inside ``MODEL_DIR`` (``threads_search.atomic.temp_path``); then the old ``config.json`` is
removed and the files are renamed into place, ``config.json`` last. A bundle is complete exactly
when ``config.json`` exists. Other files in the folder (training logs) are left alone.

Loading: a missing folder or file → ``MissingError`` (a ``FileNotFoundError``); a folder that
is not a readable bundle → ``BundleError`` (a ``ValueError``); an encoder name this version does
not know → ``UnknownNameError`` (a ``KeyError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from threads_search.atomic import temp_path
from threads_search.errors import MissingError
from threads_search.models.molecular_encoders import create_molecular_encoder
from threads_search.models.slide_encoders import create_slide_encoder
from threads_search.models.threads_model import (
    FORMAT,
    FORMAT_VERSION,
    BundleError,
    ThreadsModel,
    patch_encoder_dict,
)
from threads_search.molecular import RnaNormalizer
from threads_search.registry import UnknownNameError

__all__ = [
    "BUNDLE_FILES",
    "FORMAT",
    "FORMAT_VERSION",
    "BundleError",
    "ThreadsModel",
    "build_model",
    "bundle_rna_units",
    "load_model",
    "save_model",
]

BUNDLE_FILES = (
    "config.json",
    "model.safetensors",
    "genes_rna.txt",
    "genes_dna.txt",
    "rna_normalization.json",
)


def build_model(
    patch_encoder,
    slide_encoder: str = "threads",
    slide_config: dict[str, Any] | None = None,
    genes_rna: list[str] | None = None,
    normalizer: RnaNormalizer | None = None,
    rna_encoder: str = "rna-mlp",
    rna_config: dict[str, Any] | None = None,
    rna_units: str | None = None,
    genes_dna: list[str] | None = None,
    dna_encoder: str = "dna-mlp",
    dna_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> ThreadsModel:
    """A fresh (untrained) model. ``patch_encoder``: a ``PatchEncoderSpec`` or dict with name and
    dim. An RNA encoder is built when ``normalizer`` is given (its genes are the vocabulary unless
    ``genes_rna``; ``rna_units`` defaults to its units); a DNA encoder when ``genes_dna`` is."""
    pe = patch_encoder_dict(patch_encoder)
    slide = create_slide_encoder(slide_encoder, pe["dim"], **(slide_config or {}))
    out = {"out_dim": slide.out_dim}
    rna = dna = None
    if normalizer is not None:
        genes_rna = list(genes_rna or normalizer.genes)
        rna = create_molecular_encoder(rna_encoder, len(genes_rna), **{**out, **(rna_config or {})})
    if genes_dna is not None:
        dna = create_molecular_encoder(dna_encoder, len(genes_dna), **{**out, **(dna_config or {})})
    units = rna_units or (normalizer.units if normalizer is not None else "tpm")
    return ThreadsModel(slide, pe, rna, genes_rna, normalizer, units, dna, genes_dna, training)


def save_model(model: ThreadsModel, out_dir: str | Path) -> Path:
    """Write ``model`` as a bundle in ``out_dir`` (created if needed), atomically (module
    docstring). Returns ``out_dir``."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}

    def stage(name: str, data: bytes) -> None:
        staged[name] = tmp = temp_path(out / name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        stage("model.safetensors", save(state, metadata={"format": FORMAT}))
        if model.rna is not None:
            stage("genes_rna.txt", ("\n".join(model.genes_rna) + "\n").encode())
            stage("rna_normalization.json", json.dumps(model.normalizer.to_dict()).encode())
        if model.dna is not None:
            stage("genes_dna.txt", ("\n".join(model.genes_dna) + "\n").encode())
        stage("config.json", json.dumps(model.config_dict(), indent=2).encode())
        (out / "config.json").unlink(missing_ok=True)  # the old bundle is gone from here on
        for name in BUNDLE_FILES:
            if name not in staged:
                (out / name).unlink(missing_ok=True)  # stale file of an older bundle
        for name in [n for n in staged if n != "config.json"] + ["config.json"]:
            os.replace(staged[name], out / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return out


def load_model(model_dir: str | Path, device: str = "cpu") -> ThreadsModel:
    """Read a bundle written by :func:`save_model` onto ``device`` (``auto`` = CUDA if present).
    Errors: see the module docstring; each names the folder or file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from threads_search.device import resolve_device

    d = Path(model_dir)
    cfg = _read_config(d)
    try:
        model = _assemble(d, cfg)
    except UnknownNameError:
        raise
    except (KeyError, TypeError) as e:  # an entry missing or of the wrong shape
        raise BundleError(f"{d / 'config.json'}: missing or malformed entry ({e!r})") from e
    try:
        model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    except SafetensorError as e:
        raise BundleError(f"model bundle {d}: model.safetensors cannot be read: {e}") from e
    except RuntimeError as e:
        raise BundleError(f"model bundle {d}: weights do not match config.json: {e}") from e
    return model.to(resolve_device(device)).eval()


def _read_config(d: Path) -> dict:
    """``config.json`` of bundle ``d`` after checking the folder holds every file it names."""
    if not d.is_dir():
        raise MissingError(f"model bundle folder not found: {d}")
    if not (d / "config.json").exists():
        raise MissingError(
            f"model bundle {d}: missing config.json (not a bundle, or its save did not finish)"
        )
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{d / 'config.json'} cannot be read: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise BundleError(f"{d / 'config.json'}: not a {FORMAT} config (format={found})")
    mol = cfg.get("molecular_encoders") or {}
    need = ["model.safetensors"] + (
        ["genes_rna.txt", "rna_normalization.json"] if "rna" in mol else []
    )
    need += ["genes_dna.txt"] if "dna" in mol else []
    missing = [n for n in need if not (d / n).exists()]
    if missing:
        raise MissingError(f"model bundle {d}: missing {', '.join(missing)}")
    return cfg


def _assemble(d: Path, cfg: dict) -> ThreadsModel:
    """The (untrained) model ``cfg`` describes, with the vocabularies and normaliser of ``d``."""
    mol = cfg.get("molecular_encoders") or {}
    sc = dict(cfg["slide_encoder"]["config"])
    slide = create_slide_encoder(cfg["slide_encoder"]["name"], sc.pop("in_dim"), **sc)
    rna = dna = genes_rna = genes_dna = normalizer = None
    if "rna" in mol:
        genes_rna = _read_genes(d / "genes_rna.txt")
        normalizer = RnaNormalizer.load(d / "rna_normalization.json")
        c = dict(mol["rna"]["config"])
        rna = create_molecular_encoder(mol["rna"]["name"], c.pop("in_dim"), **c)
    if "dna" in mol:
        genes_dna = _read_genes(d / "genes_dna.txt")
        c = dict(mol["dna"]["config"])
        dna = create_molecular_encoder(mol["dna"]["name"], c.pop("in_dim"), **c)
    units = mol.get("rna", {}).get("units", "tpm")
    pe, training = cfg["patch_encoder"], cfg.get("training")
    return ThreadsModel(slide, pe, rna, genes_rna, normalizer, units, dna, genes_dna, training)


def bundle_rna_units(model_dir: str | Path) -> str | None:
    """The RNA units a bundle's encoder was trained on, read from ``config.json`` alone (no
    weights loaded); None when the bundle has no RNA encoder or no readable config."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    rna = (cfg.get("molecular_encoders") or {}).get("rna")
    return None if rna is None else rna.get("units", "tpm")


def _read_genes(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
