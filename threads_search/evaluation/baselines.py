"""The models an evaluation compares, as slide embeddings aligned with the index's slide rows:

- ``THREADS``: the index's slide embeddings (the trained model);
- ``mean pooling``: the mean of each slide's patch features (:mod:`.bags`), no training;
- ``untrained THREADS``: the index model's slide-encoder architecture with the weights training
  starts from (``torch.manual_seed(seed)`` then ``build_model``: :func:`untrained_like`), run on
  the same bags;

and, for molecular retrieval, :func:`cca_embed`: a CCA between mean-pooled patch features and
the molecular profiles, fit on the training patients only.
"""

from __future__ import annotations

import numpy as np

THREADS = "THREADS"
MEAN = "mean pooling"
UNTRAINED = "untrained THREADS"


def untrained_like(trained, seed: int = 0):
    """A model with ``trained``'s architecture, vocabularies and RNA normaliser and the weights
    ``train`` starts from (``torch.manual_seed(seed)`` then ``build_model``), in eval mode."""
    import torch

    from threads_search.models.bundle import build_model

    def cfg(enc) -> dict | None:
        if enc is None:
            return None
        return {k: v for k, v in enc.config.to_dict().items() if k != "in_dim"}

    torch.manual_seed(seed)
    return build_model(
        trained.patch_encoder,
        slide_encoder=trained.slide.name,
        slide_config=cfg(trained.slide),
        normalizer=trained.normalizer,
        rna_config=cfg(trained.rna),
        rna_units=trained.rna_units,
        genes_dna=trained.genes_dna,
        dna_config=cfg(trained.dna),
    ).eval()


def slide_models(index, seed: int = 0, progress=None, untrained: bool = True) -> dict:
    """``{"embeddings": {model name: float32 [N, E]}, "notes": [...], "bag_source": str}`` for
    the index's slides in table order. A baseline whose inputs are missing (no patch features,
    no model bundle) is left out with a note; ``progress(n)`` is called per slide embedded."""
    from threads_search.errors import ThreadsSearchError
    from threads_search.evaluation.bags import Bags

    out = {THREADS: index.vectors("slides")}
    notes: list[str] = []
    bags = Bags(index)
    model = None
    if untrained:
        try:
            model = untrained_like(index.model, seed=seed)
        except ThreadsSearchError as e:
            notes.append(f"{UNTRAINED} left out: {e}")
    means, rand = [], []
    try:
        for _, bag in bags:
            means.append(bag.mean(axis=0))
            if model is not None:
                rand.append(model.embed_slide(bag))
            if progress:
                progress(1)
    except ThreadsSearchError as e:
        notes.append(f"{MEAN} and {UNTRAINED} left out: {e}")
        return {"embeddings": out, "notes": notes, "bag_source": "none"}
    out[MEAN] = np.asarray(means, np.float32)
    if model is not None:
        out[UNTRAINED] = np.asarray(rand, np.float32)
    return {"embeddings": out, "notes": notes, "bag_source": bags.source}


def cca_embed(x_train, y_train, x_test, y_test, n_components: int = 8):
    """``(slides [n_x, k], profiles [n_y, k])``: mean-pooled patch features ``x_test`` and
    molecular profiles ``y_test`` in the canonical space of a CCA fit on the paired training
    rows ``x_train``/``y_train`` (cosine-comparable). Each side is z-scored and reduced to at
    most 32 principal components first (training statistics only); the CCA keeps
    ``min(n_components, rank)`` components."""
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def reducer(a):
        k = int(min(32, a.shape[1], len(a) - 1))
        return make_pipeline(StandardScaler(), PCA(k, random_state=0)).fit(a)

    rx, ry = reducer(x_train), reducer(y_train)
    xt, yt = rx.transform(x_train), ry.transform(y_train)
    k = int(max(1, min(n_components, xt.shape[1], yt.shape[1], len(xt) - 1)))
    cca = CCA(k, max_iter=2000).fit(xt, yt)
    u = cca.transform(rx.transform(x_test))
    xs = rx.transform(x_test[:1]).repeat(len(y_test), axis=0)
    _, v = cca.transform(xs, ry.transform(y_test))
    return u, v
