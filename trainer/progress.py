"""Training progress on the terminal (rich): one bar per epoch on stderr, removed when the
epoch ends, and one summary line per epoch on stdout. Disabled (``enabled=False``, the CLI's
``--quiet``) it shows nothing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    """Context manager: ``start(description, n_batches)`` a bar, ``advance(**postfix)`` it by
    one batch (``postfix`` shown after it, e.g. the running loss), ``end(summary)`` removes it
    and prints ``summary``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[postfix]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = None

    def __enter__(self) -> EpochProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, description: str, n_batches: int) -> None:
        self._task = self._progress.add_task(description, total=n_batches, postfix="")

    def advance(self, **postfix: str) -> None:
        text = ", ".join(f"{k}={v}" for k, v in postfix.items())
        self._progress.update(self._task, advance=1, postfix=text)

    def end(self, summary: str) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if self.enabled:
            print(summary, flush=True)
