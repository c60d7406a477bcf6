"""A small painted cohort indexed with its region index, and the ground truth of every patch
(the painter's class map): for the region-search tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PATCH = 512  # px at 0.5 µm/px: 256 µm
SIDE = 2048


@dataclass
class RegionCohort:
    root: Path
    index_dir: Path
    slides: pd.DataFrame  # slide_id, patient_id, subtype, site, path
    class_maps: dict  # slide_id -> uint8 [SIDE, SIDE] painter classes
    features: Path
    model: Path


def tumour_share(cm: np.ndarray, x: int, y: int, size: int = PATCH) -> float:
    """Share of the patch at level-0 ``(x, y)`` painted as tumour (solid or gland)."""
    from threads_search.synth.paint import GLAND, TUMOUR

    tile = cm[y : y + size, x : x + size]
    return float(np.isin(tile, (TUMOUR, GLAND)).mean()) if tile.size else 0.0


def build_region_cohort(root: Path, n_patients: int = 16) -> RegionCohort:
    from conftest import make_bundle

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.features import default_config, extract_features
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth import make_cohort, make_slide
    from threads_search.synth.cohort_slides import slide_morphology

    cohort = make_cohort(n_patients=n_patients, seed=21)
    slides_dir = root / "slides"
    slides_dir.mkdir(parents=True)
    rows, maps = [], {}
    pats = cohort.patients.set_index("patient_id")
    for r in cohort.slides.to_dict("records"):
        m = slide_morphology(cohort, r, tumour_fraction=(0.45, 0.55), inflammation=(0.0, 0.0))
        path = slides_dir / f"{r['slide_id']}.tiff"
        s = make_slide(
            path, SIDE, SIDE, 0.5, seed=int(r["seed"]), morphology=m, tissue_fraction=0.6
        )
        maps[r["slide_id"]] = s.class_map
        p = pats.loc[r["patient_id"]]
        rows.append((r["slide_id"], r["patient_id"], p["subtype"], p["site"], str(path)))
    slides = pd.DataFrame(rows, columns=["slide_id", "patient_id", "subtype", "site", "path"])
    slides[["slide_id", "subtype", "site"]].to_csv(root / "metadata.csv", index=False)
    feats = root / "features"
    cfg = default_config("hed-texture", patch_size=PATCH, workers=0)
    extract_features([slides_dir], feats, cfg)
    spec = get_patch_encoder_spec("hed-texture")
    model = make_bundle(root / "model", {**spec.to_dict(), "patch_size": PATCH})
    index_dir = root / "index"
    run_index(
        IndexConfig(
            inputs=[str(feats)],
            model=str(model),
            out=str(index_dir),
            metadata=str(root / "metadata.csv"),
        )
    )
    return RegionCohort(root, index_dir, slides, maps, feats, model)


@pytest.fixture(scope="session")
def region_cohort(tmp_path_factory) -> RegionCohort:
    return build_region_cohort(tmp_path_factory.mktemp("region_cohort"))
