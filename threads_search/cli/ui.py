"""The ``ui`` command: the Streamlit app on an INDEX_DIR (``ui.launch``, imported when the
command runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.errors import add_command


def ui(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
    port: int | None = typer.Option(
        None, "--port", help="Port [default: 8501, or a free one if taken]."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; keep loopback unless you mean to share it."
    ),
) -> None:
    """Open the Streamlit app for pathologists on an index (archive, slide search with attention
    heatmaps, side-by-side viewer, molecular search, molecular prompting, index info)."""
    from ui.launch import launch

    raise typer.Exit(launch(index_dir, host=host, port=port) or 0)


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the Typer ``app``."""
    add_command(app, ui)
