"""``threads-search demo``: the whole path on generated data — a synthetic paired cohort of
painted slides (plus deliberately broken files) → features → train → index → searches, a
molecular-prompting classification and an evaluation against baselines, printed as tables."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from threads_search.cli.errors import add_command

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

SHOW = ["rank", "score", "slide_id", "patient_id", "subtype", "TP53_mutated", "site"]


def _table(df: pd.DataFrame, title: str, cols: list[str], console: Console) -> None:
    from rich.table import Table

    t = Table(title=title)
    cols = [c for c in cols if c in df.columns]
    for c in cols:
        justify = "right" if c in ("rank", "score") else "left"
        t.add_column(c, justify=justify, no_wrap=c == "slide_id")
    for _, r in df[cols].iterrows():
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    console.print(t)


def _features_table(out: Path, console: Console, show: int = 8) -> None:
    """Per-slide summary (tissue, patches, resolution) and the slides that failed."""
    import pandas as pd
    from rich.table import Table

    from threads_search.features import read_features
    from threads_search.features.extract import h5_path

    st = pd.read_parquet(out / "features" / "status.parquet")
    done = st[st.state == "done"]
    t = Table(
        title=f"features: {len(done)} slides, {int(done.n_patches.sum())} patches of 512 px "
        f"@ 0.5 µm/px (first {min(show, len(done))} shown)"
    )
    for c in ("slide", "size (px)", "µm/px (source)", "tissue mm²", "patches", "seconds"):
        t.add_column(c, no_wrap=c == "slide", justify="left" if c == "slide" else "right")
    for _, r in done.head(show).iterrows():
        a = read_features(h5_path(out / "features", r.slide_id)).attrs
        t.add_row(
            r.slide_id,
            f"{a['level0_width']}x{a['level0_height']}",
            f"{a['level0_mpp']:.3g} ({a.get('mpp_source', '?')})",
            f"{a.get('tissue_area_mm2', float('nan')):.2f}",
            str(r.n_patches),
            f"{r.seconds:.1f}",
        )
    console.print(t)
    bad = Table(title="slides that could not be used (deliberately broken files)")
    bad.add_column("slide", no_wrap=True)
    bad.add_column("reason")
    for _, r in st[st.state == "failed"].iterrows():
        bad.add_row(r.slide_id, r.error)
    console.print(bad)


def run_demo(out: Path, n_patients: int = 40, epochs: int = 25, console: Console | None = None):
    """Run every stage into ``out`` (slides/, cohort/, features/, model/, index/)."""
    from rich.console import Console

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from indexer.report import print_summary
    from threads_search.features import default_config, extract_features
    from threads_search.synth import make_cohort, write_broken_slides, write_slides
    from trainer.config import TrainConfig
    from trainer.errors import TrainingError
    from trainer.loop import train

    console = console or Console()
    t0 = time.perf_counter()
    step = lambda i, text: console.print(f"\n[bold]{i}/6[/bold] {text}")  # noqa: E731
    step(1, f"synthetic paired cohort: {n_patients} patients, painted slides + RNA + DNA")
    cohort = make_cohort(n_patients=n_patients, seed=7, modality=(1.0, 0.0, 0.0))
    paths = cohort.write(out / "cohort")
    write_slides(cohort, out / "slides", width=1536, height=1536, workers=2)
    broken = write_broken_slides(out / "slides" / "broken")
    console.print(
        f"wrote {len(cohort.slides)} slides and {len(broken)} broken files to {out / 'slides'}"
    )

    step(2, "features: tissue detection, patch grid, hed-texture encoding")
    cfg = default_config("hed-texture", workers=2)
    extract_features([out / "slides"], out / "features", cfg)
    _features_table(out, console)

    step(3, f"train the THREADS model ({epochs} epochs, small widths for a CPU demo)")
    cfg = TrainConfig(
        features=str(out / "features"),
        pairs=str(paths["pairs"]),
        rna=str(paths["rna"]),
        dna=str(paths["maf"]),
        metadata=str(paths["metadata"]),
        out=str(out / "model"),
        epochs=epochs,
        batch_size=8,
        slide_config={"head_dim": 128, "attn_dim": 64},
        lr=1e-3,
        patience=0,
        min_train_items=4,
    )
    result = train(cfg, progress=False, echo=lambda text: print(text, file=sys.stderr))
    if result.best_epoch < 1:
        raise TrainingError(f"no epoch produced a model; no bundle in {result.out_dir}")
    console.print(
        f"trained {len(result.history)} epochs; best epoch {result.best_epoch} "
        f"({result.best_metric_name} = {result.best_metric:.4f}, {result.selection})"
    )

    step(4, "index slides and molecular profiles (FAISS + Parquet + DuckDB)")
    index_cfg = IndexConfig(
        inputs=[str(out / "features")],
        model=str(out / "model"),
        out=str(out / "index"),
        metadata=str(paths["metadata"]),
        pairs=str(paths["pairs"]),
        rna=str(paths["rna"]),
        dna=str(paths["maf"]),
    )
    print_summary(run_index(index_cfg), console)

    step(5, "search and classify through the Python API")
    import threads_search as ts

    index = ts.open_index(out / "index")
    slides = index.slides
    query = slides.slide_id.iloc[0]
    res = index.search_slides(query, k=5)
    _table(res, f"slides most similar to {query} (subtype {slides.subtype.iloc[0]})", SHOW, console)
    rna = index.molecular[index.molecular.kind == "rna"]
    sample = rna.sample_id.iloc[0]
    res = index.search_by_molecule(rna=sample, k=5)
    patient = rna.patient_id.iloc[0]
    _table(res, f"slides matching the RNA profile {sample} (patient {patient})", SHOW, console)
    reg = index.regions.table
    first = reg[reg.slide_id == query].iloc[0]
    box = (int(first.x), int(first.y), int(first.size_px), int(first.size_px))
    res = index.search_regions((query, box), k=5, per_slide=2, crops=False)
    title = f"regions most like {query} at {box[:2]} ({first.size_um:.0f} µm; at most 2 per slide)"
    _table(res, title, ["rank", "score", "slide_id", "x", "y", "size_um", "subtype"], console)
    test = slides[slides.split == "test"].slide_id.tolist()
    which = f"{len(test)} held-out" if test else f"all {len(slides)}"
    pred = index.classify("subtype", prototypes="molecular", slides=test or None, min_samples=2)
    acc = float((pred.predicted == pred.subtype).mean()) if "subtype" in pred else float("nan")
    title = f"molecular prompting (zero-shot subtype) on {which} slides: accuracy {acc:.2f}"
    _table(pred.head(8), title, ["slide_id", "subtype", "predicted"], console)
    evaluation = _evaluate(out, paths["metadata"], console, step)
    console.print(
        f"\ndone in {time.perf_counter() - t0:.0f} s. Search a region from the command line:\n"
        f"  threads-search search {out / 'index'} --region {query}:{box[0]},{box[1]},{box[2]},"
        f"{box[3]}\nExplore it in the browser:\n"
        f"  threads-search ui {out / 'index'}"
    )
    return {"accuracy": acc, "index": out / "index", "evaluation": evaluation}


EVAL_TASKS = ["subtype=subtype", "os=os_months,os_event:survival", "pairs=rna:molecular"]
EVAL_FAST = {"folds": 3, "n_boot": 100}  # the demo's settings: seconds, wide intervals


def _evaluate(out: Path, labels: Path, console: Console, step) -> dict:
    """Step 6: ``threads-search evaluate`` on the demo index (few folds and resamples)."""
    import threads_search as ts
    from threads_search.evaluation.report import print_report, write_report

    step(6, "evaluate the embedding on the cohort's labels, against baselines on the same folds")
    flags = " ".join(f"--task {t}" for t in EVAL_TASKS)
    console.print(
        f"  threads-search evaluate {out / 'index'} --labels {labels} {flags} "
        f"--folds {EVAL_FAST['folds']} --bootstrap {EVAL_FAST['n_boot']} --out {out / 'report'}",
        highlight=False,
        soft_wrap=True,
    )
    from threads_search.errors import ThreadsSearchError

    try:
        report = ts.evaluate(out / "index", labels, EVAL_TASKS, **EVAL_FAST)
    except ThreadsSearchError as e:  # e.g. a cohort too small for the folds (--patients)
        console.print(f"evaluation skipped: {e}", highlight=False)
        return {}
    print_report(report, console, headline=True)
    write_report(report, out / "report")
    console.print(f"full report: {out / 'report' / 'report.md'}", highlight=False)
    return report


def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Folder for everything the demo writes."
    ),
    patients: int = typer.Option(40, "--patients", min=8, help="Patients in the synthetic cohort."),
    epochs: int = typer.Option(25, "--epochs", min=1, help="Training epochs."),
) -> None:
    """Run the whole path on generated data: a synthetic paired cohort (painted slides, RNA,
    DNA, plus broken files) → features → train → index → slide search, molecule→slide search,
    region search, zero-shot classification and `evaluate` against baselines, printed as tables.
    Takes a few minutes on 2 cores."""
    out.mkdir(parents=True, exist_ok=True)
    run_demo(out, n_patients=patients, epochs=epochs)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the Typer ``app``."""
    add_command(app, demo)
