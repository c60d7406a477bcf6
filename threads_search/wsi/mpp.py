"""Resolution (µm/px) of level 0, resolved in the order DESIGN.md fixes.

override (flag or CSV) → ``openslide.mpp-x/y`` → vendor keys → TIFF resolution tags →
objective power (20x = 0.5 µm/px, flagged as an estimate).

Plausible level-0 values are ``MPP_RANGE`` = 0.02–20 µm/px: scanners give 0.1–1 µm/px (40x is
about 0.25, 20x 0.5, 10x 1.0); 2–10 µm/px are downsampled copies; above 20 µm/px an "image" is
a macro photograph or a wrong value (a 300 dpi TIFF tag is 84.7 µm/px; a 90 µm/px override
made 144,787 patches of a 1536 px image). A file value outside the range is treated as absent
(the next source is tried); an override outside it is refused with ``MppError``. How much
patches may be upsampled from a coarse slide is the patch grid's business
(``GridParams.max_upsample``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from threads_search.errors import MissingError
from threads_search.wsi.errors import MppError

# Vendor properties holding the pixel size; the factor converts the stored unit to µm.
_VENDOR_KEYS: list[tuple[str, str, float]] = [
    ("aperio.MPP", "aperio.MPP", 1.0),
    (
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X",
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_Y",
        1.0,
    ),
    ("philips.DICOM_PIXEL_SPACING", "philips.DICOM_PIXEL_SPACING", 1000.0),  # mm
    ("ventana.ScanRes", "ventana.ScanRes", 1.0),
]
_OBJECTIVE_KEYS = ("openslide.objective-power", "aperio.AppMag", "hamamatsu.SourceLens")
MPP_RANGE = (0.02, 20.0)  # plausible level-0 µm/px (see the module docstring)


@dataclass(frozen=True)
class MppInfo:
    """Level-0 resolution. ``source`` says where it came from; ``estimated`` for objective power."""

    mpp_x: float
    mpp_y: float
    source: str
    estimated: bool = False

    @property
    def mpp(self) -> float:
        """Mean of x and y µm/px."""
        return (self.mpp_x + self.mpp_y) / 2

    def to_dict(self) -> dict:
        return asdict(self)


def _num(value) -> float | None:
    try:
        v = float(str(value).strip().split()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _plausible(v: float | None) -> bool:
    return v is not None and MPP_RANGE[0] <= v <= MPP_RANGE[1]


def check_override(value, what: str = "µm/px override") -> float:
    """``value`` as a float when it is a plausible level-0 µm/px; else ``MppError`` (a
    ValueError) saying why and what to check."""
    v = _num(value)
    if v is None or not _plausible(v):
        raise MppError(
            f"{what} {value!r} is not a plausible level-0 resolution: expected "
            f"{MPP_RANGE[0]:g}–{MPP_RANGE[1]:g} µm/px (scanners give 0.1–1: 40x ≈ 0.25, "
            "20x ≈ 0.5, 10x ≈ 1.0); check the value and its unit (micrometres per pixel, "
            "not mm per pixel nor pixels per µm)"
        )
    return v


def _pair(x: float | None, y: float | None) -> tuple[float, float] | None:
    if _plausible(x) and _plausible(y):
        return x, y  # type: ignore[return-value]
    return None


def _tiff_mpp(props: Mapping[str, str]) -> tuple[float, float] | None:
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    per_unit = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3}.get(unit)
    xr, yr = _num(props.get("tiff.XResolution")), _num(props.get("tiff.YResolution"))
    if per_unit is None or xr is None or yr is None:
        return None
    return _pair(per_unit / xr, per_unit / yr)


def resolve_mpp(props: Mapping[str, str], override: float | None = None) -> MppInfo | None:
    """Level-0 µm/px from OpenSlide ``props``; None when nothing usable is found."""
    if override is not None:
        v = check_override(override)
        return MppInfo(v, v, "override")
    pair = _pair(_num(props.get("openslide.mpp-x")), _num(props.get("openslide.mpp-y")))
    if pair:
        return MppInfo(*pair, "openslide.mpp")
    for kx, ky, factor in _VENDOR_KEYS:
        x, y = _num(props.get(kx)), _num(props.get(ky))
        pair = _pair(x * factor, y * factor) if x and y else None
        if pair:
            return MppInfo(*pair, kx)
    pair = _tiff_mpp(props)
    if pair:
        return MppInfo(*pair, "tiff.resolution")
    for key in _OBJECTIVE_KEYS:
        power = _num(props.get(key))
        if power and 1 <= power <= 200:
            mpp = 10.0 / power
            return MppInfo(mpp, mpp, f"objective-power ({key}={power:g})", estimated=True)
    return None


def load_mpp_csv(path: str | Path) -> dict[str, float]:
    """Read a ``slide,mpp`` CSV (UTF-8, header required). Keys are slide ids, file names or
    paths. ``MissingError`` when there is no such file, ``MppError`` for a file that is not such
    a CSV or holds an implausible value (the message names the file and line)."""
    out: dict[str, float] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "slide" not in fields or "mpp" not in fields:
                raise MppError(f"{path}: mpp CSV needs columns 'slide,mpp', found {fields}")
            for i, row in enumerate(reader, start=2):
                row = {k.strip().lower(): v for k, v in row.items() if k}
                mpp = check_override(row["mpp"], f"{path}:{i}: mpp")
                out[(row["slide"] or "").strip()] = mpp
    except FileNotFoundError:
        raise MissingError(f"mpp CSV {path} does not exist; give a 'slide,mpp' CSV") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MppError(f"{path}: not a readable 'slide,mpp' CSV ({e})") from e
    return out


def lookup_override(table: Mapping[str, float], path: str | Path, slide_id: str) -> float | None:
    """Find a slide in an mpp table by slide id, file name or full path."""
    p = Path(path)
    for key in (slide_id, p.name, p.stem, str(p), str(p.resolve())):
        if key in table:
            return table[key]
    return None
