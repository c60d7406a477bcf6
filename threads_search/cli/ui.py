"""The ``ui`` command: the Streamlit app on an INDEX_DIR (``ui.launch``, imported when the
command runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.errors import add_command


def ui(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
    port: int | None = typer.Option(
        None,
        "--port",
        help="Port of the app (default 8501, or a free one if 8501 is taken).",
        show_default=False,
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; keep loopback unless you mean to share it."
    ),
    tile_port: int = typer.Option(
        0,
        "--tile-port",
        min=0,
        max=65535,
        help="Port of the viewer's slide tiles (default: a free one). Fix it to forward it "
        "through an SSH tunnel or proxy.",
        show_default=False,
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Weights of the index's patch encoder when it is a pretrained one (uni, "
        "conch_v15, ...), to encode uploaded slides and images; hed-texture needs none.",
    ),
) -> None:
    """Open the Streamlit app for pathologists on an index (archive, slide search with attention
    heatmaps, side-by-side viewer, molecular search, molecular prompting, index info).

    Remote use: the viewer loads its tiles from a second port, a free one unless --tile-port is
    given. On a remote machine fix both and forward both: run `threads-search ui INDEX --port
    8501 --tile-port 8502` there and `ssh -L 8501:127.0.0.1:8501 -L 8502:127.0.0.1:8502 HOST`
    on your computer, then open http://127.0.0.1:8501 (the same port numbers on both ends).
    """
    from ui.launch import launch

    code = launch(index_dir, host=host, port=port, tile_port=tile_port, checkpoint=checkpoint)
    raise typer.Exit(code or 0)


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the Typer ``app``."""
    add_command(app, ui)
