"""No way of starting the UI lets the page ask for Streamlit's usage metrics.

Streamlit's page fetches its metrics configuration (``https://data.streamlit.io/metrics.json``)
and then posts events when the server says ``browser.gatherUsageStats`` is on, which is
Streamlit's default. The shipped config files (``ui/.streamlit/config.toml`` next to the entry
script, read from any working directory; ``.streamlit/config.toml`` at the repository root, for
``streamlit run ui/app.py`` from there) turn it off. Each documented start is run for real
(``threads-search ui``'s ``ui.launch.start``; ``streamlit run ui/app.py -- INDEX_DIR`` from the
repository root; the same with an absolute path from another folder) with a private ``HOME``
(no user config can hide a fault) and no ``STREAMLIT_*`` variables, on 127.0.0.1, and headless
Chromium records every request the page makes; requests leaving loopback are aborted. A control
start with usage stats forced on shows that the metrics request is seen when it happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from ui.launch import wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "ui" / "app.py"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
METRICS_HOST = "data.streamlit.io"


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    from threads_search.vectorstore.writer import write_generation

    n = 6
    ids = [f"S{i}" for i in range(n)]
    slides = pd.DataFrame({"slide_id": ids, "path": "/x", "patient_id": ids, "site": ["A"] * n})
    out = tmp_path_factory.mktemp("ui_usage") / "idx"
    write_generation(out, slides, np.random.default_rng(0).normal(size=(n, 8)).astype("float32"))
    return out


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env["HOME"] = str(home)
    return env


def _serve(cmd: list[str], cwd: Path, env: dict, url: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        out = {"stdout": f, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, **out)
    try:
        if wait_until_healthy(proc, url, 90):
            return proc
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {log.read_text()[-2000:]}") from None
    proc.kill()
    raise RuntimeError(f"streamlit did not answer on {url}: {log.read_text()[-2000:]}")


def _page_requests(browser, url: str) -> list[str]:
    """Every URL the page requested while loading the app (outside loopback: aborted)."""
    seen: list[str] = []
    ctx = browser.new_context()
    page = ctx.new_page()

    def route(r):
        seen.append(r.request.url)
        if urlsplit(r.request.url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.locator('[data-testid="stSidebar"]').get_by_text("threads-search").first.wait_for(
        timeout=90_000
    )
    page.wait_for_timeout(3000)  # the metrics manager starts with the session (control below)
    ctx.close()
    return seen


def _start(how: str, index: Path, tmp: Path, port: int):
    """``(process, url)`` of the app started as ``how``."""
    url = f"http://127.0.0.1:{port}"
    env = _clean_env(tmp / "home")
    (tmp / "home").mkdir()
    loopback = f"--server.address 127.0.0.1 --server.port {port} --server.headless true".split()
    run = [sys.executable, "-m", "streamlit", "run"]
    if how == "threads-search ui":
        from ui.launch import command

        cmd = command(index, "127.0.0.1", port, 64)
        return _serve(cmd, tmp, env, url, tmp / "log.txt"), url
    if how == "streamlit run ui/app.py (repo root)":
        cmd = [*run, "ui/app.py", *loopback, "--", str(index)]
        return _serve(cmd, REPO, env, url, tmp / "log.txt"), url
    if how == "streamlit run /abs/ui/app.py (other folder)":
        cmd = [*run, str(APP), *loopback, "--", str(index)]
        return _serve(cmd, tmp, env, url, tmp / "log.txt"), url
    if how == "control: usage stats forced on":
        cmd = [*run, str(APP), *loopback, "--browser.gatherUsageStats", "true", "--", str(index)]
        return _serve(cmd, tmp, env, url, tmp / "log.txt"), url
    raise ValueError(how)


HOW = [
    "threads-search ui",
    "streamlit run ui/app.py (repo root)",
    "streamlit run /abs/ui/app.py (other folder)",
]


@pytest.mark.parametrize("how", HOW + ["control: usage stats forced on"])
def test_page_never_requests_usage_metrics(how, small_index, browser, tmp_path):
    from ui.launch import free_port

    proc, url = _start(how, small_index, tmp_path, free_port("127.0.0.1"))
    try:
        urls = _page_requests(browser, url)
    finally:
        proc.terminate()
        proc.wait(15)
    outside = sorted({u for u in urls if urlsplit(u).hostname not in ("127.0.0.1", "localhost")})
    assert any(urlsplit(u).hostname == "127.0.0.1" for u in urls)  # the page did load
    if how.startswith("control"):
        assert any(urlsplit(u).hostname == METRICS_HOST for u in outside), outside
    else:
        assert outside == [], f"{how}: the page requested {outside}"


def test_config_files_turn_usage_stats_off():
    """Both shipped files (checked by content: the runs above cannot tell which one acted when
    both apply) set ``browser.gatherUsageStats = false``, and the wheel ships the one by
    ``ui/app.py``."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (tomli before)

    for path in (REPO / "ui" / ".streamlit" / "config.toml", REPO / ".streamlit" / "config.toml"):
        config = tomllib.loads(path.read_text())
        assert config["browser"]["gatherUsageStats"] is False, path
        assert config["server"]["address"] == "127.0.0.1", path  # loopback unless asked
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert ".streamlit/config.toml" in data["package-data"]["ui"]
