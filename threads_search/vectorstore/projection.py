"""The region projection: how stored patch features become the vectors region search compares.

Region search ranks patches by cosine similarity. The features of the built-in ``hed-texture``
encoder mix the stain's colour (about a third of its dimensions: colour statistics that change
from lab to lab and scanner to scanner) with the tissue's structure (nuclei, texture, spatial
spectra), on scales that differ from block to block; the nearest patches are then often those
stained alike rather than those of the same tissue. In ``tissue`` mode the projection keeps the
encoder's tissue dimensions (``patch_encoders.tissue_dims``; every dimension of an encoder that
declares none), standardises each over the generation's own indexed patches and L2-normalises:

    v' = normalise(((v / |v|)[dims] - mean) / scale)       scale = max(std, 0.01 median std)

``raw`` mode (and every generation written before projections) compares the L2-normalised
features as they are. ``auto`` (the default) is ``tissue`` for an encoder that declares tissue
dimensions from ``MIN_SLIDES`` indexed slides, and ``raw`` otherwise (``tissue`` asked for
with an encoder that declares none standardises every dimension): statistics over a few slides
mostly describe those slides, and on painted cohorts the same-subtype tumour share of the top
10 (``bench/region_quality.py``) was 0.81-0.85 with ``tissue`` against 0.69-0.76 ``raw`` at
64-160 slides, but 0.59 against 0.62 on average at 16-32 slides.

The projection is fitted when a generation is written, from one pass over its patch vectors
(float64 sums), saved in the generation (``region_projection.npz``, described in ``index.json``
under ``regions.projection``) and applied to the FAISS index's vectors and to every query made of
pixels or patch features. ``region_vectors.npy`` keeps the L2-normalised features themselves
(the evaluation baselines read them as each slide's bag): :class:`ProjectedRows` projects rows as
they are read (:func:`projected_rows`). Below ``MIN_FIT`` patches even ``tissue`` compares the
raw features: the tissue dimensions unstandardised ranked worse than the raw features on every
cohort measured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.errors import ConfigError
from threads_search.linalg import l2_normalize

MODES = ("auto", "tissue", "raw")
MIN_SLIDES = 50  # auto: tissue from this many indexed slides, raw below
MIN_FIT = 100  # patches needed to standardise
SCALE_FLOOR = 0.01  # a dimension's scale is at least this share of the median std
OLDER = "raw: a generation written before projections"  # the reason recorded for those


@dataclass
class RegionProjection:
    """``mode`` ("tissue" | "raw": what is used), the kept feature ``dims`` ``[d]`` (int64, of
    ``in_dim``), ``mean`` and ``scale`` ``[d]`` (float32), ``n_fit`` (patches the statistics
    came from) and ``reason`` (why this mode, for ``index.json``)."""

    mode: str
    in_dim: int
    dims: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    n_fit: int = 0
    reason: str = ""

    @classmethod
    def identity(cls, dim: int, reason: str = "raw") -> RegionProjection:
        """The ``raw`` projection of ``dim``-d features (what older generations use)."""
        ones, zeros = np.ones(dim, np.float32), np.zeros(dim, np.float32)
        return cls("raw", dim, np.arange(dim), zeros, ones, 0, reason)

    @classmethod
    def fit(
        cls,
        chunks: Iterable[np.ndarray],
        dim: int,
        mode: str,
        tissue: Iterable[int] | None,
        n_slides: int,
    ) -> RegionProjection:
        """Fit on the patch vectors of ``chunks`` (``[m, dim]`` blocks, read once, normalised
        as :meth:`__call__` does) of ``n_slides`` slides; ``mode``: one of ``MODES``;
        ``tissue``: the encoder's tissue dimensions (None: all)."""
        if mode not in MODES:
            raise ConfigError(f"region features must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "raw":
            return cls.identity(dim, "raw: asked for")
        if mode == "auto" and tissue is None:
            return cls.identity(dim, "auto: raw, the patch encoder declares no tissue dimensions")
        if mode == "auto" and n_slides < MIN_SLIDES:
            return cls.identity(
                dim, f"auto: raw, {n_slides} slides < {MIN_SLIDES} (too few to standardise over)"
            )
        why = f"{mode}: " + (
            f"{n_slides} slides >= {MIN_SLIDES}; " if mode == "auto" else "asked for; "
        )
        dims = np.arange(dim) if tissue is None else np.unique(np.asarray(list(tissue), np.int64))
        if len(dims) == 0 or dims.min() < 0 or dims.max() >= dim:
            raise ConfigError(f"tissue dimensions must lie in 0..{dim - 1}, got {tissue!r}")
        n, s1, s2 = 0, np.zeros(len(dims)), np.zeros(len(dims))
        for c in chunks:
            x = l2_normalize(c, np.float64)[:, dims]
            n, s1, s2 = n + len(x), s1 + x.sum(0), s2 + (x * x).sum(0)
        what = "all dimensions" if tissue is None else f"{len(dims)} tissue dimensions"
        if n < MIN_FIT:  # unstandardised tissue dimensions ranked worse than raw features
            return cls.identity(dim, f"{why}but raw: {n} patches < {MIN_FIT} to standardise over")
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        scale = np.maximum(std, max(SCALE_FLOOR * float(np.median(std)), 1e-6))
        why += f"{what}, standardised over {n} patches"
        return cls("tissue", dim, dims, mean.astype(np.float32), scale.astype(np.float32), n, why)

    @property
    def is_identity(self) -> bool:
        return self.mode == "raw"

    @property
    def out_dim(self) -> int:
        return len(self.dims)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """Patch features ``[m, in_dim]`` (any scale) → projected, L2-normalised float32
        ``[m, out_dim]``."""
        v = l2_normalize(np.asarray(v, np.float32))
        if self.is_identity:
            return v
        return l2_normalize((v[:, self.dims] - self.mean) / self.scale)

    def describe(self) -> dict:
        """What ``index.json`` records under ``regions.projection``."""
        return {
            "mode": self.mode,
            "in_dim": int(self.in_dim),
            "out_dim": self.out_dim,
            "standardised": not self.is_identity,
            "fitted_on_patches": int(self.n_fit),
            "reason": self.reason,
        }

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(
                f,
                mode=np.array(self.mode),
                in_dim=np.array(self.in_dim),
                dims=self.dims,
                mean=self.mean,
                scale=self.scale,
                n_fit=np.array(self.n_fit),
                reason=np.array(self.reason),
            )

    @classmethod
    def load(cls, path: str | Path, dim: int) -> RegionProjection:
        """The projection saved at ``path``; the identity of ``dim``-d features when there is
        no such file (a generation written before projections)."""
        if not Path(path).is_file():
            return cls.identity(dim, OLDER)
        with np.load(path) as z:
            head = str(z["mode"]), int(z["in_dim"])
            proj = cls(*head, z["dims"], z["mean"], z["scale"], int(z["n_fit"]), str(z["reason"]))
        if proj.in_dim != dim:
            raise ValueError(f"{path}: a projection of {proj.in_dim}-d features, stored {dim}-d")
        return proj


def projected_rows(features, projection: RegionProjection):
    """What ``projection`` compares of the stored ``features``: the features themselves in raw
    mode (no copy), else :class:`ProjectedRows`."""
    return features if projection.is_identity else ProjectedRows(features, projection)


class ProjectedRows:
    """Rows of stored patch features (an array, memory map or ``NpyRows``), projected as they are
    read: ``rows[key]`` is ``projection(features[key])``; ``shape`` is ``(n, out_dim)``."""

    def __init__(self, features, projection: RegionProjection) -> None:
        self.features, self.projection = features, projection
        self.shape = (int(features.shape[0]), projection.out_dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        return self.projection(np.asarray(self.features[key], np.float32))
