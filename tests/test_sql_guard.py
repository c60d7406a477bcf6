"""SQL filter guard: hostile expressions are refused with a clear FilterError and never touch the
file system; legitimate boolean expressions pass; the filter connection itself has file access
disabled (defence in depth)."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest

from threads_search.query import FilterError, open_index
from threads_search.query.sql_guard import validate_where
from threads_search.vectorstore.writer import write_generation

COLUMNS = ["slide_id", "patient_id", "site", "age", "grade", "path"]

# (expression with {s} = sentinel path, expected message fragment)
HOSTILE = [
    ("site = 'A'; DROP TABLE slides", "';'"),
    ("site = 'A'; COPY slides TO '{s}'", "';'"),
    ("site = 'A' -- trailing comment", "comments"),
    ("site = 'A' /* block */ OR TRUE", "comments"),
    ("age IN (SELECT age FROM slides)", "subqueries"),
    ("EXISTS (SELECT 1 FROM molecular)", "subqueries"),
    ("site = (SELECT column0 FROM read_csv('{s}'))", "subqueries"),
    ("read_csv('/etc/passwd') IS NOT NULL", "function 'read_csv'"),
    ("read_parquet('{s}') IS NULL", "function 'read_parquet'"),
    ("length(glob('*')) > 0", "function 'glob'"),
    ("COPY slides TO '{s}'", "not a valid SQL expression"),
    ("ATTACH '{s}' AS x", "not a valid SQL expression"),
    ("ATTACH '{s}'", "ATTACH is not an allowed type"),
    ("PRAGMA database_list", "not a valid SQL expression"),
    ("INSTALL httpfs", "not a valid SQL expression"),
    ("LOAD httpfs", "not a valid SQL expression"),
    ("SET enable_external_access = true", "not a valid SQL expression"),
    ("CREATE TABLE t AS SELECT 1", "not a valid SQL expression"),
    ("site = 'A') UNION SELECT * FROM read_csv('{s}') WHERE (TRUE", "plain boolean"),
    ("path = 'https://example.com/x.csv'", "URLs are not allowed"),
    ("path = 's3://bucket/key'", "URLs are not allowed"),
    ("no_such_function(site)", "function 'no_such_function'"),
    ("getenv('HOME') = site", "function 'getenv'"),
    ("current_setting('threads') = 1", "function 'current_setting'"),
    ("secret_col = 1", "unknown column 'secret_col'"),
    ("slides.site = 'A'", "bare column names"),
    ("COLUMNS(*) = 1", "COLUMNS"),
    ("$1 = site", "'$'"),
    ("? = site", "parameters"),
    ("$$x$$ = site", "'$'"),
    ("list_filter([1], x -> x > 0) = [1]", "function 'list_filter'"),
    ("count(*) > 1", "function 'count_star'"),
    ("site::VARCHAR[] = []", "LIST is not an allowed type"),
    ("__row_id__ = 0", "unknown column '__row_id__'"),
    ("site = 'A\x00'", "control characters"),
    ("", "empty filter"),
    ("site = 'unterminated", "unterminated"),
    ("site = E'\\'') ; DROP TABLE slides; SELECT ('", "escape strings"),
    ("site = e'x'", "escape strings"),
    ("length(lpad(site, 2000000000, 'a')) > 0", "function 'lpad' is not allowed"),
    ("rpad(site, 2000000000, 'a') = 'A'", "function 'rpad' is not allowed"),
    ("repeat(site, 2000000000) = 'A'", "function 'repeat' is not allowed"),
    ("regexp_replace(site, '', 'xx', 'g') = 'A'", "function 'regexp_replace' is not allowed"),
    ("replace(site, 'A', 'AAAA') = 'A'", "may not lengthen text"),
    ("replace(site, '', 'A') = 'A'", "may not lengthen text"),
    ("replace(site, 'A', grade) = 'A'", "may not lengthen text"),
    ("replace(site, 'a', 'é') = 'A'", "may not lengthen text"),  # 1 byte -> 2 bytes
    ("NOT " * 500 + "site = 'A'", "nested too deeply"),
    ("NOT " * 990 + "site = 'A'", "nested too deeply"),  # DuckDB's own depth limit
    ("lower(" * 100 + "site" + ")" * 100 + " = 'a'", "nested too deeply"),
    ("+".join(["age"] * 500) + " > 1", "nested too deeply"),
]


@pytest.mark.parametrize("expr,msg", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_expressions_refused(expr, msg, tmp_path):
    sentinel = tmp_path / "sentinel.csv"
    with pytest.raises(FilterError, match=None) as exc:
        validate_where(expr.format(s=sentinel), COLUMNS)
    assert msg in str(exc.value), str(exc.value)
    assert not sentinel.exists() and list(tmp_path.iterdir()) == []


def test_at_least_15_distinct_kinds_refused():
    assert len({m for _, m in HOSTILE}) >= 15


GOOD = [
    "site = 'A'",
    "age BETWEEN 40 AND 60 AND lower(grade) LIKE 'g%'",
    "grade IS NULL OR age::INTEGER > 3",
    "site IN ('A', 'B') AND site NOT IN ('C')",
    "coalesce(grade, 'none') = 'none'",
    "NOT (site = 'A') OR CASE WHEN age > 50 THEN TRUE ELSE FALSE END",
    "regexp_matches(slide_id, '^P0') AND starts_with(patient_id, 'P')",
    "year(DATE '2021-03-04') = 2021 AND abs(age - 50) < 10",
    "path LIKE '/archive/%' AND \"site\" = 'it''s; -- not a comment'",
    "site ILIKE 'a' OR grade IS DISTINCT FROM 'G1'",
    "AGE > 3",  # identifiers are case-insensitive, as in DuckDB
    "grade = 'e' OR site = 'E'",  # a string that happens to hold an e is not an E'' prefix
    "replace(site, '-', '') = 'AB' AND replace(grade, 'grade ', 'G') = 'G1'",  # never lengthens
    "NOT " * 60 + "site = 'A'",  # deep but within MAX_DEPTH
]


@pytest.mark.parametrize("expr", GOOD, ids=[g[:40] for g in GOOD])
def test_legitimate_expressions_pass(expr):
    assert validate_where(expr, COLUMNS) == f"({expr})"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    n = 12
    slides = pd.DataFrame(
        {
            "slide_id": [f"S{i:02d}" for i in range(n)],
            "path": "/x",
            "patient_id": [f"P{i}" for i in range(n)],
            "site": list("AB") * 6,
            "age": np.arange(n) * 5,
        }
    )
    emb = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    write_generation(root / "idx", slides, emb)
    return open_index(root / "idx")


@pytest.mark.parametrize("expr,msg", HOSTILE[:20], ids=[h[0][:40] for h in HOSTILE[:20]])
def test_index_refuses_and_touches_nothing(index, expr, msg, tmp_path):
    sentinel = tmp_path / "sentinel.csv"
    before = sorted(p.name for p in index.generation_dir.rglob("*"))
    with pytest.raises(FilterError):
        index.search_slides("S01", where=expr.format(s=sentinel))
    assert not sentinel.exists()
    assert sorted(p.name for p in index.generation_dir.rglob("*")) == before


def test_filter_connection_has_no_file_access(index, tmp_path):
    """Defence in depth: even SQL that bypassed the guard could not read or write files."""
    assert list(index.filter_ids("site = 'A'")) == list(range(0, 12, 2))
    con = index._catalog._connect()
    sentinel = tmp_path / "sentinel.csv"
    sentinel_out = tmp_path / "out.csv"
    sentinel.write_text("a\n1\n")
    cur = con.cursor()
    for sql in (
        f"SELECT * FROM read_csv('{sentinel}')",
        f"COPY slides TO '{sentinel_out}'",
        f"ATTACH '{tmp_path / 'x.db'}' AS x",
        "SET enable_external_access = true",
    ):
        with pytest.raises(duckdb.Error):
            cur.execute(sql)
    assert not sentinel_out.exists() and not (tmp_path / "x.db").exists()


_RSS_PROBE = """
import resource, sys, tempfile
import numpy as np, pandas as pd
from threads_search.vectorstore.writer import write_generation
from threads_search.query import FilterError, open_index

root = tempfile.mkdtemp(dir=sys.argv[1])
n = 12
ids = [f"S{i:02d}" for i in range(n)]
slides = pd.DataFrame({"slide_id": ids, "path": "/archive/" + "a" * 100, "patient_id": ids,
                       "site": list("AB") * 6})
write_generation(root + "/idx", slides, np.ones((n, 8), np.float32))
index = open_index(root + "/idx")
index.search_slides("S01", where="site = 'A'")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for expr in sys.argv[2:]:
    try:
        index.search_slides("S01", where=expr)
        print("accepted")
    except FilterError as e:
        print("FilterError", str(e).splitlines()[0][:60])
    except RecursionError:
        print("RecursionError")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_short_hostile_filters_allocate_nothing(tmp_path):
    """Short filters (under MAX_LENGTH characters) that made DuckDB allocate gigabytes (padding, nested
    replace) or raised RecursionError (500 NOTs) are FilterErrors, and the process's peak memory
    does not grow (measured in a fresh interpreter: ru_maxrss)."""
    a, b, c = "a" * 1000, "b" * 1000, "c" * 300
    hostile = [
        "length(lpad(site, 300000000, 'a')) > 0",
        "length(rpad(path, 300000000, 'a')) > 0",
        f"length(replace(replace('{a}', 'a', '{b}'), 'b', '{c}')) > 0",
        "NOT " * 500 + "site = 'A'",
    ]
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(tmp_path), *hostile],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split("\n")
    verdicts, grown_mb = out[: len(hostile)], int(out[len(hostile)])
    assert all(v.startswith("FilterError") for v in verdicts), verdicts
    assert grown_mb < 64, f"peak RSS grew by {grown_mb} MB"
