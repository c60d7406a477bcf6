"""Module names moved by the layout clean-up still import for one release, each warning once
with the new name; nothing inside the project uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OLD_NEW = [
    ("threads_search.index", "threads_search.vectorstore"),
    ("threads_search.index.streaming", "threads_search.vectorstore.streaming"),
    ("threads_search.models.patch", "threads_search.patch_encoders"),
    ("threads_search.wsi.segment", "threads_search.wsi.plan"),
]


@pytest.mark.parametrize(("old", "new"), OLD_NEW)
def test_old_module_names_warn_and_are_the_new_modules(old, new):
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\n"
        "except DeprecationWarning as w:\n    print('WARNED', w)\n"
        "warnings.simplefilter('ignore')\n"
        f"print(importlib.import_module({old!r}) is importlib.import_module({new!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    warned, same = out.stdout.strip().splitlines()
    assert warned.startswith("WARNED") and new.rsplit(".", 1)[0] in warned
    assert same == "True"


def test_nothing_in_the_project_imports_the_old_names():
    old = [o for o, _ in OLD_NEW]
    hits = []
    for path in [
        *REPO.glob("threads_search/**/*.py"),
        *REPO.glob("indexer/*.py"),
        *REPO.glob("trainer/*.py"),
        *REPO.glob("ui/**/*.py"),
        *REPO.glob("bench/*.py"),
    ]:
        if (
            path.name in ("segment.py",)
            or "index" in path.parts[-2:-1]
            or "patch" in path.parts[-2:-1]
        ):
            continue  # the alias modules themselves
        text = path.read_text()
        hits += [
            f"{path.relative_to(REPO)}: {o}"
            for o in old
            if f"import {o}" in text or f"from {o} " in text
        ]
    assert not hits, hits
