"""threads-search: whole-slide-image retrieval on a THREADS-style slide-molecule embedding space.

Data flow (folders follow it): ``wsi`` (slide reading, tissue, patch grid) → ``patch_encoders``
and ``features`` (patch features per slide) → ``models`` (slide and molecular encoders, the model
bundle) → ``vectorstore`` (FAISS indexes, index generations on disk) → ``query`` (the read-only
``Index``) → ``ui``; ``molecular`` reads RNA/DNA profiles; ``cli`` is on top. The pipelines
``indexer`` and ``trainer`` sit above this library.
"""

from __future__ import annotations

from threads_search._version import __version__

__all__ = ["__version__", "evaluate", "load_model", "open_index", "save_model"]


def __getattr__(name: str):
    # Lazy: `import threads_search` stays cheap (no torch/faiss until they are used).
    if name in ("load_model", "save_model"):
        from threads_search.models import bundle

        return getattr(bundle, name)
    if name == "open_index":
        from threads_search.query import open_index

        return open_index
    if name == "evaluate":
        from threads_search.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'threads_search' has no attribute {name!r}")
