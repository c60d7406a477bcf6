"""Zero-shot classification of indexed slides by class prototypes ("molecular prompting",
THREADS paper), on :class:`threads_search.eval.embedding.Prototypes` (prototype = mean of the
class's L2-normalised embeddings, re-normalised; a slide goes to the highest cosine; classes in
``eval.embedding.class_order``: sorted by value, numbers numerically). Scores are cosines in
[-1, 1].

What this adds for an index: prototype samples are the indexed molecular samples or slides that
have a value in a metadata column; classes with fewer than ``min_samples`` members are left out
(:class:`SmallClassWarning`); leave-one-out when the scored slides are themselves the prototype
samples (``prototypes="slide"``: a slide never scores against a prototype holding its own
embedding; a class left with no other member scores NaN for that slide).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from threads_search.errors import InputError
from threads_search.eval.embedding import Prototypes, class_codes, class_order, nearest


class SmallClassWarning(UserWarning):
    """Classes with fewer than ``min_samples`` prototype samples were left out."""


def build_prototypes(
    vectors: np.ndarray, labels: list, min_samples: int, what: str = "samples"
) -> tuple[Prototypes, dict, dict]:
    """Prototypes from normalised ``vectors`` ``[n, E]`` and their ``labels`` (no nulls), and
    the sizes of every class and of those excluded (fewer than ``min_samples`` members, with a
    :class:`SmallClassWarning`); none left → ``InputError``."""
    classes = class_order(labels)
    counts = np.bincount(class_codes(labels, classes), minlength=len(classes))
    sizes = {c: int(n) for c, n in zip(classes, counts, strict=True)}
    excluded = {c: n for c, n in sizes.items() if n < min_samples}
    if excluded:
        warnings.warn(
            SmallClassWarning(
                f"classes with fewer than {min_samples} {what} left out: "
                + ", ".join(f"{c} ({n})" for c, n in excluded.items())
            ),
            stacklevel=3,
        )
    kept = [c for c in classes if c not in excluded]
    if not kept:
        raise InputError(
            f"no class has at least {min_samples} {what} (class sizes: {sizes}); "
            "lower min_samples or index more labelled samples"
        )
    return Prototypes.fit(vectors, labels, kept), sizes, excluded


def classify_slides(
    src,
    slides,
    targets: np.ndarray,
    label: str,
    by_slide: bool,
    min_samples: int,
    kind: str | None = None,
    chunk: int = 16_384,
) -> pd.DataFrame:
    """Prototypes from ``src`` (a :class:`~threads_search.query.space.Space`: molecular or
    slides) grouped by column ``label`` (null labels skipped; ``kind`` restricts molecular
    samples), scores for rows ``targets`` of ``slides`` (leave-one-out when ``by_slide``).
    → ``slide_id, predicted, score_<class>...`` (+ ``label`` when ``slides`` has it), with
    ``attrs`` class_sizes, excluded_classes, min_samples, prototypes, label. Raises
    ``InputError`` naming the fault."""
    if label not in src.table.columns:
        raise InputError(
            f"no column {label!r} in the {src.name} table; columns: "
            + ", ".join(map(str, src.table.columns))
        )
    mask = np.array(src.table[label].notna(), dtype=bool)
    if kind is not None:
        mask &= (src.table["kind"] == kind).to_numpy()
    src_rows = np.flatnonzero(mask)
    if src_rows.size == 0:
        raise InputError(_no_labels(src, slides, label, by_slide, kind))
    labels = src.table[label].iloc[src_rows].tolist()
    what = "slides" if by_slide else "molecular samples"
    protos, sizes, excluded = build_prototypes(src.rows(src_rows), labels, min_samples, what)
    own = None
    if by_slide:
        lookup = dict(zip(src_rows.tolist(), protos.codes(labels).tolist(), strict=True))
        own = np.array([lookup.get(r, -1) for r in targets.tolist()], np.int64)
    parts = [
        protos.scores(
            slides.rows(targets[a : a + chunk]), None if own is None else own[a : a + chunk]
        )
        for a in range(0, len(targets), chunk)
    ]
    scores = np.vstack(parts) if parts else np.zeros((0, len(protos.classes)))
    best = nearest(scores)
    out = pd.DataFrame(
        {
            "slide_id": slides.table["slide_id"].take(targets).to_numpy(),
            "predicted": [protos.classes[i] if i >= 0 else None for i in best],
        }
    )
    for j, c in enumerate(protos.classes):
        out[f"score_{c}"] = scores[:, j]
    if label in slides.table.columns:
        out[label] = slides.table[label].take(targets).to_numpy()
    out.attrs.update(
        class_sizes=sizes,
        excluded_classes=excluded,
        min_samples=min_samples,
        prototypes="slide" if by_slide else "molecular",
        label=label,
    )
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
