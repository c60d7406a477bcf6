"""Evaluation metrics for embeddings (numpy + scikit-learn; accepts numpy arrays).

Conventions follow Patho-Bench, as used by the THREADS paper; see each function's docstring.
"""

from __future__ import annotations

from threads_search.eval.embedding import build_prototypes, prototype_zero_shot, rankme
from threads_search.eval.probe import few_shot_curve, linear_probe
from threads_search.eval.retrieval import cross_modal_recall, retrieval_metrics

__all__ = [
    "build_prototypes",
    "cross_modal_recall",
    "few_shot_curve",
    "linear_probe",
    "prototype_zero_shot",
    "rankme",
    "retrieval_metrics",
]
