"""The one place the CLI turns an error into an exit code.

Every command is added to its Typer app through :func:`add_command`, which runs it under
:func:`handle_errors`: a :class:`~threads_search.errors.ThreadsSearchError` (a user error: bad
file, setting, query, a locked folder...) is printed as ``error: <message>`` on stderr, in CLI
words (:func:`cli_message`), with exit code 2. Any other exception is a bug: it propagates and
Python (Typer) prints its traceback, exit code 1. Exit code 1 without a traceback is a command's
"some items failed" (e.g. a slide that could not be read).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import typer

from threads_search.errors import ThreadsSearchError

# Library messages name Python arguments; a CLI user sees the flag that does the same thing
# (or no advice where the CLI has no such flag).
_CLI_WORDS = [
    (r"\bunits='(tpm|counts|log)'", r"--rna-units \1"),
    (r"\bpair_by='(sample|patient)'", r"--pair-by \1"),
    (r"\bexclude_same_patient=True\b", "--no-same-patient"),
    (r"\bexclude_same_patient=False\b", "--same-patient"),
    (r"\bmin_samples\b", "--min-samples"),
    (r"\bprototypes must be", "--prototypes must be"),
    (r"\bkind must be 'rna', 'dna' or None", "--kind must be rna or dna"),
    (r"\bk must be >= 1", "-k must be >= 1"),
    (r" or pass id_column=", ""),
    (r"; pass model= to open_index", "; re-run `threads-search index` to record one"),
]


def cli_message(message: str) -> str:
    """``message`` (a library error) in CLI words: ``units='log'`` → ``--rna-units log``,
    ``min_samples`` → ``--min-samples``, ``exclude_same_patient=False`` → ``--same-patient``;
    advice naming an argument the CLI does not have is dropped."""
    for pattern, repl in _CLI_WORDS:
        message = re.sub(pattern, repl, message)
    return message


def print_error(error: ThreadsSearchError) -> None:
    """``error: <message>`` on stderr, not wrapped by the console width (one line unless the
    message itself holds a report)."""
    from rich.console import Console
    from rich.markup import escape

    text = escape(cli_message(str(error)))
    Console(stderr=True).print(f"[red]error:[/red] {text}", highlight=False, soft_wrap=True)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` (a Typer command function, signature kept) whose ThreadsSearchError is
    printed by :func:`print_error` and ends the command with exit code 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ThreadsSearchError as e:
            print_error(e)
            raise typer.Exit(2) from None

    return run


def add_command(app: typer.Typer, command: Callable[..., Any], **settings: Any) -> None:
    """Add ``command`` to ``app`` (named after the function, ``settings`` as for
    ``app.command``) under :func:`handle_errors`."""
    app.command(command.__name__, **settings)(handle_errors(command))
