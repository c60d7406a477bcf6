"""Tissue detection on a slide thumbnail, contours as QuPath-readable GeoJSON, thumbnail JPEGs.

Algorithm (radii in µm, converted with the detection µm/px; colour measures in ``stain``):

1. The thumbnail is block-averaged to about ``thumb_mpp`` and measured white-balanced to its
   glass colour (``stain.glass_colour``), so that clean glass is white and its OD 0.
2. *Stained* pixels: HSV saturation above a threshold (Otsu, clamped to ``[min_saturation,
   max_saturation]``: a blank slide yields nothing; pale tissue beside strongly stained tissue
   is kept) and optical density (sum over R, G, B) above ``min_od`` (pink haze on glass is
   bright and stays below). Black pixels (HSV value < ``black_value``: dust, folds, edges) are
   never tissue. Both classes are median-filtered (a majority over ``median_um`` windows).
3. *Ink* (``exclude_ink``): green, cyan, teal and blue marker inks and marking dyes, told from
   haematoxylin by stain separation (red excess > ``ink_red_excess``; see ``stain``), never by
   hue alone, so dense haematoxylin stays tissue. Ink on tissue is tissue: ink pixels connected
   to stained pixels and within ``ink_on_tissue_um`` of them are kept (margin dye); other ink
   (on glass) is removed. With ``exclude_ink`` off, ink counts like any stained pixel.
4. Closing (``close_um``, bridges gaps inside tissue), optional opening (``open_um``; 0 by
   default, as any opening erases tissue strands narrower than twice its radius), holes up to
   ``max_hole_area_mm2`` filled, components under ``min_area_mm2`` dropped (this, not an
   opening, removes specks and debris).

Contours are outer rings (plus hole rings) of each component in level-0 px.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import draw, filters, measure, morphology

from threads_search.atomic import write_bytes
from threads_search.config import StrictConfig
from threads_search.errors import ConfigError
from threads_search.wsi.stain import colour_measures, glass_colour, ink_mask

_NON_NEGATIVE = (
    "median_um",
    "close_um",
    "open_um",
    "max_hole_area_mm2",
    "min_area_mm2",
    "keep_near_um",
    "ink_on_tissue_um",
    "simplify_px",
)


@dataclass
class TissueParams(StrictConfig):
    """Tissue detection settings (JSON-serialisable; saved with every artifact). Ranges are
    checked when the settings are made (``check``: ``ConfigError``, a ValueError, naming the
    first setting out of range)."""

    thumb_mpp: float = 8.0  # µm/px detection runs at; finer thumbnails are block-averaged to it
    min_saturation: float = 0.05  # floor of the Otsu saturation threshold (0..1)
    max_saturation: float = 0.15  # ceiling of the Otsu threshold, keeps pale tissue
    min_od: float = 0.12  # optical density (sum over R, G, B, glass = 0) tissue and ink need
    black_value: float = 0.15  # HSV value below this is black (dust, folds, edges, black ink)
    median_um: float = 24.0  # median filter width on the colour image
    close_um: float = 32.0  # closing radius (bridges gaps inside tissue)
    open_um: float = 0.0  # opening radius (0: none; removes strands narrower than 2x this)
    max_hole_area_mm2: float = 0.5  # enclosed holes up to this area are filled (0: none)
    min_area_mm2: float = 0.02  # smaller components are dropped (unless near a larger one)
    keep_near_um: float = 64.0  # small components this close to a larger one are kept
    exclude_ink: bool = True  # remove green/cyan/blue marker ink lying on glass
    ink_red_excess: float = 0.15  # red excess (stain.red_excess) above which a pixel is ink
    ink_on_tissue_um: float = 48.0  # ink this close to (and touching) tissue is tissue
    simplify_px: float = 0.5  # polygon simplification tolerance, in mask px

    def check(self) -> None:
        checks = [
            ("thumb_mpp", self.thumb_mpp > 0, "> 0"),
            ("min_saturation", 0 <= self.min_saturation <= 1, "in [0, 1]"),
            ("max_saturation", 0 <= self.max_saturation <= 1, "in [0, 1]"),
            ("min_od", self.min_od >= 0, ">= 0"),
            ("black_value", 0 <= self.black_value <= 1, "in [0, 1]"),
            ("ink_red_excess", -1 <= self.ink_red_excess <= 1, "in [-1, 1]"),
        ]
        for name in _NON_NEGATIVE:
            checks.append((name, getattr(self, name) >= 0, ">= 0"))
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"tissue setting {name}={getattr(self, name)!r} must be {want}")

    def validate(self) -> None:
        """``check`` (kept for callers of earlier versions)."""
        self.check()


@dataclass
class TissueResult:
    """Tissue mask and outlines. Mask pixel (i, j) covers the level-0 region
    ``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` with ``s = mask_mpp / level0_mpp``. ``contours``: outer
    rings, each float ``[K, 2]`` (x, y) level-0 px, closed (first row == last row);
    ``holes[k]``: the hole rings of ``contours[k]``; ``threshold``: saturation threshold used."""

    mask: np.ndarray = field(repr=False)
    mask_mpp: float
    level0_mpp: float
    area_mm2: float
    contours: list[np.ndarray] = field(default_factory=list, repr=False)
    holes: list[list[np.ndarray]] = field(default_factory=list, repr=False)
    threshold: float = 0.0


def detect_tissue(
    thumb_rgb: np.ndarray,
    thumb_mpp: float,
    level0_mpp: float,
    params: TissueParams | None = None,
    level0_size: tuple[int, int] | None = None,
) -> TissueResult:
    """Detect tissue on ``thumb_rgb`` (uint8 ``[h, w, 3|4]`` at ``thumb_mpp`` µm/px, covering the
    slide from level-0 (0, 0)); the mask is at ``thumb_mpp`` times the integer block factor.
    ``level0_size`` (width, height): contours are clipped to it (else to the mask's extent)."""
    p = params or TissueParams()
    p.check()  # again: the fields may have been set since the settings were made
    rgb = np.asarray(thumb_rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8 [h, w, 3|4], got {rgb.dtype} {rgb.shape}")
    if thumb_mpp <= 0 or level0_mpp <= 0:
        raise ValueError(f"thumb_mpp {thumb_mpp} and level0_mpp {level0_mpp} must be > 0")
    factor = max(1, int(p.thumb_mpp / thumb_mpp + 1e-6))
    rgb = _block_mean(rgb[..., :3], factor)
    mpp = thumb_mpp * factor
    px_per_mm2 = (1000.0 / mpp) ** 2

    mask, excluded, thr = _classify(rgb, mpp, p)
    if mask.any():
        if (r := _radius(p.close_um, mpp)) > 0:
            mask = ndi.binary_closing(np.pad(mask, r), morphology.disk(r))[r:-r, r:-r]
        mask &= ~excluded  # closing does not bridge onto ink on glass or black pixels
        if (r := _radius(p.open_um, mpp)) > 0:
            mask = ndi.binary_opening(mask, morphology.disk(r))
        mask = _fill_small_holes(mask, p.max_hole_area_mm2 * px_per_mm2)
        mask = _drop_small(mask, p.min_area_mm2 * px_per_mm2, _radius(p.keep_near_um, mpp))
    scale = mpp / level0_mpp
    h0, w0 = mask.shape[0] * scale, mask.shape[1] * scale
    if level0_size is not None:
        w0, h0 = min(w0, level0_size[0]), min(h0, level0_size[1])
    outers, holes = _rings(mask, scale, p.simplify_px, (w0, h0))
    area = float(mask.sum()) / px_per_mm2
    return TissueResult(mask, float(mpp), float(level0_mpp), area, outers, holes, float(thr))


def contours_to_geojson(result: TissueResult, slide_id: str) -> dict:
    """GeoJSON FeatureCollection, one QuPath annotation (classification "Tissue") per component;
    Polygon coordinates in level-0 px, exterior ring first, then its holes."""
    features = []
    for k, outer in enumerate(result.contours):
        rings = [outer, *(result.holes[k] if k < len(result.holes) else [])]
        fid = uuid.uuid5(uuid.NAMESPACE_URL, f"threads-search/{slide_id}/tissue/{k}")
        features.append(
            {
                "type": "Feature",
                "id": str(fid),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [np.round(r, 2).tolist() for r in rings],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"Tissue {k + 1}",
                    "classification": {"name": "Tissue", "color": [0, 200, 0]},
                    "isLocked": False,
                    "slide_id": slide_id,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(result: TissueResult, slide_id: str, path: str | Path) -> Path:
    """Write ``contours_to_geojson`` to ``path`` atomically (``threads_search.atomic``)."""
    return write_bytes(path, json.dumps(contours_to_geojson(result, slide_id)).encode())


def draw_contours(
    thumb_rgb: np.ndarray, result: TissueResult, thumb_mpp: float | None = None
) -> np.ndarray:
    """Copy of ``thumb_rgb`` with the outer and hole rings drawn in green, 2 px wide.
    ``thumb_mpp`` defaults to the value implied by the widths of the thumbnail and the mask."""
    out = np.array(thumb_rgb[..., :3], dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    if thumb_mpp is None:
        thumb_mpp = result.mask_mpp * result.mask.shape[1] / max(w, 1)
    to_thumb = result.level0_mpp / thumb_mpp
    lines = np.zeros((h, w), bool)
    rings = [*result.contours, *(r for hs in result.holes for r in hs)]
    for ring in rings:
        xy = ring * to_thumb - 0.5
        rr, cc = draw.polygon_perimeter(xy[:, 1], xy[:, 0], shape=(h, w), clip=False)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        lines[rr[ok], cc[ok]] = True
    lines = ndi.binary_dilation(lines, np.ones((2, 2), bool))
    out[lines] = (0, 200, 0)
    return out


def write_thumbnail_jpeg(
    thumb_rgb: np.ndarray, result: TissueResult, path: str | Path, max_side: int = 1024
) -> Path:
    """Write the thumbnail (longest side at most ``max_side``) with contours drawn, as JPEG,
    atomically."""
    img = Image.fromarray(np.asarray(thumb_rgb)[..., :3])
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    drawn = Image.fromarray(draw_contours(np.asarray(img), result))
    buf = io.BytesIO()
    drawn.save(buf, format="JPEG", quality=85)
    return write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- helpers


def _block_mean(rgb: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` x ``f`` blocks (edge blocks padded by replication) → uint8 RGB."""
    if f == 1:
        return rgb
    h, w = -(-rgb.shape[0] // f) * f, -(-rgb.shape[1] // f) * f
    padded = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
    blocks = padded.reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    return np.clip(blocks + 0.5, 0, 255).astype(np.uint8)


def _classify(rgb: np.ndarray, mpp: float, p: TissueParams):
    """Per-pixel classes of a detection-resolution RGB image: ``(tissue, excluded, threshold)``;
    ``tissue``: stained pixels plus ink on tissue; ``excluded``: ink on glass and black."""
    value, sat, od_sum, excess = colour_measures(rgb, glass_colour(rgb))
    k = _odd(p.median_um / mpp)
    black = _majority(value < p.black_value, k)
    ink = np.zeros_like(black)
    if p.exclude_ink:
        ink = _ink(
            ink_mask(excess, od_sum, p.ink_red_excess, p.min_od),
            ink_mask(excess, od_sum, p.ink_red_excess * 2 / 3, p.min_od),
        )
        ink &= ~black
    thr = _threshold(sat[~(black | ink)], p)
    stained = _majority((sat > thr) & (od_sum > p.min_od), k) & ~black & ~ink
    on_tissue = _ink_on_tissue(ink, stained, _radius(p.ink_on_tissue_um, mpp))
    return stained | on_tissue, (ink & ~on_tissue) | black, thr


def _majority(mask: np.ndarray, k: int) -> np.ndarray:
    """Median filter of a bool mask over ``k`` x ``k`` windows (edges repeated)."""
    if k <= 1:
        return mask
    return ndi.uniform_filter(mask.astype(np.float32), k, mode="nearest") > 0.5


def _ink(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Ink pixels: ``strong`` (red excess above ``ink_red_excess``), grown through connected
    ``weak`` pixels (above two thirds of it): a thin stroke blended with glass by the
    thumbnail's averaging keeps less red excess; dense haematoxylin (about 0.08) stays below
    the default 0.10."""
    if not strong.any():
        return strong
    labels, n = ndi.label(weak | strong, np.ones((3, 3), bool))
    hit = np.zeros(n + 1, bool)
    hit[labels[strong]] = True
    hit[0] = False
    return hit[labels]


def _ink_on_tissue(ink: np.ndarray, stained: np.ndarray, r: int) -> np.ndarray:
    """Ink pixels within ``r`` px of a stained pixel and connected to one through ink or stained
    pixels (8-connectivity): marking dye and pen on tissue."""
    if not ink.any() or not stained.any() or r <= 0:
        return np.zeros_like(ink)
    rows, cols = np.nonzero(ink)  # work on the box around the ink, grown by r
    r0, r1 = max(rows.min() - r, 0), min(rows.max() + r + 1, ink.shape[0])
    c0, c1 = max(cols.min() - r, 0), min(cols.max() + r + 1, ink.shape[1])
    ink_b, st_b = ink[r0:r1, c0:c1], stained[r0:r1, c0:c1]
    near = ink_b & ndi.binary_dilation(st_b, morphology.disk(r))
    labels, n = ndi.label(near | st_b, np.ones((3, 3), bool))
    touching = np.zeros(n + 1, bool)
    touching[np.unique(labels[st_b])] = True
    touching[0] = False
    out = np.zeros_like(ink)
    out[r0:r1, c0:c1] = near & touching[labels]
    return out


def _threshold(values: np.ndarray, p: TissueParams) -> float:
    if values.size < 2 or np.ptp(values) < 1e-6:
        return float(p.min_saturation)
    otsu = float(filters.threshold_otsu(values, nbins=256))
    return float(np.clip(otsu, p.min_saturation, max(p.max_saturation, p.min_saturation)))


def _radius(um: float, mpp: float) -> int:
    return max(0, int(round(um / mpp)))


def _odd(px: float) -> int:
    n = max(1, int(round(px)))
    return n if n % 2 else n + 1


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    if max_px <= 0:
        return mask
    holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes <= max_px
    small[0] = False
    return mask | small[holes]


def _drop_small(mask: np.ndarray, min_px: float, near_px: int) -> np.ndarray:
    """Drop components under ``min_px`` px unless one of their pixels lies within ``near_px``
    (square distance) of a component that is kept for its size."""
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    small = ~keep
    small[0] = False
    if near_px > 0 and small.any() and keep.any():
        big = keep[labels].astype(np.uint8)
        for axis in (0, 1):
            big = ndi.maximum_filter1d(big, 2 * near_px + 1, axis=axis)
        keep[np.unique(labels[(big > 0) & small[labels]])] = True
        keep[0] = False
    return keep[labels]


def _rings(mask: np.ndarray, scale: float, tol: float, bounds: tuple[float, float]):
    """Outer rings and their hole rings per 4-connected component, in level-0 px clipped to
    ``bounds`` (width, height)."""
    labels, _ = ndi.label(mask)
    outers, holes = [], []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        sub = np.pad(labels[sl] == k, 1).astype(np.float32)
        rings = measure.find_contours(sub, 0.5, fully_connected="low")
        rings = [_to_level0(r, sl, scale, tol, bounds) for r in rings]
        areas = [_signed_area(r) for r in rings]
        i_out = int(np.argmax(np.abs(areas)))
        outers.append(_orient(rings[i_out], areas[i_out], positive=True))
        pairs = enumerate(zip(rings, areas, strict=True))
        holes.append([_orient(r, a, False) for i, (r, a) in pairs if i != i_out and len(r) >= 4])
    return outers, holes


def _to_level0(ring_rc, sl, scale, tol, bounds) -> np.ndarray:
    """find_contours (row, col) in the padded sub-mask → closed (x, y) level-0 ring."""
    ring_rc = measure.approximate_polygon(ring_rc, tol) if tol > 0 else ring_rc
    x = (ring_rc[:, 1] - 1 + sl[1].start + 0.5) * scale
    y = (ring_rc[:, 0] - 1 + sl[0].start + 0.5) * scale
    xy = np.stack([np.clip(x, 0, bounds[0]), np.clip(y, 0, bounds[1])], 1)
    if len(xy) and not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    return xy


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _orient(xy: np.ndarray, area: float, positive: bool) -> np.ndarray:
    return xy if (area > 0) == positive else xy[::-1].copy()
