"""``threads_search.evaluate(index, labels, tasks)``: every task of the run on the same
patient-level folds for THREADS and each baseline (:mod:`.baselines`), as a JSON-ready report
(:mod:`.report` prints and writes it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import InputError
from threads_search.evaluation import baselines as bl
from threads_search.evaluation.batches import batch_effects
from threads_search.evaluation.classification import classification, fewshot
from threads_search.evaluation.retrieval import molecular_retrieval, slide_retrieval, zero_shot
from threads_search.evaluation.survival import check_outcome, survival
from threads_search.evaluation.tasks import (
    Task,
    check_classes,
    join_labels,
    parse_task,
    patient_folds,
    read_labels,
)

Progress = Callable[[int, int, str], None]  # (advance, total, description)


def evaluate(
    index,
    labels,
    tasks,
    *,
    folds: int = 5,
    n_boot: int = 1000,
    n_draws: int = 10,
    split: str | None = None,
    seed: int = 0,
    baselines: bool = True,
    batch: list[str] | tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict:
    """Evaluate ``index`` (an ``Index`` or INDEX_DIR) on ``labels`` (a DataFrame or a CSV /
    TSV / Parquet path keyed by ``slide_id`` and/or ``patient_id``; ``sample_id`` rows label
    molecular samples) for ``tasks`` (``NAME=COLUMN[:kind]`` strings or :class:`Task`; see
    :mod:`.tasks`). ``folds``: patient-level cross-validation folds, unless ``split`` names a
    labels column with ``train``/``test`` values; ``n_boot``: bootstrap resamples (patients) of
    the 95 % intervals; ``n_draws``: few-shot draws per k; ``baselines=False`` scores THREADS
    only; ``batch``: batch columns (labels or index metadata, e.g. "site") whose
    predictability from each model's embeddings is reported beside the classification labels'
    (:mod:`.batches`). Returns the report dict (``tasks``: one entry per task with ``metrics`` model → value,
    lo, hi and ``vs`` THREADS − baseline with its paired interval). Errors: ``InputError`` /
    ``ConfigError`` with one readable line."""
    from threads_search.query import open_index

    index = open_index(index) if isinstance(index, (str, Path)) else index
    labels = read_labels(labels) if isinstance(labels, (str, Path)) else labels.copy()
    tasks = [t if isinstance(t, Task) else parse_task(t, labels) for t in tasks]
    if not tasks:
        raise InputError("no task given: add --task NAME=COLUMN[:kind]")
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"task names must differ: {', '.join(dup)} given twice")
    slides = index.slides
    label_cols = [c for t in tasks if t.kind != "molecular" for c in t.columns]
    if split:
        label_cols.append(split)
    joined = join_labels(slides, labels, label_cols, "slide_id") if label_cols else None
    join = _join_report(slides, labels, joined, label_cols)
    groups = _groups(slides)
    total = len(slides) * bool(baselines) + len(tasks) * 3
    done = [0]

    def tick(n: int, what: str) -> None:
        done[0] += n
        if progress:
            progress(n, total, what)

    emb = {"embeddings": {bl.THREADS: index.vectors("slides")}, "notes": []}
    emb["bag_source"] = None
    if baselines:
        emb = bl.slide_models(index, seed, lambda n: tick(n, "baseline embeddings"))
    models = emb["embeddings"]
    results = []
    for task in tasks:
        res = _run_task(
            task,
            index,
            labels,
            joined,
            groups,
            models,
            folds,
            n_boot,
            n_draws,
            split,
            seed,
            lambda n, t=task: tick(n, f"task {t.name}"),
        )
        results.append({"task": task.name, "kind": task.kind, "columns": list(task.columns), **res})
    class_cols = [t.columns[0] for t in tasks if t.kind in ("classification", "fewshot")]
    effects = batch_effects(slides, labels, joined, list(batch), class_cols, models, seed=seed)
    if progress and done[0] < total:
        progress(total - done[0], total, "done")
    return {
        "index": str(Path(index.root).resolve()),
        "n_slides": int(len(slides)),
        "models": list(models),
        "bag_source": emb.get("bag_source"),
        "notes": emb["notes"],
        "labels": join,
        "settings": {
            "folds": folds,
            "split": split,
            "n_boot": n_boot,
            "n_draws": n_draws,
            "seed": seed,
        },
        "tasks": results,
        "batch_effects": effects,
    }


def _groups(slides: pd.DataFrame) -> np.ndarray:
    """Patient of each slide (its own slide_id when unknown): the unit of folds and resamples."""
    sid = slides["slide_id"].astype(str)
    if "patient_id" not in slides.columns:
        return sid.to_numpy()
    return (
        slides["patient_id"]
        .astype(object)
        .where(slides["patient_id"].notna(), sid)
        .astype(str)
        .to_numpy()
    )


def _join_report(slides, labels, joined, cols) -> dict:
    """How many slides the labels reached; none at all → ``InputError`` saying so."""
    if joined is None:
        return {"rows": int(len(labels)), "slides_joined": None}
    hit = int(joined.notna().any(axis=1).sum())
    keys = [c for c in ("slide_id", "patient_id") if c in labels.columns]
    if hit == 0:
        raise InputError(
            f"the labels joined none of the index's {len(slides)} slides (0 joined; "
            f"{len(labels)} label rows keyed by {', '.join(keys) or 'no slide_id/patient_id'}; "
            f"index slide ids look like {', '.join(slides['slide_id'].astype(str).head(3))})"
        )
    return {"rows": int(len(labels)), "slides_joined": hit, "slides": int(len(slides))}


def _run_task(
    task, index, labels, joined, groups, models, n_folds, n_boot, n_draws, split, seed, tick
) -> dict:
    if task.kind == "molecular":
        return _molecular(task, index, groups, models, n_folds, n_boot, seed, tick)
    vals = joined[list(task.columns)]
    rows = np.flatnonzero(vals.notna().all(axis=1).to_numpy())
    if len(rows) == 0:
        raise InputError(
            f"task {task.name!r}: no slide has a value in {', '.join(task.columns)} after the join"
        )
    g = groups[rows]
    sub = {m: x[rows] for m, x in models.items()}
    sp = joined[split].to_numpy()[rows] if split else None
    base = {"n": int(len(rows)), "n_patients": int(len(np.unique(g)))}
    if task.kind == "survival":
        t, e = check_outcome(
            task.name,
            vals[task.columns[0]].to_numpy()[rows],
            vals[task.columns[1]].to_numpy()[rows],
            n_folds if sp is None else 1,
        )
        folds = patient_folds(e.astype(int), g, n_folds, seed, sp)
        return {**base, **survival(sub, t, e, g, folds, n_boot, seed, tick)}
    y = vals[task.columns[0]].astype(str).to_numpy()[rows]
    check_classes(task, y, g, 1 if task.kind == "retrieval" or sp is not None else n_folds)
    if task.kind == "retrieval":
        tick(len(sub))
        return {**base, **slide_retrieval(sub, y, g, n_boot, seed)}
    folds = patient_folds(y, g, n_folds, seed, sp)
    if task.kind == "classification":
        return {**base, **classification(sub, y, g, folds, n_boot, seed, tick)}
    if task.kind == "fewshot":
        return {**base, **fewshot(sub, y, folds, n_draws, seed, tick)}
    # zeroshot: the molecular samples' labels (same join: sample_id, else patient)
    mol = index.molecular
    mol_y = join_labels(mol, labels, [task.columns[0]], "sample_id")[task.columns[0]]
    keep = np.flatnonzero(mol_y.notna().to_numpy())
    if len(np.unique(mol_y.iloc[keep].astype(str))) < 2:
        raise InputError(
            f"task {task.name!r}: zero-shot needs indexed molecular samples with >= 2 values of "
            f"{task.columns[0]!r} (the labels give {len(keep)} of {len(mol)} samples a value: "
            "add sample_id rows, or patient_id to the slide rows)"
        )
    mol_x = index.vectors("molecular")[keep]
    mol_g = _groups(mol.rename(columns={"sample_id": "slide_id"}))[keep]
    tick(1)
    res = zero_shot(
        sub[bl.THREADS],
        y,
        g,
        mol_x,
        mol_y.iloc[keep].astype(str).to_numpy(),
        mol_g,
        folds,
        n_boot,
        seed,
    )
    return {**base, **res, "note": "molecular prompting exists only in the THREADS space"}


def _molecular(task, index, groups, models, n_folds, n_boot, seed, tick) -> dict:
    mol = index.molecular
    if len(mol) == 0:
        raise InputError(f"task {task.name!r}: the index holds no molecular samples")
    profiles = {k: _profiles(index, k) for k in task.columns}
    mol_x = index.vectors("molecular")
    pats = np.unique(groups)
    if len(pats) < n_folds:
        raise InputError(f"task {task.name!r}: {len(pats)} patients cannot make {n_folds} folds")

    def folds_of(patients):
        from sklearn.model_selection import KFold

        cv = KFold(n_folds, shuffle=True, random_state=seed)
        return [(patients[a], patients[b]) for a, b in cv.split(patients)]

    tick(1)
    res = molecular_retrieval(models, groups, mol_x, mol, profiles, folds_of, n_boot, seed)
    return {"n": int(sum(res["n_queries"].values())), **res}


def _profiles(index, kind: str):
    """The raw profiles of ``kind`` the index was built from (``index.json`` config), as a
    sample × feature frame (RNA: log1p of the values in the model's units; DNA: 0/1), or None."""
    cfg = index.manifest.get("config") or {}
    path = cfg.get(kind)
    if not path or not Path(path).is_file():
        return None
    from threads_search.errors import ThreadsSearchError

    try:
        if kind == "rna":
            from threads_search.molecular import read_rna_matrix

            m = read_rna_matrix(path, units=index.rna_units or "tpm")
            v = m.values
            return np.log1p(v.clip(lower=0)) if m.units != "log" else v
        from threads_search.molecular import read_dna

        return read_dna(path).astype(np.float64)
    except ThreadsSearchError:
        return None
