"""The THREADS contrastive training loop: slide encoder ↔ RNA/DNA encoders under InfoNCE.

AdamW, linear warm-up then cosine decay (per optimiser step), gradient clipping, optional
gradient accumulation, bf16 autocast on GPU. Every epoch: validation, ``best`` bundle in
MODEL_DIR (by ``select_metric``), ``last`` bundle in MODEL_DIR/last, training state for exact
``--resume``, log and curves. Deterministic given ``seed``: each epoch reseeds from (seed, epoch).

Site shortcut (issue 14): ``--balance-by COLUMN`` draws each batch from one value of a metadata
column and selects on within-value validation recall (``trainer.balance``); ``--augment-by
COLUMN`` re-styles training bags to another value's feature statistics (``trainer.augment``,
statistics kept in the training state). Both are recorded in the bundle's training config.

Model selection: the highest ``select_metric`` on the validation split; without validation
items (or where the metric cannot be computed on them) the lowest training loss, logged and
reported as ``train_loss``. An epoch that made no optimiser step (no batch held 2 items of one
modality) ends training with :class:`TrainingError` and writes nothing: no bundle is ever saved
that no optimiser step produced.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from threads_search.atomic import remove_orphans
from threads_search.device import resolve_device
from threads_search.errors import ConfigError, MissingError
from threads_search.models.bundle import build_model, save_model
from threads_search.models.loss import InfoNCE
from trainer.augment import SiteStyle
from trainer.balance import GroupedBatches, format_groups
from trainer.config import TrainConfig
from trainer.data import TrainingData, collate, load_training_data
from trainer.errors import TrainingError
from trainer.matching import format_report
from trainer.progress import EpochProgress
from trainer.state import load_state, plot_curves, save_state, write_log
from trainer.validate import validate


@dataclass
class TrainResult:
    """``best_metric`` is the value of ``best_metric_name`` at ``best_epoch`` (a loss when the
    name is ``train_loss``: selection was by the lowest training loss); ``selection`` says why,
    in words."""

    out_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict]
    stopped_early: bool = False
    best_metric_name: str = "val_mean_recall"
    selection: str = ""
    data_report: dict | None = None


def _selection(cfg: TrainConfig, metrics: dict, train_loss: float, n_val: int):
    """(metric name, its value, score to maximise, why in words) for one epoch."""
    if cfg.select_metric in metrics:
        value = metrics[cfg.select_metric]
        return cfg.select_metric, value, value, f"highest on {n_val} validation items"
    why = (
        "no validation split"
        if not n_val
        else f"{cfg.select_metric} not computable on {n_val} validation item(s)"
    )
    return "train_loss", train_loss, -train_loss, f"lowest training loss: {why}"


def _no_step_error(epoch: int, cfg: TrainConfig, train_items, best_epoch: int) -> TrainingError:
    n_rna = sum(1 for it in train_items if it.rna)
    n_dna = sum(1 for it in train_items if it.dna)
    if best_epoch > 0:
        kept = f"the bundle of epoch {best_epoch} in {cfg.out} stays the best"
    elif (Path(cfg.out) / "config.json").exists():
        kept = f"no bundle was written ({cfg.out} still holds an earlier run's bundle)"
    else:
        kept = "no bundle was written"
    return TrainingError(
        f"epoch {epoch} made no optimiser step: no batch of {cfg.batch_size} held 2 items of one "
        f"modality (training items: {len(train_items)}, with RNA {n_rna}, with DNA {n_dna}). "
        f"Nothing of this epoch was saved; {kept}. Raise --batch-size or pair more samples."
    )


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(t, 1.0))
        )

    return factor


def _build(cfg: TrainConfig, data: TrainingData):
    return build_model(
        data.patch_encoder,
        slide_encoder=cfg.slide_encoder,
        slide_config=cfg.slide_config,
        normalizer=data.normalizer,
        rna_config=cfg.rna_config,
        rna_units=cfg.rna_units,
        genes_dna=data.genes_dna,
        dna_config=cfg.dna_config,
        training=cfg.to_dict(),
    )


def _step_loss(model, loss_fn, data: TrainingData, batch, rng, cfg, device, autocast, style):
    bags = [data.bag(it, rng, cfg.stain_view_p) for it in batch]  # stain views: features_views
    feats, mask = collate(bags, cfg.max_patches, rng)
    if style is not None:  # --augment-by: re-style bags to another value (trainer.augment)
        style.apply(feats, mask, batch, rng, cfg.augment_p)
    with autocast():
        slide = model.slide(feats.to(device), mask.to(device)).embedding
        losses = []
        for mod in ("rna", "dna"):
            idx = [i for i, it in enumerate(batch) if getattr(it, mod)]
            if getattr(model, mod) is None or len(idx) < 2:
                continue
            ids = [getattr(batch[i], mod) for i in idx]
            x = torch.from_numpy(np.stack([getattr(data, mod)[s] for s in ids])).to(device)
            first = {s: j for j, s in reversed(list(enumerate(ids)))}  # same sample → same group
            groups = torch.as_tensor([first[s] for s in ids], device=device)
            losses.append(loss_fn(slide[idx], getattr(model, mod)(x), groups))
    return torch.stack(losses).mean() if losses else None


@dataclass
class _Step:
    """One epoch of optimiser steps over ``batches`` (lists of training items)."""

    model: torch.nn.Module
    loss_fn: InfoNCE
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    params: list
    data: TrainingData
    cfg: TrainConfig
    device: torch.device
    autocast: Callable
    style: SiteStyle | None = None

    def epoch(self, batches: list, rng: np.random.Generator, bar: EpochProgress):
        """Returns (the losses of the batches that had one, the optimiser steps made)."""
        cfg, opt = self.cfg, self.opt
        self.model.train()
        losses, steps, pending = [], 0, False
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            loss = _step_loss(
                self.model,
                self.loss_fn,
                self.data,
                batch,
                rng,
                cfg,
                self.device,
                self.autocast,
                self.style,
            )
            if loss is not None:
                (loss / cfg.accum_steps).backward()
                losses.append(float(loss.detach()))
                pending = True
            if (i + 1) % cfg.accum_steps == 0 or i == len(batches) - 1:
                steps, pending = steps + pending, False
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                opt.step()
                self.sched.step()
                opt.zero_grad(set_to_none=True)
                self.loss_fn.clamp_()
            running = np.mean(losses[-20:]) if losses else float("nan")
            bar.advance(loss=f"{running:.3f}", T=f"{self.loss_fn.temperature:.3f}")
        return losses, steps


def _resumed_style(state: dict, fitted: SiteStyle, echo) -> SiteStyle:
    """The --augment-by statistics of the interrupted run (exact resume); says so when the
    training data now give other ones."""
    saved = state.get("augment")
    if not saved:
        return fitted
    style = SiteStyle.from_state(saved)
    if echo is not None and not style.same_as(fitted):
        echo(
            f"note: --augment-by {style.column}: the training features now give other "
            "statistics than the interrupted run's; the saved ones are used (exact resume)"
        )
    return style


def _config_diff(old: dict, new: dict) -> list[str]:
    """Settings that differ from a saved run's; a setting the saved run predates counts as its
    default."""
    defaults = TrainConfig().to_dict()

    def plain(v) -> str:  # tuples saved by an older version compare equal to lists
        return json.dumps(v, sort_keys=True, default=str)

    return [k for k, v in new.items() if plain(old.get(k, defaults.get(k))) != plain(v)]


def train(
    cfg: TrainConfig,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or resume) training into ``cfg.out``. ``stop_after_epochs`` ends this run early but
    resumably after that many epochs (for time-boxed jobs). ``echo`` receives the matching
    report (what matched, what did not) before the first epoch."""
    cfg.check()
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    data = load_training_data(cfg)
    train_items, val_items = data.split("train"), data.split("val")
    batcher = (
        GroupedBatches(train_items, cfg.balance_by, cfg.batch_size) if cfg.balance_by else None
    )
    style = SiteStyle.fit(data, train_items, cfg.augment_by) if cfg.augment_by else None
    if style is not None:
        data.report["groups"][cfg.augment_by]["statistics"] = style.summary()
    if echo is not None:
        echo("\n".join(filter(None, [format_report(data.report), format_groups(data.report)])))
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)  # temporaries of a killed run (atomic writes)
    model = _build(cfg, data).to(device)
    loss_fn = InfoNCE(init_temperature=cfg.temperature).to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    # No weight decay on the temperature, biases and normalisation weights (1-d tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1] + list(loss_fn.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    n_batches = len(batcher) if batcher else math.ceil(len(train_items) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.accum_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps_per_epoch))
    history: list[dict] = []
    start, best, best_epoch, stale = 0, -math.inf, -1, 0
    state = load_state(out) if resume else None
    if resume and state is None:
        raise MissingError(f"--resume: no training state in {out / 'checkpoints'}")
    if state is not None:
        diff = _config_diff(state["config"], cfg.to_dict())
        if diff:
            raise ConfigError(f"--resume with other settings than the interrupted run: {diff}")
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best, best_epoch, stale = (
            state["epoch"],
            state["best"],
            state["best_epoch"],
            state["stale"],
        )
        history = state["history"]
        if style is not None:
            style = _resumed_style(state, style, echo)
    use_bf16 = device.type == "cuda"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    step = _Step(model, loss_fn, opt, sched, params, data, cfg, device, autocast, style)
    stopped_early = False
    with EpochProgress(enabled=progress) as bar:
        for epoch in range(start, cfg.epochs):
            if stop_after_epochs is not None and epoch - start >= stop_after_epochs:
                break
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            if batcher is not None:  # --balance-by: one value of the column per batch
                batches = batcher.epoch(rng)
            else:
                order = rng.permutation(len(train_items))
                batches = [
                    [train_items[j] for j in order[i : i + cfg.batch_size]]
                    for i in range(0, len(order), cfg.batch_size)
                ]
            bar.start(f"epoch {epoch + 1}/{cfg.epochs}", len(batches))
            losses, steps = step.epoch(batches, rng, bar)
            train_s = time.perf_counter() - t0
            if steps == 0:
                raise _no_step_error(epoch + 1, cfg, train_items, best_epoch)
            metrics = validate(model, data, val_items, device, group_by=cfg.balance_by)
            train_loss = float(np.mean(losses))
            name, _, score, selection = _selection(cfg, metrics, train_loss, len(val_items))
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "optimizer_steps": steps,
                "temperature": loss_fn.temperature,
                "lr": float(sched.get_last_lr()[0]),
                "train_seconds": train_s,
                "val_seconds": time.perf_counter() - t0 - train_s,
                "slides_per_s": sum(len(it.slides) for it in train_items) / train_s,
                **metrics,
                "selected_by": name,
            }
            model.training_params = {
                **cfg.to_dict(),
                "epoch": epoch + 1,
                "metrics": metrics,
                "train_loss": train_loss,
                "selected_by": name,
                "selection": selection,
                "data": data.report,
            }
            row["best"] = bool(score > best)
            history.append(row)
            if row["best"]:
                best, best_epoch, stale = score, epoch + 1, 0
                save_model(model, out)
            else:
                stale += 1
            save_model(model, out / "last")
            save_state(
                out,
                {
                    "config": cfg.to_dict(),
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "history": history,
                    "augment": style.to_state() if style is not None else None,
                },
            )
            write_log(out, history)
            plot_curves(out, history)
            shown = {
                k: round(v, 3) for k, v in row.items() if k in ("train_loss", "temperature", name)
            }
            bar.end(f"epoch {epoch + 1}: {shown}")
            if cfg.patience and stale >= cfg.patience:
                stopped_early = True
                break
    return _result(out, cfg, best_epoch, history, stopped_early, len(val_items), data.report)


def _result(out, cfg, best_epoch, history, stopped_early, n_val, report) -> TrainResult:
    row = next((h for h in history if h["epoch"] == best_epoch), None)
    if row is None:
        nan = float("nan")
        return TrainResult(out, best_epoch, nan, history, stopped_early, "", "", report)
    metrics = {k: v for k, v in row.items() if k.startswith("val_")}
    name, value, _, selection = _selection(cfg, metrics, row["train_loss"], n_val)
    return TrainResult(out, best_epoch, value, history, stopped_early, name, selection, report)
