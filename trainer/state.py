"""Training state for ``--resume``: weights, optimiser, scheduler, RNG and history, written
after every epoch to ``MODEL_DIR/checkpoints/state.pt``; the state, ``training_log.jsonl`` and
``training_curves.png`` are written atomically (``threads_search.atomic``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from threads_search.atomic import atomic_path, write_text

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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
    write_text(out_dir / "training_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))


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
    try:
        with atomic_path(out_dir / "training_curves.png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
