"""The model bundle: :class:`ThreadsModel` (slide + molecular encoders), ``build_model``,
``save_model``, ``load_model``.

``MODEL_DIR`` layout (DESIGN.md "Model bundle"):

- ``config.json``: ``format``/``format_version``, ``slide_encoder`` {name, config},
  ``molecular_encoders`` {rna: {name, config, units}, dna: {name, config}} (each optional),
  ``embedding_dim``, ``patch_encoder`` {name, dim, patch_size, target_mpp} (the features the slide
  encoder expects), ``training`` (free dict), ``versions``, ``created``.
- ``model.safetensors``: all weights, keys prefixed ``slide.``, ``rna.``, ``dna.``.
- ``genes_rna.txt`` / ``genes_dna.txt``: vocabularies, one gene per line, in model order.
- ``rna_normalization.json``: :class:`~threads_search.molecular.RnaNormalizer`.

Saving is atomic: every file is first written under a temporary name inside ``MODEL_DIR``; then
the old ``config.json`` is removed, the files are renamed into place, ``config.json`` last. A
bundle is complete exactly when ``config.json`` exists. Other files in the folder (training logs)
are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from threads_search.models.molecular_encoders import create_molecular_encoder
from threads_search.models.slide_encoders import SlideEncoder, create_slide_encoder
from threads_search.molecular import RnaNormalizer, multi_hot
from threads_search.molecular.dna import as_dna_frame
from threads_search.molecular.rna import UNITS, as_rna_frame

FORMAT = "threads-search-model"
FORMAT_VERSION = 1
BUNDLE_FILES = (
    "config.json", "model.safetensors", "genes_rna.txt", "genes_dna.txt",
    "rna_normalization.json",
)  # fmt: skip
_H5_ENCODER_KEYS = ("patch_encoder", "encoder", "encoder_name", "patch_encoder_name", "model_name")


class ThreadsModel(nn.Module):
    """Slide encoder (``slide``) plus optional ``rna``/``dna`` encoders over vocabularies
    ``genes_rna``/``genes_dna``, the RNA ``normalizer`` and raw ``rna_units``, and the expected
    ``patch_encoder`` {name, dim, patch_size, target_mpp}. The ``embed_*`` methods return
    L2-normalised float32 numpy vectors in the shared ``embedding_dim`` space; they run in eval
    mode under ``torch.inference_mode`` and restore the train/eval mode afterwards."""

    def __init__(
        self,
        slide: SlideEncoder,
        patch_encoder: dict[str, Any],
        rna: nn.Module | None = None,
        genes_rna: list[str] | None = None,
        normalizer: RnaNormalizer | None = None,
        rna_units: str = "tpm",
        dna: nn.Module | None = None,
        genes_dna: list[str] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        pe = _patch_encoder_dict(patch_encoder)
        if slide.in_dim != pe["dim"]:
            raise ValueError(
                f"slide encoder takes {slide.in_dim}-d features but patch encoder "
                f"{pe['name']!r} gives {pe['dim']}-d"
            )
        if rna is not None:
            if genes_rna is None or normalizer is None:
                raise ValueError("an RNA encoder needs genes_rna and an RnaNormalizer")
            if list(normalizer.genes) != list(genes_rna) or rna.in_dim != len(genes_rna):
                raise ValueError(
                    f"RNA vocabulary mismatch: {len(genes_rna)} genes, normaliser "
                    f"{len(normalizer.genes)} genes, encoder input {rna.in_dim}"
                )
        if dna is not None and (genes_dna is None or dna.in_dim != len(genes_dna)):
            raise ValueError("a DNA encoder needs genes_dna of its input size")
        if rna_units not in UNITS:
            raise ValueError(f"rna_units must be one of {UNITS}, got {rna_units!r}")
        for enc in (rna, dna):
            if enc is not None and enc.out_dim != slide.out_dim:
                raise ValueError(f"{enc.name} gives {enc.out_dim}-d, slide {slide.out_dim}-d")
        self.slide, self.rna, self.dna = slide, rna, dna
        self.patch_encoder = pe
        self.genes_rna = list(genes_rna) if rna is not None else None
        self.genes_dna = list(genes_dna) if dna is not None else None
        self.normalizer = normalizer if rna is not None else None
        self.rna_units = rna_units
        self.training_params = dict(training or {})

    @property
    def embedding_dim(self) -> int:
        return self.slide.out_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _run(self, fn, *args):
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return fn(*args)
        finally:
            self.train(was_training)

    def embed_slide(
        self,
        x,
        *,
        return_attention: bool = False,
        chunk_size: int = 8192,
        checkpoint: str | Path | None = None,
        device: str = "auto",
    ):
        """``x``: features ``[N, D]`` (numpy/torch), a feature ``.h5``/``.hdf5`` path (datasets
        ``features``, ``coords``), or a slide image path (patch features computed with the bundle's
        patch encoder, its weights from ``checkpoint``, on ``device``). → float32 ``[out]``, and
        attention float32 ``[H, N]`` too when ``return_attention``."""
        if isinstance(x, (str, Path)):
            path = Path(x)
            if path.suffix.lower() in (".h5", ".hdf5"):
                feats = read_features_h5(path, self.patch_encoder)
            else:
                from threads_search.features import encode_slide_file

                pe = self.patch_encoder  # patches exactly as the model's features were made
                feats, _ = encode_slide_file(
                    path, pe["name"], checkpoint=checkpoint, device=device,
                    patch_size=pe["patch_size"], target_mpp=pe["target_mpp"],
                )  # fmt: skip
            source = str(path)
        else:
            feats, source = x, "features"
        if not torch.is_tensor(feats):
            with warnings.catch_warnings():  # a read-only array is fine: it is never written to
                warnings.simplefilter("ignore", UserWarning)
                feats = torch.as_tensor(np.asarray(feats))
        if feats.ndim == 3 and feats.shape[0] == 1:
            feats = feats[0]
        dim = self.patch_encoder["dim"]
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise ValueError(
                f"{source}: features of shape {tuple(feats.shape)} do not match the model's patch "
                f"encoder {self.patch_encoder['name']!r} ({dim}-d): expected [N, {dim}]"
            )
        if feats.shape[0] == 0:
            raise ValueError(f"{source}: no patches")
        if not torch.isfinite(feats).all():
            raise ValueError(f"{source}: features contain NaN or inf")
        out = self._run(self.slide.embed_bag, feats, chunk_size)
        emb = F.normalize(out.embedding.float(), dim=-1).cpu().numpy()
        if not return_attention:
            return emb
        att = None if out.attention is None else out.attention.float().cpu().numpy()
        return emb, att

    def embed_rna(self, profile, units: str | None = None, batch_size: int = 1024) -> np.ndarray:
        """``profile``: dict gene → value or Series (one sample → ``[out]``); DataFrame (rows =
        samples, an optional ``sample_id`` column; non-numeric and clinical columns ignored) or
        :class:`RnaMatrix` (→ ``[n, out]``, in row order). ``units`` defaults to the matrix's
        own, else the bundle's ``rna_units``. Missing genes: see ``RnaNormalizer.align``."""
        if self.rna is None:
            raise ValueError("this model bundle has no RNA encoder")
        frame, single, own_units = as_rna_frame(profile)
        units = units or own_units or self.rna_units
        z = self.normalizer.transform_raw(frame, units, "profile")
        emb = self._encode(self.rna, z, batch_size)
        return emb[0] if single else emb

    def embed_dna(self, mutations, batch_size: int = 1024) -> np.ndarray:
        """``mutations``: list of mutated genes, dict gene → 0/1 or Series (one sample →
        ``[out]``); binary sample × gene DataFrame (optional ``sample_id`` column) or MAF rows
        (``Hugo_Symbol``, ``Tumor_Sample_Barcode``, ``Variant_Classification``; samples in
        first-seen order) → ``[n, out]``. Genes outside the panel: ``UnknownGenesWarning``."""
        if self.dna is None:
            raise ValueError("this model bundle has no DNA encoder")
        frame, single = as_dna_frame(mutations)
        x = multi_hot(frame, self.genes_dna, "DNA profile")
        emb = self._encode(self.dna, x, batch_size)
        return emb[0] if single else emb

    def _encode(self, enc: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
        def run(x):
            parts = [
                F.normalize(enc(torch.tensor(x[i : i + batch_size], device=self.device)), dim=-1)
                for i in range(0, len(x), batch_size)
            ]
            return torch.cat(parts).float().cpu().numpy()

        return self._run(run, x)

    def config_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds."""
        from threads_search._version import __version__

        mol: dict[str, Any] = {}
        if self.rna is not None:
            mol["rna"] = {"name": self.rna.name, "config": self.rna.config.to_dict()}
            mol["rna"].update(units=self.rna_units, n_genes=len(self.genes_rna))
        if self.dna is not None:
            mol["dna"] = {"name": self.dna.name, "config": self.dna.config.to_dict()}
            mol["dna"]["n_genes"] = len(self.genes_dna)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "slide_encoder": {"name": self.slide.name, "config": self.slide.config.to_dict()},
            "molecular_encoders": mol,
            "embedding_dim": self.embedding_dim,
            "patch_encoder": dict(self.patch_encoder),
            "training": self.training_params,
            "versions": {
                "threads_search": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _patch_encoder_dict(pe) -> dict[str, Any]:
    d = pe.to_dict() if hasattr(pe, "to_dict") else dict(pe)
    if "name" not in d or "dim" not in d:
        raise ValueError(f"patch_encoder needs at least 'name' and 'dim', got {sorted(d)}")
    return {
        "name": str(d["name"]),
        "dim": int(d["dim"]),
        "patch_size": int(d.get("patch_size", 512)),
        "target_mpp": float(d.get("target_mpp", 0.5)),
    }


def read_features_h5(path: Path, patch_encoder: dict[str, Any]) -> np.ndarray:
    """``features`` of a feature ``.h5`` as ``[N, D]``, after checking that the patch encoder
    it names (attrs of the file, ``features`` or ``coords``, or ``FEATURES_DIR/config.json`` for
    ``FEATURES_DIR/h5/<slide>.h5``) is the bundle's; another one → ``ValueError`` naming both."""
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"feature file not found: {path}")
    with h5py.File(path, "r") as f:
        if "features" not in f:
            raise ValueError(f"{path}: no 'features' dataset (has: {sorted(f.keys())})")
        holders = [f, f["features"]] + ([f["coords"]] if "coords" in f else [])
        names = [_encoder_name(o.attrs) for o in holders]
        mpp = f["coords"].attrs.get("target_mpp") if "coords" in f else None
        feats = f["features"][()]
    if mpp is not None and abs(float(mpp) / patch_encoder["target_mpp"] - 1) > 0.05:
        warnings.warn(
            f"{path}: patches at {float(mpp):g} µm/px, the model expects "
            f"{patch_encoder['target_mpp']:g} µm/px",
            stacklevel=3,
        )
    cfg = path.parent.parent / "config.json"
    if path.parent.name == "h5" and cfg.exists():
        with contextlib.suppress(json.JSONDecodeError):
            names.append(_encoder_name(json.loads(cfg.read_text())))
    want = patch_encoder["name"]
    for name in names:
        if name is not None and name != want:
            raise ValueError(
                f"{path} holds features from patch encoder {name!r}, but the model expects "
                f"patch encoder {want!r}; recompute features with {want!r}"
            )
    return feats


def _encoder_name(meta) -> str | None:
    for key in _H5_ENCODER_KEYS:
        if key in meta:
            v = meta[key]
            v = v.get("name") if isinstance(v, dict) else v
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v:
                return v
    return None


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
    pe = _patch_encoder_dict(patch_encoder)
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
    token = uuid.uuid4().hex[:12]
    staged: dict[str, Path] = {}

    def stage(name: str, data: bytes) -> None:
        tmp = out / f".{name}.tmp-{token}"
        staged[name] = tmp
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
    A missing folder or file → ``FileNotFoundError`` naming it."""
    from safetensors.torch import load_file

    from threads_search.device import resolve_device

    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"model bundle folder not found: {d}")
    if not (d / "config.json").exists():
        raise FileNotFoundError(
            f"model bundle {d}: missing config.json (not a bundle, or its save did not finish)"
        )
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{d / 'config.json'}: not a {FORMAT} config (format={cfg.get('format')})")
    mol = cfg.get("molecular_encoders", {})
    need = ["model.safetensors"] + (
        ["genes_rna.txt", "rna_normalization.json"] if "rna" in mol else []
    )
    need += ["genes_dna.txt"] if "dna" in mol else []
    missing = [n for n in need if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(f"model bundle {d}: missing {', '.join(missing)}")
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
    model = ThreadsModel(
        slide, cfg["patch_encoder"], rna, genes_rna, normalizer, units, dna, genes_dna,
        cfg.get("training"),
    )  # fmt: skip
    try:
        model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise ValueError(f"model bundle {d}: weights do not match config.json: {e}") from e
    return model.to(resolve_device(device)).eval()


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
