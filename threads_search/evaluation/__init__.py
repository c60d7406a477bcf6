"""Evaluation of an index's embedding space on the user's labels, against baselines computed in
the same run on the same folds (``threads-search evaluate``, ``threads_search.evaluate``), and
export of the embeddings for other tools (``threads-search export``).

Modules: :mod:`.tasks` (task syntax, label join, folds), :mod:`.bags` and :mod:`.baselines`
(patch-feature bags, mean pooling, the untrained THREADS encoder, CCA), one module per task
kind (:mod:`.classification`, :mod:`.survival`, :mod:`.molecular`), :mod:`.run` (the
``evaluate`` API), :mod:`.report` (terminal table, report.json / report.md, PNG plots) and
:mod:`.export`. Metrics themselves live in :mod:`threads_search.eval`.
"""

from __future__ import annotations

from threads_search.evaluation.run import evaluate

__all__ = ["evaluate"]
