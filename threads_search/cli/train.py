"""The ``train`` command. It lives beside the trainer (``trainer.cli.train``, its options as
Typer options) so that ``trainer.cli.main(argv)`` runs the same command; here it is added to
the app like every other command."""

from __future__ import annotations

import typer

from threads_search.cli.errors import add_command
from trainer.cli import EPILOG, train


def register(app: typer.Typer) -> None:
    """Add ``train`` (with its notes on outputs, matching and model selection) to ``app``."""
    add_command(app, train, epilog=EPILOG)
