"""Results always match the form, and searches that would return nonsense are refused, in a real
headless Chromium (Playwright) against the app serving the fixture index (fixtures in
tests/ui_browser_fixtures.py): the slide-search round trip through another section, a failed
search replacing results, a mutation list with no gene of the model's DNA panel, an
out-of-range k and an empty CSV upload. The stages of embedding an upload are too quick on the
fixture slides to watch in a browser; tests/test_ui_results.py checks them on a real file."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from ui_browser_fixtures import section, shot
from ui_fixtures import ui_index  # noqa: F401

import threads_search as ts

MAIN = '[data-testid="stMain"]'


def _alerts(page):
    return page.locator(f'{MAIN} [data-testid="stAlert"]')


def _results(page):
    """The result captions ("#rank slide_id") of the gallery shown."""
    return page.get_by_text(re.compile(r"^#\d+ SYNT-"))


def _choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    assert page.get_by_role("combobox", name=label).input_value() == option


def _search(page) -> None:
    """Press the form's Search button (not a result table's search tool)."""
    page.get_by_test_id("stBaseButton-primary").filter(has_text="Search").click()


def _number(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")


def test_slide_search_round_trip_keeps_form_and_results_and_an_error_replaces_them(
    page,
    ui_index,  # noqa: F811
    shots,
):
    index = ts.open_index(ui_index.index_dir)
    query = index.slides["slide_id"].iat[4]  # not the default slide
    want = index.search_slides(query, k=5)
    _choose(page, "Query slide", query)
    _number(page, "Results (k)", "5")
    _search(page)
    page.get_by_text("Top match:").wait_for()
    assert want["slide_id"].iat[0] in page.get_by_text("Top match:").inner_text()
    expect(_results(page)).to_have_count(5)
    section(page, "Index info")
    page.get_by_role("heading", name="Index info").wait_for()
    section(page, "Slide search")
    page.get_by_text("Top match:").wait_for()
    expect(page.get_by_role("combobox", name="Query slide")).to_have_value(query)
    expect(page.get_by_label("Results (k)", exact=True)).to_have_value("5")
    assert want["slide_id"].iat[0] in page.get_by_text("Top match:").inner_text()
    expect(_results(page)).to_have_count(5)
    shot(page, shots, "round_trip_results.png")
    # a failing search (an invalid SQL filter): its error replaces the results
    page.locator('[data-testid="stSidebar"]').get_by_text("Filters", exact=True).click()
    sql = page.get_by_label("SQL filter (advanced)", exact=True)
    sql.fill("1=1; DROP TABLE slides")
    sql.press("Enter")
    page.get_by_text(re.compile("Filter not applied")).first.wait_for()
    _search(page)
    page.get_by_text(re.compile("fix the filter first")).wait_for()
    page.wait_for_timeout(500)
    expect(page.get_by_text("Top match:")).to_have_count(0)
    expect(_results(page)).to_have_count(0)


def test_mutation_list_without_a_panel_gene_is_refused(page, ui_index, shots):  # noqa: F811
    panel = ts.open_index(ui_index.index_dir).model.genes_dna
    section(page, "Molecular search")
    page.get_by_role("heading", name="Molecular search").wait_for()
    page.get_by_text("Mutations (MAF upload or gene list)").click()
    genes = page.get_by_label("…or mutated genes (comma / space / line separated)")
    genes.fill("NOTAGENE1, NOTAGENE2")
    genes.press("Control+Enter")
    page.get_by_role("button", name="Find matching slides").click()
    err = page.get_by_text(re.compile(rf"{len(panel)}-gene DNA panel"))
    err.wait_for()
    assert "NOTAGENE1" in err.inner_text() and panel[0] in err.inner_text()
    expect(page.get_by_text("Top match:")).to_have_count(0)
    expect(_results(page)).to_have_count(0)
    shot(page, shots, "mutations_refused.png")


def test_out_of_range_k_is_set_to_the_maximum_visibly(page, shots):
    _number(page, "Results (k)", "500")
    page.get_by_text(re.compile(r"Results \(k\): 500 is outside 1–200 .*set to 200")).wait_for()
    assert page.get_by_label("Results (k)", exact=True).input_value() == "200"
    _search(page)
    page.get_by_text("Top match:").wait_for()
    assert re.search(r"· \d+ results", page.get_by_text("Top match:").inner_text())
    shot(page, shots, "k_clamped.png")


def test_an_empty_csv_gives_exactly_one_error(page, tmp_path, shots):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    section(page, "Molecular search")
    page.get_by_role("heading", name="Molecular search").wait_for()
    page.locator('input[type="file"]').first.set_input_files(str(empty))
    page.get_by_text(re.compile(r"empty\.csv: the file is empty")).wait_for()
    page.get_by_role("button", name="Find matching slides").click()
    page.wait_for_timeout(1500)  # the rerun after the click has landed
    page.get_by_text(re.compile(r"empty\.csv: the file is empty")).wait_for()
    assert _alerts(page).count() == 1, _alerts(page).all_inner_texts()
    shot(page, shots, "empty_csv.png")


def test_a_new_session_starts_from_the_defaults_while_another_is_open(browser, server, ui_index):  # noqa: F811
    """Form values live in each browser session: a second session shows k = 10 and the
    same-patient box ticked (the values the server uses), and a click elsewhere does not turn
    its results into "the form changed"."""
    srv, _ = server
    index = ts.open_index(ui_index.index_dir)
    want = index.search_slides(index.slides["slide_id"].iat[0], k=10, exclude_same_patient=True)
    first = browser.new_context(viewport={"width": 1400, "height": 1100})
    a = first.new_page()
    a.goto(srv.url)
    a.get_by_role("heading", name="Slide search").wait_for()
    section(a, "Archive")
    a.get_by_role("heading", name="Archive").wait_for()
    second = browser.new_context(viewport={"width": 1400, "height": 1100})
    try:
        b = second.new_page()
        b.goto(srv.url)
        b.get_by_role("heading", name="Slide search").wait_for()
        assert b.get_by_label("Results (k)", exact=True).input_value() == "10"
        assert b.get_by_role("checkbox", name="Exclude same patient").is_checked()
        _search(b)
        b.get_by_text("Top match:").wait_for()
        b.get_by_text(re.compile(rf"^#{len(want)} SYNT-")).wait_for()  # the gallery is complete
        expect(_results(b)).to_have_count(len(want))
        b.get_by_text("Attention heatmap").click()  # any rerun
        b.wait_for_timeout(1500)
        assert b.get_by_text("The form changed").count() == 0
        assert b.get_by_label("Results (k)", exact=True).input_value() == "10"
        expect(_results(b)).to_have_count(len(want))
    finally:
        second.close()
        first.close()
