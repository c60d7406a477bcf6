"""Fixtures and helpers for the UI tests that drive the app with Streamlit's ``AppTest`` (no
browser) against the fixture index of tests/ui_fixtures.py: ``index`` (the opened index, module
scope), ``app`` (the app after its first run, no exception), and ``ok``, ``goto``, ``errors``,
``infos``. Loaded for every test file by tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from ui_fixtures import ui_index  # noqa: F401  (session fixture)

import threads_search as ts
from ui.settings import ENV_INDEX

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"


@pytest.fixture(scope="module")
def index(ui_index):  # noqa: F811
    return ts.open_index(ui_index.index_dir)


@pytest.fixture
def app(ui_index, monkeypatch):  # noqa: F811
    monkeypatch.setenv(ENV_INDEX, str(ui_index.index_dir))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    ok(at)
    return at


def ok(at) -> None:
    """No uncaught exception (a traceback) reached the page."""
    assert not at.exception, [e.value for e in at.exception]


def goto(at, section: str) -> None:
    at.sidebar.radio(key="section").set_value(section).run()
    ok(at)


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def infos(at) -> list[str]:
    return [i.value for i in at.info]
