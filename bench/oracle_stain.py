"""Bench-only upper bound of per-slide stain normalisation on painted cohorts: every slide
normalised with its TRUE stain, read from the cohort's generator instead of fitted.

``OracleStain`` white-balances the slide's glass to 240 grey, unmixes each pixel with the H and
E optical-density vectors the slide was painted with (``synth.paint.stain_od``: site look and
per-slide hue included), scales each stain's concentrations so that their 99th percentile over
the slide's sampled tissue matches the built-in Macenko reference, and remixes with the
reference vectors (``wsi.stain_norm.apply``: glass kept, no NaN). What is left of the site in
features made this way is what no fitted normaliser can remove: the intensity differences that
the reference scaling does not undo, dark pixels that saturate, and the sites' other traits.

Used by ``bench/quality_sites.py`` through the real features stage; the slide's h5 records no
stain method (the features folder's config says ``none``), so models trained on these features
embed them like unnormalised ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

from threads_search.wsi.stain_norm import IO, StainStats, apply, builtin_reference, tissue_pixels

ORACLE = "oracle"  # the features setting of bench/quality_sites.py that uses it
MAX_C_PERCENTILE = 99.0  # as torchstain's Macenko


@dataclass(frozen=True)
class OracleStain:
    """One slide's oracle normalisation: ``stats`` (true ``he`` ``[3, 2]``, ``max_c`` ``[2]``),
    ``gain`` ``[3]`` (240 / glass RGB). Picklable (reader processes)."""

    stats: StainStats
    gain: tuple
    note: str = ""

    def attrs(self) -> dict:
        return {}

    def __call__(self, patch: np.ndarray) -> np.ndarray:
        balanced = np.clip(np.rint(np.asarray(patch, np.float32) * np.float32(self.gain)), 0, 255)
        return apply(balanced.astype(np.uint8), self.stats, builtin_reference("macenko"))


def oracle_for(morphology, patches: list[np.ndarray]) -> OracleStain:
    """The ``OracleStain`` of a slide painted with ``morphology`` (``synth.paint.Morphology``)
    from a sample of its uint8 patches (for the concentration percentiles)."""
    from threads_search.synth.paint import glass_rgb, stain_od

    h, e = stain_od(morphology.stain_hue, morphology.stain_vectors)
    he = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)], 1)
    gain = IO / glass_rgb(morphology.tint)
    pix = np.concatenate([tissue_pixels(p) for p in patches]).astype(np.float64) * gain
    od = -np.log((np.clip(pix, 0, 255) + 1.0) / IO)
    max_c = np.percentile(od @ np.linalg.pinv(he).T, MAX_C_PERCENTILE, axis=0)
    stats = StainStats.from_dict({"method": "macenko", "he": he, "max_c": max_c})
    return OracleStain(stats, tuple(float(g) for g in gain))


@contextlib.contextmanager
def oracle_features(cohort):
    """While active, the features stage normalises each slide of ``cohort`` (a painted
    ``make_cohort`` cohort, slides named ``<slide_id>.tiff``) with its ``OracleStain``."""
    import threads_search.features.extract as extract
    from threads_search.features.stain import sample_indices
    from threads_search.synth.cohort_slides import slide_morphology
    from threads_search.wsi.reader import PatchDataset

    rows = {r["slide_id"]: r for r in cohort.slides.to_dict("records")}

    def fit_plan(path, coords, mpp, config):  # the same patches as the features stage's fit
        grid = config.segment.grid
        idx = sample_indices(len(coords), config.stain.sample_patches)
        ds = PatchDataset(path, np.asarray(coords)[idx], grid.patch_size, grid.target_mpp, mpp)
        morph = slide_morphology(cohort, rows[Path(path).stem])
        return oracle_for(morph, [ds.read(i) for i in range(len(ds))])

    with mock.patch.object(extract, "fit_plan", fit_plan):
        yield


def fit_errors(cohort, features_dir: Path) -> list[dict]:
    """Per site: the mean angle in degrees between the H (and E) vectors the features stage's
    Macenko fit found for each slide (its h5 ``stain_fit``) and the vectors the slide was
    painted with, and the slides compared."""
    import json

    import h5py
    import pandas as pd

    from threads_search.synth.cohort_slides import slide_morphology
    from threads_search.synth.paint import stain_od

    def angle(a, b) -> float:
        c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))

    rows = []
    for r in cohort.slides.to_dict("records"):
        path = Path(features_dir) / "h5" / f"{r['slide_id']}.h5"
        if not path.is_file():
            continue
        with h5py.File(path, "r") as f:
            fit = f["coords"].attrs.get("stain_fit", "")
        if not str(fit).startswith("{"):
            continue
        he = np.asarray(json.loads(fit)["he"], float)
        m = slide_morphology(cohort, r)
        h, e = stain_od(m.stain_hue, m.stain_vectors)
        rows.append({"site": r["site"], "H": angle(he[:, 0], h), "E": angle(he[:, 1], e)})
    if not rows:
        return []
    df = pd.DataFrame(rows).groupby("site")
    out = df.mean().round(1).join(df.size().rename("slides")).reset_index()
    return out.rename(columns={"H": "H error °", "E": "E error °"}).to_dict("records")
