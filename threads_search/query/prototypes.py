"""Zero-shot classification by class prototypes ("molecular prompting", THREADS paper).

A class prototype is the mean of the L2-normalised embeddings of that class's samples,
re-normalised; a slide is assigned to the nearest prototype (L2 distance on normalised vectors,
i.e. the highest cosine). Scores are cosines in [-1, 1].

Leave-one-out: when a scored slide is itself one of the prototype samples (``prototypes="slide"``),
its own embedding is removed from its class's prototype before scoring against that class
(prototype = mean of the other n - 1 members); a class left with no other member gets score NaN
for that slide.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from threads_search.vectorstore.vectors import normalize


class SmallClassWarning(UserWarning):
    """Classes with fewer than ``min_samples`` prototype samples were left out."""


@dataclass
class Prototypes:
    """``classes`` (sorted), ``sums`` float64 ``[C, E]`` of normalised member embeddings,
    ``counts`` ``[C]``, ``class_sizes`` (every labelled class, before exclusion) and ``excluded``
    (class → size, below ``min_samples``)."""

    classes: list
    sums: np.ndarray
    counts: np.ndarray
    class_sizes: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)

    @property
    def vectors(self) -> np.ndarray:
        """Normalised prototypes float32 ``[C, E]``."""
        return normalize(self.sums / self.counts[:, None])


def build_prototypes(
    vectors: np.ndarray, labels: pd.Series, min_samples: int, what: str = "samples"
) -> Prototypes:
    """Prototypes from normalised ``vectors`` ``[n, E]`` and their ``labels`` (no nulls).
    Classes with fewer than ``min_samples`` members are excluded with a
    :class:`SmallClassWarning`; none left → ValueError."""
    labels = pd.Series(labels).reset_index(drop=True)
    sizes = labels.value_counts(sort=False)
    sizes = {_py(c): int(n) for c, n in sorted(sizes.items(), key=lambda t: str(t[0]))}
    excluded = {c: n for c, n in sizes.items() if n < min_samples}
    kept = [c for c in sizes if c not in excluded]
    if excluded:
        warnings.warn(
            SmallClassWarning(
                f"classes with fewer than {min_samples} {what} left out: "
                + ", ".join(f"{c} ({n})" for c, n in excluded.items())
            ),
            stacklevel=3,
        )
    if not kept:
        raise ValueError(
            f"no class has at least {min_samples} {what} (class sizes: {sizes}); "
            "lower min_samples or index more labelled samples"
        )
    codes = _codes(labels, kept)
    sums = np.zeros((len(kept), vectors.shape[1]), np.float64)
    ok = codes >= 0
    np.add.at(sums, codes[ok], vectors[ok].astype(np.float64))
    counts = np.bincount(codes[ok], minlength=len(kept)).astype(np.float64)
    return Prototypes(kept, sums, counts, sizes, excluded)


def score(x: np.ndarray, protos: Prototypes, own_class: np.ndarray | None = None) -> np.ndarray:
    """Cosine scores float64 ``[n, C]`` of normalised ``x`` ``[n, E]`` against ``protos``.
    ``own_class`` ``[n]`` (class index, -1 = none): leave-one-out for those rows (module
    docstring)."""
    scores = x.astype(np.float64) @ protos.vectors.T.astype(np.float64)
    if own_class is None:
        return scores
    rows = np.flatnonzero(own_class >= 0)
    if rows.size:
        c = own_class[rows]
        loo = protos.sums[c] - x[rows].astype(np.float64)
        norm = np.linalg.norm(loo, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.einsum("ij,ij->i", x[rows].astype(np.float64), loo) / norm
        s[(protos.counts[c] <= 1) | (norm <= 1e-12)] = np.nan
        scores[rows, c] = s
    return scores


def predict(scores: np.ndarray, classes: list) -> list:
    """The class of the highest score per row (NaN ignored; all NaN → None)."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = filled.argmax(axis=1)
    none = np.isneginf(filled.max(axis=1)) if scores.shape[1] else np.ones(len(scores), bool)
    return [None if n else classes[b] for b, n in zip(best, none, strict=True)]


def _codes(labels: pd.Series, classes: list) -> np.ndarray:
    """Index of each label in ``classes`` (-1 when absent) as int64 ``[n]``."""
    pos = {c: i for i, c in enumerate(classes)}
    return np.array([pos.get(_py(v), -1) for v in labels], np.int64)


def _py(v):
    """numpy scalars → Python scalars (JSON-friendly class names)."""
    return v.item() if isinstance(v, np.generic) else v


def classify_slides(
    src, slides, targets: np.ndarray, label: str, by_slide: bool, min_samples: int,
    kind: str | None = None, chunk: int = 16_384,
) -> pd.DataFrame:  # fmt: skip
    """Prototypes from ``src`` (a :class:`~threads_search.query.space.Space`: molecular or
    slides) grouped by column ``label`` (null labels skipped; ``kind`` restricts molecular
    samples), scores for rows ``targets`` of ``slides`` (leave-one-out when ``by_slide``).
    → ``slide_id, predicted, score_<class>...`` (+ ``label`` when ``slides`` has it), with
    ``attrs`` class_sizes, excluded_classes, min_samples, prototypes, label."""
    if label not in src.table.columns:
        raise ValueError(
            f"no column {label!r} in the {src.name} table; columns: "
            + ", ".join(map(str, src.table.columns))
        )
    mask = np.array(src.table[label].notna(), dtype=bool)
    if kind is not None:
        mask &= (src.table["kind"] == kind).to_numpy()
    src_rows = np.flatnonzero(mask)
    if src_rows.size == 0:
        raise ValueError(_no_labels(src, slides, label, by_slide, kind))
    labels = src.table[label].iloc[src_rows].map(_py).reset_index(drop=True)
    what = "slides" if by_slide else "molecular samples"
    protos = build_prototypes(src.rows(src_rows), labels, min_samples, what)
    own = None
    if by_slide:
        codes = _codes(labels, protos.classes)
        lookup = dict(zip(src_rows.tolist(), codes.tolist(), strict=True))
        own = np.array([lookup.get(r, -1) for r in targets.tolist()], np.int64)
    parts = [
        score(
            slides.rows(targets[a : a + chunk]), protos, None if own is None else own[a : a + chunk]
        )
        for a in range(0, len(targets), chunk)
    ]
    scores = np.vstack(parts) if parts else np.zeros((0, len(protos.classes)))
    out = pd.DataFrame(
        {
            "slide_id": slides.table["slide_id"].take(targets).to_numpy(),
            "predicted": predict(scores, protos.classes),
        }
    )
    for j, c in enumerate(protos.classes):
        out[f"score_{c}"] = scores[:, j]
    if label in slides.table.columns:
        out[label] = slides.table[label].take(targets).to_numpy()
    out.attrs.update(
        class_sizes=protos.class_sizes, excluded_classes=protos.excluded,
        min_samples=min_samples, prototypes="slide" if by_slide else "molecular", label=label,
    )  # fmt: skip
    return out


def _no_labels(src, slides, label: str, by_slide: bool, kind: str | None) -> str:
    """Why no prototype sample has a ``label`` value, and how to fix it."""
    if by_slide:
        return f"no slide has a value in column {label!r}: give one in the metadata (--metadata)"
    mol = src.table if kind is None else src.table[src.table["kind"] == kind]
    what = f"{kind.upper()} sample" if kind else "molecular sample"
    if len(mol) == 0:
        return f"the index holds no {what}s: index profiles with --rna/--dna"
    msg = f"no {what} has a value in column {label!r}"
    n_slides = int(slides.table[label].notna().sum()) if label in slides.table.columns else 0
    if n_slides:
        no_patient = (
            int(mol["patient_id"].isna().sum()) if "patient_id" in mol.columns else len(mol)
        )
        msg += (
            f", but {n_slides} slide(s) do: the metadata gives {label!r} per slide, and a slide's "
            "values reach molecular samples only through a patient_id shared by the slide and "
            f"the sample ({no_patient} of the {len(mol)} {what}s have no patient_id). Re-run "
            "`threads-search index` with --pairs linking slides to samples (slide_id, sample_id"
            "[, patient_id]) and a patient_id column on the metadata's slide rows, or add "
            "metadata rows keyed by sample_id or patient_id"
        )
    else:
        msg += ": give it in the metadata (--metadata) on rows keyed by sample_id or patient_id"
    return msg
