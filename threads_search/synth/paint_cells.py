"""Cells of a painted slide (``synth.paint``): glands (lumen and epithelial ring), nuclei per
tissue class, a lymphocytic infiltrate, and the stamping of nuclei as soft ellipses into the
haematoxylin map.

Nuclei are rows of x, y (px), major and minor semi-axes (px), angle (rad), intensity
(concentration) and class label (``paint_fields``); lengths are given in µm and converted with
``mpp`` (µm/px). ``m`` is the slide's ``paint.Morphology``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from threads_search.synth.paint_fields import (
    COARSE_UM,
    FAT,
    FINE_UM,
    GLAND,
    STROMA,
    TUMOUR,
    quant,
    share_threshold,
    smooth,
)

# nuclei per 1000 µm² by class (tumour is scaled by Morphology.nuclear_density)
DENSITY = {STROMA: 1.1, TUMOUR: 5.0, GLAND: 1.1, FAT: 0.25}


def paint_glands(rng, class_map, hmap, emap, mpp, m):
    """Stamp glands (pale lumen, epithelial ring) on a jittered 95 µm grid inside gland regions.
    Returns ``gland_part`` (uint8 [H, W], 1 lumen, 2 epithelium) and ring nuclei rows."""
    height, width = class_map.shape
    part = np.zeros_like(class_map)
    spacing = 95.0
    gy, gx = np.mgrid[: int(height * mpp / spacing) + 1, : int(width * mpp / spacing) + 1]
    cx = ((gx + 0.5 + rng.uniform(-0.15, 0.15, gx.shape)) * spacing / mpp).ravel()
    cy = ((gy + 0.5 + rng.uniform(-0.15, 0.15, gy.shape)) * spacing / mpp).ravel()
    inb = (cx < width) & (cy < height)
    cx, cy = cx[inb], cy[inb]
    keep = class_map[cy.astype(np.intp), cx.astype(np.intp)] == GLAND
    rings = []
    nuc = m.nuclear_size_um
    lumen_e, epi_e = quant(0.05 * m.eosin_intensity), quant(0.42 * m.eosin_intensity)
    epi_h = quant(0.10 * m.haematoxylin_intensity)
    for x, y in zip(cx[keep], cy[keep], strict=True):
        rl, t = rng.uniform(14.0, 30.0), rng.uniform(10.0, 14.0)
        a2, a3 = np.float32(rng.uniform(0, 0.12)), np.float32(rng.uniform(0, 0.08))
        p2, p3 = rng.uniform(0, 6.3, 2).astype(np.float32)
        rad = int(np.ceil((rl * 1.25 + t + 2.0) / mpp))
        ys = slice(max(0, int(y) - rad), min(height, int(y) + rad + 1))
        xs = slice(max(0, int(x) - rad), min(width, int(x) + rad + 1))
        dx = ((np.arange(xs.start, xs.stop, dtype=np.float32) + 0.5 - x) * mpp)[None, :]
        dy = ((np.arange(ys.start, ys.stop, dtype=np.float32) + 0.5 - y) * mpp)[:, None]
        r = np.sqrt(dx * dx + dy * dy) + np.float32(1e-6)
        c1, s1 = dx / r, dy / r  # cos, sin of the polar angle; no trig per pixel
        c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
        c3, s3 = c1 * (4 * c1 * c1 - 3), s1 * (3 - 4 * s1 * s1)
        lumen_r = rl * (
            1 + a2 * (c2 * np.cos(p2) - s2 * np.sin(p2)) + a3 * (c3 * np.cos(p3) - s3 * np.sin(p3))
        )
        own = class_map[ys, xs] == GLAND
        lum, epi = own & (r < lumen_r), own & (r >= lumen_r) & (r < lumen_r + t)
        part[ys, xs][lum], part[ys, xs][epi] = 1, 2
        emap[ys, xs][lum], hmap[ys, xs][lum] = lumen_e, 0
        emap[ys, xs][epi], hmap[ys, xs][epi] = epi_e, epi_h
        n = max(6, int(2 * np.pi * (rl + 0.55 * t) / (nuc * 1.15)))
        ang = (np.arange(n) + rng.uniform(-0.2, 0.2, n)) * (2 * np.pi / n)
        rr = rl * (1 + a2 * np.cos(2 * ang + p2) + a3 * np.cos(3 * ang + p3)) + 0.55 * t
        major = np.full(n, 0.5 * nuc * 1.3 / mpp)
        rows = [x + rr * np.cos(ang) / mpp, y + rr * np.sin(ang) / mpp, major, major * 0.55, ang]
        rings.append(np.stack([*rows, np.full(n, 0.95), np.full(n, GLAND)], 1))
    ring = np.concatenate(rings) if rings else np.zeros((0, 7))
    inb = inside(ring[:, 0], ring[:, 1], height, width)
    ring = ring[inb]
    own = class_map[ring[:, 1].astype(np.intp), ring[:, 0].astype(np.intp)] == GLAND
    return part, ring[own]


def jittered_grid(rng, height, width, spacing_um, mpp, jitter):
    """Points of a square grid ``spacing_um`` apart covering ``height`` x ``width`` px, each
    moved by up to ``jitter`` spacings: x, y in px ``[n]`` (some just outside the image)."""
    gy, gx = np.mgrid[: int(height * mpp / spacing_um) + 1, : int(width * mpp / spacing_um) + 1]
    x = ((gx + 0.5 + rng.uniform(-jitter, jitter, gx.shape)) * spacing_um / mpp).ravel()
    y = ((gy + 0.5 + rng.uniform(-jitter, jitter, gy.shape)) * spacing_um / mpp).ravel()
    return x, y


def inside(x, y, height, width):
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def place_nuclei(rng, class_map, gland_part, mpp, m, phase, fs, theta0):
    """Nuclei on a jittered grid thinned by class density. Rows: x, y (px), major and minor
    semi-axes (px), angle (rad), intensity (concentration), class."""
    height, width = class_map.shape
    dens = dict(DENSITY)
    dens[TUMOUR] *= m.nuclear_density
    dmax = max(dens.values())
    x, y = jittered_grid(rng, height, width, np.sqrt(1000.0 / dmax), mpp, 0.4)
    u = rng.random(x.size)
    inb = inside(x, y, height, width)
    x, y, u = x[inb], y[inb], u[inb]
    xi, yi = x.astype(np.intp), y.astype(np.intp)
    cls = class_map[yi, xi]
    p = np.zeros(len(dens) + 1)
    for c, d in dens.items():
        p[c] = d / dmax
    keep = (u < p[cls]) & (gland_part[yi, xi] == 0)
    x, y, cls = x[keep], y[keep], cls[keep]
    n = x.size
    r0 = 0.5 * m.nuclear_size_um / mpp
    major, minor = np.full(n, r0 * 1.5), np.full(n, r0 * 0.45)  # stroma: spindle
    inten = np.full(n, 0.85)
    # spindles follow the fibres: perpendicular to grad(psi)
    gpy, gpx = np.gradient(phase, FINE_UM)
    coords = np.stack([(y + 0.5) / fs, (x + 0.5) / fs])
    gxv = np.cos(theta0) + ndi.map_coordinates(gpx, coords, order=1)
    gyv = np.sin(theta0) + ndi.map_coordinates(gpy, coords, order=1)
    ang = np.arctan2(gyv, gxv) + np.pi / 2
    tum = cls == TUMOUR
    size = r0 * 1.3 * rng.lognormal(0.0, m.pleomorphism, n)
    aspect = rng.uniform(1.0, 1.35, n)
    major[tum], minor[tum] = size[tum] * np.sqrt(aspect[tum]), size[tum] / np.sqrt(aspect[tum])
    ang[tum] = rng.uniform(0, np.pi, n)[tum]
    inten[tum] = rng.uniform(0.95, 1.1, n)[tum]
    fat = cls == FAT
    major[fat], minor[fat], inten[fat] = r0 * 1.2, r0 * 0.35, 0.8
    return np.stack([x, y, major, minor, ang, inten, cls.astype(float)], 1)


def lymphocytes(rng, class_map, tissue_f, tumour_f, cs, mpp, share, density=14.0, size=5.0):
    """Dense small round dark nuclei (a lymphocytic infiltrate) in stroma, over a smooth region
    covering ``share`` of the non-tumour tissue: tumour-like nuclear density outside the tumour.
    ``density`` nuclei per 1000 µm², ``size`` µm diameter. Rows as from ``place_nuclei``."""
    height, width = class_map.shape
    field_ = smooth(rng, tissue_f.shape, 150.0 / COARSE_UM)
    normal = (tissue_f > 0) & (tumour_f <= 0)
    field_ -= share_threshold(field_, normal, share)
    x, y = jittered_grid(rng, height, width, np.sqrt(1000.0 / density), mpp, 0.35)
    inb = inside(x, y, height, width)
    x, y = x[inb], y[inb]
    here = ndi.map_coordinates(field_, [(y + 0.5) / cs, (x + 0.5) / cs], order=1)
    keep = (here > 0) & (class_map[y.astype(np.intp), x.astype(np.intp)] == STROMA)
    x, y = x[keep], y[keep]
    n = x.size
    r = 0.5 * size / mpp * rng.lognormal(0.0, 0.08, n)
    return np.stack(
        [
            x,
            y,
            r * 1.05,
            r / 1.05,
            rng.uniform(0, np.pi, n),
            rng.uniform(1.15, 1.35, n),
            np.full(n, float(STROMA)),
        ],
        1,
    )


def stamp(hmap, nuclei, tissue, budget: int = 4_000_000) -> None:
    """Max-composite soft ellipses (1 px edge, darker rim) into ``hmap`` in place, clipped to
    ``tissue`` (bool [H, W]); ``nuclei`` rows as from ``place_nuclei``. Chunks of similar size
    keep the offset grids small."""
    height, width = hmap.shape
    flat, inside = hmap.reshape(-1), tissue.reshape(-1)
    nuclei = nuclei[np.argsort(nuclei[:, 2], kind="stable")].astype(np.float32)
    rads = np.ceil(nuclei[:, 2] + 1.5).astype(np.intp)
    start = 0
    while start < len(nuclei):
        rad = rads[start]
        k = (2 * int(rad * 1.25) + 1) ** 2
        stop = min(int(np.searchsorted(rads, rad * 1.25, "right")), start + max(1, budget // k))
        chunk = nuclei[start:stop]
        rad = int(rads[stop - 1])  # sorted: the last is the largest
        off = np.arange(-rad, rad + 1)
        ox, oy = np.meshgrid(off, off)
        ix = np.floor(chunk[:, :1]).astype(np.intp) + ox.ravel()
        iy = np.floor(chunk[:, 1:2]).astype(np.intp) + oy.ravel()
        u = (ix + 0.5).astype(np.float32) - chunk[:, :1]
        v = (iy + 0.5).astype(np.float32) - chunk[:, 1:2]
        c, s = np.cos(chunk[:, 4:5]), np.sin(chunk[:, 4:5])
        a, b = chunk[:, 2:3], chunk[:, 3:4]
        rho = np.sqrt(((u * c + v * s) / a) ** 2 + ((v * c - u * s) / b) ** 2)
        edge = np.clip((1.0 - rho) * b + 0.5, 0.0, 1.0)
        ok = (edge > 0) & (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        idx = (iy * width + ix)[ok]
        on = inside[idx]
        rho, edge, idx = rho[ok][on], edge[ok][on], idx[on]
        val = np.broadcast_to(chunk[:, 5:6], ok.shape)[ok][on] * edge * (0.78 + 0.22 * rho**2)
        np.maximum.at(flat, idx, quant(val))
        start = stop
