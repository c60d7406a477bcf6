"""Progress and the end-of-run summary of ``threads-search index``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from threads_search.features.progress import FeaturesProgress
from threads_search.paths import display_text


class IndexProgress(FeaturesProgress):
    """The features bars, then one bar for slide embedding."""

    embed = None

    def start_embedding(self, n: int) -> None:
        self.embed = self.bars.add_task("embedding slides", total=n, rate="")

    def embedded(self, slide_id: str) -> None:
        if self.embed is not None:
            self.bars.advance(self.embed, 1)


def _few(ids: list[str], n: int = 10) -> str:
    shown = ", ".join(repr(display_text(i)) for i in ids[:n])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > n else "")


def print_summary(s, console: Console) -> None:
    m = s.manifest
    faiss = (m.get("slides") or {}).get("faiss") or {}
    rate = s.n_patches / s.embed_seconds if s.embed_seconds > 0 else 0.0
    console.print(
        f"indexed {len(s.indexed)}, unchanged {len(s.skipped)}, failed {len(s.failed)}, "
        f"removed {len(s.removed)} — {s.n_patches} patches embedded ({rate:.0f} patches/s), "
        f"wall {s.wall_seconds:.1f} s"
    )
    counts = m.get("counts", {})
    if counts:
        recall = faiss.get("recall_at_k")
        console.print(
            f"index: {counts.get('slides', 0)} slides, {counts.get('molecular', 0)} molecular "
            f"samples; FAISS {faiss.get('type', '-')} "
            + (f"(recall@10 {recall:.3f})" if recall is not None else "")
            + ("" if s.committed else " (nothing changed: previous generation kept)")
        )
    adopted = getattr(s, "adopted", [])
    if adopted:
        console.print(
            f"[yellow]{len(adopted)} feature file(s) had no row in their FEATURES_DIR's "
            f"status.parquet and were adopted (made with the folder's settings)[/yellow]"
        )
    redone = getattr(s, "features_redone", [])
    if redone:
        note = (
            f"{len(redone)} slide file(s) changed since their features were made; features "
            f"made again: {_few(redone)}"
        )
        console.print(Text(note, style="yellow"))
    unknown = getattr(s, "not_in_index", [])
    if unknown:
        note = (
            f"--remove: not in the index: {_few(unknown)} (nothing removed for these ids; "
            "`threads-search info INDEX_DIR` lists the slides)"
        )
        console.print(Text(note, style="red"))
    if s.unmatched_metadata:
        console.print(
            f"[yellow]{s.unmatched_metadata} metadata row(s) matched no slide or sample[/yellow]"
        )
    for note in (m.get("metadata") or {}).get("notes", []):  # renames, conflicts (metadata.py)
        console.print(Text(display_text(note), style="yellow"))
    if s.failed:
        t = Table(title="failed")
        t.add_column("slide", no_wrap=True)
        t.add_column("reason")
        for sid, why in sorted(s.failed.items()):
            t.add_row(Text(display_text(sid)), Text(display_text(why)))
        console.print(t)
