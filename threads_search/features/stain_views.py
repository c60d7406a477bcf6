"""Stain views for training: ``features --stain-views N`` writes, beside a slide's features, N
more copies ``features_views`` ``[N, patches, D]`` (same coords, same order), each encoded from
the patches re-stained with a random stain look (``threads_search.wsi.stain_augment``: HED
jitter of the slide's own Macenko stain vectors, ``--stain-jitter`` strength). ``train`` swaps
a training bag for one of its views at random (``--stain-view-p``), so the slide encoder cannot
tell subtype by stain; validation, the index and every search use ``features`` only.

The views are made after the slide's stain normalisation, when there is one (the jitter is
around the normalised look). A slide whose patches hold too little tissue colour for a Macenko
fit gets no views, and its outcome says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from threads_search.features.stain import SlideStain, sample_indices
from threads_search.wsi.stain_augment import jitter, view_rng
from threads_search.wsi.stain_norm import fit_slide_or_reason

VIEWS_DATASET = "features_views"


@dataclass(frozen=True)
class AllLooks:
    """What a reader process applies to each uint8 patch when a slide has views: float32
    ``[L, D]``, ``encode_one`` of the patch under each look (None: as read). Picklable."""

    looks: tuple
    encode_one: Callable

    def __call__(self, patch):
        return np.stack([self.encode_one(t(patch) if t else patch) for t in self.looks])


@dataclass(frozen=True)
class _Then:
    """``second(first(patch))``; ``first`` may be None."""

    first: SlideStain | None
    second: SlideStain

    @property
    def stats(self):
        """Never None: ``features.stain.reader_transform`` applies it."""
        return self.second.stats

    def __call__(self, patch):
        return self.second(self.first(patch) if self.first is not None else patch)


def view_transforms(plan, config, stain: SlideStain | None) -> tuple[list[_Then], str]:
    """The ``config.stain_views`` patch transforms of one slide (uint8 ``[ps, ps, 3]`` in and
    out: ``stain`` first, then the view's re-staining) and a note (``""``, or why the slide gets
    no views). ``plan``: the slide's ``SlidePlan`` (coords level-0 px)."""
    from threads_search.wsi.reader import PatchDataset

    n = config.stain_views
    if n <= 0:
        return [], ""
    grid = config.segment.grid
    idx = sample_indices(len(plan.coords), config.stain.sample_patches)
    ds = PatchDataset(plan.path, plan.coords[idx], grid.patch_size, grid.target_mpp, plan.mpp)
    first = stain if stain is not None and stain.stats is not None else None
    patches = [ds.read(i) for i in range(len(ds))]
    if first is not None:
        patches = [first(p) for p in patches]
    fit = fit_slide_or_reason(patches, "macenko")
    if isinstance(fit, str):
        return [], f"no stain views (Macenko fit: {fit})"
    out = []
    for v in range(n):
        target = jitter(fit, view_rng(plan.slide_id, v), config.stain_jitter)
        out.append(_Then(first, SlideStain("macenko", fit, target)))
    return out, ""
