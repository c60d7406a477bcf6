"""The ``index`` command: slides / FEATURES_DIRs and molecular profiles → an INDEX_DIR (FAISS
indexes, Parquet tables, DuckDB catalog) through ``indexer.build.run_index``. The indexer is
imported when the command runs."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.errors import add_command


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
    regions: bool = typer.Option(
        True,
        "--regions/--no-regions",
        help="Also build the region index: every indexed patch, searchable by a region or a "
        "photo of a field (`search --image`, `--region`). Costs about 2 bytes per feature "
        "dimension per patch on disk (plus its FAISS index); --no-regions skips it.",
    ),
    region_features: str = typer.Option(
        "auto",
        "--region-features",
        metavar="auto|tissue|raw",
        help="What region search compares. tissue: the encoder's tissue dimensions (hed-texture "
        "leaves out its colour statistics, which follow the stain, not the tissue), each "
        "standardised over the indexed patches; raw: the patch features as they are; auto: "
        "tissue from 50 indexed slides, raw below (too few to standardise over).",
    ),
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

    from indexer.build import run_index
    from indexer.config import IndexConfig
    from indexer.profiles import rna_units_for
    from indexer.report import IndexProgress, print_summary
    from threads_search.models.bundle import bundle_rna_units

    def s(p: Path | None) -> str | None:
        return str(p) if p else None

    cfg = IndexConfig(
        inputs=[str(p) for p in inputs],
        model=str(model),
        out=str(out),
        features_dir=s(features_dir),
        metadata=s(metadata),
        pairs=s(pairs),
        pair_by=pair_by,
        rna=s(rna),
        rna_units=rna_units,
        dna=s(dna),
        mpp_csv=s(mpp_csv),
        remove=list(remove or []),
        prune=prune,
        index_type=index_type,
        regions=regions,
        region_features=region_features,
        memory_budget_gb=memory_budget_gb,
        workers=workers,
        batch_size=batch_size,
        device=device,
        checkpoint=s(checkpoint),
        engine=engine,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
        cpus_per_reader=cpus_per_reader,
    )
    if rna and (units := bundle_rna_units(model)):  # a conflicting --rna-units: fail at once
        rna_units_for(units, rna_units)
    console = Console(stderr=True)
    with IndexProgress(console) as progress:
        summary = run_index(cfg, progress=progress)
    print_summary(summary, console)
    raise typer.Exit(1 if summary.failed or summary.not_in_index else 0)  # a --remove typo: 1


def register(app: typer.Typer) -> None:
    """Add ``index`` to the Typer ``app``."""
    add_command(app, index)
