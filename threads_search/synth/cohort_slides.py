"""Pixel-level slides: one painted pyramidal TIFF/SVS per slide of a synthetic cohort.

Each slide's :class:`~threads_search.synth.paint.Morphology` follows its patient's latent state:

- subtype → nuclear density and size, gland fraction, pleomorphism, eosin intensity (a fixed,
  well-separated profile for ``subtype_A``..``subtype_D``; further subtypes draw theirs from the
  cohort seed): A solid sheets of dense, large nuclei; B glandular with sparse small nuclei;
  C intermediate and pleomorphic; D solid, small nuclei, pink (eosinophilic);
- programme_1 → pleomorphism, programme_2 → nuclear size, programme_3 → fat share;
- TP53 mutated → more pleomorphic, slightly larger tumour nuclei (atypia);
- site → stain hue and haematoxylin intensity (mild batch effect, scaled by the cohort's
  ``site_effect``; 0: none), plus a little per-slide jitter; with the cohort's ``stain_shift``
  also a strong fixed scanner/lab look per site (:func:`site_stain`);
- the slide's ``signal_fraction`` (range of ``make_cohort``) maps linearly onto a tumour share
  of the tissue in ``tumour_fraction`` (default 0.2–0.4): only that part carries the subtype's
  morphology, the rest is stroma and fat;
- a confounder unrelated to the patient: a lymphocytic infiltrate (dense, small, dark nuclei)
  over a share of the normal tissue drawn per slide from ``inflammation`` (default 0–0.6), and
  per-slide jitter of the fat share. Mean-pooled features mix it with the diluted tumour signal;
  attending to the tumour patches sees past it.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import ConfigError, InputError
from threads_search.synth.paint import _E_OD, _H_OD, Morphology

# nuclear_density, nuclear_size_um, gland_fraction, pleomorphism, eosin_intensity
SUBTYPE_PROFILES = [
    (1.7, 8.5, 0.05, 0.35, 0.9),  # A: solid, dense, large nuclei
    (0.6, 6.0, 0.70, 0.15, 1.1),  # B: glandular, sparse small nuclei
    (1.1, 7.5, 0.30, 0.55, 1.0),  # C: intermediate, pleomorphic
    (1.3, 6.0, 0.00, 0.20, 1.35),  # D: solid, small nuclei, eosinophilic
]
SITE_HUE = (-0.3, 0.0, 0.3, -0.15, 0.15)
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))  # spreads the sites' looks around a circle
STAIN_ROTATION_DEG = (15.0, 25.0)  # range of each stain vector's rotation at stain_shift=1
STAIN_LOG_SCALE = 0.35  # H, E intensity factors in [exp(-0.35), exp(0.35)] at stain_shift=1
STAIN_TINT = 0.05  # illumination RGB factors in [0.95, 1.05] at stain_shift=1


def _rotate(v: np.ndarray, angle: float, phase: float) -> np.ndarray:
    """``v`` rotated by ``angle`` (rad), norm kept, towards a direction in the plane orthogonal
    to it: of the directions (1° steps) that keep all three optical densities >= 0.01, the one
    at the fraction ``phase / 2π`` of the way round (the E vector lies close to the green axis,
    so only an arc is open to it). Where none is, components are clipped to 0.01."""
    u = v / np.linalg.norm(v)
    b1 = np.cross(u, [0.0, 0.0, 1.0])
    b1 /= np.linalg.norm(b1)
    b2 = np.cross(u, b1)
    p = np.deg2rad(np.arange(360.0))[:, None]
    r = np.linalg.norm(v) * (np.cos(angle) * u + np.sin(angle) * (np.cos(p) * b1 + np.sin(p) * b2))
    ok = np.flatnonzero(r.min(1) >= 0.01)
    frac = (phase / (2 * np.pi)) % 1.0
    if len(ok) == 0:
        return np.clip(r[int(frac * 360)], 0.01, None)
    return r[ok[int(frac * len(ok))]]


def site_stain(seed: int, site: int, stain_shift: float) -> dict:
    """The fixed scanner/lab look of site index ``site`` of a cohort with ``seed``, as the
    Morphology changes it makes: ``stain_vectors`` (the H and E optical-density vectors each
    rotated by ``stain_shift`` x 15-25° towards a site-specific direction, see ``_rotate``), ``h_scale`` and
    ``e_scale`` (intensity factors ``exp(±0.35 * stain_shift)``), ``tint`` (illumination RGB
    factors ``1 ± 0.05 * stain_shift``, clipped to [0.55, 1.05]). Sites sit a golden angle
    apart on a circle of looks (cohort-seeded start), so no two sites look alike;
    ``stain_shift=0`` is the identity (``stain_vectors`` None)."""
    if stain_shift <= 0:
        return {"stain_vectors": None, "h_scale": 1.0, "e_scale": 1.0, "tint": (1.0, 1.0, 1.0)}
    phi = np.random.default_rng([int(seed), 202]).uniform(0, 2 * np.pi) + site * GOLDEN_ANGLE
    rng = np.random.default_rng([int(seed), 203, int(site)])
    th_h, th_e = np.deg2rad(rng.uniform(*STAIN_ROTATION_DEG, 2)) * stain_shift
    h_od = _rotate(_H_OD, th_h, phi)
    e_od = _rotate(_E_OD, th_e, phi + np.pi / 2)
    tint = 1.0 + STAIN_TINT * stain_shift * np.cos(phi + np.arange(3) * 2 * np.pi / 3)
    return {
        "stain_vectors": tuple(tuple(float(x) for x in v.round(6)) for v in (h_od, e_od)),
        "h_scale": float(np.exp(STAIN_LOG_SCALE * stain_shift * np.cos(phi))),
        "e_scale": float(np.exp(STAIN_LOG_SCALE * stain_shift * np.sin(phi))),
        "tint": tuple(float(t) for t in np.clip(tint, 0.55, 1.05).round(6)),
    }


def subtype_profile(cohort, k: int) -> tuple[float, ...]:
    """(density, size µm, gland fraction, pleomorphism, eosin) of subtype index ``k``."""
    if k < len(SUBTYPE_PROFILES):
        return SUBTYPE_PROFILES[k]
    rng = np.random.default_rng([cohort.seed, 200, k])
    lows, highs = (0.6, 6.0, 0.0, 0.15, 0.9), (1.7, 8.5, 0.7, 0.55, 1.35)
    return tuple(rng.uniform(lo, hi) for lo, hi in zip(lows, highs, strict=True))


def slide_morphology(
    cohort,
    slide: dict,
    tumour_fraction: tuple[float, float] = (0.2, 0.4),
    inflammation: tuple[float, float] = (0.0, 0.6),
) -> Morphology:
    """The Morphology of one row of ``cohort.slides`` (as a dict); see the module docstring."""
    pat = cohort.patients.loc[cohort.patients["patient_id"] == slide["patient_id"]].iloc[0]
    dens, size, gland, pleo, eosin = subtype_profile(cohort, int(pat["subtype_index"]))
    u = [float(pat.get(f"programme_{p}", 0.0)) for p in (1, 2, 3)]
    site = int(pat["site_index"])
    tp53 = float(pat["TP53_mutated"])
    rng = np.random.default_rng([cohort.seed, 201, int(slide["seed"])])
    lo, hi = cohort.params["signal_fraction"]
    q = 0.5 if hi <= lo else (float(slide["signal_fraction"]) - lo) / (hi - lo)
    effect = float(cohort.params.get("site_effect", 1.0))
    hue = SITE_HUE[site % len(SITE_HUE)] * effect + rng.normal(0.0, 0.08)
    look = site_stain(cohort.seed, site, float(cohort.params.get("stain_shift", 0.0)))
    return Morphology(
        nuclear_density=dens,
        nuclear_size_um=size * float(np.exp(0.1 * u[1] + 0.08 * tp53)),
        stain_hue=float(np.clip(hue, -1.0, 1.0)),
        gland_fraction=gland,
        tumour_fraction=tumour_fraction[0] + q * (tumour_fraction[1] - tumour_fraction[0]),
        fat_fraction=float(np.clip(0.15 + 0.08 * u[2] + rng.normal(0.0, 0.05), 0.0, 0.5)),
        eosin_intensity=eosin * float(np.exp(rng.normal(0.0, 0.04))) * look["e_scale"],
        haematoxylin_intensity=float(1.0 + 0.08 * (site % 3 - 1) * effect + rng.normal(0.0, 0.03))
        * look["h_scale"],
        pleomorphism=float(max(0.05, pleo + 0.12 * u[0] + 0.2 * tp53)),
        inflammation=float(rng.uniform(*inflammation)),
        stain_vectors=look["stain_vectors"],
        tint=look["tint"],
    )


def _paint_one(job: tuple) -> tuple[str, float]:
    from threads_search.synth.archive import make_slide

    path, width, height, mpp, fmt, seed, morph, tissue_fraction = job
    t0 = time.perf_counter()
    make_slide(
        path, width, height, mpp, fmt, seed=seed, morphology=morph, tissue_fraction=tissue_fraction
    )
    return str(path), time.perf_counter() - t0


def write_slides(
    cohort,
    slides_dir: str | Path,
    width: int = 1536,
    height: int = 1536,
    mpp: float = 0.5,
    fmt: str = "tiff",
    tissue_fraction: float = 0.5,
    tumour_fraction: tuple[float, float] = (0.2, 0.4),
    inflammation: tuple[float, float] = (0.0, 0.6),
    workers: int = 1,
    slide_ids: list[str] | None = None,
) -> pd.DataFrame:
    """Paint and write ``<slide_id>.tiff`` (or ``.svs`` for ``fmt="svs"``) into ``slides_dir``
    for every slide of ``cohort`` (or only ``slide_ids``), ``width`` x ``height`` px at ``mpp``
    µm/px (``tumour_fraction``, ``inflammation``: per-slide ranges, see the module docstring);
    ``workers`` > 1 paints in a process pool. Returns slide_id, patient_id, path,
    seconds and the Morphology fields of each slide."""
    from dataclasses import asdict

    if fmt not in ("tiff", "svs"):
        raise ConfigError(f"fmt must be 'tiff' or 'svs', got {fmt!r}")
    out = Path(slides_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = cohort.slides.to_dict("records")
    if slide_ids is not None:
        known = {r["slide_id"]: r for r in rows}
        missing = [s for s in slide_ids if s not in known]
        if missing:
            raise InputError(f"slide ids not in the cohort: {missing[:5]}")
        rows = [known[s] for s in slide_ids]
    ext = "svs" if fmt == "svs" else "tiff"
    jobs, morphs = [], []
    for r in rows:
        m = slide_morphology(cohort, r, tumour_fraction, inflammation)
        morphs.append(m)
        path = out / f"{r['slide_id']}.{ext}"
        jobs.append((path, width, height, mpp, fmt, int(r["seed"]), m, tissue_fraction))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_paint_one, jobs))
    else:
        done = [_paint_one(j) for j in jobs]
    table = []
    for r, m, (path, secs) in zip(rows, morphs, done, strict=True):
        table.append(
            {
                "slide_id": r["slide_id"],
                "patient_id": r["patient_id"],
                "path": path,
                "seconds": secs,
                **asdict(m),
            }
        )
    return pd.DataFrame(table)
