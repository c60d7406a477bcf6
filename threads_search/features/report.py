"""End-of-run summary of a features run."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from threads_search.paths import display_text


def print_outcomes(outcomes, console: Console, imported: bool = False) -> int:
    """Print counts and the failed slides with reasons; return the number failed. ``imported``:
    the outcomes are of ``--import-h5`` (patches were copied from h5 files, not encoded)."""
    counts = Counter(o.state for o in outcomes)
    patches = sum(o.n_patches for o in outcomes if o.state == "done")
    seconds = sum(o.seconds for o in outcomes if o.state == "done")
    rate = f", {patches / seconds:.1f} patches/s" if seconds > 0 else ""
    if imported:
        work = f"{patches} patches imported{rate} (copied from h5 files, nothing encoded)"
    else:
        work = f"{patches} patches encoded{rate}"
    console.print(
        f"done {counts['done']}, skipped {counts['skipped']} (already done), "
        f"failed {counts['failed']} — {work}"
    )
    redone = [o for o in outcomes if getattr(o, "note", "")]
    for o in redone:  # e.g. a slide file replaced since its features were made
        console.print(Text(f"{display_text(o.slide_id)}: {o.note} (now {o.state})", style="yellow"))
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        table = Table(title="failed slides")
        table.add_column("slide")
        table.add_column("reason")
        for o in failed:
            table.add_row(o.slide_id, o.error)
        console.print(table)
    return len(failed)
