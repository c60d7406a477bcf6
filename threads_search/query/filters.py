"""Build ``where`` filters from UI facets without writing SQL by hand.

``build_where(facets, columns)`` turns ``{column: condition}`` into one guarded SQL boolean
expression (facets joined with AND). Conditions:

- a scalar (str, int, float, bool): ``column = value``
- a list/tuple/set of scalars: ``column IN (...)`` (an empty list matches nothing: ``FALSE``)
- ``Range(lo, hi)`` (either end None = open): ``column >= lo AND column <= hi``
- ``None``: ``column IS NULL``; ``NotNull``: ``column IS NOT NULL``
- ``Contains("text")``: case-insensitive substring (``contains(lower(col), lower('text'))``)

Identifiers are double-quoted, strings single-quoted with quotes doubled, numbers written with
``repr`` (NaN/inf refused), booleans as TRUE/FALSE. Unknown columns raise ``FilterError``; the
result also goes through :func:`~threads_search.query.sql_guard.validate_where`.
``combine_where(*parts)`` ANDs expressions, skipping empty ones (e.g. facets + free SQL); each
part must have balanced parentheses, so one part cannot regroup another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from threads_search.query.sql_guard import FilterError, quote_identifier, validate_where


@dataclass(frozen=True)
class Range:
    """Inclusive numeric/date range; None = unbounded on that side."""

    lo: object = None
    hi: object = None


@dataclass(frozen=True)
class Contains:
    """Case-insensitive substring match."""

    text: str


class _NotNull:
    def __repr__(self) -> str:
        return "NotNull"


NotNull = _NotNull()


def literal(value) -> str:
    """A SQL literal for a Python scalar. Raises ``FilterError`` for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"filter value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise FilterError("filter value contains control characters")
        return "'" + value.replace("'", "''") + "'"
    if hasattr(value, "isoformat"):  # date / datetime / Timestamp
        return "'" + value.isoformat() + "'"
    raise FilterError(f"unsupported filter value {value!r} ({type(value).__name__})")


def _condition(col: str, cond) -> str:
    c = quote_identifier(col)
    if cond is None:
        return f"{c} IS NULL"
    if cond is NotNull:
        return f"{c} IS NOT NULL"
    if isinstance(cond, Range):
        parts = [f"{c} >= {literal(cond.lo)}"] if cond.lo is not None else []
        parts += [f"{c} <= {literal(cond.hi)}"] if cond.hi is not None else []
        return " AND ".join(parts) or "TRUE"
    if isinstance(cond, Contains):
        return f"contains(lower(CAST({c} AS VARCHAR)), lower({literal(cond.text)}))"
    if isinstance(cond, (list, tuple, set, frozenset, np.ndarray)):
        values = list(cond)
        if not values:
            return "FALSE"
        nulls = [v for v in values if v is None]
        rest = [v for v in values if v is not None]
        ors = [f"{c} IN ({', '.join(literal(v) for v in rest)})"] if rest else []
        ors += [f"{c} IS NULL"] if nulls else []
        return ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"
    return f"{c} = {literal(cond)}"


def build_where(facets: Mapping[str, object], columns: Iterable[str]) -> str | None:
    """One SQL expression ANDing a condition per facet (module docstring); None when
    ``facets`` is empty. Raises ``FilterError`` for unknown columns or values."""
    columns = list(columns)
    known = {str(c).lower(): str(c) for c in columns}
    parts = []
    for col, cond in facets.items():
        if str(col).lower() not in known:
            avail = ", ".join(sorted(known.values(), key=str.lower))
            raise FilterError(f"unknown facet column {col!r}; available columns: {avail}")
        parts.append(f"({_condition(known[str(col).lower()], cond)})")
    if not parts:
        return None
    expr = " AND ".join(parts)
    validate_where(expr, columns)
    return expr


def combine_where(*parts: str | None) -> str | None:
    """AND of the non-empty expressions (each parenthesised); None when all are empty."""
    keep = [p for p in parts if p is not None and str(p).strip()]
    for p in keep:
        _check_balanced(p)
    if not keep:
        return None
    return keep[0] if len(keep) == 1 else " AND ".join(f"({p})" for p in keep)


def _check_balanced(expr: str) -> None:
    """Parentheses outside string literals must balance, so that AND-ing parts cannot change
    another part's grouping."""
    depth, quote = 0, None
    for ch in expr:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
    if depth != 0:
        raise FilterError(f"unbalanced parentheses in filter {expr!r}")
