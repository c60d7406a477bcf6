"""An evaluation report (the dict of :func:`threads_search.evaluation.run.evaluate`) as a table:
one row per task and metric, one column per model (value and 95 % interval) and, after each
baseline, THREADS minus that baseline with its paired interval. Printed with rich, written as
``report.json`` / ``report.md``, and PNG plots (matplotlib, Agg): few-shot curves, Kaplan–Meier
curves of the high/low predicted-risk groups, the classification confusion matrix."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from threads_search.atomic import atomic_path
from threads_search.evaluation import batches
from threads_search.evaluation.baselines import THREADS

WIDE = 130  # columns of a piped or captured report table (rich's default there is 80)


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _cell(d: dict | None) -> str:
    """``value [lo, hi]`` (``value ± sd`` for few-shot), or ``–``."""
    if not d:
        return "–"
    if "sd" in d:
        return f"{_fmt(d['value'])} ± {_fmt(d['sd'])}"
    if "lo" in d and not math.isnan(d.get("lo", math.nan)):
        return f"{_fmt(d['value'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}]"
    return _fmt(d.get("value", d.get("diff")))


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    sign = "+" if d["diff"] >= 0 else ""
    if math.isnan(d.get("lo", math.nan)):
        return f"{sign}{_fmt(d['diff'])}"
    return f"{sign}{_fmt(d['diff'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}]"


def rows(report: dict, headline: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table: per task and metric (``headline``: each task's first metric
    only), THREADS first, then each baseline with THREADS minus it."""
    header = ["task", "metric", "model", "value [95 % CI]", "Δ THREADS − model [95 % CI]"]
    out = []
    for t in report["tasks"]:
        for metric, per in list(t["metrics"].items())[: 1 if headline else None]:
            models = [THREADS] * (THREADS in per) + [m for m in per if m != THREADS]
            for i, m in enumerate(models):
                diff = t.get("vs", {}).get(metric, {}).get(m)
                name = f"{t['task']} ({t['kind']})" if i == 0 else ""
                out.append([name, metric if i == 0 else "", m, _cell(per[m]), _diff(diff)])
    return header, out


def print_report(report: dict, console=None, headline: bool = False) -> None:
    """The table with rich (``headline``: each task's first metric), then the report's notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header, body = rows(report, headline)
    s = report["settings"]
    how = f"split column {s['split']!r}" if s["split"] else f"{s['folds']}-fold patient CV"
    table = Table(title=f"evaluation: {report['n_slides']} slides, {how}, 95 % bootstrap CIs")
    for h in header:
        table.add_column(h, justify="right" if h.startswith(("value", "Δ")) else "left")
    for r in body:
        table.add_row(*r)
    if not console.is_terminal and console.width < WIDE:  # piped: do not wrap every cell
        console = Console(file=console.file, width=WIDE)
    console.print(table)
    if report.get("batch_effects"):
        header, body = batches.rows(report["batch_effects"])
        table = Table(title="batch effects: how well each embedding predicts the batch")
        for h in header:
            table.add_column(h, justify="right" if "chance" in h else "left")
        for r in body:
            table.add_row(*r)
        console.print(table)
    for note in notes(report):
        console.print(f"note: {note}", highlight=False)


def notes(report: dict) -> list[str]:
    out = list(report.get("notes") or [])
    for t in report["tasks"]:
        out += [f"{t['task']}: {n}" for n in t.get("notes", [])]
        if t.get("note"):
            out.append(f"{t['task']}: {t['note']}")
    return out + [f"warning: {w}" for w in batches.warnings(report.get("batch_effects") or [])]


def markdown(report: dict) -> str:
    """The table as GitHub Markdown, with the run's settings and notes."""
    header, body = rows(report)
    s = report["settings"]
    lines = [
        "# Evaluation report",
        "",
        f"Index `{report['index']}`: {report['n_slides']} slides; labels joined to "
        f"{report['labels'].get('slides_joined')} slides. Folds: "
        + (f"split column `{s['split']}`" if s["split"] else f"{s['folds']} (patient-level)")
        + f"; {s['n_boot']} bootstrap resamples (patients); seed {s['seed']}. "
        "Values: estimate [95 % CI] (few-shot: mean ± SD over draws); Δ: THREADS minus the "
        "model [paired 95 % CI].",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    if report.get("batch_effects"):
        header, body = batches.rows(report["batch_effects"])
        lines += ["", "## Batch effects", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += [""] + [f"- {n}" for n in notes(report)]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and the PNG plots into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_plain))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown(report))
    paths.update(plots(report, out))
    return paths


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def plots(report: dict, out: Path) -> dict[str, Path]:
    """One PNG per few-shot, survival and classification task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    for t in report["tasks"]:
        draw = {"fewshot": _fewshot, "survival": _km, "classification": _confusion}.get(t["kind"])
        if draw is None:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        draw(t, ax)
        fig.tight_layout()
        path = out / re.sub(r"[^\w.-]", "_", f"{t['task']}_{t['kind']}.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        made[t["task"]] = path
    return made


def _fewshot(t: dict, ax) -> None:
    for model, curve in t["curves"].items():
        k = [r["shots"] for r in curve]
        m = [r["balanced_accuracy_mean"] for r in curve]
        sd = [r["balanced_accuracy_std"] for r in curve]
        ax.errorbar(k, m, yerr=sd, marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.set_xticks(t["shots"], [str(k) for k in t["shots"]])
    ax.set(
        xlabel="training slides per class (k)",
        ylabel="balanced accuracy",
        title=f"{t['task']}: few-shot ({t['n_draws']} draws)",
    )
    ax.legend(fontsize=8)


def _km(t: dict, ax) -> None:
    import numpy as np
    from lifelines import KaplanMeierFitter

    km = t["km"]
    time, event, high = (np.asarray(km[k]) for k in ("time", "event", "high"))
    for flag, name in ((0, "low risk"), (1, "high risk")):
        sel = high == flag
        if sel.any():
            KaplanMeierFitter().fit(
                time[sel], event[sel], label=f"{name} (n={sel.sum()})"
            ).plot_survival_function(ax=ax, ci_show=True)
    p = km.get("logrank_p")
    ax.set(
        xlabel="time",
        ylabel="survival probability",
        title=f"{t['task']}: {km['model']} risk split at the fold median"
        + (f" (log-rank p={p:.3g})" if p is not None else ""),
    )
    ax.title.set_fontsize(9)


def _confusion(t: dict, ax) -> None:
    import numpy as np

    c = t["confusion"]
    m = np.asarray(c["matrix"], float)
    ax.imshow(m, cmap="Blues")
    n = len(c["classes"])
    ax.set_xticks(range(n), c["classes"], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), c["classes"], fontsize=7)
    for i in range(n):
        for j in range(n):
            dark = m[i, j] > m.max() / 2
            ax.text(
                j,
                i,
                int(m[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    ax.set(xlabel="predicted", ylabel="true", title=f"{t['task']}: {c['model']} (out of fold)")
