"""Tasks scored by similarity rather than by a trained probe:

- ``retrieval``: slide→slide leave-one-out acc@k, mMV@k and mAP@k (k = 1, 5, 10) with
  same-patient exclusion (:func:`threads_search.eval.retrieval_metrics`, Patho-Bench
  definitions); intervals from patient resamples (the metrics recomputed on each).
- ``zeroshot``: molecular prompting. In each fold, class prototypes are the mean embeddings of
  the *training* patients' indexed molecular samples with a label; the test slides go to the
  nearest prototype (:func:`threads_search.eval.prototype_zero_shot`). Only THREADS has a
  molecular space.
- ``molecular``: RNA→slide and DNA→slide recall@1/5/10 of the indexed pairs (a sample's
  relevant slides: its patient's). In each patient fold the test samples query the test
  slides (gallery = the fold's slides), for THREADS and for a CCA between mean-pooled patch
  features and the profiles fit on the training patients' pairs
  (:func:`~threads_search.evaluation.baselines.cca_embed`).
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import ThreadsSearchError
from threads_search.eval import cross_modal_recall, prototype_zero_shot, retrieval_metrics
from threads_search.eval.stats import class_scores
from threads_search.evaluation.baselines import MEAN, THREADS, cca_embed
from threads_search.evaluation.classification import METRICS
from threads_search.evaluation.compare import compare
from threads_search.evaluation.tasks import tested_rows

KS = (1, 5, 10)
RETRIEVAL_METRICS = [f"{m}@{k}" for k in KS for m in ("acc", "mMV", "mAP")]


def slide_retrieval(models: dict, y, groups, n_boot: int, seed: int) -> dict:
    """Leave-one-out slide→slide retrieval metrics of every model, patient-level exclusion."""
    y = np.asarray(y).astype(str)
    groups = np.asarray(groups).astype(str)

    def score(model, rows):
        try:
            return retrieval_metrics(models[model][rows], y[rows], KS, groups=groups[rows])
        except ThreadsSearchError:  # a resample left a query without candidates
            return dict.fromkeys(RETRIEVAL_METRICS, float("nan"))

    rows = np.arange(len(y))
    return compare(score, list(models), RETRIEVAL_METRICS, rows, min(n_boot, 200), seed, groups)


def zero_shot(slide_x, y, slide_groups, mol_x, mol_y, mol_groups, folds, n_boot, seed) -> dict:
    """Out-of-fold molecular prompting of the labelled slides (module docstring)."""
    y = np.asarray(y).astype(str)
    mol_y = np.asarray(mol_y).astype(str)
    classes = np.unique(y)
    scores = np.full((len(y), len(classes)), -2.0)  # below any cosine: no prototype
    slide_groups = np.asarray(slide_groups).astype(str)
    mol_groups = np.asarray(mol_groups).astype(str)
    for tr, te in folds:
        keep = np.isin(mol_groups, slide_groups[tr])
        if len(np.unique(mol_y[keep])) < 2:
            continue
        res = prototype_zero_shot(slide_x[te], None, mol_x[keep], mol_y[keep])
        cols = np.searchsorted(classes, np.asarray(res["classes"]).astype(str))
        ok = (cols < len(classes)) & (classes[np.minimum(cols, len(classes) - 1)] == res["classes"])
        scores[np.ix_(te, cols[ok])] = np.asarray(res["scores"])[:, ok]
    out = compare(
        lambda m, r: class_scores(y[r], scores[r], classes),
        [THREADS],
        METRICS,
        tested_rows(folds),
        n_boot,
        seed,
        slide_groups,
    )
    out["n_prototype_samples"] = int(len(mol_y))
    return out


def molecular_retrieval(
    slide_models: dict, slide_groups, mol_x, mol_table, profiles: dict, folds_of, n_boot, seed
) -> dict:
    """Recall@k of each kind's samples querying the slides, THREADS and CCA, per fold.

    ``slide_models``: THREADS (and ``mean pooling`` when available) ``[N_slides, E]``;
    ``mol_x``: THREADS molecular embeddings (rows of ``mol_table``); ``profiles``: kind →
    DataFrame (sample_id index) of the raw profiles, or missing; ``folds_of(patients)`` → patient
    folds as (train patients, test patients)."""
    slide_groups = np.asarray(slide_groups).astype(str)
    out: dict = {"metrics": {}, "vs": {}, "notes": [], "n_queries": {}}
    for kind, prof in profiles.items():
        rows = np.flatnonzero((mol_table["kind"] == kind).to_numpy())
        pats = mol_table["patient_id"].astype(str).to_numpy()[rows]
        has_slide = np.isin(pats, slide_groups)
        rows, pats = rows[has_slide], pats[has_slide]
        if len(rows) == 0:
            out["notes"].append(f"no indexed {kind.upper()} sample has a slide of its patient")
            continue
        hits = {THREADS: []}
        use_cca = prof is not None and MEAN in slide_models
        if use_cca:
            hits["CCA"] = []
        for tr_p, te_p in folds_of(np.unique(slide_groups)):
            q = rows[np.isin(pats, te_p)]
            g = np.flatnonzero(np.isin(slide_groups, te_p))
            if not len(q) or not len(g):
                continue
            rel = mol_table["patient_id"].astype(str).to_numpy()[q][:, None] == slide_groups[g]
            hits[THREADS].append(_hits(mol_x[q], slide_models[THREADS][g], rel))
            if use_cca:
                hits["CCA"].append(
                    _cca_hits(slide_models[MEAN], slide_groups, mol_table, prof, rows, tr_p, q, g)
                )
        n_q = sum(len(h) for h in hits[THREADS])
        out["n_queries"][kind] = n_q
        per = {m: np.vstack(h) for m, h in hits.items() if h}
        names = [f"{kind.upper()}→slide R@{k}" for k in KS]
        res = compare(
            lambda m, r, per=per, names=names: {
                n: float(per[m][r, i].mean()) for i, n in enumerate(names)
            },
            list(per),
            names,
            np.arange(n_q),
            n_boot,
            seed,
        )
        out["metrics"].update(res["metrics"])
        out["vs"].update(res["vs"])
        if not use_cca:
            out["notes"].append(
                f"CCA baseline for {kind.upper()} left out: "
                + ("the raw profiles are not available" if prof is None else "no patch features")
            )
    return out


def _hits(query, gallery, rel) -> np.ndarray:
    """Per query (rows), whether a relevant gallery item is in the top k, for each k in KS."""
    return np.array(
        [
            list(cross_modal_recall(query[i : i + 1], gallery, rel[i : i + 1], KS).values())
            for i in range(len(query))
        ]
    )


def _cca_hits(mean_x, slide_groups, mol_table, prof, rows, tr_p, q, g) -> np.ndarray:
    """CCA fit on the training patients' (slide, sample) pairs; hits of queries ``q`` on ``g``."""
    ids = mol_table["sample_id"].astype(str).to_numpy()
    pats = mol_table["patient_id"].astype(str).to_numpy()
    tr_p = set(tr_p)
    train = [r for r in rows if pats[r] in tr_p and ids[r] in prof.index]
    xs, ys = [], []
    for r in train:
        for s in np.flatnonzero(slide_groups == pats[r]):
            xs.append(mean_x[s])
            ys.append(prof.loc[ids[r]].to_numpy(np.float64))
    qy = prof.reindex(ids[q]).fillna(0.0).to_numpy(np.float64)
    u, v = cca_embed(np.asarray(xs), np.asarray(ys), mean_x[g], qy)
    rel = pats[q][:, None] == slide_groups[g]
    return _hits(v, u, rel)
