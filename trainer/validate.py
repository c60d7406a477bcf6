"""Validation on the patient-level split: cross-modal Recall@1/5/10 both ways, and RankMe; with
``--balance-by``, recall within each value of the column too (``trainer.balance``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from threads_search.eval import cross_modal_recall, rankme
from trainer.balance import within_group_recall
from trainer.data import Item, TrainingData


@torch.no_grad()
def embed_items(model, data: TrainingData, items: list[Item], device) -> dict[str, np.ndarray]:
    """L2-normalised embeddings: ``slide`` ``[n, E]`` (all patches), and ``rna``/``dna``
    ``[n_mod, E]`` with their item positions ``rna_idx``/``dna_idx``."""
    model.eval()
    slides = []
    for it in items:
        feats = torch.from_numpy(data.bag(it)).to(device)
        emb = model.slide.embed_bag(feats).embedding.float().reshape(1, -1)
        slides.append(F.normalize(emb, dim=-1))
    out = {"slide": torch.cat(slides).cpu().numpy() if slides else np.zeros((0, 0), np.float32)}
    for mod in ("rna", "dna"):
        enc = getattr(model, mod)
        idx = [i for i, it in enumerate(items) if getattr(it, mod)]
        if enc is None or not idx:
            continue
        x = np.stack([getattr(data, mod)[getattr(items[i], mod)] for i in idx])
        emb = F.normalize(enc(torch.from_numpy(x).to(device)).float(), dim=-1)
        out[mod] = emb.cpu().numpy()
        out[f"{mod}_idx"] = np.asarray(idx)
    return out


def _recalls(slide: np.ndarray, mol: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10 both ways between row-matched ``slide`` and ``mol`` ``[n, E]``, keyed
    ``<slide2mol|mol2slide>_R@k``."""
    match = np.arange(len(slide))
    out = {}
    for direction, (q, g) in {"slide2mol": (slide, mol), "mol2slide": (mol, slide)}.items():
        for k, v in cross_modal_recall(q, g, match, ks=(1, 5, 10)).items():
            out[f"{direction}_{k}"] = float(v)
    return out


def validate(
    model, data: TrainingData, items: list[Item], device, group_by: str | None = None
) -> dict[str, float]:
    """Metrics keyed ``val_<mod>_<slide2mol|mol2slide>_R@k`` (gallery: every validation item),
    ``val_mean_recall`` (mean of all recalls) and ``val_rankme`` (effective rank of the slide
    embeddings). With ``group_by`` (``--balance-by``), recall is also computed within each value
    of that column (``trainer.balance.within_group_recall``: ``val_<mod>_<...>_within``);
    ``val_mean_recall`` is then their mean and the all-gallery mean is ``val_mean_recall_all``.
    Bags are embedded as they are (never augmented)."""
    if not items:
        return {}
    emb = embed_items(model, data, items, device)
    metrics: dict[str, float] = {"val_rankme": rankme(emb["slide"])}
    recalls = []
    for mod in ("rna", "dna"):
        if mod not in emb or len(emb[f"{mod}_idx"]) < 2:
            continue
        for name, v in _recalls(emb["slide"][emb[f"{mod}_idx"]], emb[mod]).items():
            metrics[f"val_{mod}_{name}"] = v
            recalls.append(v)
    if recalls:
        metrics["val_mean_recall"] = float(np.mean(recalls))
    if group_by:
        plain = metrics.pop("val_mean_recall", None)
        if plain is not None:
            metrics["val_mean_recall_all"] = plain
        metrics.update(within_group_recall(emb, items, group_by, _recalls))
    return metrics
