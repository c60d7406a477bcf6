"""Progress display for the features stage: one bar for the archive, one for the slide."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class FeaturesProgress:
    """Context manager; failed slides are printed as they happen."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bars = Progress(*columns, console=self.console, transient=True)
        self.archive = None
        self.slide = None

    def __enter__(self) -> FeaturesProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def start_archive(self, n: int) -> None:
        self.archive = self.bars.add_task("slides", total=n, rate="")

    def start_slide(self, slide_id: str, n_patches: int) -> None:
        if self.slide is not None:
            self.bars.remove_task(self.slide)
        self.slide = self.bars.add_task(f"  {slide_id[:30]}", total=n_patches, rate="patches")

    def advance(self, n: int) -> None:
        if self.slide is not None:
            self.bars.advance(self.slide, n)

    def slide_done(self, slide_id: str, state: str, error: str = "") -> None:
        if state == "failed":
            self.console.print(f"[red]failed[/red] {slide_id}: {error}")
        if self.archive is not None:
            self.bars.advance(self.archive, 1)
