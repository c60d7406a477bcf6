"""The ``evaluate`` and ``export`` commands on an INDEX_DIR (implementations in
:mod:`threads_search.evaluation`, imported when a command runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.errors import add_command

_INDEX_DIR = typer.Argument(..., help="INDEX_DIR written by `threads-search index`.")

TASK_HELP = (
    "A task, repeatable: NAME=COLUMN[:kind]. Kinds: classification (default for categorical "
    "columns: linear probe), fewshot (k=1,2,4,8,16 per class), retrieval (slide→slide acc@k, "
    "mMV@k, mAP@k), zeroshot (molecular prompting with the indexed molecular samples' labels), "
    "survival (NAME=TIME,EVENT:survival; EVENT 1/true = event, 0/false = censored), molecular "
    "(NAME=rna,dna:molecular: RNA→slide and DNA→slide recall@1/5/10 of the indexed pairs; no "
    "label column). Example: --task subtype=subtype --task os=os_months,os_event:survival"
)


def evaluate(
    index_dir: Path = _INDEX_DIR,
    labels: Path = typer.Option(
        ...,
        "--labels",
        help="CSV/TSV/Parquet keyed by slide_id and/or patient_id (sample_id rows label "
        "molecular samples); a slide takes its own row, else its patient's.",
    ),
    task: list[str] = typer.Option(..., "--task", help=TASK_HELP),
    out: Path = typer.Option(
        ..., "--out", help="Folder for report.json, report.md and the PNG plots."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Patient-level cross-validation folds."),
    split: str | None = typer.Option(
        None, "--split", help="Labels column with train/test values to use instead of folds."
    ),
    n_boot: int = typer.Option(
        1000, "--bootstrap", min=10, help="Bootstrap resamples (patients) for the 95 % CIs."
    ),
    draws: int = typer.Option(10, "--draws", min=1, help="Few-shot draws per k."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, resamples and baselines."),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines", help="Also score mean pooling, untrained THREADS, CCA."
    ),
    batch: list[str] = typer.Option(
        [],
        "--batch",
        help="A batch column (labels or index metadata, e.g. site, scanner; repeatable): how "
        "well each embedding predicts it (patient-grouped linear probe, same value among nearest "
        "neighbours) beside the classification labels, with a warning when the batch is the "
        "more predictable.",
    ),
) -> None:
    """How good is this index's embedding on your labels: every task for THREADS and, on the same
    folds, mean pooling of the same patch features, the untrained THREADS encoder and (molecular
    retrieval) a CCA baseline; the table shows THREADS minus each baseline with its paired
    95 % interval. Writes report.json, report.md and PNG plots (few-shot, Kaplan–Meier,
    confusion matrix) to --out."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from threads_search.evaluation import evaluate as run
    from threads_search.evaluation.report import print_report, write_report

    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        job = bar.add_task("evaluating", total=None)

        def progress(advance: int, total: int, what: str) -> None:
            bar.update(job, advance=advance, total=total, description=what)

        report = run(
            index_dir,
            labels,
            task,
            folds=folds,
            n_boot=n_boot,
            n_draws=draws,
            split=split,
            seed=seed,
            baselines=baselines,
            batch=batch,
            progress=progress,
        )
    print_report(report, Console())
    paths = write_report(report, out)
    err.print(f"wrote {paths['json']}, {paths['md']} and {len(paths) - 2} plot(s) to {out}")


def export(
    index_dir: Path = _INDEX_DIR,
    out: Path = typer.Option(
        ..., "--out", help="Output file: .parquet (one row per item) or .h5 (one group per table)."
    ),
) -> None:
    """Write the slide and molecular embeddings with their ids and metadata to one file, for
    other tools (e.g. Patho-Bench-style pipelines)."""
    from threads_search.evaluation.export import export as run

    res = run(index_dir, out)
    typer.echo(
        f"wrote {res['slides']} slide and {res['molecular']} molecular embeddings "
        f"({res['dim']}-d) to {res['path']}"
    )


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``export`` to the Typer ``app``."""
    add_command(app, evaluate)
    add_command(app, export)
