"""Nuclear proxies of the ``hed-texture`` patch encoder (``nuclei_lo`` and ``nuclei_hi`` of its
feature layout): components of the haematoxylin mask above ``NUC_THRESHOLDS`` (OD) inside tissue,
their density, size statistics (µm²) and intensity, and the dark "cores" within them. numpy and
scipy only, deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NUC_THRESHOLDS = (0.35, 0.65)  # H optical density of a nucleus, of its dark core
NUC_MIN_AREA_UM2 = 4.0
CORE_MIN_AREA_UM2 = 2.0
AREA_BINS_UM2 = np.array([8.0, 16.0, 32.0, 64.0, 128.0])  # 6 bins: <8, 8-16, ..., >=128


def size_stats(areas: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[0:11]``: log area mean/4, std/2, p25, p50, p90 (/4), 6-bin histogram."""
    if len(areas) == 0:
        return
    la = np.sort(np.log(areas))
    out[0:2] = la.mean() / 4, la.std() / 2
    out[2:5] = la[[int(q * (len(la) - 1)) for q in (0.25, 0.5, 0.9)]] / 4
    out[5:11] = np.bincount(np.searchsorted(edges, areas, "right"), minlength=6) / len(areas)


def nuclei_features(h: np.ndarray, tissue: np.ndarray, um_per_px: float) -> np.ndarray:
    """34 nuclear proxies (17 per threshold, see the module docstring) from ``[S, S]`` planes at
    ``um_per_px`` µm/px: H (OD), tissue (bool). One labelling of the low-threshold mask;
    high-threshold "cores" are counted per low-threshold component."""
    px_area = um_per_px**2
    n_tissue = int(np.count_nonzero(tissue))
    lo = (h > NUC_THRESHOLDS[0]) & tissue
    n_lo = int(np.count_nonzero(lo))
    f_lo, f_hi = np.zeros(17), np.zeros(17)
    if n_lo == 0:
        return np.concatenate([f_lo, f_hi])
    hi = h > NUC_THRESHOLDS[1]
    hi &= lo
    n_hi = int(np.count_nonzero(hi))
    labels, n = ndimage.label(lo, output=np.intp)
    lab = labels.ravel()
    areas = np.bincount(lab, minlength=n + 1)[1:] * px_area
    cores = np.bincount(lab[hi.ravel()], minlength=n + 1)[1:] * px_area  # hi area per component
    keep = areas >= NUC_MIN_AREA_UM2
    areas, cores = areas[keep], cores[keep]
    cores = cores[cores >= CORE_MIN_AREA_UM2]
    tissue_um2 = max(n_tissue * px_area, 1.0)

    f_lo[0], f_lo[1] = n_lo / lo.size, n_lo / max(n_tissue, 1)
    f_lo[2] = np.log1p(len(areas) / tissue_um2 * 1000.0)
    size_stats(areas, AREA_BINS_UM2, f_lo[3:14])
    hf, lof = h.ravel(), lo.ravel().astype(np.float32)
    f_lo[14] = float(np.einsum("i,i->", hf, lof)) / n_lo
    outside = n_tissue - n_lo
    if outside > 0:
        outside_f = (tissue ^ lo).ravel().astype(np.float32)  # lo lies inside tissue
        f_lo[15] = float(np.einsum("i,i->", hf, outside_f)) / outside
    f_lo[16] = 1.0 - np.count_nonzero(interior(lo)) / n_lo

    f_hi[0], f_hi[1] = n_hi / hi.size, n_hi / max(n_tissue, 1)
    f_hi[2] = np.log1p(len(cores) / tissue_um2 * 1000.0)
    f_hi[3] = len(cores) / max(len(areas), 1)
    size_stats(cores, AREA_BINS_UM2 / 4, f_hi[4:15])
    if n_hi:
        f_hi[15] = float(np.einsum("i,i->", hf, hi.ravel().astype(np.float32))) / n_hi
    f_hi[16] = n_hi / n_lo
    return np.concatenate([f_lo, f_hi])


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask[1:-1, 1:-1]`` whose 4 neighbours are all in ``mask``."""
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1]
    inner &= mask[2:, 1:-1]
    inner &= mask[1:-1, :-2]
    inner &= mask[1:-1, 2:]
    return inner
