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
    from threads_search.synth.region_cohort import tumour_share as share

    return share(cm, x, y, size)


def build_region_cohort(root: Path, n_patients: int = 16) -> RegionCohort:
    from conftest import make_bundle

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from threads_search.features import default_config, extract_features
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.synth.region_cohort import paint_region_cohort

    slides_dir = root / "slides"
    slides, maps = paint_region_cohort(slides_dir, n_patients, SIDE)
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
