"""The vector store: FAISS index types, their automatic choice and recall tuning, cosine search
(filtered too), FAISS file I/O, and INDEX_DIR's generations on disk (``store``, ``writer``).

Below :mod:`threads_search.query`, whose read-only :class:`~threads_search.query.Index` ("the
index") is what users open; it stores vectors and tables and never loads a model."""

from threads_search.vectorstore.autotune import (
    DEFAULT_MEMORY_BUDGET,
    build_index,
    choose_index,
    tune_knob,
    tuning_queries,
)
from threads_search.vectorstore.faiss_types import (
    INDEX_TYPES,
    IndexType,
    create_index_type,
    list_index_types,
)
from threads_search.vectorstore.gpu import resolve_gpu, to_cpu, to_gpu
from threads_search.vectorstore.vectors import (
    drop_padding,
    exact_knn,
    load_index,
    normalize,
    recall_at_k,
    save_index,
    search,
    search_subset,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "INDEX_TYPES",
    "IndexType",
    "build_index",
    "choose_index",
    "create_index_type",
    "drop_padding",
    "exact_knn",
    "list_index_types",
    "load_index",
    "normalize",
    "recall_at_k",
    "resolve_gpu",
    "save_index",
    "search",
    "search_subset",
    "to_cpu",
    "to_gpu",
    "tune_knob",
    "tuning_queries",
]
