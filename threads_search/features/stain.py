"""The features stage's stain hook, shared by the local engine (``features.extract``) and the Ray
engine (``indexer.ray_tasks``): fit a slide's stain statistics from a sample of its planned
patches (after tissue detection and grid planning, which it does not change), then normalise
every patch in the reader before the patch encoder sees it.

A slide whose sample holds too little tissue colour to fit is left as it is; that is recorded in
its h5 attributes (``stain_fit``: ``"not fitted: why"``) and said in its outcome's note, never
silently.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from threads_search.wsi.stain_norm import (
    TABLE_AFTER_PIXELS,
    StainConfig,
    StainStats,
    apply,
    apply_table,
    colour_table,
    fit_reference,
    fit_slide_or_reason,
)

NOT_FITTED = "not fitted: "


@dataclass(frozen=True)
class SlideStain:
    """A slide's stain normalisation: ``stats`` fitted on the slide (None: not fitted, ``why``
    says why) towards ``ref``. Picklable (reader processes, Ray tasks)."""

    method: str
    stats: StainStats | None
    ref: StainStats | None
    why: str = ""

    def attrs(self) -> dict:
        """h5 attributes: ``stain_method`` and ``stain_fit`` (the fitted stats as JSON text, or
        ``"not fitted: why"``)."""
        fit = self.stats.to_text() if self.stats is not None else NOT_FITTED + self.why
        return {"stain_method": self.method, "stain_fit": fit}

    @property
    def note(self) -> str:
        """What a slide's outcome says when it was not normalised (``""`` when it was)."""
        if self.stats is not None:
            return ""
        return f"stain not normalised ({self.method} {NOT_FITTED}{self.why}); features as scanned"

    def __call__(self, patch: np.ndarray) -> np.ndarray:
        """uint8 ``[h, w, 3]`` (or ``[n, h, w, 3]``) normalised; unchanged when not fitted.
        Once ``TABLE_AFTER_PIXELS`` pixels of the slide have been normalised directly, the
        slide's ``colour_table`` is built (once per process) and used from then on: the same
        result, a lookup per pixel."""
        if self.stats is None:
            return patch
        cache = self.__dict__.setdefault("_cache", {"pixels": 0, "table": None})
        if cache["table"] is not None:
            return apply_table(patch, cache["table"])
        cache["pixels"] += int(np.asarray(patch).size // 3)
        if cache["pixels"] >= TABLE_AFTER_PIXELS:
            cache["table"] = colour_table(self.stats, self.ref)
            return apply_table(patch, cache["table"])
        return apply(patch, self.stats, self.ref)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}  # no 48 MiB table

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @classmethod
    def from_attrs(cls, attrs: dict, cfg: StainConfig) -> SlideStain | None:
        """The ``SlideStain`` recorded by ``attrs`` (a plan's h5 attributes), None when stain
        normalisation is off."""
        if cfg.method == "none":
            return None
        fit = attrs.get("stain_fit", "")
        if isinstance(fit, str) and fit.startswith(NOT_FITTED):
            return cls(cfg.method, None, None, fit[len(NOT_FITTED) :])
        return cls(cfg.method, StainStats.from_dict(json.loads(fit)), reference(cfg))


@functools.lru_cache(maxsize=8)
def _reference(method: str, ref: str | None, key: str) -> StainStats:
    return fit_reference(StainConfig(method, ref))


def reference(cfg: StainConfig) -> StainStats:
    """The reference stats of ``cfg`` (fitted once per process; ``ConfigError`` naming the
    reference file and the fix when it cannot be used)."""
    return _reference(cfg.method, cfg.reference, json.dumps(cfg.key(), sort_keys=True))


def sample_indices(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``n`` planned patches (deterministic)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def fit_plan(path, coords: np.ndarray, mpp: float, config) -> SlideStain | None:
    """The stain normalisation of one slide (None when ``config.stain`` is ``none``): fitted on
    up to ``sample_patches`` of its planned patches (``coords`` ``[N, 2]`` level-0 px, read at
    the config's patch size and µm/px; ``mpp``: the slide's level-0 µm/px)."""
    from threads_search.wsi.reader import PatchDataset

    cfg = config.stain
    if cfg.method == "none":
        return None
    ref = reference(cfg)
    grid = config.segment.grid
    idx = sample_indices(len(coords), cfg.sample_patches)
    ds = PatchDataset(path, np.asarray(coords)[idx], grid.patch_size, grid.target_mpp, mpp)
    fit = fit_slide_or_reason([ds.read(i) for i in range(len(ds))], cfg.method)
    if isinstance(fit, str):
        return SlideStain(cfg.method, None, None, fit)
    return SlideStain(cfg.method, fit, ref)


def reader_transform(stain: SlideStain | None, encode_one: Callable | None) -> Callable | None:
    """What a patch reader applies to each uint8 ``[ps, ps, 3]`` patch: the slide's stain
    normalisation, then ``encode_one`` (a CPU-per-patch encoder; None: patches stay uint8 for
    a batch encoder). None when there is nothing to do."""
    if stain is None or stain.stats is None:
        return encode_one
    if encode_one is None:
        return stain
    return _Chain(stain, encode_one)


@dataclass(frozen=True)
class _Chain:
    first: Callable
    then: Callable

    def __call__(self, patch):
        return self.then(self.first(patch))
