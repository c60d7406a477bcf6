"""Evaluation metrics (retrieval, linear probe, few-shot, zero-shot prototypes, RankMe).

The implementations live in :mod:`threads_search.eval`; this module is the stable import path
and exports exactly what that package exports.
"""

from __future__ import annotations

from threads_search import eval as _eval
from threads_search.eval import *  # noqa: F403

__all__ = list(_eval.__all__)
