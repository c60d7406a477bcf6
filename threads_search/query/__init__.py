"""The index, read-only (the Python API): ``open_index`` → :class:`Index` (search_slides,
search_by_molecule, search_molecules, classify) over a committed generation of the vector
store, with guarded SQL filters. Its errors (``QueryError``, ``IndexFormatError``,
``FilterError``) are ``ThreadsSearchError``s."""

from threads_search.query.index import Index, IndexFormatError, QueryError, open_index
from threads_search.query.prototypes import SmallClassWarning
from threads_search.query.sql_guard import FilterError, validate_where

__all__ = [
    "FilterError",
    "Index",
    "IndexFormatError",
    "QueryError",
    "SmallClassWarning",
    "open_index",
    "validate_where",
]
