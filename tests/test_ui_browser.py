"""The UI in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium): the app
is started with ``ui.launch.start`` on a free 127.0.0.1 port against the fixture index
(tests/ui_fixtures.py); a slide search (heatmap shown), the side-by-side viewer (a Deep Zoom
tile loads), a molecular search (the paired slide first), a classification and a corrupt
upload (a readable error, the app goes on) run through the page. Screenshots go to the test's
output folder (and to docs/ when ``UI_DOCS_SCREENSHOTS=1``). A missing browser fails loudly.
Afterwards no server process, port or upload folder is left."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from ui_browser_fixtures import section as _section
from ui_browser_fixtures import shot as _shot
from ui_fixtures import ui_index  # noqa: F401

import threads_search as ts


def test_slide_search_heatmap_and_side_by_side_viewer(page, server, ui_index, shots):  # noqa: F811
    srv, state = server
    index = ts.open_index(ui_index.index_dir)
    query = index.slides["slide_id"].iat[0]  # the default query slide
    want = index.search_slides(query, k=10)
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Top match:").wait_for()
    top = page.get_by_text("Top match:").inner_text()
    assert want["slide_id"].iat[0] in top and f"{want['score'].iat[0]:.3f}" in top
    page.get_by_text("Attention heatmap").wait_for()
    page.get_by_text(re.compile(r"Attention per patch")).wait_for()
    page.locator('[data-testid="stDownloadButton"]').get_by_text("Download CSV").wait_for()
    assert page.get_by_text(re.compile(r"#\d+ SYNT-")).count() == len(want)
    page.set_viewport_size({"width": 1400, "height": 1500})
    page.wait_for_timeout(1000)  # images settle
    _shot(page, shots, "screenshot_slide_search.png", docs=True)
    page.set_viewport_size({"width": 1400, "height": 1000})

    tiles = []
    page.on("response", lambda r: tiles.append(r) if "_files/" in r.url else None)
    page.get_by_role("button", name="Open side by side").click()
    page.get_by_role("heading", name="Side-by-side viewer").wait_for()
    frame_el = page.locator('iframe[src*="/view/"]')
    frame_el.wait_for()
    src = frame_el.get_attribute("src")
    assert src.startswith("http://127.0.0.1:")  # the tile server is bound to loopback
    state["tile_urls"].add(src)
    frame = page.frame_locator('iframe[src*="/view/"]')
    for i in (0, 1):
        frame.locator(f'#status{i}[data-state="ready"]').wait_for()
        assert int(frame.locator(f"#status{i}").get_attribute("data-tiles")) > 0
    assert query in frame.locator(".title").first.inner_text()
    assert want["slide_id"].iat[0] in frame.locator(".title").nth(1).inner_text()
    assert frame.locator(".mark").count() >= 2  # top-attention patches boxed
    ok = [r for r in tiles if r.status == 200 and r.headers.get("content-type") == "image/jpeg"]
    assert ok, [(r.url, r.status) for r in tiles]
    page.wait_for_timeout(500)
    _shot(page, shots, "screenshot_viewer.png", docs=True)
    # zoom the query panel all the way in: full-resolution (last Deep Zoom level) tiles load
    viewer = next(f for f in page.frames if "/view/" in f.url)
    top = viewer.evaluate("() => window.viewers[0].world.getItemAt(0).source.maxLevel")
    with page.expect_response(lambda r: f"_files/{top}/" in r.url and r.status == 200):
        viewer.evaluate(
            "() => { const v = window.viewers[0];"
            " v.viewport.zoomTo(v.viewport.getMaxZoom(), null, true); }"
        )


def test_molecular_search_puts_the_paired_slide_first(page, ui_index, shots, tmp_path):  # noqa: F811
    probe = ui_index.probe
    csv = tmp_path / "profile.csv"
    ui_index.rna_profile(probe).to_csv(csv, index=False)
    _section(page, "Molecular search")
    page.get_by_role("heading", name="Molecular search").wait_for()
    page.locator('input[type="file"]').first.set_input_files(str(csv))
    page.get_by_text("profile.csv").wait_for()
    page.get_by_role("button", name="Find matching slides").click()
    page.get_by_text("Top match:").wait_for()
    assert f"{probe}-DX1" in page.get_by_text("Top match:").inner_text()
    _shot(page, shots, "molecular_search.png")


def test_classification_through_the_page(page, ui_index, shots):  # noqa: F811
    index = ts.open_index(ui_index.index_dir)
    want = index.classify("subtype")
    agree = (want["predicted"] == want["subtype"]).mean()
    _section(page, "Molecular prompting")
    page.get_by_role("heading", name="Molecular prompting").wait_for()
    page.get_by_role("button", name="Classify").click()
    summary = page.get_by_text(re.compile(r"Classified \d+ slides by subtype"))
    summary.wait_for()
    assert f"into 2 classes; agreement with the slides' own subtype: {agree:.0%}" in (
        summary.inner_text()
    )
    table = page.locator('[data-testid="stTable"]').first.inner_text()
    for cls, n in want.attrs["class_sizes"].items():
        assert cls in table and str(n) in table
    _shot(page, shots, "classification.png")


def test_corrupt_upload_shows_a_readable_error_and_the_app_goes_on(page, shots, tmp_path):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + b"\x13garbage" * 500)
    page.get_by_text("Upload a slide file").click()
    page.locator('input[type="file"]').first.set_input_files(str(bad))
    page.get_by_text("corrupt.svs").first.wait_for()
    page.get_by_role("button", name="Search", exact=True).click()
    err = page.get_by_text(re.compile(r"corrupt\.svs cannot be read as a slide"))
    err.wait_for()
    assert "Slide search failed" in page.locator('[data-testid="stAlert"]').first.inner_text()
    assert page.get_by_text("Traceback").count() == 0
    _shot(page, shots, "corrupt_upload.png")
    deadline = time.monotonic() + 5
    while any(Path(tempfile.gettempdir()).glob("threads-search-ui-*/*corrupt*")):
        assert time.monotonic() < deadline, "the corrupt upload was not deleted"
        time.sleep(0.2)
    page.get_by_text("A slide of the archive").click()
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Top match:").wait_for()


def test_region_search_gallery_and_viewer_at_the_same_scale(page, server, ui_index, shots):  # noqa: F811
    from ui.sections.region_search import default_box

    _, state = server
    index = ts.open_index(ui_index.index_dir)
    query = index.slides["slide_id"].iat[0]  # the default query slide
    box = default_box(index, query)
    want = index.search_regions((query, box), k=20, per_slide=3, crops=False)
    _section(page, "Region search")
    page.get_by_role("heading", name="Region search").wait_for()
    page.get_by_text(re.compile(r"Query region \(cyan box\): \d+ × \d+ µm")).wait_for()
    page.get_by_role("button", name="Search regions").click()
    page.get_by_text(re.compile(r"Most similar regions to")).wait_for()
    first = page.get_by_text(re.compile(r"#1 SYNT-")).first.inner_text()
    assert want["slide_id"].iat[0] in first
    page.get_by_text(re.compile(rf"#{len(want)} SYNT-")).wait_for()  # the gallery is complete
    assert page.get_by_text(re.compile(r"similarity \d\.\d{3}")).count() == len(want)
    assert page.get_by_text(re.compile(r"field \d+ µm at")).count() == len(want)
    page.set_viewport_size({"width": 1400, "height": 2000})
    page.wait_for_timeout(1500)  # crops settle
    _shot(page, shots, "region_search.png", docs=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    # a bad photo replaces the results with a readable error
    page.get_by_text("Upload a photo of a field").click()
    page.get_by_role("button", name="Search regions").click()
    page.get_by_text("choose a photo to upload first").wait_for()
    expect(page.get_by_text(re.compile(r"Most similar regions to"))).to_have_count(0)
    page.get_by_text("A region of an archive slide").click()
    page.get_by_role("button", name="Search regions").click()
    page.get_by_text(re.compile(r"Most similar regions to")).wait_for()
    page.get_by_role("button", name="Open side by side").click()
    page.get_by_role("heading", name="Side-by-side viewer").wait_for()
    page.get_by_text(re.compile(r"Both panels open on a field \d+ µm wide")).wait_for()
    src = page.locator('iframe[src*="/view/"]').get_attribute("src")
    state["tile_urls"].add(src)
    frame = page.frame_locator('iframe[src*="/view/"]')
    for i in (0, 1):
        frame.locator(f'#status{i}[data-state="ready"]').wait_for()
        assert int(frame.locator(f"#status{i}").get_attribute("data-tiles")) > 0
    assert "query: " + query in frame.locator(".title").first.inner_text()
    assert "hit: " + want["slide_id"].iat[0] in frame.locator(".title").nth(1).inner_text()
    viewer = next(f for f in page.frames if "/view/" in f.url)
    # both panels show the same physical field: equal widths in level-0 px at equal µm/px
    rects = viewer.evaluate(
        "() => window.viewers.map(v => { const r = v.viewport.viewportToImageRectangle("
        "v.viewport.getBounds(true)); return [r.x + r.width / 2, r.y + r.height / 2, r.width]; })"
    )
    field_px = 3 * max(box[2], box[3])  # FIELD_FACTOR x the query box, both slides 0.5 µm/px
    assert rects[0][2] == pytest.approx(rects[1][2], rel=0.05), rects
    assert min(rects[0][2], rects[1][2]) >= 0.95 * field_px
    top = want.iloc[0]
    centres = [(box[0] + box[2] / 2, box[1] + box[3] / 2)]
    centres.append((top["x"] + top["size_px"] / 2, top["y"] + top["size_px"] / 2))
    for (cx, cy, _), (ex, ey) in zip(rects, centres, strict=True):  # centred on the boxes
        assert abs(cx - ex) < 0.05 * field_px and abs(cy - ey) < 0.05 * field_px, (rects, centres)
    _shot(page, shots, "region_viewer.png")
