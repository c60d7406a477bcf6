"""Stain normalisation of H&E patches to a reference: fit a slide's stain statistics once, apply
them to every patch of that slide.

Two methods, fitted with ``torchstain`` (numpy backend):

- ``macenko`` (Macenko et al., ISBI 2009): the slide's H and E optical-density vectors
  ``he`` ``[3, 2]`` (natural-log OD, ``-ln((I + 1) / 240)``, unit columns, haematoxylin first)
  and the 99th percentile of each stain's concentration ``max_c`` ``[2]``. Applying it unmixes
  each pixel with the slide's vectors, rescales the concentrations to the reference's
  ``max_c`` and remixes with the reference's vectors.
- ``reinhard`` (Reinhard et al. 2001): mean and standard deviation of each LAB channel
  (``lab_mean``, ``lab_std`` ``[3]``; L in 0..100, a and b in -128..127) of the slide's tissue;
  applying it standardises each channel to the reference's statistics.

``torchstain``'s own ``normalize()`` refits on every image, which is not robust on a patch that
is mostly one colour; here the fit is made ONCE PER SLIDE from a mosaic of a few of its tissue
patches (``fit_slide``), on tissue pixels only (``tissue_pixels``: dense enough, not black, not
marker ink), and the fitted statistics are then applied to every patch (``apply``). A slide
with too little tissue colour to fit gets no statistics (``fit_slide`` returns None; callers
leave it as it is and say so).

``apply`` leaves glass alone: a pixel's weight ramps from 0 (summed log10 OD below
``GLASS_OD``, near-white) to 1 (above ``TISSUE_OD``), and the output is
``weight * normalised + (1 - weight) * input``, so white stays white and no edge appears at
the tissue border. No NaN or inf can come out (the log is of ``I + 1``, the exponent is
bounded, the output is clipped to uint8), and everything is deterministic.

Every step is a function of the pixel's own RGB value, so a slide's whole normalisation is one
table of the 2^24 colours (``colour_table``, 48 MiB, built in about as long as normalising 100
patches of 512 px directly: 1.6 s Macenko, 4.2 s Reinhard on one core); ``apply_table`` is then
a lookup (4-5 ms a patch against 14 / 45 ms). Callers switch to the table once a slide has had
``TABLE_AFTER_PIXELS`` pixels normalised in one process (``features.stain.SlideStain``), so
small slides never pay for it and whole-slide images of thousands of patches gain 3-10x.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from threads_search.config import StrictConfig
from threads_search.errors import ConfigError
from threads_search.wsi.stain import optical_density, red_excess

StainMethod = Literal["none", "macenko", "reinhard"]

IO = 240.0  # transmitted light intensity of torchstain's Macenko (its default)
BETA = 0.15  # torchstain's OD floor for the pixels a Macenko fit uses (per channel, ln)
GLASS_OD = 0.10  # summed log10 OD at or below which a pixel is glass: left unchanged
TISSUE_OD = 0.25  # summed log10 OD from which a pixel is normalised fully (and may be fitted)
BLACK_OD = 2.8  # summed log10 OD above which a pixel is black (ink, dust, fold): not fitted
INK_RED_EXCESS = 0.15  # marker ink (``threads_search.wsi.stain``): not fitted
MIN_FIT_PIXELS = 2000  # tissue pixels a fit needs
MAX_FIT_PIXELS = 200_000  # pixels a fit uses at most (an even, deterministic subsample)
# Ruifrok & Johnston haematoxylin and eosin OD vectors (unit columns): which fitted vector is H
RUIFROK_HE = np.array([[0.650, 0.072], [0.704, 0.990], [0.286, 0.105]])
RUIFROK_HE = RUIFROK_HE / np.linalg.norm(RUIFROK_HE, axis=0)
N_COLOURS = 1 << 24  # 24-bit RGB colours: the rows of a colour table
TABLE_AFTER_PIXELS = 2 * N_COLOURS  # pixels normalised directly (128 patches of 512 px) first
MAX_REFERENCE_PX = 8192 * 8192  # largest reference region read

# torchstain 1.4.1's default Macenko reference (its ``NumpyMacenkoNormalizer`` HERef/maxCRef).
MACENKO_HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_MAXC_REF = np.array([1.9705, 1.0308])
# LAB mean/std of the tissue pixels (``tissue_pixels``) of the real H&E tile
# ../shared/data/real/he_tile_240.png (wsidicom-data 0.3.0), measured with torchstain 1.4.1's
# ReinhardNormalizer.fit (42182 of its 57600 pixels are tissue): fit_pixels(tissue_pixels(tile),
# "reinhard"); tests/test_stain_norm.py measures them again.
REINHARD_LAB_MEAN = np.array([36.4169, 26.3802, -16.5643])
REINHARD_LAB_STD = np.array([17.1696, 8.3392, 8.3454])

_REGION = re.compile(r"^(?P<path>.+):(?P<x>\d+),(?P<y>\d+),(?P<w>\d+),(?P<h>\d+)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class StainConfig(StrictConfig):
    """Stain normalisation of the features stage. ``reference``: None (built in), an image file
    (png/jpg/tif) or ``SLIDE_PATH:x,y,w,h`` (a level-0 px region of a slide);
    ``sample_patches``: tissue patches per slide the fit uses."""

    method: StainMethod = "none"
    reference: str | None = None
    sample_patches: int = 16

    def check(self) -> None:
        if not isinstance(self.sample_patches, int) or self.sample_patches < 1:
            raise ConfigError(
                f"StainConfig.sample_patches must be an integer >= 1, got {self.sample_patches!r}"
            )
        if self.reference is not None and self.method == "none":
            raise ConfigError(
                f"a stain reference ({self.reference}) was given without a method: add "
                "--stain-normalize macenko or reinhard, or drop --stain-reference"
            )
        if self.reference is not None and (
            not isinstance(self.reference, str) or not self.reference
        ):
            raise ConfigError(
                f"StainConfig.reference must be a path or None, got {self.reference!r}"
            )

    def key(self) -> dict | None:
        """What of these settings changes the features (None for ``none``): the method, the
        reference (its file's name and size, plus the region) and the sample size."""
        if self.method == "none":
            return None
        return {
            "method": self.method,
            "reference": reference_key(self.reference),
            "sample_patches": self.sample_patches,
        }


@dataclass(frozen=True)
class StainStats:
    """Fitted statistics: ``he`` ``[3, 2]`` and ``max_c`` ``[2]`` (macenko) or ``lab_mean`` and
    ``lab_std`` ``[3]`` (reinhard); ``n_pixels``: tissue pixels fitted (0: built in)."""

    method: str
    he: tuple | None = None
    max_c: tuple | None = None
    lab_mean: tuple | None = None
    lab_std: tuple | None = None
    n_pixels: int = 0

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_text(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> StainStats:
        def tup(v):
            return None if v is None else tuple(np.asarray(v, float).round(6).tolist())

        he = d.get("he")
        he = (
            None
            if he is None
            else tuple(tuple(row) for row in np.asarray(he, float).round(6).tolist())
        )
        return cls(
            d["method"],
            he,
            tup(d.get("max_c")),
            tup(d.get("lab_mean")),
            tup(d.get("lab_std")),
            int(d.get("n_pixels", 0)),
        )


def reference_key(reference: str | None) -> dict | None:
    """Identity of a reference for the features hash: None (built in), else the file's name and
    size in bytes (None when absent) and the region, if any."""
    if reference is None:
        return None
    path, region = split_reference(reference)
    p = Path(path)
    size = p.stat().st_size if p.is_file() else None
    return {"name": p.name, "size": size, "region": list(region) if region else None}


def split_reference(reference: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """``(path, (x, y, w, h) level-0 px | None)`` of a ``--stain-reference`` value."""
    m = _REGION.match(reference)
    if m and not Path(reference).exists():
        return m["path"], (int(m["x"]), int(m["y"]), int(m["w"]), int(m["h"]))
    return reference, None


# --- fitting ------------------------------------------------------------------------------------
def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 3]``: the pixels of ``rgb`` (uint8 ``[..., 3]``) a fit uses: summed log10 OD
    at least ``TISSUE_OD`` and at most ``BLACK_OD``, red excess at most ``INK_RED_EXCESS``."""
    flat = np.asarray(rgb, np.uint8)[..., :3].reshape(-1, 3)
    od = optical_density(flat)
    total = od.sum(-1)
    keep = (total >= TISSUE_OD) & (total <= BLACK_OD) & (red_excess(od) <= INK_RED_EXCESS)
    pix = flat[keep]
    if len(pix) > MAX_FIT_PIXELS:
        pix = pix[:: -(-len(pix) // MAX_FIT_PIXELS)]
    return pix


def fit_pixels(pixels: np.ndarray, method: StainMethod) -> StainStats | str:
    """Stats fitted on tissue pixels uint8 ``[n, 3]``, or why none could be fitted (text)."""
    import torchstain

    n = len(pixels)
    if n < MIN_FIT_PIXELS:
        return f"too few tissue pixels to fit ({n} < {MIN_FIT_PIXELS})"
    img = np.ascontiguousarray(pixels, np.uint8).reshape(1, n, 3)
    if method == "reinhard":
        norm = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
        norm.fit(img)
        mean, std = np.asarray(norm.target_means, float), np.asarray(norm.target_stds, float)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or std.min() < 0.5:
            return "tissue colour too uniform to fit (LAB std below 0.5)"
        return StainStats.from_dict(
            {"method": method, "lab_mean": mean, "lab_std": std, "n_pixels": n}
        )
    if method != "macenko":
        raise ConfigError(f"unknown stain normalisation method {method!r}")
    dense = int((~np.any(-np.log((pixels.astype(float) + 1) / IO) < BETA, axis=1)).sum())
    if dense < MIN_FIT_PIXELS:
        return f"too few stained pixels to fit ({dense} < {MIN_FIT_PIXELS})"
    norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    with np.errstate(all="ignore"):
        try:
            norm.fit(img, Io=IO, beta=BETA)
        except (np.linalg.LinAlgError, ValueError, IndexError) as e:
            return f"stain vectors could not be fitted ({e})"
    he = np.asarray(norm.HERef, float)
    he = he * np.where(he.sum(0) < 0, -1.0, 1.0)  # an OD vector is non-negative
    max_c = np.asarray(norm.maxCRef, float)
    if not (np.isfinite(he).all() and np.isfinite(max_c).all()):
        return "stain vectors could not be fitted (not finite)"
    he = he / np.maximum(np.linalg.norm(he, axis=0), 1e-12)
    he, max_c = _haematoxylin_first(he, max_c)
    if abs(float(he[:, 0] @ he[:, 1])) > 0.995 or max_c.min() <= 1e-3:
        return "tissue colour too uniform to separate haematoxylin and eosin"
    return StainStats.from_dict({"method": method, "he": he, "max_c": max_c, "n_pixels": n})


def _haematoxylin_first(he: np.ndarray, max_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``he`` ``[3, 2]`` and ``max_c`` ``[2]`` with haematoxylin first: the order whose columns
    are closer (summed cosine) to the Ruifrok & Johnston H and E vectors. torchstain puts first
    the vector with the larger red OD, which swaps the stains of a lab whose haematoxylin
    absorbs less red than its eosin (nuclei would be painted pink)."""
    keep = float(he[:, 0] @ RUIFROK_HE[:, 0] + he[:, 1] @ RUIFROK_HE[:, 1])
    swap = float(he[:, 1] @ RUIFROK_HE[:, 0] + he[:, 0] @ RUIFROK_HE[:, 1])
    if swap > keep:
        return he[:, ::-1].copy(), max_c[::-1].copy()
    return he, max_c


def fit_slide(patches: list[np.ndarray], method: StainMethod) -> StainStats | None:
    """Stats of a slide from a sample of its patches (uint8 ``[h, w, 3]`` each, fitted together
    on their tissue pixels), or None when they hold too little tissue colour to fit
    (``fit_slide_or_reason`` says why)."""
    out = fit_slide_or_reason(patches, method)
    return out if isinstance(out, StainStats) else None


def fit_slide_or_reason(patches: list[np.ndarray], method: StainMethod) -> StainStats | str:
    """As ``fit_slide``, with the reason text instead of None."""
    if not patches:
        return "no patches to fit"
    step = 2 if sum(np.asarray(p).size // 3 for p in patches) > 4 * MAX_FIT_PIXELS else 1
    pix = np.concatenate([tissue_pixels(np.asarray(p)[::step, ::step]) for p in patches])
    if len(pix) > MAX_FIT_PIXELS:  # an even, deterministic subsample
        pix = pix[:: -(-len(pix) // MAX_FIT_PIXELS)]
    return fit_pixels(pix, method)


def builtin_reference(method: StainMethod) -> StainStats:
    """The built-in reference of ``method`` (module constants)."""
    if method == "macenko":
        return StainStats.from_dict(
            {"method": method, "he": MACENKO_HE_REF, "max_c": MACENKO_MAXC_REF}
        )
    if method == "reinhard":
        return StainStats.from_dict(
            {"method": method, "lab_mean": REINHARD_LAB_MEAN, "lab_std": REINHARD_LAB_STD}
        )
    raise ConfigError(f"no stain reference for method {method!r}")


def fit_reference(cfg: StainConfig) -> StainStats:
    """The reference stats of ``cfg``: built in, or fitted on the tissue of an image file or a
    slide region. ``ConfigError`` naming the file and the fix when it cannot be read or fitted."""
    if cfg.reference is None:
        return builtin_reference(cfg.method)
    rgb = read_reference(cfg.reference)
    out = fit_pixels(tissue_pixels(rgb), cfg.method)
    if isinstance(out, str):
        raise ConfigError(
            f"stain reference {cfg.reference}: {out}; give an image or region (SLIDE:x,y,w,h) "
            "mostly covered by well-stained H&E tissue, or leave --stain-reference out for the "
            "built-in reference"
        )
    return out


def read_reference(reference: str) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]`` of a reference image file or ``SLIDE:x,y,w,h`` region
    (``ConfigError`` naming the file and the fix)."""
    from PIL import Image, UnidentifiedImageError

    path, region = split_reference(reference)
    fix = "give a png/jpg/tif image or SLIDE_PATH:x,y,w,h (level-0 px) of a readable slide"
    if not Path(path).is_file():
        raise ConfigError(f"stain reference {path}: file not found; {fix}")
    if region is not None:
        from threads_search.wsi.errors import SlideError
        from threads_search.wsi.slide import open_slide

        x, y, w, h = region
        if w < 1 or h < 1 or w * h > MAX_REFERENCE_PX:
            raise ConfigError(
                f"stain reference {reference}: region {w} x {h} px is empty or larger than "
                f"{MAX_REFERENCE_PX} px; {fix}"
            )
        try:
            with open_slide(path, require_mpp=False) as s:
                return s.read_region(x, y, 0, (w, h))
        except SlideError as e:
            raise ConfigError(f"stain reference {path}: {e.reason}: {e.detail}; {fix}") from None
    if Path(path).suffix.lower() not in _IMAGE_SUFFIXES:
        raise ConfigError(f"stain reference {path}: not an image file ({Path(path).suffix}); {fix}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_REFERENCE_PX:
                raise ConfigError(
                    f"stain reference {path}: image larger than "
                    f"{MAX_REFERENCE_PX} px; crop it or give a region"
                )
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ConfigError(
            f"stain reference {path}: cannot be read as an image ({e}); {fix}"
        ) from None


# --- applying -----------------------------------------------------------------------------------
_LN_OD = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)).astype(np.float32)
_LOG10_OD = optical_density(np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, 2))[0, :, 0]


def glass_weight(flat: np.ndarray) -> np.ndarray:
    """float32 ``[n]`` in 0..1: how fully each pixel of uint8 ``[n, 3]`` is normalised (0 on
    glass, 1 on tissue; module docstring)."""
    total = _LOG10_OD[flat[:, 0]] + _LOG10_OD[flat[:, 1]] + _LOG10_OD[flat[:, 2]]
    return np.clip((total - GLASS_OD) / (TISSUE_OD - GLASS_OD), 0.0, 1.0)


def apply(rgb_batch: np.ndarray, slide_stats: StainStats, ref_stats: StainStats) -> np.ndarray:
    """uint8 ``[n, h, w, 3]`` (or ``[h, w, 3]``) normalised from ``slide_stats`` to
    ``ref_stats`` (same method), same shape; glass unchanged (module docstring)."""
    rgb = np.asarray(rgb_batch, np.uint8)
    if slide_stats.method != ref_stats.method:
        raise ConfigError(f"stain stats of {slide_stats.method!r} and {ref_stats.method!r} mixed")
    flat = rgb.reshape(-1, 3)
    w = glass_weight(flat)
    todo = np.flatnonzero(w > 0)
    if len(todo) == 0:
        return rgb.copy()
    pix = flat[todo]
    if slide_stats.method == "macenko":
        norm = _macenko(pix, slide_stats, ref_stats)
    else:
        norm = _reinhard(pix, slide_stats, ref_stats)
    wt = w[todo, None]
    mixed = wt * norm + (1.0 - wt) * pix.astype(np.float32)
    out = flat.copy()
    out[todo] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out.reshape(rgb.shape)


def _macenko(pix: np.ndarray, s: StainStats, r: StainStats) -> np.ndarray:
    od = np.stack([_LN_OD[pix[:, c]] for c in range(3)], 1)  # [n, 3]
    unmix = np.linalg.pinv(np.asarray(s.he, np.float64)).astype(np.float32)  # [2, 3]
    scale = (np.asarray(r.max_c) / np.asarray(s.max_c)).astype(np.float32)
    conc = (od @ unmix.T) * scale  # [n, 2]
    expo = np.clip(-(conc @ np.asarray(r.he, np.float32).T), -60.0, 10.0)
    return np.minimum(IO * np.exp(expo), 255.0)


def _reinhard(pix: np.ndarray, s: StainStats, r: StainStats) -> np.ndarray:
    from torchstain.numpy.utils import lab2rgb, lab_merge, lab_split, rgb2lab

    chans = lab_split(rgb2lab(pix.astype(np.float32) / 255.0))
    mu_s, sd_s = np.asarray(s.lab_mean), np.asarray(s.lab_std)
    mu_r, sd_r = np.asarray(r.lab_mean), np.asarray(r.lab_std)
    out = [
        (x - mu_s[i]) * np.float32(sd_r[i] / sd_s[i]) + np.float32(mu_r[i])
        for i, x in enumerate(chans)
    ]
    rgb = lab2rgb(lab_merge(*out).astype(np.float32))
    return np.nan_to_num(rgb, nan=1.0, posinf=1.0, neginf=0.0) * 255.0


def colour_table(slide_stats: StainStats, ref_stats: StainStats) -> np.ndarray:
    """uint8 ``[2^24, 3]``: ``apply`` of every RGB colour, row ``r << 16 | g << 8 | b``. Built in
    chunks of 2^20 colours (about 100 MB of temporaries at a time)."""
    out = np.empty((N_COLOURS, 3), np.uint8)
    step = 1 << 20
    for start in range(0, N_COLOURS, step):
        idx = np.arange(start, start + step, dtype=np.uint32)
        rgb = np.stack([idx >> 16, (idx >> 8) & 255, idx & 255], 1).astype(np.uint8)
        out[start : start + step] = apply(rgb, slide_stats, ref_stats)
    return out


def apply_table(rgb_batch: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` normalised by a ``colour_table`` lookup; same shape."""
    a = np.asarray(rgb_batch, np.uint8)
    idx = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
    return table[idx]
