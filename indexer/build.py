"""``threads-search index``: slides or FEATURES_DIRs + profiles → a committed index generation.

:func:`run_index` is the Python entry point (README "Running on a cluster"); it hands the run
to an engine, both built from the same parts: the driver steps of ``indexer.core`` (session,
inputs, work selection, commit) and the per-slide step of ``indexer.slide_step``.

- ``local`` (``indexer.local_engine``): every step in this process;
- ``ray`` (``indexer.ray_engine``): slides distributed on a Ray cluster.
"""

from __future__ import annotations

from indexer import local_engine, ray_engine
from indexer.config import IndexConfig
from indexer.core import IndexSummary, LostSlidesError
from threads_search.errors import ConfigError

__all__ = ["ENGINES", "IndexConfig", "IndexSummary", "LostSlidesError", "run_index"]

ENGINES = {"local": local_engine.run_local, "ray": ray_engine.run_ray}


def run_index(cfg: IndexConfig, progress=None, console=None) -> IndexSummary:
    """Build or update the index at ``cfg.out`` with the engine ``cfg.engine``. ``progress``:
    an ``indexer.report.IndexProgress``-like object or None (``console`` is not used). Raises
    ``IndexLockedError`` when another writer is active; per-slide failures are collected in
    the summary."""
    engine = ENGINES.get(cfg.engine)
    if engine is None:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    return engine(cfg, progress=progress)
