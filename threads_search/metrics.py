"""Evaluation metrics (retrieval, linear probe, few-shot, zero-shot prototypes, RankMe).

The implementations live in :mod:`threads_search.eval`; this module is the stable import path.
"""

from __future__ import annotations

from threads_search.eval import (
    build_prototypes,
    cross_modal_recall,
    few_shot_curve,
    linear_probe,
    prototype_zero_shot,
    rankme,
    retrieval_metrics,
)

__all__ = [
    "build_prototypes",
    "cross_modal_recall",
    "few_shot_curve",
    "linear_probe",
    "prototype_zero_shot",
    "rankme",
    "retrieval_metrics",
]
