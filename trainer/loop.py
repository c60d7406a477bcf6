"""The THREADS contrastive training loop: slide encoder ↔ RNA/DNA encoders under InfoNCE.

AdamW, linear warm-up then cosine decay (per optimiser step), gradient clipping, optional
gradient accumulation, bf16 autocast on GPU. Every epoch: validation, ``best`` bundle in
MODEL_DIR (by ``select_metric``), ``last`` bundle in MODEL_DIR/last, training state for exact
``--resume``, log and curves. Deterministic given ``seed``: each epoch reseeds from (seed, epoch).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from threads_search.device import resolve_device
from threads_search.models.bundle import build_model, save_model
from threads_search.models.loss import InfoNCE
from trainer.config import TrainConfig
from trainer.data import TrainingData, collate, load_training_data
from trainer.state import load_state, plot_curves, save_state, write_log
from trainer.validate import validate


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict]
    stopped_early: bool = False


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


def _step_loss(model, loss_fn, data: TrainingData, batch, rng, cfg, device, autocast):
    feats, mask = collate([data.bag(it) for it in batch], cfg.max_patches, rng)
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


def train(cfg: TrainConfig, resume: bool = False, stop_after_epochs: int | None = None,
          progress: bool = True) -> TrainResult:  # fmt: skip
    """Run (or resume) training into ``cfg.out``. ``stop_after_epochs`` ends this run early but
    resumably after that many epochs (for time-boxed jobs)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    data = load_training_data(cfg)
    train_items, val_items = data.split("train"), data.split("val")
    model = _build(cfg, data).to(device)
    loss_fn = InfoNCE(init_temperature=cfg.temperature).to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    # No weight decay on the temperature, biases and normalisation weights (1-d tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1] + list(loss_fn.parameters())
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
    )  # fmt: skip
    steps_per_epoch = math.ceil(math.ceil(len(train_items) / cfg.batch_size) / cfg.accum_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps_per_epoch))
    history: list[dict] = []
    start, best, best_epoch, stale = 0, -math.inf, -1, 0
    state = load_state(out) if resume else None
    if resume and state is None:
        raise FileNotFoundError(f"--resume: no training state in {out / 'checkpoints'}")
    if state is not None:
        if state["config"] != cfg.to_dict():
            diff = [k for k, v in cfg.to_dict().items() if state["config"].get(k) != v]
            raise ValueError(f"--resume with other settings than the interrupted run: {diff}")
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
    use_bf16 = device.type == "cuda"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    stopped_early = False
    for epoch in range(start, cfg.epochs):
        if stop_after_epochs is not None and epoch - start >= stop_after_epochs:
            break
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train_items))
        batches = [[train_items[j] for j in order[i : i + cfg.batch_size]]
                   for i in range(0, len(order), cfg.batch_size)]  # fmt: skip
        model.train()
        losses = []
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        )
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            loss = _step_loss(model, loss_fn, data, batch, rng, cfg, device, autocast)
            if loss is not None:
                (loss / cfg.accum_steps).backward()
                losses.append(float(loss.detach()))
            last = i == len(batches) - 1
            if (i + 1) % cfg.accum_steps == 0 or last:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                loss_fn.clamp_()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]) if losses else float('nan'):.3f}",
                            T=f"{loss_fn.temperature:.3f}")  # fmt: skip
        train_s = time.perf_counter() - t0
        metrics = validate(model, data, val_items, device)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "temperature": loss_fn.temperature,
            "lr": float(sched.get_last_lr()[0]),
            "train_seconds": train_s,
            "val_seconds": time.perf_counter() - t0 - train_s,
            "slides_per_s": sum(len(it.slides) for it in train_items) / train_s,
            **metrics,
        }
        history.append(row)
        score = metrics.get(cfg.select_metric, -row["train_loss"])
        model.training_params = {**cfg.to_dict(), "epoch": epoch + 1, "metrics": metrics}
        if score > best:
            best, best_epoch, stale = score, epoch + 1, 0
            save_model(model, out)
        else:
            stale += 1
        save_model(model, out / "last")
        save_state(out, {"config": cfg.to_dict(), "model": model.state_dict(),
                         "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "epoch": epoch + 1, "best": best,
                         "best_epoch": best_epoch, "stale": stale, "history": history})  # fmt: skip
        write_log(out, history)
        plot_curves(out, history)
        if progress:
            shown = {
                k: round(v, 3)
                for k, v in row.items()
                if k in ("train_loss", "temperature", cfg.select_metric)
            }
            tqdm.write(f"epoch {epoch + 1}: {shown}")
        if cfg.patience and stale >= cfg.patience:
            stopped_early = True
            break
    return TrainResult(out, best_epoch, best, history, stopped_early)
