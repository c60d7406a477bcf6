"""Stain augmentation: a random, plausible stain look for a slide (HED-space jitter).

A view re-stains the slide's patches: the slide's Macenko stats (haematoxylin and eosin optical
density vectors ``he`` ``[3, 2]`` and intensities ``max_c`` ``[2]``, ``stain_norm.fit_slide``)
are the source, and a jittered copy of them the target of ``stain_norm.apply``. Each stain
vector is turned by an angle drawn uniformly from 0 to ``MAX_ANGLE_DEG`` × ``strength`` towards a
random direction (staying in the positive octant: optical densities are positive), and each
stain's intensity is scaled by ``exp(u)`` with ``u`` uniform in ±``MAX_LOG_SCALE`` ×
``strength`` (at strength 1: turns of up to 20°, intensities × 0.67–1.49). Glass stays glass
(``stain_norm.apply`` leaves it unchanged).

The jitter of view ``v`` of a slide is a function of the slide id and ``v`` only
(``view_rng``), so a re-run writes the same features.
"""

from __future__ import annotations

import hashlib

import numpy as np

from threads_search.wsi.stain_norm import StainStats

MAX_ANGLE_DEG = 20.0  # largest turn of a stain vector at strength 1
MAX_LOG_SCALE = 0.4  # largest |ln| of a stain intensity scale at strength 1
_MIN_OD = 0.01  # smallest optical-density component of a turned stain vector


def view_rng(slide_id: str, view: int) -> np.random.Generator:
    """The random generator of view ``view`` (0-based) of slide ``slide_id``: deterministic."""
    digest = hashlib.sha256(f"{slide_id}\0{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _turn(v: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    u = v / np.linalg.norm(v)
    r = rng.standard_normal(3)
    r -= (r @ u) * u
    r /= np.linalg.norm(r)
    w = np.clip(np.cos(angle) * u + np.sin(angle) * r, _MIN_OD, None)
    return w / np.linalg.norm(w)


def jitter(stats: StainStats, rng: np.random.Generator, strength: float = 1.0) -> StainStats:
    """A jittered copy of Macenko ``stats`` (module docstring); ``strength`` 0 returns them
    unchanged."""
    if stats.method != "macenko" or stats.he is None or stats.max_c is None:
        raise ValueError(f"stain jitter needs Macenko stats, got {stats.method!r}")
    he = np.asarray(stats.he, float)
    angles = np.deg2rad(rng.uniform(0.0, MAX_ANGLE_DEG, 2)) * strength
    turned = np.stack([_turn(he[:, j], angles[j], rng) for j in range(2)], 1)
    scale = np.exp(rng.uniform(-MAX_LOG_SCALE, MAX_LOG_SCALE, 2) * strength)
    return StainStats.from_dict(
        {
            "method": "macenko",
            "he": turned,
            "max_c": np.asarray(stats.max_c, float) * scale,
            "n_pixels": stats.n_pixels,
        }
    )
