"""Few-shot curves of ``bench/quality.py``: balanced accuracy (subtype) against shots per class,
one panel per cohort, one line per model (mean ± std over draws), with the zero-shot
(molecular-prototype) accuracy of each model as a dashed line."""

from __future__ import annotations

import os
from pathlib import Path


def plot_fewshot(results: dict, path: str | Path) -> Path:
    """``results``: cohort name → {"models": {model: {"fewshot": [rows of few_shot_curve],
    "zero_shot_balanced_accuracy": float}}}. Writes a PNG (atomically) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (cohort, res) in zip(axes[0], results.items(), strict=True):
        for i, (name, m) in enumerate(res["models"].items()):
            color = f"C{i}"
            shots = [r["shots"] for r in m["fewshot"]]
            mean = [r["balanced_accuracy_mean"] for r in m["fewshot"]]
            std = [r["balanced_accuracy_std"] for r in m["fewshot"]]
            ax.errorbar(
                shots,
                mean,
                yerr=std,
                marker="o",
                ms=4,
                capsize=3,
                color=color,
                label=f"{name} (linear probe)",
            )
            ax.axhline(
                m["zero_shot_balanced_accuracy"],
                ls="--",
                lw=1,
                color=color,
                label=f"{name} (zero-shot)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_ylim(0, 1)
        ax.set_xlabel("training slides per class")
        ax.set_ylabel("balanced accuracy (subtype, test)")
        ax.set_title(cohort)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
