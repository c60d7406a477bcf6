""":class:`ThreadsModel`: a slide encoder and optional RNA/DNA encoders embedding into one shared
space, with what they need to read their inputs (gene vocabularies, the RNA normaliser, the
patch encoder the slide encoder's features must come from). Saved and loaded as a model bundle
by :mod:`threads_search.models.bundle`.

Feature ``.h5`` files given to :meth:`ThreadsModel.embed_slide` are read by
:func:`threads_search.features.read_features` and checked by :func:`check_patch_encoder`.
"""

from __future__ import annotations

import contextlib
import json
import platform
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from threads_search.errors import InputError, MissingError
from threads_search.linalg import l2_normalize
from threads_search.models.slide_encoders import SlideEncoder
from threads_search.molecular import RnaNormalizer, multi_hot
from threads_search.molecular.dna import as_dna_frame
from threads_search.molecular.rna import UNITS, as_rna_frame

if TYPE_CHECKING:
    from threads_search.features.h5io import FeatureFile

FORMAT = "threads-search-model"
FORMAT_VERSION = 1
# attributes of a feature h5 (or keys of FEATURES_DIR/config.json) naming its patch encoder:
# ours (``encoder``), TRIDENT's and CLAM's
ENCODER_KEYS = ("patch_encoder", "encoder", "encoder_name", "patch_encoder_name", "model_name")


class BundleError(InputError):
    """A model bundle that cannot be used as it is: not a bundle's ``config.json``, weights that
    do not match it, parts that do not fit together, or a part a query needs that it lacks (no
    RNA encoder...). A ``ValueError`` too."""


class ThreadsModel(nn.Module):
    """Slide encoder (``slide``) plus optional ``rna``/``dna`` encoders over vocabularies
    ``genes_rna``/``genes_dna``, the RNA ``normalizer`` and raw ``rna_units``, and the expected
    ``patch_encoder`` {name, dim, patch_size, target_mpp}. The ``embed_*`` methods return
    L2-normalised float32 numpy vectors in the shared ``embedding_dim`` space; they run in eval
    mode under ``torch.inference_mode`` and restore the train/eval mode afterwards. Parts that
    do not fit together → :class:`BundleError`."""

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
        pe = patch_encoder_dict(patch_encoder)
        if slide.in_dim != pe["dim"]:
            raise BundleError(
                f"slide encoder takes {slide.in_dim}-d features but patch encoder "
                f"{pe['name']!r} gives {pe['dim']}-d"
            )
        if rna is not None:
            if genes_rna is None or normalizer is None:
                raise BundleError("an RNA encoder needs genes_rna and an RnaNormalizer")
            if list(normalizer.genes) != list(genes_rna) or rna.in_dim != len(genes_rna):
                raise BundleError(
                    f"RNA vocabulary mismatch: {len(genes_rna)} genes, normaliser "
                    f"{len(normalizer.genes)} genes, encoder input {rna.in_dim}"
                )
        if dna is not None and (genes_dna is None or dna.in_dim != len(genes_dna)):
            raise BundleError("a DNA encoder needs genes_dna of its input size")
        if rna_units not in UNITS:
            raise BundleError(f"rna_units must be one of {UNITS}, got {rna_units!r}")
        for enc in (rna, dna):
            if enc is not None and enc.out_dim != slide.out_dim:
                raise BundleError(f"{enc.name} gives {enc.out_dim}-d, slide {slide.out_dim}-d")
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
        """``x``: features ``[N, D]`` (numpy/torch), a feature ``.h5``/``.hdf5`` path (read and
        checked by :func:`read_feature_file`), or a slide image path (patch features computed
        with the bundle's patch encoder, its weights from ``checkpoint``, on ``device``).
        → float32 ``[out]``, and attention float32 ``[H, N]`` too when ``return_attention``.
        Features that do not fit the model → ``InputError`` naming the source."""
        if isinstance(x, (str, Path)):
            path = Path(x)
            if path.suffix.lower() in (".h5", ".hdf5"):
                feats = read_feature_file(path, self.patch_encoder, stacklevel=3).features
            else:
                from threads_search.features import encode_slide_file

                pe = self.patch_encoder  # patches exactly as the model's features were made
                feats, _ = encode_slide_file(
                    path,
                    pe["name"],
                    checkpoint=checkpoint,
                    device=device,
                    patch_size=pe["patch_size"],
                    target_mpp=pe["target_mpp"],
                    stain=pe.get("stain"),
                )
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
            raise InputError(
                f"{source}: features of shape {tuple(feats.shape)} do not match the model's patch "
                f"encoder {self.patch_encoder['name']!r} ({dim}-d): expected [N, {dim}]"
            )
        if feats.shape[0] == 0:
            raise InputError(f"{source}: no patches")
        if not torch.isfinite(feats).all():
            raise InputError(f"{source}: features contain NaN or inf")
        out = self._run(self.slide.embed_bag, feats, chunk_size)
        emb = l2_normalize(out.embedding.float().cpu().numpy())[0]
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
            raise BundleError("this model bundle has no RNA encoder")
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
            raise BundleError("this model bundle has no DNA encoder")
        frame, single = as_dna_frame(mutations)
        x = multi_hot(frame, self.genes_dna, "DNA profile")
        emb = self._encode(self.dna, x, batch_size)
        return emb[0] if single else emb

    def _encode(self, enc: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
        def run(x):
            parts = [
                enc(torch.tensor(x[i : i + batch_size], device=self.device))
                for i in range(0, len(x), batch_size)
            ]
            return l2_normalize(torch.cat(parts).float().cpu().numpy())

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


def patch_encoder_dict(pe) -> dict[str, Any]:
    """``{name, dim, patch_size (px), target_mpp (µm/px)}`` of a ``PatchEncoderSpec`` or dict
    with at least name and dim (patch size 512 px and 0.5 µm/px by default), plus ``stain``
    {method, reference, sample_patches} (``StainConfig``) when the features were
    stain-normalised; absent (older bundles too) means none."""
    from threads_search.errors import ConfigError
    from threads_search.wsi.stain_norm import StainConfig

    d = pe.to_dict() if hasattr(pe, "to_dict") else dict(pe)
    if "name" not in d or "dim" not in d:
        raise BundleError(f"patch_encoder needs at least 'name' and 'dim', got {sorted(d)}")
    out = {
        "name": str(d["name"]),
        "dim": int(d["dim"]),
        "patch_size": int(d.get("patch_size", 512)),
        "target_mpp": float(d.get("target_mpp", 0.5)),
    }
    try:
        stain = StainConfig.from_dict(d.get("stain") or {})
    except ConfigError as e:
        raise BundleError(f"patch_encoder stain settings cannot be read: {e}") from None
    if stain.method != "none":
        out["stain"] = stain.to_dict()
    return out


def read_feature_file(
    path: Path, patch_encoder: dict[str, Any], stacklevel: int = 2
) -> FeatureFile:
    """A feature ``.h5`` (``threads_search.features.read_features``: ``FeatureFileError`` when
    it is not one; ``MissingError`` when there is no file), checked by
    :func:`check_patch_encoder`. ``stacklevel``: of the µm/px warning, as seen from the caller."""
    from threads_search.features.h5io import read_features  # the features stage: imported late

    if not Path(path).exists():
        raise MissingError(f"feature file not found: {path}")
    ff = read_features(path)
    check_patch_encoder(ff, patch_encoder, Path(path), stacklevel + 1)
    return ff


def check_patch_encoder(
    ff: FeatureFile, patch_encoder: dict[str, Any], path: Path, stacklevel: int = 2
) -> None:
    """Refuse features that another patch encoder made (``InputError`` naming both): the
    encoder named by the file's attributes (of the file, then of ``coords``; ``ENCODER_KEYS``)
    or, for ``FEATURES_DIR/h5/<slide>.h5``, by ``FEATURES_DIR/config.json``. Warn (a
    ``UserWarning``) when their ``target_mpp`` is more than 5% from the model's µm/px."""
    mpp = ff.attrs.get("target_mpp")
    if mpp is not None and abs(float(mpp) / patch_encoder["target_mpp"] - 1) > 0.05:
        warnings.warn(
            f"{path}: patches at {float(mpp):g} µm/px, the model expects "
            f"{patch_encoder['target_mpp']:g} µm/px",
            stacklevel=stacklevel + 1,
        )
    names = [_encoder_name(ff.attrs, "file."), _encoder_name(ff.attrs)]
    cfg, saved = path.parent.parent / "config.json", None
    if path.parent.name == "h5" and cfg.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            saved = json.loads(cfg.read_text())
            names.append(_encoder_name(saved))
    want = patch_encoder["name"]
    for name in names:
        if name is not None and name != want:
            raise InputError(
                f"{path} holds features from patch encoder {name!r}, but the model expects "
                f"patch encoder {want!r}; recompute features with {want!r}"
            )
    _check_stain(ff.attrs, saved, patch_encoder.get("stain"), path)


def _stain_id(stain) -> tuple:
    """(method, reference file name, region) of a ``StainConfig`` dict (None/absent: none)."""
    from threads_search.wsi.stain_norm import split_reference

    stain = stain if isinstance(stain, dict) else {}
    method = stain.get("method") or "none"
    ref = stain.get("reference")
    if method == "none" or not isinstance(ref, str):
        return (method, None, None)
    path, region = split_reference(ref)
    return (method, Path(path).name, region)


def _describe_stain(sid: tuple) -> str:
    method, name, region = sid
    if method == "none":
        return "none"
    where = "built-in reference" if name is None else f"reference {name}"
    return f"{method} ({where}{f' region {region}' if region else ''})"


def _check_stain(attrs: dict, saved, want: dict | None, path: Path) -> None:
    """Refuse features whose stain normalisation differs from the model's ``want``
    (``InputError``): the method in the h5's ``stain_method`` attribute, and the method and
    reference in ``FEATURES_DIR/config.json``'s ``stain``; features that record neither were
    made without stain normalisation."""
    want_id = _stain_id(want)
    method = attrs.get("stain_method")
    method = method.decode() if isinstance(method, bytes) else method
    have = []
    if isinstance(saved, dict):
        have.append((_stain_id(saved.get("stain")), None))
    if isinstance(method, str) and method:
        have.append(((method, *want_id[1:]), method))  # the h5 names its method only
    for found, text in have or [(("none", None, None), None)]:
        if found != want_id:
            fix = f"--stain-normalize {want_id[0]}"
            if want_id[1] is not None:
                fix += f" --stain-reference {want['reference']}"
            raise InputError(
                f"{path} holds features made with stain normalisation "
                f"{text or _describe_stain(found)}, but the model was trained on features with "
                f"{_describe_stain(want_id)}; recompute the features with {fix} (the model's "
                "settings), or use a model trained on these features"
            )


def _encoder_name(meta: dict, prefix: str = "") -> str | None:
    """The patch encoder named under ``prefix + key`` for the first of ``ENCODER_KEYS`` that
    holds a non-empty name (a dict value: its ``name``), or None."""
    for key in ENCODER_KEYS:
        v = meta.get(prefix + key) if isinstance(meta, dict) else None
        v = v.get("name") if isinstance(v, dict) else v
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and v:
            return v
    return None
