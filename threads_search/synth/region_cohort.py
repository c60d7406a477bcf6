"""A painted cohort for region search, with per-pixel ground truth: one slide per patient whose
tumour share is high (so that tumour patches are common) and without the lymphocytic confounder,
plus each slide's painter class map (``synth.paint``: which pixels are tumour).

Used by the region-search tests and ``bench/region_quality.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def tumour_share(class_map: np.ndarray, x: int, y: int, size: int) -> float:
    """Share of the ``size`` px square at level-0 ``(x, y)`` painted as tumour (solid or
    gland)."""
    from threads_search.synth.paint import GLAND, TUMOUR

    tile = class_map[y : y + size, x : x + size]
    return float(np.isin(tile, (TUMOUR, GLAND)).mean()) if tile.size else 0.0


def paint_region_cohort(
    slides_dir: str | Path, n_patients: int = 16, side: int = 2048, seed: int = 21
) -> tuple[pd.DataFrame, dict]:
    """Paint ``<slide_id>.tiff`` (``side`` px square, 0.5 µm/px) for each slide of a
    ``make_cohort(n_patients, seed)`` cohort into ``slides_dir``. Returns the slide table
    (slide_id, patient_id, subtype, site, path) and slide_id → uint8 class map
    ``[side, side]``."""
    from threads_search.synth import make_cohort, make_slide
    from threads_search.synth.cohort_slides import slide_morphology

    cohort = make_cohort(n_patients=n_patients, seed=seed)
    out = Path(slides_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, maps = [], {}
    pats = cohort.patients.set_index("patient_id")
    for r in cohort.slides.to_dict("records"):
        m = slide_morphology(cohort, r, tumour_fraction=(0.45, 0.55), inflammation=(0.0, 0.0))
        path = out / f"{r['slide_id']}.tiff"
        s = make_slide(
            path, side, side, 0.5, seed=int(r["seed"]), morphology=m, tissue_fraction=0.6
        )
        maps[r["slide_id"]] = s.class_map
        p = pats.loc[r["patient_id"]]
        rows.append((r["slide_id"], r["patient_id"], p["subtype"], p["site"], str(path)))
    cols = ["slide_id", "patient_id", "subtype", "site", "path"]
    return pd.DataFrame(rows, columns=cols), maps
