"""``INDEX_DIR/ui_display.json``: an index's display defaults for the UI (which metadata columns
are shown, in which order, under which labels), read and checked; ``ui.display`` applies them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ui.display import CONFIG_NAME, KEY, DisplayConfig


def load_config(index_dir, columns: Iterable[str] | None = None) -> DisplayConfig:
    """``INDEX_DIR/ui_display.json`` checked: a JSON object with ``columns`` (a list of column
    names) and/or ``labels`` (an object column → text). What is malformed, or names a column
    not in ``columns`` (when given), is ignored and named in ``warning``; no file: defaults."""
    path = Path(index_dir) / CONFIG_NAME
    if not path.is_file():
        return DisplayConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return DisplayConfig(warning=f"{path} is ignored: it is not readable JSON ({e}).")
    if not isinstance(data, dict):
        return DisplayConfig(
            warning=f'{path} is ignored: expected a JSON object with "columns" and/or '
            f'"labels", found a {type(data).__name__}.'
        )
    problems = []
    extra = sorted(set(data) - {"columns", "labels"})
    if extra:
        problems.append(f"unknown keys {', '.join(map(repr, extra))} (allowed: columns, labels)")
    known = None if columns is None else {str(c) for c in columns}
    cols = _config_columns(data.get("columns"), known, problems)
    labels = _config_labels(data.get("labels"), known, problems)
    warning = f"{path}: {'; '.join(problems)}; ignored." if problems else None
    return DisplayConfig(cols, labels, warning)


def _config_columns(value, known: set | None, problems: list) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append(f'"columns" must be a list of column names, not a {type(value).__name__}')
        return None
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        problems.append(f'"columns" entries that are not column names: {bad[:5]}')
    names = [v for v in value if isinstance(v, str) and v]
    unknown = [v for v in names if known is not None and v not in known]
    if unknown:
        problems.append(f'"columns" names unknown columns: {", ".join(unknown[:10])}')
    return tuple(dict.fromkeys(v for v in names if v not in unknown))


def _config_labels(value, known: set | None, problems: list) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f'"labels" must be an object column → label, not a {type(value).__name__}')
        return {}
    bad = [k for k, v in value.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        problems.append(f'"labels" without a text label: {", ".join(bad[:10])}')
    unknown = [k for k in value if known is not None and k not in known and k not in KEY]
    if unknown:
        problems.append(f'"labels" for unknown columns: {", ".join(unknown[:10])}')
    return {k: v.strip() for k, v in value.items() if k not in bad and k not in unknown}
