"""Retrieval metrics on cosine similarity: cross-modal recall@k (slide→molecule and back) and
leave-one-out slide→slide retrieval with patient-level exclusion (top-k accuracy, mMV@k, mAP@k).

Ranking convention everywhere: descending cosine similarity; exact ties are broken by the lower
gallery row number (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from threads_search.errors import ConfigError, InputError
from threads_search.eval._common import as_ks, as_labels, as_matrix, encode, top_k_stable
from threads_search.linalg import l2_normalize

_CHUNK = 1024  # queries scored at once: [chunk, N] float64 similarities in memory


def cross_modal_recall(
    query_emb, gallery_emb, match, ks: Iterable[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k of a gallery for a set of queries, e.g. slides→molecular samples.

    ``query_emb [Q, D]`` and ``gallery_emb [G, D]`` are L2-normalised here and ranked by cosine
    similarity. ``match`` is either an integer array ``[Q]`` giving each query's one true gallery
    row, or a boolean relevance matrix ``[Q, G]`` (several true items allowed).

    ``R@k`` = fraction of queries with at least one relevant item among their top ``k`` (``k`` is
    capped at ``G``); a query with no relevant item at all counts as a miss. Returns
    ``{"R@1": .., "R@5": .., "R@10": ..}`` (keys follow ``ks``), values in [0, 1].
    """
    q = l2_normalize(as_matrix(query_emb, "query_emb"), np.float64)
    g = l2_normalize(as_matrix(gallery_emb, "gallery_emb"), np.float64)
    if q.shape[1] != g.shape[1]:
        raise InputError(f"query_emb has D={q.shape[1]} but gallery_emb has D={g.shape[1]}")
    ks = as_ks(ks)
    n_q, n_g = len(q), len(g)
    rel = _relevance(match, n_q, n_g)
    first_hit = np.empty(n_q, np.int64)  # 0-based rank of the best-ranked relevant item
    cols = np.arange(n_g)
    for a in range(0, n_q, _CHUNK):
        sims, r = q[a : a + _CHUNK] @ g.T, rel[a : a + _CHUNK]
        best = np.where(r, sims, -np.inf).max(axis=1, keepdims=True)
        j = (r & (sims == best)).argmax(axis=1)[:, None]  # lowest column among the best relevant
        rank = (sims > best).sum(axis=1) + ((sims == best) & (cols < j)).sum(axis=1)
        first_hit[a : a + _CHUNK] = np.where(r.any(axis=1), rank, n_g)
    return {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}


def _relevance(match, n_q: int, n_g: int) -> np.ndarray:
    """Boolean ``[Q, G]`` relevance from an index array ``[Q]`` or a boolean matrix ``[Q, G]``."""
    m = np.asarray(match)
    if m.ndim == 2:
        if m.shape != (n_q, n_g):
            raise InputError(f"match matrix has shape {m.shape}, expected (Q, G) = {(n_q, n_g)}")
        if m.dtype != bool:
            raise InputError(f"match matrix must be boolean, got dtype {m.dtype}")
        return m
    if m.ndim != 1 or len(m) != n_q:
        raise InputError(
            f"match must be [Q={n_q}] indices or a [Q, G] boolean matrix, got {m.shape}"
        )
    if not np.issubdtype(m.dtype, np.integer):
        raise InputError(f"match indices must be integers, got dtype {m.dtype}")
    if m.size and (m.min() < 0 or m.max() >= n_g):
        raise InputError(f"match indices must lie in [0, {n_g}), got [{m.min()}, {m.max()}]")
    rel = np.zeros((n_q, n_g), bool)
    rel[np.arange(n_q), m] = True
    return rel


def retrieval_metrics(
    emb,
    labels,
    ks: Iterable[int] = (1, 5, 10),
    groups=None,
    *,
    ap_denominator: Literal["min", "k"] = "min",
    mv_ties: Literal["rank", "any"] = "rank",
) -> dict[str, float]:
    """Leave-one-out retrieval: every item queries all the others.

    ``emb [N, D]`` (L2-normalised here), ``labels [N]`` (any comparable values), ``groups [N]``
    (e.g. patient ids) or None. A query's candidates are all other items, and when ``groups`` is
    given, none of the query's own group (patient-level exclusion: a patient's other slides are
    never retrieved). Candidates are ranked by cosine similarity (ties: lower row first). If a
    query has fewer than ``k`` candidates, its top-k is all of them. "Relevant" = same label.

    For each k in ``ks``, means over the N queries of:

    - ``acc@k``: 1 if any of the top k is relevant.
    - ``mMV@k``: 1 if the majority label of the top k equals the query's label. With
      ``mv_ties="rank"`` (default) a tie between labels goes to the tied label that appears
      highest in the ranking; with ``mv_ties="any"`` the query counts as correct when its label
      is among the tied labels (what the Patho-Bench code does).
    - ``mAP@k``: AP@k = (1 / d) · Σ_{i=1..k} P@i · rel_i, where rel_i is 1 when the item at
      rank i is relevant, P@i = (relevant items in ranks 1..i) / i, and d = min(k, R) with R
      the query's number of relevant candidates (after exclusions) for
      ``ap_denominator="min"`` (default), or d = k for ``"k"`` (the Patho-Bench code).
      A query with R = 0 has AP = 0.

    Returns ``{"acc@1", "mMV@1", "mAP@1", "acc@5", ...}``, values in [0, 1].
    Raises ``ValueError`` when some query has no candidate at all.
    """
    x = l2_normalize(as_matrix(emb, "emb"), np.float64)
    n = len(x)
    y, _ = encode(as_labels(labels, n, "labels"))
    grp_raw = None if groups is None else as_labels(groups, n, "groups")
    grp = None if grp_raw is None else encode(grp_raw)[0]
    ks = as_ks(ks)
    if ap_denominator not in ("min", "k"):
        raise ConfigError(f"ap_denominator must be 'min' or 'k', got {ap_denominator!r}")
    if mv_ties not in ("rank", "any"):
        raise ConfigError(f"mv_ties must be 'rank' or 'any', got {mv_ties!r}")
    kmax = min(max(ks), n - 1) if n > 1 else 1
    n_labels = int(y.max()) + 1
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("acc", "mMV", "mAP")}
    for a in range(0, n, _CHUNK):
        rows = np.arange(a, min(a + _CHUNK, n))
        sims = x[rows] @ x.T
        excluded = np.zeros(sims.shape, bool)
        excluded[np.arange(len(rows)), rows] = True
        if grp is not None:
            excluded |= grp[rows, None] == grp[None, :]
        n_cand = (~excluded).sum(axis=1)
        if (n_cand == 0).any():
            bad = int(rows[np.argmax(n_cand == 0)])
            why = "" if grp_raw is None else f" (its group {grp_raw[bad]!r} holds every item)"
            raise InputError(f"query {bad} has no candidate to retrieve{why}")
        sims[excluded] = -np.inf
        order = top_k_stable(sims, kmax)
        valid = np.take_along_axis(~excluded, order, axis=1)  # [B, kmax]
        top = y[order]
        rel = (top == y[rows, None]) & valid
        n_rel = ((y[None, :] == y[rows, None]) & ~excluded).sum(axis=1)
        hits = np.cumsum(rel, axis=1)
        prec_sum = np.cumsum(rel * hits / np.arange(1, kmax + 1), axis=1)
        votes = _majority_votes(top, valid, y[rows], n_labels, ks, mv_ties)
        for k in ks:
            kk = min(k, kmax)
            sums[f"acc@{k}"] += float(rel[:, :kk].any(axis=1).sum())
            sums[f"mMV@{k}"] += float(votes[k].sum())
            denom = np.minimum(k, n_rel) if ap_denominator == "min" else np.full(len(rows), k)
            ap = np.where(n_rel > 0, prec_sum[:, kk - 1] / np.maximum(denom, 1), 0.0)
            sums[f"mAP@{k}"] += float(ap.sum())
    return {key: val / n for key, val in sums.items()}


def _majority_votes(
    top: np.ndarray, valid: np.ndarray, truth: np.ndarray, n_labels: int, ks, mv_ties: str
) -> dict[int, np.ndarray]:
    """Per k, bool ``[B]``: is the majority label of the (valid) top k the query's label.

    ``top [B, kmax]`` label codes in rank order, ``valid [B, kmax]`` which ranks hold candidates.
    """
    b, kmax = top.shape
    counts = np.zeros((b, n_labels), np.int64)
    first = np.full((b, n_labels), np.iinfo(np.int64).max)  # rank where each label first appears
    rows = np.arange(b)
    out: dict[int, np.ndarray] = {}
    for i in range(kmax):
        v = valid[:, i]
        counts[rows[v], top[v, i]] += 1
        first[rows[v], top[v, i]] = np.minimum(first[rows[v], top[v, i]], i)
        for k in ks:
            if min(k, kmax) == i + 1:
                best = counts.max(axis=1, keepdims=True)
                tied = counts == best
                if mv_ties == "any":
                    out[k] = tied[rows, truth] & (best[:, 0] > 0)
                else:
                    winner = np.where(tied, first, np.iinfo(np.int64).max).argmin(axis=1)
                    out[k] = winner == truth
    return out
