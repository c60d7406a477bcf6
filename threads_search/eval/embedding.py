"""Embedding-space evaluation without training: molecular-prompting zero-shot classification
(class prototypes, as in THREADS) and the RankMe effective rank (Garrido et al., 2023).

Class prototypes (:class:`Prototypes`) are implemented here once; ``Index.classify``
(:mod:`threads_search.query.prototypes`) builds on them. A class's prototype is the mean of its
members' L2-normalised embeddings, L2-normalised again. A sample scores the cosine similarity to
each prototype and is assigned to the highest, i.e. to the nearest prototype by L2 distance
between unit vectors (‖a − b‖² = 2 − 2 cos(a, b)); exact ties go to the first class. Classes
come in one order everywhere (prototype rows, score columns, tie-breaking):
:func:`class_order`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from threads_search.errors import InputError
from threads_search.eval._common import as_labels, as_matrix, macro_auc
from threads_search.linalg import l2_normalize


def _py(v):
    """numpy scalars → Python scalars (JSON-friendly class names)."""
    return v.item() if isinstance(v, np.generic) else v


def class_order(labels) -> list:
    """The distinct values of ``labels`` (no nulls) in the class order of prototypes: sorted by
    value (numbers numerically, text by code point, as ``np.unique`` and scikit-learn), or by
    their text when the values cannot be compared with one another (text mixed with numbers).
    numpy scalars become Python scalars."""
    values = list(dict.fromkeys(_py(v) for v in labels))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def class_codes(labels, classes: list) -> np.ndarray:
    """Position of each label in ``classes`` (-1 when it is not one) as int64 ``[n]``."""
    pos = {c: i for i, c in enumerate(classes)}
    return np.array([pos.get(_py(v), -1) for v in labels], np.int64)


def nearest(scores: np.ndarray) -> np.ndarray:
    """Column of the highest score of each row of ``scores`` ``[n, C]`` as int64 ``[n]``: the
    first on exact ties, NaN ignored, -1 when a row has no score (all NaN, or C = 0)."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    if filled.shape[1] == 0:
        return np.full(len(filled), -1, np.int64)
    best = filled.argmax(axis=1)
    return np.where(np.isneginf(filled.max(axis=1)), -1, best).astype(np.int64)


@dataclass
class Prototypes:
    """Class prototypes: ``classes`` (in :func:`class_order`), ``sums`` float64 ``[C, E]`` of
    the members' unit embeddings and ``counts`` float64 ``[C]`` (members per class)."""

    classes: list
    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def fit(cls, unit: np.ndarray, labels, classes: list | None = None) -> Prototypes:
        """Prototypes of L2-normalised embeddings ``unit`` ``[n, E]`` with ``labels`` ``[n]``
        (no nulls). ``classes``: the classes to build, in order (default: every label, in
        :func:`class_order`); rows whose label is not one of them are left out."""
        classes = class_order(labels) if classes is None else list(classes)
        codes = class_codes(labels, classes)
        ok = codes >= 0
        sums = np.zeros((len(classes), unit.shape[1]), np.float64)
        np.add.at(sums, codes[ok], np.asarray(unit[ok], np.float64))
        counts = np.bincount(codes[ok], minlength=len(classes)).astype(np.float64)
        return cls(classes, sums, counts)

    @property
    def vectors(self) -> np.ndarray:
        """The prototypes: unit rows float64 ``[C, E]``."""
        return l2_normalize(self.sums / self.counts[:, None], np.float64)

    def codes(self, labels) -> np.ndarray:
        """Class index of each label (-1: not a class) as int64 ``[n]``."""
        return class_codes(labels, self.classes)

    def scores(self, unit: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarities float64 ``[n, C]`` of L2-normalised ``unit`` ``[n, E]`` to the
        prototypes. ``own`` ``[n]`` (class index, -1 = none): leave-one-out for rows that are
        themselves members of class ``own``: their own embedding is taken out of that class's
        prototype before scoring against it (mean of the other members); a class with no other
        member scores NaN for that row."""
        x = np.asarray(unit, np.float64)
        scores = x @ self.vectors.T
        rows = np.flatnonzero(own >= 0) if own is not None else np.zeros(0, np.int64)
        if rows.size:
            c = own[rows]
            rest = self.sums[c] - x[rows]
            norm = np.linalg.norm(rest, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.einsum("ij,ij->i", x[rows], rest) / norm
            s[(self.counts[c] <= 1) | (norm <= 1e-12)] = np.nan
            scores[rows, c] = s
        return scores


def _as_array(classes: list, like: np.ndarray) -> np.ndarray:
    """``classes`` as a numpy array of the labels' dtype (object when they mix types)."""
    return np.array(classes, dtype=like.dtype if like.dtype != object else object)


def build_prototypes(emb, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class prototypes from (e.g. molecular) embeddings ``emb [M, D]`` with ``labels [M]``
    (module docstring). Returns ``(classes [C] in class order, proto [C, D] unit rows,
    counts [C] int64)``."""
    x = l2_normalize(as_matrix(emb, "proto_emb"), np.float64)
    y = as_labels(labels, len(x), "proto_labels")
    protos = Prototypes.fit(x, y)
    return _as_array(protos.classes, y), protos.vectors, protos.counts.astype(np.int64)


def prototype_zero_shot(slide_emb, slide_labels, proto_emb, proto_labels) -> dict[str, Any]:
    """Assign each slide to the nearest class prototype ("molecular prompting").

    ``slide_emb [N, D]`` is L2-normalised; prototypes come from ``proto_emb [M, D]`` /
    ``proto_labels [M]`` (module docstring: nearest prototype = highest cosine, ties to the
    first class in class order).

    Returns ``classes [C]``, ``counts [C]`` (samples per prototype), ``predictions [N]``,
    ``scores [N, C]`` (cosine similarity of each slide to each prototype, higher = closer), and
    when ``slide_labels [N]`` is given (it may be None): ``accuracy``, ``balanced_accuracy``
    (mean recall over the classes of ``slide_labels``; a slide whose class has no prototype is
    always wrong) and ``auc`` (macro one-vs-rest on ``scores``, see ``macro_auc``).
    """
    x = l2_normalize(as_matrix(slide_emb, "slide_emb"), np.float64)
    px = l2_normalize(as_matrix(proto_emb, "proto_emb"), np.float64)
    py = as_labels(proto_labels, len(px), "proto_labels")
    if px.shape[1] != x.shape[1]:
        raise InputError(f"slide_emb has D={x.shape[1]} but proto_emb has D={px.shape[1]}")
    protos = Prototypes.fit(px, py)
    classes = _as_array(protos.classes, py)
    scores = protos.scores(x)
    pred = classes[nearest(scores)]
    out: dict[str, Any] = {
        "classes": classes,
        "counts": protos.counts.astype(np.int64),
        "predictions": pred,
        "scores": scores,
    }
    if slide_labels is not None:
        y = as_labels(slide_labels, len(x), "slide_labels")
        out["accuracy"] = float(np.mean(pred == y))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out["auc"] = macro_auc(y, scores, classes) if len(classes) > 1 else float("nan")
    return out


def rankme(emb, eps: float = 1e-7) -> float:
    """RankMe effective rank of ``emb [N, D]``, in [1, min(N, D)] (up to ``eps``).

    With σ the singular values of the (uncentred) matrix, p_i = σ_i / Σ_j σ_j + eps and
    RankMe = exp(−Σ_i p_i log p_i) (Garrido et al., "RankMe", ICML 2023). An all-zero matrix
    returns 0.0 (fully collapsed).
    """
    x = as_matrix(emb, "emb")
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))
