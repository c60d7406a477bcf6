"""threads-search: whole-slide image retrieval on a slide-molecule embedding space.

Typical path: `features` (patch features per slide) → `train` (THREADS model) → `index` →
`search` / `classify` / `ui`. `demo` runs it all on generated data.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode="markdown"
)


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Folder for everything the demo writes."
    ),
    patients: int = typer.Option(40, "--patients", min=8, help="Patients in the synthetic cohort."),
    epochs: int = typer.Option(25, "--epochs", min=1, help="Training epochs."),
) -> None:
    """Run the whole path on generated data: a synthetic paired cohort (painted slides, RNA,
    DNA, plus broken files) → features → train → index → slide search, molecule→slide search and
    zero-shot classification, printed as tables. Takes a few minutes on 2 cores."""
    from threads_search.cli.demo import run_demo

    out.mkdir(parents=True, exist_ok=True)
    run_demo(out, n_patients=patients, epochs=epochs)


@app.command()
def features(
    slides: list[Path] = typer.Argument(
        None, help="Slide files and/or folders (searched recursively)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="FEATURES_DIR to write (h5/, thumbnails/, contours/, status.parquet)."
    ),
    patch_encoder: str = typer.Option(
        "hed-texture",
        "--patch-encoder",
        help="Registered encoder name (see `threads-search encoders`).",
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="Local weights file for pretrained encoders (nothing is downloaded).",
    ),
    target_mpp: float = typer.Option(
        None, "--target-mpp", help="Patch resolution in µm/px [default: the encoder's, 0.5 = 20x]."
    ),
    patch_size: int = typer.Option(
        None, "--patch-size", help="Patch side in px at --target-mpp [default: the encoder's, 512]."
    ),
    mpp_csv: Path = typer.Option(
        None, "--mpp-csv", help="CSV 'slide,mpp' overriding the files' resolution."
    ),
    mpp: float = typer.Option(
        None, "--mpp", help="One µm/px for every slide (overrides the files)."
    ),
    min_tissue: float = typer.Option(
        0.25, "--min-tissue", help="Keep patches with at least this tissue fraction."
    ),
    max_upsample: float = typer.Option(
        None,
        "--max-upsample",
        help="Refuse slides whose µm/px is coarser than --target-mpp by more than this factor "
        "(their patches would be blown up) [default: 2].",
    ),
    ink_removal: bool = typer.Option(
        None,
        "--ink-removal/--no-ink-removal",
        help="Remove green/cyan/blue marker ink on glass; ink on tissue stays tissue [default: on].",
    ),
    ink_red_excess: float = typer.Option(
        None,
        "--ink-red-excess",
        help="Stain-separation red excess above which a pixel is ink (dense haematoxylin is about "
        "0.08, blue pen 0.2, green dye 0.4) [default: 0.15].",
    ),
    min_saturation: float = typer.Option(
        None, "--min-saturation", help="Floor of the tissue saturation threshold [default: 0.05]."
    ),
    max_saturation: float = typer.Option(
        None,
        "--max-saturation",
        help="Ceiling of the tissue saturation threshold (keeps pale tissue) [default: 0.15].",
    ),
    min_od: float = typer.Option(
        None,
        "--min-od",
        help="Optical density (sum of R, G, B over the glass) tissue needs; pink haze on glass "
        "stays below [default: 0.12].",
    ),
    min_tissue_area: float = typer.Option(
        None,
        "--min-tissue-area-mm2",
        help="Drop tissue pieces smaller than this (unless next to a larger one) [default: 0.02].",
    ),
    max_hole_area: float = typer.Option(
        None, "--max-hole-area-mm2", help="Fill holes in tissue up to this area [default: 0.5]."
    ),
    workers: int = typer.Option(
        2, "--workers", min=0, help="Reader processes (0 = read in this process)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 features on disk."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Redo slides that failed before."
    ),
    import_h5: Path = typer.Option(
        None,
        "--import-h5",
        help="Adopt TRIDENT/CLAM h5 files from this folder instead of reading slides.",
    ),
    level0_mpp: float = typer.Option(
        None, "--level0-mpp", help="With --import-h5: µm/px of the scans when the files lack it."
    ),
) -> None:
    """Segment tissue, cut patches and encode them: one TRIDENT/CLAM-compatible h5 per slide.

    Re-running skips slides already done with the same settings; a slide that cannot be read is
    recorded as failed in status.parquet with its reason and the others complete. Exit code 1
    when any slide failed.

    Example: threads-search features slides/ --out feats/ --workers 2
    """
    from rich.console import Console

    from threads_search.features import FeaturesConfigError, default_config
    from threads_search.features.progress import FeaturesProgress
    from threads_search.features.report import print_outcomes

    console = Console(stderr=True)
    if dtype not in ("float32", "float16"):
        raise typer.BadParameter("use float32 or float16", param_hint="--dtype")
    try:
        cfg = default_config(
            patch_encoder, patch_size, target_mpp, checkpoint=str(checkpoint) if checkpoint else None,
            dtype=dtype, batch_size=batch_size, workers=workers, device=device,
        )  # fmt: skip
    except KeyError as e:
        raise typer.BadParameter(str(e.args[0]), param_hint="--patch-encoder") from None
    from threads_search.wsi.mpp import check_override
    from threads_search.wsi.plan import apply_options

    try:
        cfg.segment = apply_options(
            cfg.segment,
            min_tissue=min_tissue,
            max_upsample=max_upsample,
            exclude_ink=ink_removal,
            ink_red_excess=ink_red_excess,
            min_od=min_od,
            min_saturation=min_saturation,
            max_saturation=max_saturation,
            min_area_mm2=min_tissue_area,
            max_hole_area_mm2=max_hole_area,
        )
        if mpp is not None:
            check_override(mpp, "--mpp")
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        if import_h5 is not None:
            from threads_search.features.importer import ImportParams
            from threads_search.features.importer import import_h5 as run_import

            outcomes = run_import(import_h5, out, cfg, ImportParams(level0_mpp))
        else:
            if not slides:
                raise typer.BadParameter("give slide files or folders (or --import-h5 DIR)")
            from threads_search.features import extract_features

            with FeaturesProgress(console) as progress:
                outcomes = extract_features(slides, out, cfg, mpp_csv=mpp_csv, mpp=mpp,
                                            retry_failed=retry_failed, progress=progress)  # fmt: skip
    except (FeaturesConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    failed = print_outcomes(outcomes, console, imported=import_h5 is not None)
    raise typer.Exit(1 if failed else 0)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train the THREADS slide-molecule model (InfoNCE) from a FEATURES_DIR and RNA/DNA profiles.

    Run `threads-search train --help` for every option.
    """
    from trainer.cli import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


@app.command()
def index(
    inputs: list[Path] = typer.Argument(..., help="Slide files/folders and/or FEATURES_DIRs."),
    model: Path = typer.Option(..., "--model", help="MODEL_DIR from `threads-search train`."),
    out: Path = typer.Option(..., "--out", help="INDEX_DIR to create or update."),
    features_dir: Path = typer.Option(
        None, "--features-dir", help="Where slide features go [default: INDEX_DIR/features]."
    ),
    metadata: Path = typer.Option(
        None,
        "--metadata",
        help="CSV/Parquet with slide_id / sample_id / patient_id + columns to filter on.",
    ),
    pairs: Path = typer.Option(
        None,
        "--pairs",
        help="slide_id, sample_id[, patient_id]: links slides and samples to patients.",
    ),
    pair_by: str = typer.Option("sample", "--pair-by", help="sample | patient (TCGA barcodes)."),
    rna: Path = typer.Option(None, "--rna", help="RNA matrix to embed and index."),
    rna_units: str = typer.Option(
        None, "--rna-units", help="tpm | counts | log [default: the model's; others: an error]."
    ),
    dna: Path = typer.Option(
        None, "--dna", help="MAF or binary mutation matrix to embed and index."
    ),
    mpp_csv: Path = typer.Option(
        None, "--mpp-csv", help="CSV 'slide,mpp' overriding the files' resolution."
    ),
    remove: list[str] = typer.Option(
        None, "--remove", help="Slide ids to remove (repeat the flag)."
    ),
    prune: bool = typer.Option(False, "--prune", help="Remove slides whose file has vanished."),
    index_type: str = typer.Option("auto", "--index-type", help="auto | flat | hnsw | ivf | ivfpq"),
    memory_budget_gb: float = typer.Option(
        None, "--memory-budget-gb", help="RAM for the vector index; beyond it IVF-PQ is chosen."
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Patch-encoder weights for pretrained encoders."
    ),
    workers: int = typer.Option(
        2, "--workers", min=0, help="Reader processes for the features stage."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    engine: str = typer.Option(
        "local", "--engine", help="local | ray (slides distributed on a Ray cluster)."
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Ray head HOST:PORT [default: a local Ray on this machine]."
    ),
    gpus_per_worker: float = typer.Option(
        None, "--gpus-per-worker", min=0, help="GPUs per encoder actor [default: 1 if any]."
    ),
    cpus_per_reader: float = typer.Option(
        1.0, "--cpus-per-reader", min=0.01, help="CPUs per patch-reading task (Ray)."
    ),
) -> None:
    """Embed slides (running the features stage for slide files) and molecular profiles, and
    write FAISS indexes + Parquet tables + a DuckDB catalog into INDEX_DIR.

    Incremental: re-running embeds only new or changed slides; an interrupted run leaves the
    previous index intact and is finished by running the same command again.

    Example: threads-search index slides/ --model model/ --out idx/ --metadata clinical.csv
    """
    from rich.console import Console
    from rich.markup import escape

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from indexer.profiles import rna_units_for
    from indexer.report import IndexProgress, print_summary
    from threads_search.cli.query import cli_message
    from threads_search.models.bundle import bundle_rna_units
    from threads_search.vectorstore.store import IndexLockedError

    console = Console(stderr=True)
    s = lambda p: str(p) if p else None  # noqa: E731
    cfg = IndexConfig(
        inputs=[str(p) for p in inputs], model=str(model), out=str(out), features_dir=s(features_dir),
        metadata=s(metadata), pairs=s(pairs), pair_by=pair_by, rna=s(rna), rna_units=rna_units,
        dna=s(dna), mpp_csv=s(mpp_csv), remove=list(remove or []), prune=prune,
        index_type=index_type, memory_budget_gb=memory_budget_gb, workers=workers,
        batch_size=batch_size, device=device, checkpoint=s(checkpoint), engine=engine,
        ray_address=ray_address, gpus_per_worker=gpus_per_worker, cpus_per_reader=cpus_per_reader,
    )  # fmt: skip
    try:
        if rna and (units := bundle_rna_units(model)):  # a conflicting --rna-units: fail at once
            rna_units_for(units, rna_units)
        with IndexProgress(console) as progress:
            summary = run_index(cfg, progress=progress)
    except (IndexLockedError, FileNotFoundError, ValueError, KeyError) as e:
        console.print(f"[red]error:[/red] {escape(cli_message(str(e)))}")
        raise typer.Exit(2) from None
    print_summary(summary, console)
    raise typer.Exit(1 if summary.failed or summary.not_in_index else 0)  # a --remove typo: 1


@app.command()
def encoders() -> None:
    """List the registered encoders (patch, slide, molecular) and what they expect."""
    from rich.console import Console
    from rich.table import Table

    from threads_search.patch_encoders import get_patch_encoder_spec, list_patch_encoders

    table = Table(title="patch encoders")
    for col in ("name", "dim", "patch px @ µm/px", "input px", "weights", "licence"):
        table.add_column(col)
    for name in list_patch_encoders():
        s = get_patch_encoder_spec(name)
        weights = ", ".join(s.checkpoint_files) if s.needs_checkpoint else "built in"
        table.add_row(name, str(s.dim), f"{s.patch_size} @ {s.target_mpp}", str(s.input_size),
                      weights, s.licence)  # fmt: skip
    Console().print(table)


@app.command()
def ui(
    index_dir: Path = typer.Argument(..., help="INDEX_DIR written by `threads-search index`."),
    port: int = typer.Option(None, "--port", help="Port [default: 8501, or a free one if taken]."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; keep loopback unless you mean to share it."
    ),
) -> None:
    """Open the Streamlit app for pathologists on an index (archive, slide search with attention
    heatmaps, side-by-side viewer, molecular search, molecular prompting, index info)."""
    from ui.launch import launch

    raise typer.Exit(launch(index_dir, host=host, port=port) or 0)


def _register_query_commands() -> None:
    from threads_search.cli.query import register

    register(app)


_register_query_commands()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from threads_search._version import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    app()
