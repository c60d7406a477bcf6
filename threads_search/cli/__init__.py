"""threads-search: whole-slide image retrieval on a slide-molecule embedding space.

Typical path: `features` (patch features per slide) → `train` (THREADS model) → `index` →
`search` / `classify` / `ui`; `evaluate` scores the embedding on your labels against
baselines, `export` writes the embeddings for other tools. `demo` runs it all on generated data.
"""

# One module per command family, each with ``register(app)`` adding its commands through
# ``threads_search.cli.errors.add_command`` (the one error handler: a ThreadsSearchError is one
# line and exit code 2, anything else a traceback and exit code 1). Command modules import
# their heavy dependencies inside the commands, so `--help` and `--version` stay fast.

from __future__ import annotations

import typer

from threads_search.cli import demo, evaluate, features, index, query, train, ui

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    rich_markup_mode="markdown",  # keeps "[default: ...]" in help texts visible
)

for _family in (demo, features, train, index, query, evaluate, ui):
    _family.register(app)


def _print_version(value: bool) -> None:
    if value:
        from threads_search._version import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """threads-search's options before the command."""


def main() -> None:
    """The ``threads-search`` console script."""
    app()
