"""``threads-search train``: THREADS contrastive pretraining from a FEATURES_DIR + profiles.

Callable as ``main(argv)`` (returns the exit code: 0 trained, 2 refused or no model produced),
so a tiny synthetic run is a test. Before training, a matching report goes to stderr: pairs
matched, pairs naming a slide without features or a sample without a profile, features and
profiles named in no pair, items per split. Training is refused below ``--min-train-items``
matched training items (default 8).
"""

from __future__ import annotations

import argparse
import sys

from trainer.config import DEFAULT_VAL_FRACTION, TrainConfig

EPILOG = """examples:
  threads-search train --features feats/ --pairs pairs.csv --rna rna.parquet --dna muts.maf \\
      --out model/ --epochs 20
  threads-search train ... --out model/ --resume        # continue an interrupted run exactly

outputs (MODEL_DIR): config.json, model.safetensors (best epoch), genes_rna.txt, genes_dna.txt,
rna_normalization.json, last/ (last epoch), training_log.jsonl, training_curves.png,
checkpoints/state.pt (for --resume). config.json's "training" holds the settings, the best
epoch's metrics, how it was selected and the matching report ("data").

matching: pairs are matched to slides with finished features and to samples with a profile; the
report (stderr, and config.json) counts what did not match, with examples and hints on ids that
differ. Fewer than --min-train-items matched training items (default %(min)d), or fewer than 2
training items of a modality given (--rna/--dna), is refused (exit 2): InfoNCE contrasts the
items of a batch. An epoch that makes no optimiser step ends the run with exit 2 and saves
nothing.

model selection: the best epoch has the highest --select-metric on the validation split (a split
column in --metadata, else --val-fraction of the patients, default %(val).2f; 0 = none).
Without validation it is the epoch of lowest training loss, reported as train_loss."""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    epilog = EPILOG % {"min": d.min_train_items, "val": DEFAULT_VAL_FRACTION}
    p = argparse.ArgumentParser(
        prog="threads-search train", description=__doc__.splitlines()[0], epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    io = p.add_argument_group("inputs and output")
    io.add_argument(
        "--features", required=True, help="FEATURES_DIR written by `threads-search features`"
    )
    io.add_argument(
        "--pairs", required=True, help="CSV/Parquet with slide_id, sample_id [, patient_id]"
    )
    io.add_argument("--rna", help="RNA matrix (Parquet/CSV/TSV): sample_id + one column per gene")
    io.add_argument("--rna-units", default=d.rna_units, choices=["tpm", "counts", "log"])
    io.add_argument("--dna", help="MAF file or binary sample x gene matrix")
    io.add_argument("--metadata", help="table with patient_id and a split column (train/val/test)")
    io.add_argument("--pair-by", default=d.pair_by, choices=["sample", "patient"],
                    help="patient: pair TCGA barcodes by their first 12 characters")  # fmt: skip
    io.add_argument("--out", required=True, help="MODEL_DIR to write")
    m = p.add_argument_group("model")
    m.add_argument("--slide-encoder", default=d.slide_encoder, help="threads | mean")
    m.add_argument("--heads", type=int, help="attention heads of the threads encoder")
    m.add_argument("--head-dim", type=int, help="width of each head")
    m.add_argument("--attn-dim", type=int, help="gated-attention hidden width")
    m.add_argument("--dropout", type=float, help="dropout in the slide encoder")
    t = p.add_argument_group("training")
    t.add_argument("--bag-by", default=d.bag_by, choices=["patient", "slide"])
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument(
        "--max-patches", type=int, default=d.max_patches, help="patches sampled per bag per step"
    )
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    t.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument(
        "--temperature", type=float, default=d.temperature, help="initial InfoNCE temperature"
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        help=f"share of patients held out for validation when --metadata has no split column "
        f"(default {DEFAULT_VAL_FRACTION}; 0: no validation split; not allowed with one)",
    )
    t.add_argument(
        "--min-train-items",
        type=int,
        default=d.min_train_items,
        help="refuse to train on fewer matched training items (bags with a paired profile; "
        "default %(default)s)",
    )
    t.add_argument(
        "--select-metric", default=d.select_metric, choices=["val_mean_recall", "val_rankme"]
    )
    t.add_argument("--patience", type=int, default=d.patience, help="early stopping (0 = off)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--stop-after-epochs", type=int, help="end this run (resumably) after N epochs")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    slide_config = {k: v for k, v in (("heads", a.heads), ("head_dim", a.head_dim),
                    ("attn_dim", a.attn_dim), ("dropout", a.dropout)) if v is not None}  # fmt: skip
    if a.slide_encoder == "mean":
        slide_config = {k: v for k, v in slide_config.items() if k == "dropout"}
    return TrainConfig(
        features=a.features, pairs=a.pairs, out=a.out, rna=a.rna, dna=a.dna,
        rna_units=a.rna_units, metadata=a.metadata, pair_by=a.pair_by, bag_by=a.bag_by,
        val_fraction=a.val_fraction, min_train_items=a.min_train_items,
        slide_encoder=a.slide_encoder, slide_config=slide_config,
        epochs=a.epochs, batch_size=a.batch_size, max_patches=a.max_patches, lr=a.lr,
        weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs, grad_clip=a.grad_clip,
        accum_steps=a.accum_steps, temperature=a.temperature, select_metric=a.select_metric,
        patience=a.patience, seed=a.seed, device=a.device, threads=a.threads,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from threads_search.molecular import MolecularDataError
    from trainer.errors import TrainingDataError, TrainingError
    from trainer.loop import train

    cfg = config_from_args(args)
    errors = (TrainingDataError, TrainingError, MolecularDataError, FileNotFoundError, ValueError)
    try:
        result = train(
            cfg,
            resume=args.resume,
            stop_after_epochs=args.stop_after_epochs,
            progress=not args.quiet,
            echo=_stderr,
        )
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.best_epoch < 1:
        msg = f"error: no epoch produced a model; no bundle in {result.out_dir}"
        print(msg, file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else {}
    print(
        f"trained {len(result.history)} epochs; best epoch {result.best_epoch} "
        f"({result.best_metric_name} = {result.best_metric:.4f}, {result.selection}); last "
        f"train loss {last.get('train_loss', float('nan')):.4f}; bundle: {result.out_dir}"
        + (" (stopped early)" if result.stopped_early else "")
    )
    return 0


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
