"""Fast tests of the UI's pictures and viewer server without a browser: the attention heatmap's
colour bar (true range, fixed scale, transparent low end, readable rank labels), scale bars and
µm captions ("scale unknown" without µm/px), the viewer page's spec and static files, a tile
server on a fixed port, ``threads-search ui --help`` and the tile-port checks."""

from __future__ import annotations

import io
import re
import socket
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from scipy.signal import fftconvolve
from typer.testing import CliRunner

from threads_search.cli import app
from threads_search.errors import ConfigError
from ui import images
from ui.launch import check_tile_port, free_port
from ui.viewer import TileServer, ViewSlide

GREY = (200, 200, 200)


def _query(scores, mpp=0.5, patch=200, thumb=400) -> images.QuerySlide:
    """A square slide of n × n patches (``patch`` level-0 px) with ``scores`` row by row, and a
    uniform grey ``thumb`` px thumbnail."""
    n = int(round(len(scores) ** 0.5))
    yy, xx = np.mgrid[0:n, 0:n]
    att = pd.DataFrame(
        {"x": xx.ravel() * patch, "y": yy.ravel() * patch, "score": np.asarray(scores, float)}
    )
    side = n * patch
    pic = Image.new("RGB", (thumb, thumb), GREY)
    return images.QuerySlide("q", "q", None, side, side, att, patch, pic, mpp)


def _centres(q: images.QuerySlide, img: Image.Image) -> np.ndarray:
    """RGB [n, 3] of the picture at each patch's centre, in attention order."""
    a = np.asarray(img, np.int16)
    s = img.width / q.width
    cx = ((q.attention["x"] + q.patch_l0 / 2) * s).astype(int)
    cy = ((q.attention["y"] + q.patch_l0 / 2) * s).astype(int)
    return a[cy, cx]


def _has_text(img: Image.Image, text: str, font) -> bool:
    """Whether ``text``, drawn black on white in ``font``, appears pixel for pixel in ``img``."""
    probe = Image.new("RGB", (int(font.getlength(text)) + 8, font.size * 2), "white")
    ImageDraw.Draw(probe).text((4, 4), text, fill="black", font=font)
    t = np.asarray(probe.convert("L"), float)
    ys, xs = np.nonzero(t < 255)
    t = t[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    a = np.asarray(img.convert("L"), float)
    if a.shape[0] < t.shape[0] or a.shape[1] < t.shape[1]:
        return False
    ones = np.ones_like(t)
    ssd = (
        fftconvolve(a**2, ones[::-1, ::-1], "valid")
        - 2 * fftconvolve(a, t[::-1, ::-1], "valid")
        + (t**2).sum()
    )
    return bool(ssd.min() < 1.0)


def _legend(img: Image.Image) -> Image.Image:
    return img.crop((0, img.info["legend_top"], img.width, img.height))


def test_colour_bar_labels_give_the_true_range():
    q = _query(np.linspace(0.127, 0.166, 25))
    img = images.heatmap(q)
    assert img.info["colour_range"] == pytest.approx((0.127, 0.166))
    assert img.height > q.thumb.height and img.info["legend_top"] == q.thumb.height
    legend, font = _legend(img), images.label_font(img.width)
    assert _has_text(legend, "0.127", font) and _has_text(legend, "0.166", font)
    assert not _has_text(legend, "0.5", font)  # not a stretched 0..1 bar
    fixed = images.heatmap(q, scale=(0, 0.5))
    assert fixed.info["colour_range"] == (0, 0.5)
    assert _has_text(_legend(fixed), "0.25", font) and _has_text(_legend(fixed), "0.5", font)
    assert "0.127–0.166 (narrow: highest only 1.3× lowest)" in images.heatmap_caption(q)
    assert "narrow" not in images.heatmap_caption(_query(np.linspace(0.01, 0.2, 25)))
    assert "fixed scale 0–0.5" in images.heatmap_caption(q, scale=(0, 0.5))


def test_flat_attention_on_a_fixed_scale_renders_flat():
    scores = np.random.default_rng(0).uniform(0.127, 0.166, 36)
    q = _query(scores)
    stretched = _centres(q, images.heatmap(q))
    flat = _centres(q, images.heatmap(q, scale=(0.0, 1.0)))
    assert (stretched.max(0) - stretched.min(0)).max() > 100  # per-slide: "hot spots"
    assert (flat.max(0) - flat.min(0)).max() <= 12  # a fixed scale: one colour
    assert np.abs(flat - GREY).sum(1).min() > 3  # yet tinted


def test_low_end_is_transparent_and_image_outside_patches_untouched():
    q = _query(np.linspace(0.1, 0.2, 16), thumb=400)
    q.width = q.height = 1000  # patches cover 800 level-0 px: 320 thumbnail px
    img = images.heatmap(q)
    px = _centres(q, img)
    assert (px[0] == GREY).all()  # the lowest score: the tissue shows through
    assert np.abs(px[-1] - GREY).sum() > 100  # the highest: strongly tinted
    a = np.asarray(img)[: q.thumb.height]
    assert (a[:, 325:] == GREY).all() and (a[325:] == GREY).all()  # no patch there


def test_rank_labels_scale_with_the_picture():
    q = _query(np.linspace(0.1, 0.2, 16), patch=400, thumb=768)
    img = np.asarray(images.heatmap(q, n_top=3))
    best = q.attention.nlargest(1, "score").iloc[0]
    s = 768 / q.width
    x0, y0 = int(best.x * s), int(best.y * s)
    corner = img[y0 + 3 : y0 + 120, x0 + 3 : x0 + 120]
    cyan = (corner == images.MARK_COLOUR).all(-1)
    rows = np.nonzero(cyan.sum(1) >= 5)[0]
    assert len(rows) and rows.max() - rows.min() >= 768 / 24  # shown 400 px wide: ≥ 16 px


def test_scale_bar_and_scale_unknown():
    q = _query(np.linspace(0.1, 0.2, 16), patch=5000, thumb=400)  # 20,000 px at 0.5 µm/px
    img = images.scaled_thumbnail(q)
    assert img.info["scale_bar_um"] == 2000  # 25 µm per thumbnail px, a bar near 100 px
    legend = np.asarray(_legend(img).convert("L"))
    runs = [np.diff(np.flatnonzero(np.diff(np.r_[0, row < 60, 0]))) for row in legend]
    longest = max((r[::2].max() for r in runs if len(r)), default=0)
    assert abs(longest - 80) <= 2  # 2000 µm / 25 µm per px
    assert _has_text(_legend(img), "2 mm", images.label_font(400))
    q.mpp = None
    unknown = images.heatmap(q)
    assert unknown.info["scale_bar_um"] is None
    assert _has_text(_legend(unknown), "scale unknown", images.label_font(400))


def test_captions_in_micrometres_or_scale_unknown():
    q = _query([0.1, 0.2, 0.3, 0.4], patch=512)
    assert images.patch_caption(q, 1, 0.4, 768, 512) == (
        "#1 · attention 0.400 · 256 × 256 µm at (384, 256) µm"
    )
    assert "256 × 256 µm of tissue (512 px at 0.5 µm/px)" in images.field_caption(q)
    q.mpp = float("nan")
    assert images.patch_caption(q, 1, 0.4, 768, 512) == (
        "#1 · attention 0.400 · 512 × 512 px at (768, 512) px (scale unknown)"
    )
    assert "scale unknown" in images.field_caption(q)


@pytest.mark.parametrize(
    "um, length, label",
    [(73, 50, "50 µm"), (1234, 1000, "1 mm"), (2600, 2000, "2 mm"), (0.3, 0.2, "0.2 µm")],
)
def test_round_scale_lengths(um, length, label):
    assert images.nice_length(um) == pytest.approx(length)
    assert images.length_label(images.nice_length(um)) == label
    got, px = images.scale_bar(um / 100, 100)
    assert got == pytest.approx(length) and px == pytest.approx(length / (um / 100))


def test_shared_scale_over_slides():
    a, b = _query(np.full(4, 0.25)), _query(np.linspace(0.1, 0.5, 4))
    scale = images.attention_scale([a.attention, None, b.attention])
    assert scale == (0.0, 0.5)
    # the flat slide is one colour on the shared scale
    flat = _centres(a, images.heatmap(a, scale=scale))
    assert (flat == flat[0]).all()
    with pytest.raises(ValueError, match="no attention"):
        images.attention_scale([])


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="hi > lo"):
        images.heatmap(_query([0.1, 0.2, 0.3, 0.4]), scale=(0.5, 0.5))


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_fixed_port_tile_server_and_view_page(slide_factory):
    slide = slide_factory(width=1024, height=768, mpp=0.25)
    # µm/px: the given one, else the file's, else unknown (never guessed)
    assert images.resolve_mpp(0.5, slide.path) == 0.5
    assert images.resolve_mpp(float("nan"), slide.path) == pytest.approx(0.25)
    assert images.resolve_mpp(None, None) is None and images.resolve_mpp("?", None) is None
    port = free_port("127.0.0.1")
    server = TileServer("127.0.0.1", port)
    try:
        assert server.port == port and server.url == f"http://127.0.0.1:{port}"
        token = server.register(slide.path)
        code, mime, body = _get(f"{server.url}/dzi/{token}_files/10/0_0.jpeg")
        assert code == 200 and mime == "image/jpeg" and Image.open(io.BytesIO(body)).size[0] > 1
        panels = [
            ViewSlide(token, "query: a</script>", [], None, 0.5, "similarity 0.981 · LUAD"),
            ViewSlide(token, "slide: b", [], None, None, ""),
        ]
        code, _, page = _get(server.view_url(panels, link=True))
        text = page.decode()
        assert code == 200 and '"link": true' in text and '"mpp": 0.5' in text
        assert '"mpp": null' in text  # unknown scale stays unknown
        assert "query: a&lt;/script&gt;" in text and "similarity 0.981 · LUAD" in text
        assert 'id="link" checked' in text and 'data-state="loading"' in text
        unlinked = _get(server.view_url(panels))[2].decode()
        assert 'id="link">' in unlinked and '"link": false' in unlinked
        for name, want in (("viewer.js", "javascript"), ("viewer.css", "text/css")):
            code, mime, body = _get(f"{server.url}/static/{name}")
            assert code == 200 and want in mime and len(body) > 200
    finally:
        server.close()


def test_ui_help_shows_tile_port_and_remote_use():
    res = CliRunner().invoke(app, ["ui", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    out = re.sub(r"\s+", " ", res.output)
    assert "--tile-port" in out and "Port ." not in out
    assert "Port of the app (default 8501" in out
    assert "ssh -L 8501:127.0.0.1:8501 -L 8502:127.0.0.1:8502" in out


def test_tile_port_checks():
    check_tile_port("127.0.0.1", 8501, 0)  # a free port picked later: nothing to check
    with pytest.raises(ConfigError, match="the app's own --port"):
        check_tile_port("127.0.0.1", 8501, 8501)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--tile-port {busy} is in use"):
            check_tile_port("127.0.0.1", 8501, busy)
