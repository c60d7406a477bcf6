"""Embedding-space evaluation without training: molecular-prompting zero-shot classification
(class prototypes, as in THREADS) and the RankMe effective rank (Garrido et al., 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from threads_search.eval._common import as_labels, as_matrix, l2_normalize, macro_auc


def build_prototypes(emb, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class prototypes from (e.g. molecular) embeddings ``emb [M, D]`` with ``labels [M]``.

    Each row is L2-normalised, rows of a class are averaged, and the mean is L2-normalised
    again. Returns ``(classes [C] sorted, proto [C, D] unit rows, counts [C] int64)``.
    """
    x = l2_normalize(as_matrix(emb, "proto_emb"))
    y = as_labels(labels, len(x), "proto_labels")
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, codes, x)
    proto = l2_normalize(sums / counts[:, None])
    return classes, proto, counts.astype(np.int64)


def prototype_zero_shot(slide_emb, slide_labels, proto_emb, proto_labels) -> dict[str, Any]:
    """Assign each slide to the nearest class prototype ("molecular prompting").

    ``slide_emb [N, D]`` is L2-normalised; prototypes come from :func:`build_prototypes` on
    ``proto_emb [M, D]`` / ``proto_labels [M]``. A slide's class is the prototype at the smallest
    L2 distance between unit vectors, i.e. the largest cosine similarity
    (‖a − b‖² = 2 − 2 cos(a, b)); exact ties go to the first class in sorted order.

    Returns ``classes [C]``, ``counts [C]`` (samples per prototype), ``predictions [N]``,
    ``scores [N, C]`` (cosine similarity of each slide to each prototype, higher = closer), and
    when ``slide_labels [N]`` is given (it may be None): ``accuracy``, ``balanced_accuracy``
    (mean recall over the classes of ``slide_labels``; a slide whose class has no prototype is
    always wrong) and ``auc`` (macro one-vs-rest on ``scores``, see ``macro_auc``).
    """
    x = l2_normalize(as_matrix(slide_emb, "slide_emb"))
    classes, proto, counts = build_prototypes(proto_emb, proto_labels)
    if proto.shape[1] != x.shape[1]:
        raise ValueError(f"slide_emb has D={x.shape[1]} but proto_emb has D={proto.shape[1]}")
    scores = x @ proto.T
    pred = classes[scores.argmax(axis=1)]
    out: dict[str, Any] = {
        "classes": classes,
        "counts": counts,
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
