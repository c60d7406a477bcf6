"""The evaluation half of ``bench/quality.py``: embed a cohort with a bundle's public API, the
untrained baseline, and the quality rows on the held-out test patients (see that script's
docstring for what each row means). The untrained baseline, the linear probe and the few-shot
curve are ``threads-search evaluate``'s own code (``threads_search.evaluation``) run on the
cohort's train/test split, so this table and evaluate's cannot drift apart."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from threads_search.eval import cross_modal_recall, prototype_zero_shot, retrieval_metrics
from threads_search.eval.stats import class_scores
from threads_search.evaluation.classification import fewshot, out_of_fold
from threads_search.features.extract import h5_path
from threads_search.molecular.dna import read_dna
from threads_search.molecular.rna import read_rna_matrix

KS = (1, 5, 10)


def embed(model, info: dict) -> dict:
    """Unit embeddings ``[n, E]`` of every slide (cohort order), RNA and DNA sample."""
    slides = info["cohort"].slides.slide_id.tolist()
    feats = info["features"]
    out = {
        "slide": np.stack([model.embed_slide(h5_path(feats, s)) for s in slides]),
        "slide_ids": slides,
    }
    rna = read_rna_matrix(info["paths"]["rna"], units="tpm")
    out["rna"], out["rna_ids"] = model.embed_rna(rna), list(rna.samples)
    dna = read_dna(info["paths"]["maf"])
    with warnings.catch_warnings():  # panel genes never mutated in training are ignored
        warnings.simplefilter("ignore")
        out["dna"], out["dna_ids"] = model.embed_dna(dna), dna.index.astype(str).tolist()
    return out


def _mean_recall(slide: np.ndarray, mols: list[np.ndarray]) -> list[float]:
    vals = []
    for mol in mols:
        match = np.arange(len(mol))
        for q, g in ((slide, mol), (mol, slide)):
            vals += list(cross_modal_recall(q, g, match, KS).values())
    return vals


def check_val_recall(emb: dict, info: dict, logged: float | None) -> dict:
    """Recompute the trainer's ``val_mean_recall`` (one slide per patient) from ``emb``."""
    c = info["cohort"]
    pid = dict(zip(c.samples.sample_id, c.samples.patient_id, strict=True))
    val = set(c.patients.patient_id[c.patients.split == "val"])
    sl = c.slides.assign(i=range(len(c.slides)))
    if logged is None or sl.groupby("patient_id").size().max() > 1:
        return {"logged": logged, "recomputed": None}
    vals = []
    for mod in ("rna", "dna"):
        rows = [(pid[s], j) for j, s in enumerate(emb[f"{mod}_ids"]) if pid[s] in val]
        rows.sort()
        si = sl.set_index("patient_id").loc[[p for p, _ in rows], "i"].to_numpy()
        vals += _mean_recall(emb["slide"][si], [emb[mod][[j for _, j in rows]]])
    got = float(np.mean(vals))
    return {"logged": logged, "recomputed": got, "abs_diff": abs(got - logged)}


def _probe(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> dict:
    """evaluate's linear probe (``out_of_fold`` on the one train/test split) scored on the test
    rows: balanced_accuracy, macro_auc, macro_f1, n_train, n_test."""
    y = np.asarray(y).astype(str)
    classes = np.unique(y[tr])
    proba = out_of_fold(x, y, [(np.flatnonzero(tr), np.flatnonzero(te))], classes)
    out = class_scores(y[te], proba[te], classes)
    return {**out, "n_train": int(tr.sum()), "n_test": int(te.sum())}


def evaluate(emb: dict, info: dict) -> dict:
    """The quality rows on the test patients (see the module docstring)."""
    c = info["cohort"]
    pat = c.patients.set_index("patient_id")
    sl = c.slides.reset_index(drop=True)
    te, tr = (sl.split == "test").to_numpy(), (sl.split == "train").to_numpy()
    s_te = emb["slide"][te]
    p_te = sl.patient_id[te].to_numpy()
    y_te = sl.subtype[te].to_numpy()
    pid = dict(zip(c.samples.sample_id, c.samples.patient_id, strict=True))
    r: dict = {}
    for mod in ("rna", "dna"):
        owners = np.array([pid[s] for s in emb[f"{mod}_ids"]])
        q = pat.split.loc[owners].to_numpy() == "test"
        rel = owners[q][:, None] == p_te[None, :]
        for k, v in cross_modal_recall(emb[mod][q], s_te, rel, KS).items():
            r[f"{mod.upper()}→slide {k}"] = v
    # Reference for DNA→slide R@k: a subtype oracle (perfect subtype, random order within it),
    # mean over queries of min(k, n_s) / n_s; DNA also tells TP53 and, weakly, the programmes.
    n_s = pd.Series(y_te).value_counts()
    owners = np.array([pid[s] for s in emb["dna_ids"]])
    n_q = n_s.loc[pat.subtype.loc[owners[pat.split.loc[owners].to_numpy() == "test"]]].to_numpy()
    oracle = {f"R@{k}": float(np.mean(np.minimum(k, n_q) / n_q)) for k in KS}
    ret = retrieval_metrics(s_te, y_te, KS, groups=p_te)
    r["slide→slide mMV@5 (subtype)"] = ret["mMV@5"]
    owners = np.array([pid[s] for s in emb["rna_ids"]])
    q = pat.split.loc[owners].to_numpy() == "train"
    zs = prototype_zero_shot(s_te, y_te, emb["rna"][q], pat.subtype.loc[owners[q]].to_numpy())
    r["zero-shot bal. acc (subtype)"] = zs["balanced_accuracy"]
    lp = _probe(emb["slide"], sl.subtype.to_numpy(), tr, te)
    r["linear probe bal. acc (subtype)"] = lp["balanced_accuracy"]
    tp53 = pat.TP53_mutated.loc[sl.patient_id].to_numpy()
    r["linear probe bal. acc (TP53)"] = _probe(emb["slide"], tp53, tr, te)["balanced_accuracy"]
    split = [(np.flatnonzero(tr), np.flatnonzero(te))]
    y_all = sl.subtype.to_numpy()
    curve = fewshot({"m": emb["slide"]}, y_all, split, n_draws=10, seed=0)["curves"]["m"]
    fs = pd.DataFrame(curve)
    for row in fs.itertuples():
        r[f"{int(row.shots)}-shot bal. acc (subtype)"] = row.balanced_accuracy_mean
    r["zero-shot / linear probe"] = zs["balanced_accuracy"] / lp["balanced_accuracy"]
    extra = {
        "retrieval": ret,
        "dna_subtype_oracle_recall": oracle,
        "zero_shot": {k: zs[k] for k in ("accuracy", "balanced_accuracy", "auc")},
        "linear_probe_subtype": lp,
        "fewshot": fs.to_dict("records"),
        "n_test_slides": int(te.sum()),
        "n_train_slides": int(tr.sum()),
        "n_prototype_samples": int(q.sum()),
    }
    return {"rows": r, "extra": extra}
