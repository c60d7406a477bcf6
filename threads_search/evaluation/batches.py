"""Batch effects in an evaluation: for each batch column (e.g. ``site``, ``scanner``) and each
model of the run, how well the slide embeddings predict it — a patient-grouped linear probe
(balanced accuracy against chance) and the share of each slide's k nearest neighbours from
another patient that share its batch value (against chance) — beside the same numbers for the
classification tasks' label columns (:func:`threads_search.eval.batch_effect_report`). A warning
when the batch is more predictable than every label: search and probes may then follow the
stain or the scanner rather than the tissue."""

from __future__ import annotations

import pandas as pd

from threads_search.errors import InputError
from threads_search.eval.batch_effects import batch_effect_report
from threads_search.evaluation.tasks import join_labels

KEYS = ("probe_balanced_accuracy", "probe_chance", "knn_same_share", "knn_chance", "n_used")


def batch_frame(slides: pd.DataFrame, labels: pd.DataFrame, column: str) -> pd.Series:
    """The batch value of every slide (table order): from the labels (joined by slide_id, else
    patient_id) when they carry ``column``, else from the index's own metadata."""
    if column in labels.columns:
        return join_labels(slides, labels, [column], "slide_id")[column].reset_index(drop=True)
    if column in slides.columns:
        return slides[column].reset_index(drop=True)
    raise InputError(
        f"batch column {column!r} is neither in the labels nor in the index's slide metadata "
        f"(metadata columns: {', '.join(c for c in slides.columns if c != 'path')})"
    )


def batch_effects(
    slides: pd.DataFrame,
    labels: pd.DataFrame,
    joined: pd.DataFrame | None,
    columns: list[str],
    label_columns: list[str],
    models: dict,
    k: int = 10,
    seed: int = 0,
) -> list[dict]:
    """One entry per batch column: ``{"column", "models": {model: {"batch": {...KEYS},
    "labels": {label column: {...KEYS}}, "warning": str | None}}}``; ``models`` maps a model
    name to its slide embeddings float [N, E] in table order."""
    out = []
    for column in columns:
        frame = pd.DataFrame({column: batch_frame(slides, labels, column)})
        if "patient_id" in slides.columns:
            frame["patient_id"] = slides["patient_id"].to_numpy()
        labs = [c for c in label_columns if c != column and joined is not None]
        for c in labs:
            frame[c] = joined[c].to_numpy()
        per = {}
        for name, x in models.items():
            rep = batch_effect_report(x, frame, column, labs, k=k, seed=seed)
            cols = rep["columns"]
            per[name] = {
                "batch": {key: cols[column].get(key) for key in KEYS},
                "labels": {c: {key: cols[c].get(key) for key in KEYS} for c in labs},
                "warning": rep["warning"],
            }
        out.append({"column": column, "models": per})
    return out


def rows(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the batch-effect table: per batch column and model, the probe and the
    neighbour share of the batch, then of each label column."""

    def f(v) -> str:
        return "–" if v is None else f"{v:.2f}"

    header = ["batch", "model", "column", "probe bal. acc. (chance)", "same in k-NN (chance)"]
    body = []
    for e in entries:
        for i, (model, per) in enumerate(e["models"].items()):
            items = [(e["column"], per["batch"])] + list(per["labels"].items())
            for j, (col, d) in enumerate(items):
                body.append(
                    [
                        e["column"] if i == 0 and j == 0 else "",
                        model if j == 0 else "",
                        col if j else f"{col} (batch)",
                        f"{f(d['probe_balanced_accuracy'])} ({f(d['probe_chance'])})",
                        f"{f(d['knn_same_share'])} ({f(d['knn_chance'])})",
                    ]
                )
    return header, body


def warnings(entries: list[dict]) -> list[str]:
    return [
        f"{model}: {per['warning']}"
        for e in entries
        for model, per in e["models"].items()
        if per["warning"]
    ]
