"""Training state for ``--resume``: weights, optimiser, scheduler, RNG and history, written
atomically after every epoch to ``MODEL_DIR/checkpoints/state.pt``."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

STATE = Path("checkpoints") / "state.pt"


def save_state(out_dir: Path, payload: dict) -> None:
    path = out_dir / STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        **payload,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_state(out_dir: Path) -> dict | None:
    path = out_dir / STATE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state


def write_log(out_dir: Path, history: list[dict]) -> None:
    """``training_log.jsonl``: one JSON object per epoch, rewritten whole (so a resumed run
    never holds epochs twice)."""
    path = out_dir / "training_log.jsonl"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


def plot_curves(out_dir: Path, history: list[dict]) -> None:
    """``training_curves.png``: loss, temperature, validation recall and RankMe per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("train loss", ["train_loss"]),
        ("temperature", ["temperature"]),
        ("val recall", sorted({k for h in history for k in h if "_R@" in k})),
        ("val RankMe", ["val_rankme"]),
    ]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for k in keys:
            ys = [h.get(k, np.nan) for h in history]
            ax.plot(ep, ys, marker="o", ms=3, label=k.replace("val_", ""))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if len(keys) > 1:
            ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = out_dir / f".training_curves.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_dir / "training_curves.png")
