"""Guard for user-supplied SQL filters (``where=``): accept only a boolean expression over
known metadata columns.

A filter is checked in three steps before it is ever executed:

1. Text: at most ``MAX_LENGTH`` characters, no control characters, no ``E'...'`` escape strings
   (their backslash escapes would let a quote hide from this scan); outside string literals and
   quoted identifiers no ``;`` (stacked statements), no ``--`` or ``/*`` (comments), no ``$``
   (parameters, dollar quoting), and no quote left unclosed.
2. Shape: DuckDB parses ``SELECT * FROM t WHERE (<expr>)`` (``json_serialize_sql``: parsing only,
   nothing is bound or run, no file is touched); the statement must be that one plain SELECT
   (a trailing ``UNION``/``ORDER BY``/``LIMIT``... changes it and is rejected).
3. Expression tree: only column references (bare names, one of ``columns``), constants,
   comparisons, AND/OR/NOT, IN/NOT IN over lists, BETWEEN, LIKE/ILIKE, IS [NOT] NULL, IS
   [NOT] DISTINCT FROM, arithmetic, ``||``, CASE, casts to built-in types, and the scalar
   functions in ``ALLOWED_FUNCTIONS``. Everything else (subqueries, table functions such as
   ``read_csv``/``glob``, ``*``/``COLUMNS``, lambdas, parameters, unknown functions, URL string
   constants) is a :class:`FilterError` naming what was refused.

Bounded cost: a filter nests at most ``MAX_DEPTH`` expressions (deeper ones, e.g. 500 nested
NOTs, are refused from the parser's JSON text before any recursive Python walks it), and no
allowed function can make text much longer than the filter itself: padding (``lpad``/``rpad``),
``repeat`` and ``regexp_replace`` (whose empty matches and back-references multiply text) are
not allowed, and ``replace(text, from, to)`` needs string literals ``from``/``to`` with ``to``
no longer than ``from`` in UTF-8 bytes, so it never lengthens text (nested replaces could
otherwise grow a short filter's text exponentially, gigabytes per row). What remains (``||``,
``concat``) grows text only linearly in the filter's length.

Defence in depth: the index runs the accepted expression on an in-memory copy of the
metadata with ``enable_external_access = false`` and a locked configuration (see
``threads_search.query.catalog``), so even a guard bug could not read or write files.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable

import duckdb

from threads_search.errors import InputError

MAX_LENGTH = 4000
MAX_DEPTH = 64
_PREFIX = "SELECT * FROM t WHERE ("

# Scalar functions a filter may call, by kind (DuckDB's names; the operators as DuckDB names
# them: ~~ LIKE, !~~ NOT LIKE, ~~* ILIKE, !~~* NOT ILIKE).
_FUNCTIONS = {
    "operators": "+ - * / // % ** ^ || ~~ !~~ ~~* !~~*",
    "text": """lower upper lcase ucase length strlen trim ltrim rtrim substr substring left right
        replace concat starts_with ends_with suffix prefix contains strpos instr position
        regexp_matches regexp_full_match regexp_extract like_escape ilike_escape split_part
        reverse""",
    "numbers": """abs round floor ceil ceiling sign sqrt ln log log2 log10 exp pow power least
        greatest isnan isinf isfinite""",
    "null handling": "coalesce ifnull nullif",
    "dates": """year month day quarter dayofweek dayofyear week date_part datepart date_trunc
        datetrunc date_diff datediff make_date to_days to_months to_years to_weeks to_hours
        to_minutes to_seconds""",
}
ALLOWED_FUNCTIONS = frozenset(name for names in _FUNCTIONS.values() for name in names.split())
_TYPES = """BOOLEAN BOOL TINYINT SMALLINT INTEGER INT INT4 BIGINT INT8 HUGEINT UTINYINT USMALLINT
    UINTEGER UBIGINT FLOAT REAL DOUBLE DECIMAL NUMERIC VARCHAR TEXT STRING DATE TIMESTAMP TIME
    INTERVAL"""
ALLOWED_TYPES = frozenset(_TYPES.split())
_OPERATORS = frozenset(
    {
        "COMPARE_IN",
        "COMPARE_NOT_IN",
        "OPERATOR_IS_NULL",
        "OPERATOR_IS_NOT_NULL",
        "OPERATOR_NOT",
        "OPERATOR_COALESCE",
    }
)
# functions refused with a reason (they can turn a short filter into gigabytes of text)
_AMPLIFIERS = {
    "lpad": "padding to a length taken from the filter can allocate gigabytes",
    "rpad": "padding to a length taken from the filter can allocate gigabytes",
    "repeat": "repeating text can allocate gigabytes",
    "regexp_replace": "its replacements can multiply the text; use regexp_matches",
}
# deepest JSON nesting of an accepted filter's parse tree: each expression level is at most 3
# JSON levels (object, argument list, argument object) below the statement's ~8
_MAX_JSON_DEPTH = 3 * MAX_DEPTH + 16
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
_URL = re.compile(r"^\s*[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_IGNORED_KEYS = {"query_location", "query_location_length", "where_clause"}


class FilterError(InputError):
    """A ``where`` filter was refused; the message says why and what is allowed (a
    ``ThreadsSearchError`` and a ``ValueError``)."""


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None
_reference: dict | None = None


def _parse(sql: str) -> dict:
    """DuckDB's JSON AST of ``sql`` (parser only), on a private connection with file access off.
    Raises :class:`FilterError` when the tree nests deeper than ``MAX_DEPTH`` expressions,
    checked on the JSON text (no recursion) before ``json.loads`` would recurse into it."""
    global _parser
    with _parser_lock:
        if _parser is None:
            con = duckdb.connect(":memory:")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _parser = con
        cur = _parser.cursor()
    try:
        text = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
    finally:
        cur.close()
    if _json_depth(text) > _MAX_JSON_DEPTH:
        raise _too_deep()
    try:
        return json.loads(text)
    except RecursionError:  # backstop: only if the caller's own stack is already very deep
        raise _too_deep() from None


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of the JSON ``text``, brackets inside strings ignored."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _too_deep() -> FilterError:
    return FilterError(
        f"filter nested too deeply (more than {MAX_DEPTH} levels of NOT, operators, CASE or "
        "function calls inside one another); simplify it, e.g. drop doubled NOTs"
    )


def _strip(node, drop=_IGNORED_KEYS):
    if isinstance(node, dict):
        return {k: _strip(v, drop) for k, v in node.items() if k not in drop}
    if isinstance(node, list):
        return [_strip(v, drop) for v in node]
    return node


def _reference_shape() -> dict:
    global _reference
    if not _reference:
        _reference = _strip(_parse(_PREFIX + "TRUE)")["statements"][0]["node"])
    return _reference


def check_text(expr: str) -> None:
    """Step 1 of the module docstring: the raw text."""
    if not isinstance(expr, str):
        raise FilterError(f"a filter must be a string, not {type(expr).__name__}")
    if not expr.strip():
        raise FilterError("empty filter")
    if len(expr) > MAX_LENGTH:
        raise FilterError(f"filter too long ({len(expr)} characters, at most {MAX_LENGTH})")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in expr):
        raise FilterError("filter contains control characters")
    outside, i, quote = [], 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == quote and expr[i + 1 : i + 2] == quote:
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            prev = expr[max(0, i - 2) : i]
            if (
                c == "'"
                and prev[-1:] in ("e", "E")
                and not (prev[:-1].isalnum() or prev[:1] == "_")
            ):
                raise FilterError("escape strings (E'...') are not allowed in filters")
            quote = c
            outside.append(" ")
        else:
            outside.append(c)
        i += 1
    if quote:
        raise FilterError(f"unterminated {quote} quote in filter")
    text = "".join(outside)
    for bad, why in (
        (";", "';' (more than one statement)"),
        ("--", "comments ('--')"),
        ("/*", "comments ('/*')"),
        ("$", "'$' (parameters or dollar quoting)"),
    ):
        if bad in text:
            raise FilterError(f"filter refused: {why} are not allowed; give one boolean expression")


def validate_where(expr: str, columns: Iterable[str]) -> str:
    """Check ``expr`` (module docstring) against the known ``columns``; return the expression
    wrapped in parentheses, ready for ``... WHERE <returned>``. Raises :class:`FilterError`."""
    check_text(expr)
    known = {str(c).lower(): str(c) for c in columns}
    ast = _parse(_PREFIX + expr + ")")
    if ast.get("error"):
        msg = ast.get("error_message", "syntax error")
        if "expression depth" in msg:  # DuckDB's own limit; its advice (SET ...) is not ours
            raise _too_deep()
        raise FilterError(f"filter is not a valid SQL expression: {msg}")
    stmts = ast.get("statements", [])
    if len(stmts) != 1:
        raise FilterError("filter must be one boolean expression, not several statements")
    node = stmts[0]["node"]
    if _strip(node) != _reference_shape():
        raise FilterError(
            "filter must be a plain boolean expression (no UNION, ORDER BY, LIMIT, GROUP BY...)"
        )
    _walk(node.get("where_clause"), known, 0)
    return f"({expr})"


def _walk(n: dict | None, known: dict[str, str], depth: int) -> None:
    if n is None:
        raise FilterError("filter is empty")
    if depth > MAX_DEPTH:
        raise _too_deep()
    cls, typ = n.get("class"), n.get("type")
    kids: list = []
    if cls == "COLUMN_REF":
        names = n.get("column_names", [])
        if len(names) != 1:
            raise FilterError(f"use bare column names, not {'.'.join(names)!r}")
        if names[0].lower() not in known:
            avail = ", ".join(sorted(known.values(), key=str.lower))
            raise FilterError(f"unknown column {names[0]!r} in filter; available columns: {avail}")
        return
    if cls == "CONSTANT":
        lit = n.get("literal", {})
        if lit.get("kind") == "STRING" and _URL.match(str(lit.get("text", ""))):
            raise FilterError(f"URLs are not allowed in filters: {lit.get('text')!r}")
        return
    if cls == "CONJUNCTION":
        kids = n["children"]
    elif cls == "COMPARISON":
        kids = [n["left"], n["right"]]
    elif cls == "BETWEEN":
        kids = [n["input"], n["lower"], n["upper"]]
    elif cls == "OPERATOR" and typ in _OPERATORS:
        kids = n["children"]
    elif cls == "CASE":
        kids = [e for c in n["case_checks"] for e in (c["when_expr"], c["then_expr"])]
        kids.append(n["else_expr"])
    elif cls == "CAST":
        t = n.get("type_expr") or {}
        tname = str(t.get("type_name", "")).upper()
        if t.get("catalog") or t.get("schema") or tname not in ALLOWED_TYPES:
            raise FilterError(f"{tname or '?'} is not an allowed type or keyword in filters")
        kids = [n["child"], *t.get("children", [])]
    elif cls == "FUNCTION":
        kids = _function_args(n)
    elif cls == "SUBQUERY":
        raise FilterError("subqueries are not allowed in filters (no SELECT inside a filter)")
    elif cls in ("STAR", "COLUMNS"):
        raise FilterError("'*' and COLUMNS(...) are not allowed in filters; name the columns")
    elif cls == "PARAMETER":
        raise FilterError("parameters ($1, ?) are not allowed in filters")
    else:
        what = (cls or "?").lower().replace("_", " ")
        raise FilterError(f"{what} expressions are not allowed in filters")
    for k in kids:
        _walk(k, known, depth + 1)


def _function_args(n: dict) -> list:
    name = str(n.get("function_name", "")).lower()
    if n.get("schema") or n.get("catalog"):
        raise FilterError(f"qualified function names are not allowed: {name!r}")
    if name in _AMPLIFIERS:
        raise FilterError(f"function {name!r} is not allowed in filters: {_AMPLIFIERS[name]}")
    if name not in ALLOWED_FUNCTIONS:
        raise FilterError(
            f"function {name!r} is not allowed in filters; allowed: "
            + ", ".join(sorted(f for f in ALLOWED_FUNCTIONS if f[0].isalpha()))
        )
    if n.get("filter") or n.get("distinct") or n.get("export_state"):
        raise FilterError(f"aggregate syntax is not allowed in filters ({name})")
    if (n.get("order_bys") or {}).get("orders"):
        raise FilterError(f"ORDER BY inside {name}() is not allowed in filters")
    args = []
    for a in n.get("arguments", []):
        if a.get("name"):
            raise FilterError(f"named arguments are not allowed in filters ({name})")
        args.append(a["expression"])
    if name == "replace":
        _check_replace(args)
    return args


def _check_replace(args: list) -> None:
    """``replace(text, from, to)`` must not lengthen text: ``from``/``to`` string literals,
    ``from`` not empty, ``to`` no longer than ``from`` (UTF-8 bytes, as DuckDB stores text)."""
    lits = [(a.get("literal") or {}) if a.get("class") == "CONSTANT" else {} for a in args[1:]]
    lits = [lit.get("text") if lit.get("kind") == "STRING" else None for lit in lits]
    if (
        len(args) != 3
        or any(not isinstance(t, str) for t in lits)
        or not lits[0]
        or len(lits[1].encode()) > len(lits[0].encode())
    ):
        raise FilterError(
            "replace(text, 'from', 'to') in filters needs string literals for 'from' and 'to', "
            "with 'to' no longer than 'from' (a filter may not lengthen text)"
        )


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'
