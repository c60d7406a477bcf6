"""Feature-level slides: synthetic patch-feature bags in the FEATURES_DIR layout (fast, CPU).

Geometry (all in ``R^dim``, orthonormal directions drawn from the cohort seed): a *tumour
marker* ``t``, one *prototype* ``c_k`` per subtype, one *loading* ``l_p`` per programme, a *TP53*
direction ``m`` (the morphology of a TP53-mutated tumour, e.g. nuclear atypia), one own
direction per normal-tissue cluster and per site. Per slide, a minority of patches (the slide's
``signal_fraction``) are *signal* (tumour) patches:

``x = mu + a_t t + a_c c_subtype + a_p sum_p programme_p l_p + a_m TP53_mutated m + eta_patient
+ delta_slide + b_site + s_site + noise * N(0, I)``

and the rest are *normal* patches from one of ``n_normal`` clusters (mixture weights drawn per
slide from a Dirichlet, so composition varies between slides):

``x = mu + a_n e_j + confounding * (a_c sum_k g_jk c_k + a_p sum_p h_jp l_p) + delta_slide
+ b_site + s_site + noise * N(0, I)``.

Site terms: ``b_site`` is a mild offset along the site's own direction, of norm the cohort's
``site_effect`` (times ``feature_space(site_effect=...)``; 0: none); ``s_site`` is the
feature-level counterpart of a per-site stain look (the cohort's ``stain_shift``): a fixed random
direction per site, not orthogonal to anything (a colour-statistics encoder moves every feature
when the stain changes), of norm ``STAIN_NORM * stain_shift``.

Normal centres overlap the subtype/programme subspace (``confounding``) and every slide has its
own shift ``delta_slide ~ N(0, (slide_shift * noise)^2 I)`` (stain/scanner variation), so the mean of a bag mixes a diluted signal
(scaled by the 5-30 % tumour fraction) with composition and slide effects: mean pooling is
clearly worse than attending to the marker-carrying patches. ``noise`` is the difficulty knob:
it scales both the patch noise and the slide shift (0: mean pooling also works). ``eta_patient ~ N(0, 0.3^2 I)``
makes a patient's slides alike. Ground truth per patch is stored in the h5 as extra datasets
``is_signal`` (bool ``[N]``) and ``normal_cluster`` (int8 ``[N]``, -1 for signal patches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from threads_search.errors import ConfigError, InputError

ENCODER_NAME = "synthetic-features"
PATCH_SIZE = 512  # px at TARGET_MPP, as the real features stage
TARGET_MPP = 0.5
_A_MARKER, _A_PROTO, _A_PROG, _A_TP53, _A_NORMAL, _ETA = 4.0, 2.0, 1.0, 1.0, 3.0, 0.3
STAIN_NORM = 3.0  # norm of a site's stain shift of every patch feature at stain_shift=1


@dataclass
class FeatureSpace:
    """Directions and centres ``[*, dim]`` float64 shared by every slide of a cohort."""

    mu: np.ndarray  # [D] global offset (features are not centred)
    marker: np.ndarray  # [D] unit
    prototypes: np.ndarray  # [K, D] unit rows
    loadings: np.ndarray  # [P, D] unit rows
    tp53: np.ndarray  # [D] scaled TP53-mutant direction
    normal: np.ndarray  # [J, D] normal-cluster centres (not unit)
    site: np.ndarray  # [S, D] site offsets
    stain: np.ndarray | None = None  # [S, D] per-site stain shifts (None: stain_shift 0)


def feature_space(
    cohort,
    dim: int = 128,
    n_normal: int = 4,
    signal_strength: float = 1.0,
    confounding: float = 1.0,
    site_effect: float = 1.0,
) -> FeatureSpace:
    """The cohort's feature geometry (deterministic from ``cohort.seed`` and ``dim``).
    ``site_effect`` multiplies the cohort's own ``site_effect`` (norm of the site offsets)."""
    k, p = int(cohort.params["n_subtypes"]), int(cohort.params["n_programmes"])
    s = int(cohort.params["n_sites"])
    need = 2 + k + p + n_normal + s
    if dim < need:
        raise ConfigError(
            f"dim={dim} is too small: the feature space needs at least {need} orthogonal "
            f"directions (1 marker + {k} subtypes + {p} programmes + 1 TP53 + {n_normal} normal "
            f"+ {s} sites)"
        )
    rng = np.random.default_rng([cohort.seed, 100, dim])
    q, _ = np.linalg.qr(rng.standard_normal((dim, need)))
    dirs = q.T  # [need, D] orthonormal
    marker, protos = dirs[0], dirs[1 : 1 + k]
    loads = dirs[1 + k : 1 + k + p]
    tp53 = dirs[1 + k + p]
    own = dirs[2 + k + p : 2 + k + p + n_normal]
    site_dirs = dirs[2 + k + p + n_normal :]
    g = rng.standard_normal((n_normal, k))
    h = rng.standard_normal((n_normal, p))
    site_effect = site_effect * float(cohort.params.get("site_effect", 1.0))
    stain_shift = float(cohort.params.get("stain_shift", 0.0))
    stain = None
    if stain_shift > 0:  # own stream: the other directions do not change
        v = np.random.default_rng([cohort.seed, 104, dim]).standard_normal((s, dim))
        stain = v / np.linalg.norm(v, axis=1, keepdims=True) * (STAIN_NORM * stain_shift)
    normal = _A_NORMAL * own + confounding * signal_strength * (
        _A_PROTO * g @ protos + _A_PROG * h @ loads
    )
    return FeatureSpace(
        mu=rng.standard_normal(dim) * 0.5,
        marker=marker * _A_MARKER * signal_strength,
        prototypes=protos * _A_PROTO * signal_strength,
        loadings=loads * _A_PROG * signal_strength,
        tp53=tp53 * _A_TP53 * signal_strength,
        normal=normal,
        site=site_dirs * site_effect,
        stain=stain,
    )


def bag_coords(n: int, is_signal_count: int, rng) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A blob of ``n`` grid cells (512 px apart, level-0 px at 0.5 µm/px) in raster order, and a
    bool mask of a contiguous tumour region of ``is_signal_count`` cells. Also the level-0
    width and height. Returns (coords ``[n, 2]`` int64, is_signal ``[n]``, width, height)."""
    side = int(np.ceil(np.sqrt(n / 0.55))) + 2
    yy, xx = np.mgrid[:side, :side].astype(float)
    c = (side - 1) / 2
    ax, ay = rng.uniform(0.8, 1.25, 2)
    score = ((xx - c) / ax) ** 2 + ((yy - c) / ay) ** 2 + rng.uniform(0, 0.3 * side, (side, side))
    pick = np.argsort(score.ravel(), kind="stable")[:n]
    pick.sort()  # raster order, as the real patch grid
    cx, cy = xx.ravel()[pick], yy.ravel()[pick]
    seed_cell = rng.integers(n)
    d = np.hypot(cx - cx[seed_cell], cy - cy[seed_cell]) + rng.uniform(0, 1.5, n)
    is_signal = np.zeros(n, bool)
    is_signal[np.argsort(d, kind="stable")[:is_signal_count]] = True
    coords = np.stack([cx, cy], 1).astype(np.int64) * PATCH_SIZE + PATCH_SIZE
    return coords, is_signal, (side + 2) * PATCH_SIZE, (side + 2) * PATCH_SIZE


def patient_rows(cohort) -> dict[str, tuple[int, dict]]:
    """patient_id → (row number in ``cohort.patients``, row as a dict)."""
    return {r["patient_id"]: (i, r) for i, r in enumerate(cohort.patients.to_dict("records"))}


def make_bag(
    cohort,
    slide: dict,
    space: FeatureSpace,
    patients: dict | None = None,
    n_patches: tuple[int, int] = (100, 1000),
    noise: float | None = None,
    slide_shift: float = 0.2,
    dirichlet: float = 0.7,
) -> dict:
    """One slide's bag: ``features`` float32 ``[N, D]``, ``coords`` int64 ``[N, 2]``,
    ``is_signal`` bool ``[N]``, ``normal_cluster`` int8 ``[N]``, ``width``, ``height``.
    ``slide`` is a row of ``cohort.slides`` (as a dict); ``patients`` from :func:`patient_rows`
    (computed when not given)."""
    noise = float(cohort.params["noise"] if noise is None else noise)
    prow, pat = (patients or patient_rows(cohort))[slide["patient_id"]]
    rng = np.random.default_rng([cohort.seed, 101, int(slide["seed"])])
    n = int(rng.integers(n_patches[0], n_patches[1] + 1))
    n_sig = int(np.clip(round(slide["signal_fraction"] * n), 1, n))
    coords, is_signal, width, height = bag_coords(n, n_sig, rng)
    dim = space.mu.shape[0]
    j = len(space.normal)
    weights = rng.dirichlet(np.full(j, dirichlet))
    cluster = rng.choice(j, n, p=weights).astype(np.int8)
    cluster[is_signal] = -1

    # the patient's tumour: same for all of its slides (own stream keyed by the patient row)
    prng = np.random.default_rng([cohort.seed, 102, int(prow)])
    eta = prng.standard_normal(dim) * _ETA
    progs = np.array([pat[c] for c in cohort.patients.columns if c.startswith("programme_")])
    tumour = (
        space.marker
        + space.prototypes[int(pat["subtype_index"])]
        + progs.reshape(-1) @ space.loadings
        + float(pat["TP53_mutated"]) * space.tp53
        + eta
    )
    shift = space.mu + rng.standard_normal(dim) * (slide_shift * noise)
    shift = shift + space.site[int(pat["site_index"])]
    if space.stain is not None:
        shift = shift + space.stain[int(pat["site_index"])]
    feats = rng.standard_normal((n, dim)) * noise + shift
    feats[is_signal] += tumour
    feats[~is_signal] += space.normal[cluster[~is_signal]]
    return dict(
        features=feats.astype(np.float32),
        coords=coords,
        is_signal=is_signal,
        normal_cluster=cluster,
        width=width,
        height=height,
    )


def write_feature_bags(
    cohort,
    features_dir: str | Path,
    dim: int = 128,
    n_patches: tuple[int, int] = (100, 1000),
    noise: float | None = None,
    slide_shift: float = 0.2,
    confounding: float = 1.0,
    signal_strength: float = 1.0,
    n_normal: int = 4,
    dtype: str = "float32",
) -> pd.DataFrame:
    """Write ``h5/<slide_id>.h5`` for every slide of ``cohort`` plus ``config.json`` and
    ``status.parquet``, as the features stage does (patch encoder ``synthetic-features``,
    ``dim``-d, 512 px at 0.5 µm/px). ``noise`` defaults to the cohort's; see the module docstring
    for the other difficulty knobs. Returns slide_id, patient_id, path, n_patches, n_signal,
    signal_fraction (realised)."""
    from threads_search.features.config import FeaturesConfig, FeaturesConfigError, load_config
    from threads_search.features.extract import h5_path
    from threads_search.features.h5io import write_features
    from threads_search.features.status import StatusTable
    from threads_search.wsi.grid import GridParams
    from threads_search.wsi.plan import SegmentConfig

    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, got {dtype!r}")
    if not 1 <= n_patches[0] <= n_patches[1]:
        raise ConfigError(f"n_patches={n_patches}: need 1 <= min <= max")
    out = Path(features_dir)
    # files named through h5_path: an unsafe id is refused before anything is written
    paths = {sid: h5_path(out, sid) for sid in cohort.slides.slide_id}
    (out / "h5").mkdir(parents=True, exist_ok=True)
    cfg = FeaturesConfig(
        patch_encoder=ENCODER_NAME,
        segment=SegmentConfig(grid=GridParams(patch_size=PATCH_SIZE, target_mpp=TARGET_MPP)),
        dtype=dtype,
    )
    old = load_config(out)
    if old is not None and old.get("patch_encoder") != ENCODER_NAME:
        raise FeaturesConfigError(
            f"{out} holds features of patch encoder {old.get('patch_encoder')!r}; "
            f"write {ENCODER_NAME!r} bags into another folder"
        )
    knobs = dict(
        dim=dim,
        n_patches=list(n_patches),
        noise=noise,
        slide_shift=slide_shift,
        confounding=confounding,
        signal_strength=signal_strength,
        n_normal=n_normal,
    )
    spec = {
        "name": ENCODER_NAME,
        "dim": dim,
        "input_size": PATCH_SIZE,
        "patch_size": PATCH_SIZE,
        "target_mpp": TARGET_MPP,
        "source": "threads_search.synth.cohort_features",
    }
    cfg.save(out, {"encoder_spec": spec, "synthetic": {"cohort": cohort.params, **knobs}})
    chash = cfg.hash()
    space = feature_space(cohort, dim, n_normal, signal_strength, confounding)
    status = StatusTable(out)
    patients = patient_rows(cohort)
    rows = []
    for slide in cohort.slides.to_dict("records"):
        t0 = time.perf_counter()
        bag = make_bag(cohort, slide, space, patients, n_patches, noise, slide_shift)
        path = paths[slide["slide_id"]]
        attrs = {
            "patch_size": PATCH_SIZE,
            "patch_size_level0": PATCH_SIZE,
            "target_mpp": TARGET_MPP,
            "level0_mpp": TARGET_MPP,
            "level0_width": bag["width"],
            "level0_height": bag["height"],
            "encoder": ENCODER_NAME,
            "config_hash": chash,
        }
        truth = {"is_signal": bag["is_signal"], "normal_cluster": bag["normal_cluster"]}
        write_features(path, bag["features"].astype(dtype), bag["coords"], attrs, truth)
        n, n_sig = len(bag["coords"]), int(bag["is_signal"].sum())
        sid = slide["slide_id"]
        status.rows[sid] = {
            "slide_id": sid,
            "path": f"synthetic:{sid}",
            "state": "done",
            "error": "",
            "n_patches": n,
            "seconds": time.perf_counter() - t0,
            "config_hash": chash,
            "finished": time.time(),
        }
        rows.append((slide["slide_id"], slide["patient_id"], path, n, n_sig, n_sig / n))
    status.save()
    cols = ["slide_id", "patient_id", "path", "n_patches", "n_signal", "signal_fraction"]
    return pd.DataFrame(rows, columns=cols)


def read_signal_mask(path: str | Path) -> np.ndarray:
    """The ``is_signal`` ground truth (bool ``[N]``) of a synthetic feature h5."""
    with h5py.File(path, "r") as f:
        if "is_signal" not in f:
            raise InputError(f"{path}: no 'is_signal' dataset (not a synthetic feature bag)")
        return f["is_signal"][()].astype(bool)
