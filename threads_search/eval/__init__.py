"""Evaluation metrics for embeddings (numpy + scikit-learn; accepts numpy arrays).

Conventions follow Patho-Bench, as used by the THREADS paper; see each function's docstring.
Class prototypes (``Prototypes``, ``class_order``) are the one implementation that
``Index.classify`` builds on too. ``batch_effect_report`` measures how visible a batch column
(site, scanner) is in an embedding beside the labels.
"""

from __future__ import annotations

from threads_search.eval.batch_effects import batch_effect_report
from threads_search.eval.embedding import (
    Prototypes,
    build_prototypes,
    class_order,
    prototype_zero_shot,
    rankme,
)
from threads_search.eval.probe import few_shot_curve, linear_probe
from threads_search.eval.retrieval import cross_modal_recall, retrieval_metrics

__all__ = [
    "Prototypes",
    "batch_effect_report",
    "build_prototypes",
    "class_order",
    "cross_modal_recall",
    "few_shot_curve",
    "linear_probe",
    "prototype_zero_shot",
    "rankme",
    "retrieval_metrics",
]
