"""Training that cannot learn the site shortcut: ``train --balance-by COLUMN`` (e.g. ``site``).

In a multi-site archive every patch feature carries the site's stain look, and in the training
set the site may go with the diagnosis. InfoNCE with in-batch negatives then learns "which
site": a negative from another site is rejected by its colour alone. Balancing by a
patient-level column of ``--metadata`` removes that shortcut in two places:

- **Batches** (:class:`GroupedBatches`): each batch holds the training items of ONE value of the
  column, so in-batch negatives share the site and only the tissue tells them apart. A value's
  items are shuffled and cut into ``ceil(n / batch_size)`` near-equal batches (never a lone
  last item); the batches of all values are then shuffled together. Every training item is used
  exactly once an epoch, so each value contributes in **proportion** to its items (as unbalanced
  training does; equal shares would repeat the items of small sites and overfit them). Values
  with fewer than 2 training items cannot form a batch: their items are merged into a mixed
  *remainder* (cut the same way), counted in the matching report — never dropped.
- **Validation** (:func:`within_group_recall`): cross-modal recall is computed within each value
  (the gallery holds the validation items of the same value) and averaged over the values with
  at least 2 items of a modality; that mean is ``val_mean_recall`` (what model selection uses by
  default), so selection does not reward site matching. The plain all-gallery mean stays in the
  log as ``val_mean_recall_all``. A recall@k with k at least the value's item count is 1 for any
  model: constant over epochs, it does not move the selection.

Column values (:func:`assign_groups`) are looked up in the metadata by the item's slide ids,
else its sample ids, else its patient id (the most specific rows that name it decide); items
without a value form the ``(missing)`` group (reported). A column that is absent, empty, or has a single value among the training
items is refused (:class:`TrainingDataError` naming the column, the file and the fix).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from trainer.errors import TrainingDataError

MISSING = "(missing)"  # group of items whose patient has no value in the column
MIN_GROUP = 2  # fewest training items of a value that form batches of their own


def _few(ids, n: int = 5) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:n]) + (f" … ({len(ids)} in all)" if len(ids) > n else "")


def _value(v) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip()
    return s if s and s.lower() != "nan" else None


def assign_groups(items, metadata: str | None, column: str, option: str) -> dict:
    """Set ``item.groups[column]`` for every item (train and validation) from the metadata
    column (``MISSING`` where its patient, slides and samples have no value). ``option`` is the
    CLI option asking for it (for the messages). Returns the report part: ``option``, per value
    its ``train``/``val`` item counts, ``missing`` (count and examples)."""
    from threads_search.molecular.tables import read_metadata

    if not metadata:
        raise TrainingDataError(
            f"{option} {column} needs --metadata FILE: a table with patient_id and a {column!r} "
            f"column (one value per patient); give it, or drop {option}"
        )
    meta = read_metadata(metadata)
    if column not in meta.columns:
        cols = [str(c) for c in meta.columns]
        raise TrainingDataError(
            f"{option} {column}: metadata {metadata} has no column {column!r} (columns: "
            f"{_few(cols, 12)}); name one of its columns, or add {column!r} to the file"
        )
    lookup: dict[tuple[str, str], set[str]] = {}
    for col in ("slide_id", "sample_id", "patient_id"):
        if col in meta.columns:
            for key, v in zip(meta[col], meta[column], strict=True):
                val = _value(v)
                if isinstance(key, str) and val is not None:
                    lookup.setdefault((col, key), set()).add(val)
    if not lookup:
        raise TrainingDataError(
            f"{option} {column}: column {column!r} of metadata {metadata} is empty (no row has "
            "a value); fill it, or drop the option"
        )
    conflicts = []
    for it in items:
        levels = [  # the most specific rows that name the bag decide
            [("slide_id", s) for s in it.slides],
            [("sample_id", s) for s in (it.rna, it.dna) if s],
            [("patient_id", it.patient_id)],
        ]
        found: set[str] = set()
        for keys in levels:
            found = set().union(*(lookup.get(k, set()) for k in keys))
            if found:
                break
        if len(found) > 1:
            conflicts.append(f"{it.key} ({'/'.join(sorted(found))})")
        it.groups[column] = found.pop() if len(found) == 1 else MISSING
    if conflicts:
        raise TrainingDataError(
            f"{option} {column}: metadata {metadata} gives one bag several {column!r} values: "
            f"{_few(conflicts)}; a bag needs one value (fix the column, or train with "
            "--bag-by slide if the value is per slide)"
        )
    train = [it.groups[column] for it in items if it.split == "train"]
    known = sorted({v for v in train if v != MISSING})
    if not known:
        raise TrainingDataError(
            f"{option} {column}: column {column!r} of metadata {metadata} has no value for any "
            f"of the {len(train)} training items (items' patients look like "
            f"{_few([it.patient_id for it in items], 2)}); fix the ids or the column"
        )
    if len(known) < 2:
        raise TrainingDataError(
            f"{option} {column}: every training item with a value has {column!r} = "
            f"{known[0]!r} (metadata {metadata}): there is nothing to balance or re-style; "
            f"drop {option}, or use a column with at least 2 values"
        )
    values: dict[str, dict[str, int]] = {}
    for it in items:
        c = values.setdefault(it.groups[column], {"train": 0, "val": 0})
        c[it.split] = c.get(it.split, 0) + 1
    missing = [it.key for it in items if it.groups[column] == MISSING]
    return {
        "option": option,
        "values": dict(sorted(values.items())),
        "missing": {"count": len(missing), "examples": sorted(missing)[:5]},
    }


def remainder_report(part: dict) -> dict:
    """The values with fewer than :data:`MIN_GROUP` training items (merged into the mixed
    remainder batches) and their item count, from an :func:`assign_groups` report part."""
    small = {v: c["train"] for v, c in part["values"].items() if 0 < c["train"] < MIN_GROUP}
    return {"values": sorted(small), "items": sum(small.values())}


class GroupedBatches:
    """Batches of one column value each (module docstring). ``items``: the training items,
    with ``groups[column]`` set; ``len()`` is the number of batches an epoch (fixed)."""

    def __init__(self, items, column: str, batch_size: int):
        self.column, self.batch_size = column, batch_size
        by: dict[str, list] = {}
        for it in items:
            by.setdefault(it.groups[column], []).append(it)
        self.groups = {v: g for v, g in sorted(by.items()) if len(g) >= MIN_GROUP}
        self.remainder = [it for v, g in sorted(by.items()) if len(g) < MIN_GROUP for it in g]

    def _n(self, n: int) -> int:
        return math.ceil(n / self.batch_size) if n else 0

    def __len__(self) -> int:
        return sum(self._n(len(g)) for g in self.groups.values()) + self._n(len(self.remainder))

    def _cut(self, part: list, rng: np.random.Generator) -> list[list]:
        order = rng.permutation(len(part))
        return [[part[j] for j in chunk] for chunk in np.array_split(order, self._n(len(part)))]

    def epoch(self, rng: np.random.Generator) -> list[list]:
        """This epoch's batches (lists of items), drawn from ``rng``: each value's items
        shuffled and cut into near-equal batches, then all batches shuffled together."""
        batches = [b for g in self.groups.values() for b in self._cut(g, rng)]
        if self.remainder:
            batches += self._cut(self.remainder, rng)
        return [batches[i] for i in rng.permutation(len(batches))]


def within_group_recall(emb: dict, items, column: str, recall_fn) -> dict[str, float]:
    """Recall within each value of ``column``. ``emb``: :func:`trainer.validate.embed_items`
    of ``items``; for each modality and each value with at least 2 items of it,
    ``recall_fn(slide [n, E], mol [n, E])`` → {name: recall} on that value's items only (row i
    of both is one item). Returns each recall averaged over the values
    (``val_<mod>_<name>_within``), their grand mean ``val_mean_recall`` and the number of values
    that counted (``val_groups_<mod>``)."""
    out: dict[str, float] = {}
    every = []
    for mod in ("rna", "dna"):
        if mod not in emb:
            continue
        idx = emb[f"{mod}_idx"]
        labels = np.array([items[i].groups[column] for i in idx], dtype=object)
        sums: Counter = Counter()
        n_groups = 0
        for v in sorted(set(labels)):
            rows = np.flatnonzero(labels == v)
            if len(rows) < 2:
                continue
            n_groups += 1
            for name, r in recall_fn(emb["slide"][idx[rows]], emb[mod][rows]).items():
                sums[name] += float(r)
        if not n_groups:
            continue
        out[f"val_groups_{mod}"] = float(n_groups)
        for name, total in sums.items():
            out[f"val_{mod}_{name}_within"] = total / n_groups
            every.append(total / n_groups)
    if every:
        out["val_mean_recall"] = float(np.mean(every))
    return out


def format_groups(report: dict) -> str:
    """The report's ``groups`` part as terminal lines ('' when no option asked for one)."""
    lines = []
    for column, part in (report.get("groups") or {}).items():
        vals = ", ".join(f"{v} {c['train']}/{c.get('val', 0)}" for v, c in part["values"].items())
        lines.append(f"{part['option']} {column}: items train/val per value: {vals}")
        if part["missing"]["count"]:
            lines.append(
                f"  {part['missing']['count']} item(s) without a {column!r} value → group "
                f"{MISSING!r}: {_few(part['missing']['examples'])}"
            )
        rem = part.get("remainder")
        if rem and rem["items"]:
            lines.append(
                f"  {rem['items']} training item(s) of values with fewer than {MIN_GROUP} "
                f"({_few(rem['values'])}) go to mixed remainder batches"
                + (": alone in its batch, it adds no contrastive loss" if rem["items"] == 1 else "")
            )
        stats = part.get("statistics")  # --augment-by (trainer.augment.SiteStyle.summary)
        if stats:
            per = ", ".join(f"{v} {c['items']}/{c['patches']}" for v, c in stats.items())
            lines.append(f"  re-styling statistics from training items/patches: {per}")
    return "\n".join(lines)
