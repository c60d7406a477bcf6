"""The side-by-side viewer in a real headless Chromium (Playwright against the app started by
``ui.launch.start``, fixtures in tests/ui_browser_fixtures.py): opened from a slide search at
1280×720 (pickers on screen, panels labelled query / match with the similarity, linked), the
scale bar and magnification readout following the zoom, the "beyond scan resolution" cue, the
link making the other panel follow in µm (and not once unticked); opened from the Archive (both
panels labelled "slide"); an app started with a fixed tile port serving its tiles there; and a
slide without µm/px shown as "scale unknown" (no scale bar, no physical link)."""

from __future__ import annotations

import re
import urllib.request

import pytest
from ui_browser_fixtures import TIMEOUT_MS
from ui_browser_fixtures import section as _section
from ui_browser_fixtures import shot as _shot
from ui_fixtures import ui_index  # noqa: F401

import threads_search as ts

LENGTH = re.compile(r"^(\d+(?:\.\d+)?) (µm|mm)$")
PANEL_STATE = """() => [0, 1].map(i => ({
  field: window.fieldUm(i),
  label: document.querySelector('#scale' + i + ' .slabel').textContent,
  um: Number(document.querySelector('#scale' + i).dataset.um),
  bar: document.querySelector('#scale' + i + ' .sbar').getBoundingClientRect().width,
  readout: document.getElementById('readout' + i).textContent,
  cue: document.getElementById('cue' + i).hidden ? null : document.getElementById('cue' + i).textContent,
  zoom: window.viewers[i].viewport.viewportToImageZoom(window.viewers[i].viewport.getZoom(true)),
  mpp: window.VIEW_SPEC.panels[i].mpp,
}))"""


def _viewer(page, state):
    """Wait for the viewer page with both panels ready; (frame locator, frame)."""
    page.get_by_role("heading", name="Side-by-side viewer").wait_for()
    el = page.locator('iframe[src*="/view/"]')
    el.wait_for()
    state["tile_urls"].add(el.get_attribute("src"))
    frame = page.frame_locator('iframe[src*="/view/"]')
    for i in (0, 1):
        status = frame.locator(f"#status{i}")
        frame.locator(f'#status{i}[data-state="ready"]').wait_for()
        assert status.inner_text() == "ready"
        assert int(status.get_attribute("data-tiles")) > 0
    return frame, next(f for f in page.frames if "/view/" in f.url)


def _settle(page, viewer, ms: int = 400) -> list[dict]:
    """The panels' state once their animations have ended (two reads 300 ms apart agree)."""
    page.wait_for_timeout(ms)
    last = viewer.evaluate(PANEL_STATE)
    for _ in range(40):
        page.wait_for_timeout(300)
        now = viewer.evaluate(PANEL_STATE)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the panels never came to rest: {last}")


def _wheel(page, frame, panel: int, clicks: int) -> None:
    """Turn the mouse wheel over a panel: ``clicks`` > 0 zooms in (one step per click)."""
    frame.locator(f"#osd{panel}").hover()
    for _ in range(abs(clicks)):
        page.mouse.wheel(0, -100 if clicks > 0 else 100)
        page.wait_for_timeout(60)


def _centre(field: dict) -> tuple[float, float]:
    return field["x"] + field["w"] / 2, field["y"] + field["h"] / 2


def _length_um(label: str) -> float:
    m = LENGTH.match(label)
    assert m, label
    return float(m.group(1)) * (1000 if m.group(2) == "mm" else 1)


def _check_scale(p: dict) -> None:
    """The scale bar's label, length and the readout agree with the panel's zoom and µm/px."""
    um_per_screen_px = p["mpp"] / p["zoom"]
    assert _length_um(p["label"]) == pytest.approx(p["um"])
    assert p["bar"] == pytest.approx(p["um"] / um_per_screen_px, abs=1.5)
    assert 40 <= p["bar"] <= 101, p  # a round length about 100 px long
    mag = 10 / um_per_screen_px
    m = re.fullmatch(r"≈([\d.]+)× · ([\d.]+) µm per screen pixel", p["readout"])
    assert m, p["readout"]
    assert float(m.group(1)) == pytest.approx(mag, rel=0.05), p
    assert float(m.group(2)) == pytest.approx(um_per_screen_px, rel=0.01), p


def test_viewer_from_a_search_scale_link_and_cue(page, server, ui_index, shots):  # noqa: F811
    _, state = server
    index = ts.open_index(ui_index.index_dir)
    query = index.slides["slide_id"].iat[0]  # the default query slide
    want = index.search_slides(query, k=10)
    page.set_viewport_size({"width": 1280, "height": 720})
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Top match:").wait_for()
    page.get_by_role("button", name="Open side by side").click()  # far down the page
    frame, viewer = _viewer(page, state)
    for name in ("Left panel", "Right panel"):  # the pickers are on screen at 1280×720
        box = page.get_by_text(name, exact=True).bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 720, (name, box)
    titles = frame.locator(".title")
    assert titles.nth(0).inner_text() == f"query: {query}"
    assert titles.nth(1).inner_text() == f"match: {want['slide_id'].iat[0]}"
    assert (
        frame.locator(".details")
        .nth(1)
        .inner_text()
        .startswith(f"similarity {want['score'].iat[0]:.3f}")
    )
    assert frame.locator(".mark").count() >= 2  # top-attention patches boxed
    assert frame.locator("#link").is_checked()  # opened from a search: linked
    _shot(page, shots, "viewer_1280x720.png")

    # scale bar and readout at two zoom levels; linked panels share the physical field
    before = _settle(page, viewer)
    for p in before:
        _check_scale(p)
        assert p["cue"] is None  # the whole slide: below scan resolution
    assert before[1]["field"]["w"] == pytest.approx(before[0]["field"]["w"], rel=0.02)
    _wheel(page, frame, 0, 6)
    zoomed = _settle(page, viewer, 1200)
    assert zoomed[0]["field"]["w"] < 0.7 * before[0]["field"]["w"], (before, zoomed)
    assert zoomed[0]["label"] != before[0]["label"]  # the scale bar follows the zoom
    for p in zoomed:
        _check_scale(p)
    assert zoomed[1]["field"]["w"] == pytest.approx(zoomed[0]["field"]["w"], rel=0.02)
    # drag the left panel: the right one moves by the same µm
    box = frame.locator("#osd0").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 80, cy - 60, steps=8)
    page.mouse.up()
    moved = _settle(page, viewer, 1200)
    d = [
        [a - b for a, b in zip(_centre(m["field"]), _centre(z["field"]), strict=True)]
        for m, z in zip(moved, zoomed, strict=True)
    ]
    assert abs(d[0][0]) > 20 and abs(d[0][1]) > 10, d  # the left panel moved (µm)
    assert d[1] == pytest.approx(d[0], abs=0.02 * zoomed[0]["field"]["w"]), d
    # the right panel leads too
    _wheel(page, frame, 1, 3)
    led = _settle(page, viewer, 1200)
    assert led[1]["field"]["w"] < 0.8 * moved[1]["field"]["w"]
    assert led[0]["field"]["w"] == pytest.approx(led[1]["field"]["w"], rel=0.02)

    # past the scan's resolution: a cue
    viewer.evaluate(
        "() => { const v = window.viewers[0]; v.viewport.zoomTo(v.viewport.getMaxZoom(), null, true); }"
    )
    deep = _settle(page, viewer)
    assert deep[0]["zoom"] > 1.01 and "beyond scan resolution" in deep[0]["cue"], deep[0]
    frame.locator("#cue0").wait_for()
    _shot(page, shots, "viewer_beyond_resolution.png")

    # unlinked: the right panel stays where it is
    frame.locator("#link").uncheck()
    _wheel(page, frame, 0, -4)
    apart = _settle(page, viewer, 1200)
    assert apart[0]["field"]["w"] > 1.5 * deep[0]["field"]["w"]
    assert apart[1]["field"] == pytest.approx(deep[1]["field"], rel=1e-3)


def test_viewer_from_the_archive_labels_panels_as_slides(page, server, ui_index):  # noqa: F811
    _, state = server
    index = ts.open_index(ui_index.index_dir)
    other = index.select(None)["slide_id"].iat[0]  # the Archive's first row
    query = index.slides["slide_id"].iat[2]
    assert other != query
    match = index.search_slides(query, k=10)["slide_id"].iat[0]
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Query slide").click()
    page.get_by_role("option", name=query, exact=True).click()
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Top match:").wait_for()
    page.get_by_role("button", name="Open side by side").click()
    frame, _ = _viewer(page, state)
    assert frame.locator(".title").nth(1).inner_text() == f"match: {match}"
    # then a slide opened from the Archive: no panel is a query or a match
    _section(page, "Archive")
    page.get_by_text(re.compile(r"Select a row")).wait_for()
    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 14, box["y"] + 36 + 20)  # the first row's marker
    page.get_by_role("button", name=f"Open {other} in the viewer").click()
    frame, _ = _viewer(page, state)
    titles = frame.locator(".title")
    assert titles.nth(0).inner_text() == f"slide: {other}"
    right = titles.nth(1).inner_text()
    assert re.fullmatch(r"slide: SYNT-\S+", right), right  # not "match": not other's match
    assert "similarity" not in frame.locator(".details").nth(1).inner_text()
    assert not frame.locator("#link").is_checked()  # not a search: panels move on their own


def test_fixed_tile_port_serves_the_viewer_tiles(browser, ui_index, tmp_path):  # noqa: F811
    from ui.launch import free_port, start

    tile_port = free_port("127.0.0.1")
    with open(tmp_path / "server.log", "w") as log:
        srv = start(ui_index.index_dir, tile_port=tile_port, log=log)
    try:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        tiles = []
        page.on("response", lambda r: tiles.append(r) if "_files/" in r.url else None)
        page.goto(srv.url)
        page.get_by_role("heading", name="Slide search").wait_for()
        _section(page, "Viewer")
        _viewer(page, {"tile_urls": set()})
        src = page.locator('iframe[src*="/view/"]').get_attribute("src")
        assert src.startswith(f"http://127.0.0.1:{tile_port}/view/"), src
        ok = [
            r
            for r in tiles
            if r.status == 200 and r.url.startswith(f"http://127.0.0.1:{tile_port}/")
        ]
        assert ok, [(r.url, r.status) for r in tiles]
        with urllib.request.urlopen(ok[0].url, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
        ctx.close()
    finally:
        srv.stop()


def test_a_slide_without_resolution_says_scale_unknown(browser, ui_index):  # noqa: F811
    from ui.viewer import TileServer, ViewSlide

    paths = sorted(ui_index.slides_dir.glob("*.tiff"))[:2]
    server = TileServer("127.0.0.1", 0)
    try:
        panels = [
            ViewSlide(server.register(paths[0]), "slide: a", [], None, None),
            ViewSlide(server.register(paths[1]), "slide: b", [], None, 0.5),
        ]
        ctx = browser.new_context(viewport={"width": 1200, "height": 700})
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.view_url(panels, link=True))
        for i in (0, 1):
            page.locator(f'#status{i}[data-state="ready"]').wait_for()
        assert page.locator("#scale0 .slabel").inner_text() == "scale unknown"
        assert "scale unknown" in page.locator("#readout0").inner_text()
        assert page.locator("#scale0 .sbar").bounding_box()["width"] == 0
        assert LENGTH.match(page.locator("#scale1 .slabel").inner_text())
        # no µm/px, no physical link: the box is off and says why
        assert page.locator("#link").is_disabled() and not page.locator("#link").is_checked()
        assert "needs the µm/px" in page.locator("#linkhint").inner_text()
        ctx.close()
    finally:
        server.close()
