"""Pictures of a query slide: thumbnail, attention heatmap overlay, top-attention patches.

Attention frames hold one row per patch: ``x``, ``y`` (level-0 px of the patch's top-left
corner) and ``score`` (mean attention over heads). A patch covers ``patch_l0`` level-0 px a side
(= patch size x target µm/px / slide µm/px).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

THUMB_SIDE = 768
MARK_COLOUR = (0, 229, 255)


@dataclass
class QuerySlide:
    """What the UI shows of a query: ``label``; ``slide_id`` (indexed) or None (upload);
    ``path`` of the slide file (None when not readable here); level-0 ``width``/``height``;
    ``attention`` (x, y, score) or None; ``patch_l0`` px; ``thumb`` (PIL) or None."""

    label: str
    slide_id: str | None
    path: str | None
    width: int
    height: int
    attention: pd.DataFrame | None = None
    patch_l0: int = 0
    thumb: Image.Image | None = field(default=None, repr=False)


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


def heatmap(q: QuerySlide, alpha: float = 0.5, n_top: int = 0) -> Image.Image:
    """``q.thumb`` with each patch tinted by its attention (turbo colour map over the slide's
    score range, blue = low, red = high) and the ``n_top`` best patches outlined and numbered."""
    from matplotlib import colormaps

    base = q.thumb.convert("RGBA")
    att = q.attention
    if att is None or att.empty or q.patch_l0 <= 0:
        return base.convert("RGB")
    sx, sy = base.width / q.width, base.height / q.height
    s = att["score"].to_numpy(np.float64)
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span > 0 else np.full_like(s, 0.5)
    colours = (colormaps["turbo"](norm)[:, :3] * 255).astype(np.uint8)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    a = int(round(255 * alpha))
    for (x, y), c in zip(att[["x", "y"]].to_numpy(np.int64), colours, strict=True):
        box = _box(x, y, q.patch_l0, sx, sy)
        draw.rectangle(box, fill=(int(c[0]), int(c[1]), int(c[2]), a))
    out = Image.alpha_composite(base, layer)
    if n_top:
        mark = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=max(10, base.width // 40))
        for r in top_patches(att, n_top).itertuples():
            box = _box(r.x, r.y, q.patch_l0, sx, sy)
            mark.rectangle(box, outline=MARK_COLOUR + (255,), width=2)
            label = mark.textbbox((box[0] + 2, box[1] + 2), str(r.rank), font=font)
            mark.rectangle(label, fill=MARK_COLOUR + (255,))
            mark.text((box[0] + 2, box[1] + 2), str(r.rank), fill=(0, 0, 0, 255), font=font)
    return out.convert("RGB")


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


def patch_gallery(q: QuerySlide, n: int) -> list[tuple[Image.Image, str]]:
    """(image, caption) of the ``n`` top-attention patches (empty without a readable slide)."""
    if not q.path or q.patch_l0 <= 0 or not Path(q.path).exists():
        return []
    return [
        (
            read_patch(q.path, r.x, r.y, q.patch_l0),
            f"#{r.rank} · attention {r.score:.3f} · ({r.x}, {r.y})",
        )
        for r in top_patches(q.attention, n).itertuples()
    ]
