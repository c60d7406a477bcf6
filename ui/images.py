"""Pictures of a query slide: thumbnail with a scale bar, attention heatmap with its colour bar,
top-attention patches with their physical size.

Attention frames hold one row per patch: ``x``, ``y`` (level-0 px of the patch's top-left
corner) and ``score`` (mean attention over heads). A patch covers ``patch_l0`` level-0 px a side
(= patch size x target µm/px / slide µm/px). Physical sizes use the slide's level-0 µm/px
(``QuerySlide.mpp``); without it pictures and captions say "scale unknown" instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

THUMB_SIDE = 768
MARK_COLOUR = (0, 229, 255)
N_MARKED = 6  # top-attention patches boxed and numbered, in slide search and in the viewer
HEAT_ALPHA = 0.7  # opacity of the highest attention; the lowest is fully transparent
COLOUR_MAP = "turbo"  # blue (low) → red (high)
SCALE_UNKNOWN = "scale unknown (no µm/px for this slide)"


@dataclass
class QuerySlide:
    """What the UI shows of a query: ``label``; ``slide_id`` (indexed) or None (upload);
    ``path`` of the slide file (None when not readable here); level-0 ``width``/``height``;
    ``attention`` (x, y, score) or None; ``patch_l0`` px; ``thumb`` (PIL) or None; ``mpp``:
    level-0 µm/px (None: the slide file's, when it records one; else unknown)."""

    label: str
    slide_id: str | None
    path: str | None
    width: int
    height: int
    attention: pd.DataFrame | None = None
    patch_l0: int = 0
    thumb: Image.Image | None = field(default=None, repr=False)
    mpp: float | None = None

    @property
    def um_per_px(self) -> float | None:
        """Level-0 µm/px (:func:`resolve_mpp` of ``mpp`` and ``path``), None when unknown."""
        return resolve_mpp(self.mpp, self.path)


def resolve_mpp(mpp, path: str | None = None) -> float | None:
    """Level-0 µm/px: ``mpp`` when a positive number, else what the slide file at ``path``
    records (:func:`file_mpp`), else None (scale unknown: never guessed)."""
    try:
        value = float(mpp) if mpp is not None else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value
    return file_mpp(str(path)) if path else None


@lru_cache(maxsize=256)
def file_mpp(path: str) -> float | None:
    """Level-0 µm/px recorded in a slide file (None: not recorded, or not readable)."""
    from threads_search.wsi import open_slide

    try:
        with open_slide(path, require_mpp=False) as s:
            mpp = s.mpp_info.mpp if s.mpp_info is not None else None
    except Exception:  # unreadable here: the scale stays unknown
        return None
    return float(mpp) if mpp and mpp > 0 else None


def nice_length(um: float) -> float:
    """The largest round length (1, 2 or 5 × 10^n µm) not above ``um`` (µm > 0)."""
    exp = 10 ** math.floor(math.log10(um))
    return next(m * exp for m in (5, 2, 1) if m * exp <= um * (1 + 1e-9))


def length_label(um: float) -> str:
    """A length in µm as people write it: "50 µm", "500 µm", "1 mm", "2.5 mm"."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def scale_bar(um_per_px: float, target_px: float) -> tuple[float, float]:
    """(length µm, length px) of a round scale bar about ``target_px`` px long at ``um_per_px``."""
    length = nice_length(um_per_px * target_px)
    return length, length / um_per_px


def slide_thumbnail(path: str | Path, side: int = THUMB_SIDE) -> Image.Image:
    """RGB thumbnail of a slide file, at most ``side`` px, read region by region within a
    fixed budget (``Slide.overview``; OpenSlide's ``get_thumbnail`` reads a whole level at
    once). Raises ``SlideError``."""
    from threads_search.wsi import open_slide

    with open_slide(path, require_mpp=False) as s:
        return Image.fromarray(s.overview(side))


def grid_step(att: pd.DataFrame) -> int:
    """The patch grid step (level-0 px) of an attention frame: the smallest positive gap
    between patch corners along x or y (0 when unknown)."""
    gaps = []
    for c in ("x", "y"):
        u = np.unique(att[c].to_numpy(np.int64))
        d = np.diff(u)
        gaps += d[d > 0].tolist()
    return int(min(gaps)) if gaps else 0


def patch_size_l0(patch_size: int | None, target_mpp: float | None, mpp, att) -> int:
    """Level-0 side of a patch from the model's patch size and µm/px, else the grid step."""
    try:
        if patch_size and target_mpp and mpp and float(mpp) > 0:
            return max(1, round(float(patch_size) * float(target_mpp) / float(mpp)))
    except (TypeError, ValueError):
        pass
    return grid_step(att) if att is not None and len(att) else 0


def top_patches(att: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """The ``n`` highest-attention patches (x, y, score, rank 1..n)."""
    if att is None or att.empty or "score" not in att:
        return pd.DataFrame(columns=["x", "y", "score", "rank"])
    top = att.nlargest(n, "score")[["x", "y", "score"]].reset_index(drop=True)
    top["rank"] = np.arange(1, len(top) + 1)
    return top


def label_font(width: int) -> ImageFont.FreeTypeFont:
    """The font for labels drawn into a picture ``width`` px wide: 1/24 of the width (at least
    16 px), so labels stay readable when the picture is shown smaller (DejaVu Sans: µ, ×, –)."""
    return _font(max(16, round(width / 24)))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colour_range(att: pd.DataFrame, scale: tuple[float, float] | None) -> tuple[float, float]:
    """(lo, hi) the colour map spans: ``scale`` (a fixed scale shared across slides) or the
    slide's own score range. Raises ``ValueError`` for a scale with hi <= lo."""
    if scale is not None:
        lo, hi = (float(v) for v in scale)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"the attention scale must be (lo, hi) with hi > lo, not {scale}")
        return lo, hi
    s = att["score"].to_numpy(np.float64)
    return float(s.min()), float(s.max())


def _rgba(norm: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 RGBA [n, 4] of positions 0..1 on the colour map, opacity rising from 0 to
    ``alpha`` (the low end is transparent: the tissue stays visible)."""
    from matplotlib import colormaps

    rgba = colormaps[COLOUR_MAP](norm)
    rgba[:, 3] = alpha * norm
    return np.round(rgba * 255).astype(np.uint8)


def _narrow(lo: float, hi: float) -> str:
    """A warning when a slide's attention is nearly uniform (highest < 2x the lowest)."""
    if lo > 0 and hi / lo < 2:
        return f" (narrow: highest only {hi / lo:.2g}× lowest)"
    return ""


def attention_scale(frames) -> tuple[float, float]:
    """A fixed colour scale shared across slides: (0, the highest score) over attention frames
    (e.g. every slide of an index), for :func:`heatmap`'s ``scale``. Raises ``ValueError`` when
    no frame has a positive score."""
    hi = max((float(f["score"].max()) for f in frames if f is not None and len(f)), default=0.0)
    if not hi > 0:
        raise ValueError("no attention scores to build a shared scale from")
    return 0.0, hi


def heatmap_caption(q: QuerySlide, n_top: int = N_MARKED, scale=None) -> str:
    """A caption for :func:`heatmap` (the picture carries the same range in its colour bar)."""
    if q.attention is None or q.attention.empty:
        return "No attention stored for this slide."
    s = q.attention["score"]
    span = f"{_fmt(s.min())}–{_fmt(s.max())}"
    how = (
        f"fixed scale {_fmt(scale[0])}–{_fmt(scale[1])}, shared across slides; this slide "
        f"spans {span}"
        if scale is not None
        else f"scale stretched over this slide's own range {span}{_narrow(s.min(), s.max())}: "
        "compare colours within this slide only"
    )
    boxes = f"; boxes: the {n_top} top-attention patches, numbered by rank" if n_top else ""
    return (
        f"Attention per patch: colour and opacity rise with attention (transparent = lowest, "
        f"red = highest; {how}){boxes}."
    )


def heatmap(q: QuerySlide, alpha: float = HEAT_ALPHA, n_top: int = 0, scale=None) -> Image.Image:
    """``q.thumb`` with each patch tinted by its attention (colour map ``COLOUR_MAP``, opacity
    0 at the low end of the scale up to ``alpha``), the ``n_top`` best patches outlined and
    numbered, and a legend strip below: the colour bar labelled with its true range and a
    scale bar (µm). ``scale``: None = this slide's own range (stretched, said so in the
    legend); ``(lo, hi)`` = a fixed scale (e.g. 0..max over the index), scores clipped to it.
    ``info["colour_range"]`` is (lo, hi), ``info["legend_top"]`` the strip's first row."""
    att = q.attention
    if att is None or att.empty or q.patch_l0 <= 0:
        return scaled_thumbnail(q)
    base = q.thumb.convert("RGBA")
    lo, hi = colour_range(att, scale)
    s = att["score"].to_numpy(np.float64)
    norm = np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else np.full_like(s, 0.5)
    colours = _rgba(norm, alpha)
    sx, sy = base.width / q.width, base.height / q.height
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for (x, y), c in zip(att[["x", "y"]].to_numpy(np.int64), colours, strict=True):
        draw.rectangle(_box(x, y, q.patch_l0, sx, sy), fill=tuple(int(v) for v in c))
    out = Image.alpha_composite(base, layer)
    if n_top:
        mark = ImageDraw.Draw(out)
        font = _font(max(16, round(base.width / 18)))  # shown ~400 px wide: digits ~16 px
        pad = font.size // 8
        for r in top_patches(att, n_top).itertuples():
            box = _box(r.x, r.y, q.patch_l0, sx, sy)
            mark.rectangle(box, outline=MARK_COLOUR + (255,), width=max(2, base.width // 300))
            at = (box[0] + 2 + pad, box[1] + 2 + pad)
            x0, y0, x1, y1 = mark.textbbox(at, str(r.rank), font=font)
            mark.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=MARK_COLOUR + (255,))
            mark.text(at, str(r.rank), fill=(0, 0, 0, 255), font=font)
    bar = (lo, hi, float(s.min()), float(s.max()), scale is not None, alpha)
    img = _with_legend(out.convert("RGB"), q, bar)
    img.info["colour_range"] = (lo, hi)
    return img


def scaled_thumbnail(q: QuerySlide) -> Image.Image:
    """``q.thumb`` with a legend strip below holding its scale bar (or "scale unknown")."""
    return _with_legend(q.thumb.convert("RGB"), q, None)


def _with_legend(img: Image.Image, q: QuerySlide, bar) -> Image.Image:
    """``img`` over a white legend strip: the colour bar ``bar`` = (lo, hi, slide min, slide
    max, fixed, alpha) when given, then the scale bar at the thumbnail's µm/px."""
    w = img.width
    font = label_font(w)
    f, pad = font.size, font.size // 2
    strip = Image.new("RGB", (w, 12 * f), "white")
    draw = ImageDraw.Draw(strip)
    y = _colour_bar(strip, draw, font, pad, bar) if bar else pad
    um = q.um_per_px
    length = None
    if um is None or not q.width:
        y = _text(draw, (pad, y), SCALE_UNKNOWN, font, w - 2 * pad) - f
    else:
        length, px = scale_bar(um * q.width / w, w / 4)
        draw.rectangle((pad, y + f // 4, pad + round(px), y + f // 4 + max(3, f // 4)), "black")
        draw.text((pad + round(px) + pad, y - f // 8), length_label(length), "black", font=font)
    strip = strip.crop((0, 0, w, y + f + pad))
    out = Image.new("RGB", (w, img.height + strip.height), "white")
    out.paste(img, (0, 0))
    out.paste(strip, (0, img.height))
    out.info.update(legend_top=img.height, scale_bar_um=length)
    return out


def _text(draw, xy, text: str, font, max_width: float) -> int:
    """Draw ``text`` wrapped at word boundaries to ``max_width`` px; returns the next free
    row."""
    x, y = xy
    line = ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > max_width:
            draw.text((x, y), line, fill="black", font=font)
            y, line = y + round(1.25 * font.size), word
        else:
            line = trial
    draw.text((x, y), line, fill="black", font=font)
    return y + round(1.25 * font.size)


def _colour_bar(strip, draw, font, y: int, bar) -> int:
    """Draw the colour bar with its lo/mid/hi labels and what the scale is; returns the next
    free row."""
    lo, hi, smin, smax, fixed, alpha = bar
    f, pad, w = font.size, font.size // 2, strip.width
    x0, x1, h = pad, w - pad, round(0.8 * f)
    grad = _rgba(np.linspace(0, 1, x1 - x0), alpha)[None].repeat(h, 0)
    ramp = Image.alpha_composite(Image.new("RGBA", (x1 - x0, h), "white"), Image.fromarray(grad))
    strip.paste(ramp.convert("RGB"), (x0, y))
    draw.rectangle((x0 - 1, y - 1, x1, y + h), outline=(120, 120, 120))
    if fixed and hi > lo:  # where this slide's scores lie on the shared scale
        a, b = (x0 + (x1 - x0) * min(1, max(0, (v - lo) / (hi - lo))) for v in (smin, smax))
        draw.rectangle((round(a), y + h + 2, max(round(a) + 2, round(b)), y + h + 5), "black")
    y += h + 6
    labels = [_fmt(lo), _fmt((lo + hi) / 2), _fmt(hi)] if hi > lo else [_fmt(lo)]
    for i, text in enumerate(labels):
        tw = draw.textlength(text, font=font)
        x = x0 if i == 0 else (x1 - tw if i == len(labels) - 1 else (x0 + x1 - tw) / 2)
        draw.text((round(x), y), text, fill="black", font=font)
    y += round(1.3 * f)
    what = (
        f"attention, fixed scale; black line: this slide ({_fmt(smin)}–{_fmt(smax)})"
        if fixed
        else "attention, stretched over this slide's own range" + _narrow(smin, smax)
    )
    return _text(draw, (x0, y), what, font, x1 - x0) + round(0.35 * f)


def _box(x, y, size, sx, sy) -> tuple[int, int, int, int]:
    return (
        int(x * sx),
        int(y * sy),
        max(int(x * sx) + 1, int((x + size) * sx) - 1),
        max(int(y * sy) + 1, int((y + size) * sy) - 1),
    )


def read_patch(path: str | Path, x: int, y: int, size: int, out: int = 192) -> Image.Image:
    """The level-0 square (x, y, size) of a slide, read from the best pyramid level and resized
    to ``out`` px."""
    import openslide

    with openslide.open_slide(str(path)) as s:
        level = s.get_best_level_for_downsample(max(1.0, size / out))
        ds = s.level_downsamples[level]
        side = max(1, int(np.ceil(size / ds)))
        img = s.read_region((int(x), int(y)), level, (side, side)).convert("RGB")
    return img.resize((out, out), Image.Resampling.LANCZOS)


def patch_caption(q: QuerySlide, rank: int, score: float, x: int, y: int) -> str:
    """A top-attention patch's caption: its rank, attention, side and position in µm (level-0
    px and "scale unknown" when the slide has no µm/px)."""
    um, side = q.um_per_px, q.patch_l0
    if um is None:
        return (
            f"#{rank} · attention {score:.3f} · {side} × {side} px at ({x}, {y}) px (scale unknown)"
        )
    return (
        f"#{rank} · attention {score:.3f} · {side * um:.0f} × {side * um:.0f} µm "
        f"at ({x * um:.0f}, {y * um:.0f}) µm"
    )


def field_caption(q: QuerySlide) -> str:
    """What one top-attention patch shows, for the heading of a patch gallery."""
    um, side = q.um_per_px, q.patch_l0
    if side <= 0:
        return ""
    if um is None:
        return f"Each patch: {side} × {side} level-0 px ({SCALE_UNKNOWN})."
    return (
        f"Each patch: {side * um:.0f} × {side * um:.0f} µm of tissue ({side} px at "
        f"{um:.3g} µm/px); positions are µm from the slide's top-left corner."
    )


def patch_gallery(q: QuerySlide, n: int) -> list[tuple[Image.Image, str]]:
    """(image, caption) of the ``n`` top-attention patches (empty without a readable slide);
    captions from :func:`patch_caption`."""
    if not q.path or q.patch_l0 <= 0 or not Path(q.path).exists():
        return []
    return [
        (read_patch(q.path, r.x, r.y, q.patch_l0), patch_caption(q, r.rank, r.score, r.x, r.y))
        for r in top_patches(q.attention, n).itertuples()
    ]
