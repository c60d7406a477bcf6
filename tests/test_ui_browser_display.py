"""What the UI shows, in a real headless Chromium (fixtures of tests/ui_browser_fixtures.py on the
index of tests/ui_fixtures.py): an invalid SQL filter leaves the facet chips applied (the count
is the facets' alone, from the public API) and its error on the page; a filter matching nothing
says so in the Archive and the gallery; captions carry the diagnosis-like columns, not the
split; the Archive pages say "Page 1 of N"; paths and pixel sizes sit under "Technical
details"; pictures can be enlarged."""

from __future__ import annotations

import math
import re
import time

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from ui_browser_fixtures import section, shot
from ui_fixtures import ui_index  # noqa: F401

import threads_search as ts
from ui.sections.archive import PAGE_SIZE

SIDEBAR = '[data-testid="stSidebar"]'
MAIN = '[data-testid="stMain"]'
TECHNICAL = ("Slide file", "Resolution", "Width", "Height", "Patches", "Tissue area")


def _expand(page, name: str) -> None:
    page.locator(SIDEBAR).get_by_text(name, exact=True).click()


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar multiselect labelled ``label`` (typed, then Enter; tried
    again when a rerun closes the list meanwhile)."""
    box = page.locator(SIDEBAR).get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("option", name=option, exact=True)
    for _ in range(5):
        _settled(page)
        box.click()
        box.fill(option)
        try:
            item.wait_for(timeout=5000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    box.press("Enter")
    page.keyboard.press("Escape")


def _type(page, label: str, text: str) -> None:
    field = page.locator(SIDEBAR).get_by_label(label, exact=True)
    field.fill(text)
    field.press("Enter")


def _until(check, what: str, seconds: float = 30) -> None:
    """Poll ``check()`` until true (the page redraws after each rerun)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _settled(page) -> None:
    """Wait for the script run to end (no running status)."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_timeout(500)


def _headers(table) -> list[str]:
    return [t.strip() for t in table.locator('[role="columnheader"]').all_inner_texts()]


def test_invalid_sql_keeps_the_facets_and_shows_its_error(page, ui_index, shots):  # noqa: F811
    index = ts.open_index(ui_index.index_dir)
    total = len(index.slides)
    subtype = sorted(index.slides["subtype"].unique())[-1]
    n = len(index.select(f"subtype = '{subtype}'"))  # the facet alone, through the public API
    assert 0 < n < total
    section(page, "Archive")
    page.get_by_role("heading", name="Archive").wait_for()
    _expand(page, "Filters")
    _choose(page, "Subtype", subtype)
    page.locator(MAIN).get_by_text(f"{n} of {total} slides").wait_for()
    _type(page, "SQL filter (advanced)", "subtype = = 'broken'")
    main_error = page.locator(MAIN).locator('[data-testid="stAlert"]')
    main_error.get_by_text("SQL filter not applied").wait_for()
    assert "Parser Error" in main_error.inner_text() or "syntax" in main_error.inner_text()
    side_error = page.locator(SIDEBAR).locator('[data-testid="stAlert"]')
    assert "Filter not applied (SQL)" in side_error.inner_text()
    assert f"{n} of {total} slides" in side_error.inner_text()
    # the count and the table are those of the facet alone, not of every slide
    page.locator(MAIN).get_by_text(f"{n} of {total} slides").wait_for()
    page.locator(MAIN).get_by_text(f"Page 1 of 1 ({n} slides)").wait_for()
    assert page.locator(MAIN).get_by_text(f"{total} of {total} slides").count() == 0
    table = page.locator(MAIN).locator('[data-testid="stDataFrame"]').first
    rows = table.locator('[role="row"]').filter(has=page.locator('[role="gridcell"]'))
    _until(lambda: rows.count() == n, f"{n} rows in the table")
    assert all(subtype in r for r in rows.all_inner_texts())
    shot(page, shots, "display_invalid_sql.png")


def test_facets_matching_nothing_say_so(page, ui_index, shots):  # noqa: F811
    slides = ts.open_index(ui_index.index_dir).slides
    one = slides.iloc[0]
    other = sorted(set(slides["subtype"]) - {one["subtype"]})[0]  # a chip excluding that slide
    section(page, "Archive")
    page.get_by_role("heading", name="Archive").wait_for()
    _expand(page, "Filters")
    _choose(page, "Subtype", other)
    _expand(page, "More filters")
    _choose(page, "Slide", one["slide_id"])
    page.locator(MAIN).get_by_text("No slides match these filters.").wait_for()
    assert page.locator(MAIN).locator('[data-testid="stDataFrame"]').count() == 0
    section(page, "Slide search")
    page.get_by_role("heading", name="Slide search").wait_for()
    page.get_by_role("button", name="Search", exact=True).click()
    page.locator(MAIN).get_by_text("No slides match these filters.").wait_for()
    assert page.get_by_text("Top match:").count() == 0
    shot(page, shots, "display_no_match.png")


def test_captions_show_case_context_and_pictures_enlarge(page, ui_index, shots):  # noqa: F811
    index = ts.open_index(ui_index.index_dir)
    want = index.search_slides(index.slides["slide_id"].iat[0], k=10)  # the patient left out
    k = page.get_by_label("Results (k)")  # the form set explicitly: k and the patient rule
    k.fill("10")
    k.press("Enter")
    exclude = page.get_by_role("checkbox", name="Exclude same patient")
    if not exclude.is_checked():
        page.get_by_text("Exclude same patient").click()
    _settled(page)
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_text("Top match:").wait_for()
    captions = page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=re.compile(r"#\d+ SYNT-")
    )
    page.get_by_text(re.compile(rf"#{len(want)} SYNT-")).wait_for()
    texts = captions.all_inner_texts()
    assert len(texts) == len(want)
    for text, (_, r) in zip(texts, want.iterrows(), strict=True):
        assert r["slide_id"] in text
        assert f"Subtype: {r['subtype']}" in text and f"Site: {r['site']}" in text
        assert "Split" not in text and "split" not in text
    # larger pictures: fewer per row, each wider on the page
    page.locator('[data-testid="stDownloadButton"]').first.wait_for()  # the gallery's end
    _settled(page)
    first = page.locator(MAIN).locator('[data-testid="stImage"] img').last
    small = first.bounding_box()["width"]
    page.locator(MAIN).get_by_text("Large", exact=True).click()
    page.wait_for_timeout(1500)
    page.get_by_text(re.compile(rf"#{len(want)} SYNT-")).wait_for()
    large = page.locator(MAIN).locator('[data-testid="stImage"] img').last.bounding_box()
    assert large["width"] > 1.8 * small, (small, large)
    shot(page, shots, "display_gallery_large.png")


def test_archive_pages_and_technical_details(page, ui_index, shots):  # noqa: F811
    index = ts.open_index(ui_index.index_dir)
    total = len(index.slides)
    page.set_viewport_size({"width": 3000, "height": 1100})  # every column drawn
    section(page, "Archive")
    page.get_by_role("heading", name="Archive").wait_for()
    n_pages = math.ceil(total / PAGE_SIZE)
    page.locator(MAIN).get_by_text(f"Page 1 of {n_pages} ({total} slides)").wait_for()
    tables = page.locator(MAIN).locator('[data-testid="stDataFrame"]')
    tables.first.locator('[role="columnheader"]').first.wait_for(state="attached")
    _settled(page)
    main = _headers(tables.first)
    assert "Subtype" in main and "Site" in main and "Slide" in main
    assert main.index("Site") < main.index("Split")  # bookkeeping after case context
    assert not set(TECHNICAL) & set(main), main
    page.locator(MAIN).get_by_text("Technical details").click()
    tables.nth(1).locator('[role="columnheader"]').first.wait_for(state="attached")
    tech = _headers(tables.nth(1))
    assert set(TECHNICAL) <= set(tech), tech
    assert "Subtype" not in tech
    shot(page, shots, "display_archive.png")
    # a column chosen in the sidebar moves to the main table, and stays chosen across sections
    _expand(page, "Display")
    _choose(page, "Columns shown", "Resolution")
    _until(lambda: "Resolution" not in _headers(tables.nth(1)), "Resolution out of the details")
    _settled(page)
    for name in ("Index info", "Archive"):
        section(page, name)
        page.get_by_role("heading", name=name).wait_for()
    page.locator(MAIN).get_by_text(f"Page 1 of {n_pages}").wait_for()
    _settled(page)
    _until(lambda: "Resolution" in _headers(tables.first), "Resolution in the main table")
    assert "Resolution" not in _headers(tables.nth(1))
