"""Browser fixtures for the UI tests (real headless Chromium driven by Playwright against the
app started by ``ui.launch.start`` on a free 127.0.0.1 port, serving the fixture index of
tests/ui_fixtures.py): ``server`` (module scope; on teardown no server process, port or upload
folder may be left), ``browser``, ``page`` (a fresh 1400×1100 context on the Slide search page),
``shots`` (a screenshot folder) and the helpers ``section`` (switch the sidebar section) and
``shot`` (a screenshot; also into docs/ when ``UI_DOCS_SCREENSHOTS=1``)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from ui_fixtures import ui_index  # noqa: F401  (session fixture shared with the logic tests)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT_MS = 90_000


def _closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((parts.hostname, parts.port)) != 0


def _upload_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("threads-search-ui-*"))


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui_screenshots")


@pytest.fixture(scope="module")
def server(ui_index, tmp_path_factory):  # noqa: F811
    from ui.launch import start

    before = _upload_dirs()
    log = tmp_path_factory.mktemp("ui_server") / "server.log"
    with open(log, "w") as f:
        srv = start(ui_index.index_dir, host="127.0.0.1", port=None, log=f)
    assert srv.url.startswith("http://127.0.0.1:")
    state = {"tile_urls": set()}
    yield srv, state
    srv.stop()
    assert srv.process.poll() is not None, "the UI server is still running"
    for url in {srv.url} | state["tile_urls"]:
        assert _closed(url), f"{url} still answers after the UI stopped"
    assert _upload_dirs() <= before, "upload folders left behind"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    srv, _ = server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(srv.url)
    pg.get_by_role("heading", name="Slide search").wait_for()
    yield pg
    ctx.close()


def section(page, name: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()


def shot(page, shots: Path, name: str, docs: bool = False) -> Path:
    out = shots / name
    page.screenshot(path=str(out))
    assert out.stat().st_size > 10_000
    if docs and os.environ.get("UI_DOCS_SCREENSHOTS") == "1":  # refresh the README pictures
        DOCS.mkdir(exist_ok=True)
        img = Image.open(out).convert("RGB").quantize(256, Image.Quantize.MEDIANCUT)
        img.save(DOCS / name, optimize=True)
    return out
