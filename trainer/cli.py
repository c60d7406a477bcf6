"""``threads-search train``: THREADS contrastive pretraining from a FEATURES_DIR + profiles.

:func:`train` is the Typer command (``threads_search.cli`` registers it with :data:`EPILOG`);
:func:`main` runs it on an argv list and returns the exit code — 0 trained, 2 refused (bad
option, unusable inputs, no model produced: a :class:`~threads_search.errors.ThreadsSearchError`
printed as ``error: <message>`` on stderr) — so a tiny synthetic run is a test. Any other
exception is a bug and propagates with its traceback.

Before training, a matching report goes to stderr: pairs matched, pairs naming a slide without
features or a sample without a profile, features and profiles named in no pair, items per
split, and with ``--balance-by``/``--augment-by`` the items per value of that column. Training is refused below ``--min-train-items`` matched training items (default 8).
Imports only typer and the config at module level: ``threads-search --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import sys

import typer

from threads_search.errors import ThreadsSearchError
from trainer.config import (
    DEFAULT_VAL_FRACTION,
    MIN_TRAIN_ITEMS,
    BagBy,
    PairBy,
    RnaUnits,
    SelectMetric,
    TrainConfig,
)

_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # scalar defaults
IO, MODEL, TRAINING = "Inputs and output", "Model", "Training"

EPILOG = f"""**Examples**

`threads-search train --features feats/ --pairs pairs.csv --rna rna.parquet --dna muts.maf --out model/ --epochs 20`

`threads-search train ... --out model/ --resume` continues an interrupted run exactly.

**Outputs** (MODEL_DIR): config.json, model.safetensors (best epoch), genes_rna.txt,
genes_dna.txt, rna_normalization.json, last/ (last epoch), training_log.jsonl,
training_curves.png, checkpoints/state.pt (for --resume). config.json's "training" holds the
settings, the best epoch's metrics, how it was selected and the matching report ("data").

**Matching**: pairs are matched to slides with finished features and to samples with a profile;
the report (stderr, and config.json) counts what did not match, with examples and hints on ids
that differ. Fewer than --min-train-items matched training items (default {MIN_TRAIN_ITEMS}),
or fewer than 2 training items of a modality given (--rna/--dna), is refused (exit 2): InfoNCE
contrasts the items of a batch. An epoch that makes no optimiser step ends the run with exit 2
and saves nothing.

**Model selection**: the best epoch has the highest --select-metric on the validation split (a
split column in --metadata, else --val-fraction of the patients, default
{DEFAULT_VAL_FRACTION:.2f}; 0 = none). Without validation it is the epoch of lowest training
loss, reported as train_loss.

**Site/stain shortcut**: `--balance-by site` (one site per batch, validation recall within each
site) and `--augment-by site` (bags re-styled to another site's feature statistics) keep the
model from retrieving by stain; both need --metadata with that patient-level column and are
recorded in config.json's "training"."""


def train(
    features: str = typer.Option(
        ...,
        "--features",
        metavar="DIR",
        help="FEATURES_DIR written by `threads-search features`.",
        rich_help_panel=IO,
    ),
    pairs: str = typer.Option(
        ...,
        "--pairs",
        metavar="FILE",
        help="CSV/Parquet with slide_id, sample_id [, patient_id].",
        rich_help_panel=IO,
    ),
    rna: str | None = typer.Option(
        None,
        "--rna",
        metavar="FILE",
        help="RNA matrix (Parquet/CSV/TSV): sample_id + one column per gene.",
        rich_help_panel=IO,
    ),
    rna_units: RnaUnits = typer.Option(
        _D["rna_units"], "--rna-units", help="Units of --rna.", rich_help_panel=IO
    ),
    dna: str | None = typer.Option(
        None,
        "--dna",
        metavar="FILE",
        help="MAF file or binary sample x gene matrix.",
        rich_help_panel=IO,
    ),
    metadata: str | None = typer.Option(
        None,
        "--metadata",
        metavar="FILE",
        help="Table with patient_id and a split column (train/val/test).",
        rich_help_panel=IO,
    ),
    pair_by: PairBy = typer.Option(
        _D["pair_by"],
        "--pair-by",
        help="patient: pair TCGA barcodes by their first 12 characters.",
        rich_help_panel=IO,
    ),
    out: str = typer.Option(
        ..., "--out", metavar="DIR", help="MODEL_DIR to write.", rich_help_panel=IO
    ),
    slide_encoder: str = typer.Option(
        _D["slide_encoder"], "--slide-encoder", help="threads | mean", rich_help_panel=MODEL
    ),
    heads: int | None = typer.Option(
        None, "--heads", help="Attention heads of the threads encoder.", rich_help_panel=MODEL
    ),
    head_dim: int | None = typer.Option(
        None, "--head-dim", help="Width of each head.", rich_help_panel=MODEL
    ),
    attn_dim: int | None = typer.Option(
        None, "--attn-dim", help="Gated-attention hidden width.", rich_help_panel=MODEL
    ),
    dropout: float | None = typer.Option(
        None, "--dropout", help="Dropout in the slide encoder.", rich_help_panel=MODEL
    ),
    bag_by: BagBy = typer.Option(
        _D["bag_by"],
        "--bag-by",
        help="patient: a patient's slides form one bag; slide: one bag per slide.",
        rich_help_panel=TRAINING,
    ),
    epochs: int = typer.Option(_D["epochs"], "--epochs", rich_help_panel=TRAINING),
    batch_size: int = typer.Option(_D["batch_size"], "--batch-size", rich_help_panel=TRAINING),
    max_patches: int = typer.Option(
        _D["max_patches"],
        "--max-patches",
        help="Patches sampled per bag per step.",
        rich_help_panel=TRAINING,
    ),
    lr: float = typer.Option(_D["lr"], "--lr", rich_help_panel=TRAINING),
    weight_decay: float = typer.Option(
        _D["weight_decay"], "--weight-decay", rich_help_panel=TRAINING
    ),
    warmup_epochs: float = typer.Option(
        _D["warmup_epochs"], "--warmup-epochs", rich_help_panel=TRAINING
    ),
    accum_steps: int = typer.Option(
        _D["accum_steps"], "--accum-steps", help="Gradient accumulation.", rich_help_panel=TRAINING
    ),
    grad_clip: float = typer.Option(_D["grad_clip"], "--grad-clip", rich_help_panel=TRAINING),
    temperature: float = typer.Option(
        _D["temperature"],
        "--temperature",
        help="Initial InfoNCE temperature.",
        rich_help_panel=TRAINING,
    ),
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help="Share of patients held out for validation when --metadata has no split column "
        f"(0: no validation split; not allowed with one) [default: {DEFAULT_VAL_FRACTION}].",
        rich_help_panel=TRAINING,
    ),
    min_train_items: int = typer.Option(
        _D["min_train_items"],
        "--min-train-items",
        help="Refuse to train on fewer matched training items (bags with a paired profile).",
        rich_help_panel=TRAINING,
    ),
    select_metric: SelectMetric = typer.Option(
        _D["select_metric"], "--select-metric", rich_help_panel=TRAINING
    ),
    balance_by: str | None = typer.Option(
        None,
        "--balance-by",
        metavar="COLUMN",
        help="Stop the model learning the site instead of the tissue. COLUMN is a "
        "patient-level column of --metadata (e.g. site). Each batch then holds items of ONE "
        "value, so in-batch negatives share the site's stain and only the tissue tells them "
        "apart; values contribute in proportion to their items (each item once an epoch). "
        "Values with fewer than 2 training items go to mixed remainder batches, and items "
        "without a value to a '(missing)' group (both reported). Validation recall is computed "
        "within each value and averaged: that is val_mean_recall, used for model selection "
        "(the all-gallery recall is logged as val_mean_recall_all).",
        rich_help_panel=TRAINING,
    ),
    augment_by: str | None = typer.Option(
        None,
        "--augment-by",
        metavar="COLUMN",
        help="Feature-level stain augmentation: from the training items, each value of this "
        "--metadata column (e.g. site) gets the mean and sd of its patch features; at each "
        "step a bag is re-styled, with probability --augment-p, to another value: x' = (x - "
        "mu_s) / sd_s * sd_t + mu_t. Shows the model the same tissue under another site's "
        "look. Never applied at validation. Combines with --balance-by.",
        rich_help_panel=TRAINING,
    ),
    augment_p: float = typer.Option(
        _D["augment_p"],
        "--augment-p",
        help="Probability that a bag is re-styled at a step (--augment-by).",
        rich_help_panel=TRAINING,
    ),
    stain_view_p: float = typer.Option(
        _D["stain_view_p"],
        "--stain-view-p",
        min=0.0,
        max=1.0,
        help="Probability that a training slide is swapped, at a step, for one of its stain "
        "views (re-stained feature copies made by `features --stain-views`); slides without "
        "views are used as they are; 0 turns it off. Never at validation.",
        rich_help_panel=TRAINING,
    ),
    patience: int = typer.Option(
        _D["patience"], "--patience", help="Early stopping (0 = off).", rich_help_panel=TRAINING
    ),
    seed: int = typer.Option(_D["seed"], "--seed", rich_help_panel=TRAINING),
    device: str = typer.Option(
        _D["device"], "--device", help="auto | cpu | cuda[:N]", rich_help_panel=TRAINING
    ),
    threads: int = typer.Option(
        _D["threads"],
        "--threads",
        help="Torch CPU threads (0 = default).",
        rich_help_panel=TRAINING,
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out exactly.", rich_help_panel=TRAINING
    ),
    stop_after_epochs: int | None = typer.Option(
        None,
        "--stop-after-epochs",
        help="End this run (resumably) after N epochs.",
        rich_help_panel=TRAINING,
    ),
    quiet: bool = typer.Option(
        False, "--quiet", help="No progress bars.", rich_help_panel=TRAINING
    ),
) -> None:
    """Train the THREADS slide-molecule model (InfoNCE) from a FEATURES_DIR and RNA/DNA profiles.

    A matching report (what matched, what did not) goes to stderr before the first epoch; the
    bundle of the best epoch is written to --out.
    """
    from trainer.errors import TrainingError
    from trainer.loop import train as run_training

    slide_config = {"heads": heads, "head_dim": head_dim, "attn_dim": attn_dim, "dropout": dropout}
    if slide_encoder == "mean":  # the mean encoder has no attention
        slide_config = {"dropout": dropout}
    cfg = TrainConfig(
        features=features,
        pairs=pairs,
        out=out,
        rna=rna,
        dna=dna,
        rna_units=rna_units,
        metadata=metadata,
        pair_by=pair_by,
        bag_by=bag_by,
        val_fraction=val_fraction,
        min_train_items=min_train_items,
        slide_encoder=slide_encoder,
        slide_config={k: v for k, v in slide_config.items() if v is not None},
        epochs=epochs,
        batch_size=batch_size,
        max_patches=max_patches,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        grad_clip=grad_clip,
        accum_steps=accum_steps,
        temperature=temperature,
        select_metric=select_metric,
        balance_by=balance_by,
        augment_by=augment_by,
        augment_p=augment_p,
        stain_view_p=stain_view_p,
        patience=patience,
        seed=seed,
        device=device,
        threads=threads,
    )
    result = run_training(
        cfg, resume=resume, stop_after_epochs=stop_after_epochs, progress=not quiet, echo=_stderr
    )
    if result.best_epoch < 1:
        raise TrainingError(f"no epoch produced a model; no bundle in {result.out_dir}")
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"trained {len(result.history)} epochs; best epoch {result.best_epoch} "
        f"({result.best_metric_name} = {result.best_metric:.4f}, {result.selection}); last "
        f"train loss {last.get('train_loss', float('nan')):.4f}; bundle: {result.out_dir}"
        + (" (stopped early)" if result.stopped_early else "")
    )


def main(argv: list[str] | None = None) -> int:
    """Run :func:`train` on ``argv`` (default ``sys.argv[1:]``); returns the exit code (module
    docstring). A usage error is shown as the CLI shows it."""
    from typer import rich_utils
    from typer.main import get_command

    app = typer.Typer(add_completion=False, rich_markup_mode="markdown")
    app.command("train", epilog=EPILOG)(train)
    command = get_command(app)
    try:
        code = command.main(args=argv, prog_name="threads-search train", standalone_mode=False)
    except typer.TyperException as e:  # a bad option (click's usage errors)
        if hasattr(e, "ctx"):
            rich_utils.rich_format_error(e)
        else:
            print(f"error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except ThreadsSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
