"""Tasks of an evaluation: their syntax (``NAME=COLUMN[:kind]``), the join of a labels table onto
the index's slides and molecular samples, and the patient-level folds every model shares.

Task syntax (``--task``, or strings given to ``evaluate``):

- ``NAME=COLUMN`` / ``NAME=COLUMN:classification``: linear probe on a categorical column (the
  default kind for text, boolean and few-valued integer columns);
- ``NAME=COLUMN:fewshot``, ``NAME=COLUMN:retrieval``, ``NAME=COLUMN:zeroshot``;
- ``NAME=TIME,EVENT:survival``: survival time (any unit) and event (1/true = event observed,
  0/false = censored) columns;
- ``NAME=rna,dna:molecular`` (or just ``rna`` / ``dna``): RNA→slide and DNA→slide retrieval of
  the indexed pairs (no label column).

Label join (as metadata joins): a slide takes the labels row whose ``slide_id`` matches, else
its patient's row (``patient_id``); a molecular sample the row whose ``sample_id`` matches, else
its patient's. A patient's value is that of its patient-only row, else the value its slide rows
agree on (conflicting slide rows give the patient no value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import ConfigError, InputError

KINDS = ("classification", "fewshot", "retrieval", "zeroshot", "survival", "molecular")
MAX_CLASSES = 20  # an integer column with more values is not taken as categorical by default


@dataclass(frozen=True)
class Task:
    """One task: ``name``, ``kind`` (one of ``KINDS``) and its ``columns`` (one label column;
    time and event for survival; the molecular kinds ``rna``/``dna`` for molecular)."""

    name: str
    kind: str
    columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def spec(self) -> str:
        return f"{self.name}={','.join(self.columns)}:{self.kind}"


def parse_task(text: str, labels: pd.DataFrame | None = None) -> Task:
    """A :class:`Task` from ``NAME=COLUMN[:kind]`` (module docstring). Without a kind, a
    categorical column of ``labels`` is a classification task; anything else asks for one."""
    name, sep, rest = str(text).partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not name or not rest:
        raise ConfigError(
            f"task {text!r}: write NAME=COLUMN[:kind] (e.g. subtype=subtype, "
            "os=time,event:survival, pairs=rna,dna:molecular)"
        )
    cols_text, colon, kind = rest.rpartition(":") if ":" in rest else (rest, "", "")
    kind = kind.strip().lower()
    if colon and kind not in KINDS:
        raise ConfigError(f"task {name!r}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    cols = tuple(c.strip() for c in cols_text.split(",") if c.strip())
    if not cols:
        raise ConfigError(f"task {name!r}: no column given")
    if not kind:
        kind = _default_kind(name, cols, labels)
    want = {"survival": 2}.get(kind, None if kind == "molecular" else 1)
    if want is not None and len(cols) != want:
        what = "TIME,EVENT" if kind == "survival" else "one COLUMN"
        raise ConfigError(f"task {name!r}: {kind} takes {what}, got {','.join(cols)}")
    if kind == "molecular":
        bad = [c for c in cols if c.lower() not in ("rna", "dna")]
        if bad:
            raise ConfigError(f"task {name!r}: molecular takes rna and/or dna, got {bad}")
        cols = tuple(dict.fromkeys(c.lower() for c in cols))
    return Task(name, kind, cols)


def _default_kind(name: str, cols: tuple[str, ...], labels: pd.DataFrame | None) -> str:
    if len(cols) != 1:
        raise ConfigError(f"task {name!r}: several columns need a kind (e.g. :survival)")
    if labels is None or cols[0] not in labels.columns:
        return "classification"  # the join reports an unknown column
    s = labels[cols[0]].dropna()
    types = pd.api.types
    categorical = (
        types.is_string_dtype(s) or types.is_bool_dtype(s) or types.is_object_dtype(s)
    ) or isinstance(s.dtype, pd.CategoricalDtype)
    if not categorical and pd.api.types.is_integer_dtype(s) and s.nunique() <= MAX_CLASSES:
        categorical = True
    if not categorical:
        raise ConfigError(
            f"task {name!r}: column {cols[0]!r} is numeric with {s.nunique()} values; name a "
            f"kind (e.g. {name}=TIME,EVENT:survival, or :classification to use its values)"
        )
    return "classification"


def read_labels(path: str | Path) -> pd.DataFrame:
    """The labels table (CSV, TSV or Parquet) with ``slide_id``, ``sample_id`` and/or
    ``patient_id`` (as metadata; checked by ``molecular.tables.read_metadata``)."""
    from threads_search.errors import MissingError, ThreadsSearchError
    from threads_search.molecular.tables import read_metadata

    if not Path(path).is_file():
        raise MissingError(f"labels file not found: {path}")
    try:
        return read_metadata(path)
    except ThreadsSearchError as e:  # its messages say "metadata"; here it is the labels
        raise type(e)(str(e).replace("metadata", "labels", 1)) from None


def join_labels(table: pd.DataFrame, labels: pd.DataFrame, columns, id_col: str) -> pd.DataFrame:
    """Values of ``columns`` of ``labels`` for each row of ``table`` (the index's slides,
    ``id_col="slide_id"``, or molecular samples, ``"sample_id"``), same row order; missing →
    NaN (module docstring). Unknown columns → ``InputError`` listing the labels' columns."""
    columns = list(dict.fromkeys(columns))
    unknown = [c for c in columns if c not in labels.columns]
    if unknown:
        raise InputError(
            f"no column {', '.join(map(repr, unknown))} in the labels (columns: "
            f"{', '.join(map(str, labels.columns))})"
        )
    out = pd.DataFrame(index=range(len(table)), columns=columns, dtype=object)
    if id_col in labels.columns:
        own = labels.dropna(subset=[id_col]).set_index(id_col)[columns]
        out.loc[:, columns] = own.reindex(table[id_col].astype(str).to_numpy()).to_numpy()
    if "patient_id" in labels.columns and "patient_id" in table.columns:
        per_patient = _patient_values(labels, columns)
        pat = per_patient.reindex(table["patient_id"].astype(str).to_numpy()).to_numpy()
        out = out.where(out.notna(), pd.DataFrame(pat, columns=columns))
    return out.infer_objects()


def _patient_values(labels: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per patient_id: the patient-only row's values, else the values its keyed rows
    agree on (NaN on conflict)."""
    keyed = pd.Series(False, index=labels.index)
    for c in ("slide_id", "sample_id"):
        if c in labels.columns:
            keyed |= labels[c].notna()
    rows = labels.dropna(subset=["patient_id"])
    own = rows[~keyed.loc[rows.index]].drop_duplicates("patient_id").set_index("patient_id")
    agreed = (
        rows[keyed.loc[rows.index]]
        .groupby("patient_id")[columns]
        .agg(lambda s: s.dropna().iloc[0] if s.dropna().nunique() == 1 else np.nan)
    )
    return own[columns].combine_first(agreed) if len(own) else agreed


def patient_folds(
    y, groups, n_folds: int, seed: int = 0, split=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) pairs: from a ``split`` column (values ``train``/``test``, other
    values such as ``val`` joining training) when given, else a patient-level stratified k-fold
    (``StratifiedGroupKFold`` on ``y``; plain ``GroupKFold`` when ``y`` is None), the same for
    every model of the run. Fewer patients than folds → ``InputError``."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups).astype(str)
    if split is not None:
        s = pd.Series(split).astype(str).str.lower().to_numpy()
        test = np.flatnonzero(s == "test")
        train = np.flatnonzero((s != "test") & pd.notna(split))
        if not len(test) or not len(train):
            raise InputError(
                f"the split column needs rows marked 'test' and others for training (got "
                f"{len(train)} training and {len(test)} test rows)"
            )
        return [(train, test)]
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise InputError(f"{n_groups} patients cannot make {n_folds} folds; lower --folds")
    if y is None:
        return list(GroupKFold(n_folds).split(groups, groups=groups))
    cv = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(groups)), np.asarray(y).astype(str), groups))


def check_classes(task: Task, y, groups, n_folds: int, min_per_class: int = 2) -> None:
    """A labelled task needs >= 2 classes, each with enough patients for the folds: the
    message names the small classes and their patient counts."""
    support = pd.Series(np.asarray(groups)).groupby(np.asarray(y)).nunique()
    need = max(min_per_class, n_folds)
    small = support[support < need]
    if len(support) < 2:
        raise InputError(
            f"task {task.name!r}: column {task.columns[0]!r} has {len(support)} class(es) among "
            "the joined slides; it needs at least 2"
        )
    if len(small):
        shown = ", ".join(f"{k} ({v})" for k, v in list(small.items())[:5])
        more = f" and {len(small) - 5} more classes" if len(small) > 5 else ""
        hint = (
            f"; {len(support)} values: is {task.columns[0]!r} continuous?"
            if len(support) > MAX_CLASSES
            else "; lower --folds or merge small classes"
        )
        raise InputError(
            f"task {task.name!r}: too few samples per class for {n_folds} folds (need >= {need} "
            f"patients per class): {shown}{more}{hint}"
        )


def tested_rows(folds) -> np.ndarray:
    """The rows that some fold tests (all of them for k-fold; the test rows of a split)."""
    return np.unique(np.concatenate([te for _, te in folds]))
