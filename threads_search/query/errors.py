"""The errors of the read-only index: :class:`QueryError` (a query cannot be answered) and
:class:`IndexFormatError` (an INDEX_DIR this version cannot read). Both are ``InputError``s
(``ThreadsSearchError`` and ``ValueError``); re-exported by ``threads_search.query.index``."""

from __future__ import annotations

from threads_search.errors import InputError


class QueryError(InputError):
    """A query cannot be answered; the message names the input at fault."""


class IndexFormatError(InputError):
    """The index was written in a format this version cannot read, or its files disagree;
    the message says how to rebuild it."""
