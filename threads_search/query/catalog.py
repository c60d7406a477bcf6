"""Where SQL filters run: an in-memory DuckDB copy of the catalog's ``slides`` and ``molecular``
views, with file access switched off.

On first use the generation's ``catalog.duckdb`` is attached read-only (``file_search_path`` set
to the generation folder, since its views name their Parquet files relatively), each view is
copied into an in-memory table with ``__row_id__`` (= FAISS id, found by joining on the table's
keys against the Parquet row order), the catalog is detached, then ``enable_external_access`` is
set to false and the configuration locked, so a filter cannot read, write or attach anything
even if it got past :mod:`threads_search.query.sql_guard`. Without a catalog (or a view), the
in-memory frames are copied instead. Each query uses its own cursor (thread-safe). The index
is immutable, so the ids of the last ``CACHE_SIZE`` distinct filters are kept (read-only arrays).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from threads_search.errors import InputError
from threads_search.query.sql_guard import FilterError, validate_where
from threads_search.vectorstore import store

ROW_ID = "__row_id__"
KEYS = {"slides": ["slide_id"], "molecular": ["sample_id", "kind"]}
CACHE_SIZE = 32


class CatalogError(InputError):
    """The catalog disagrees with the Parquet tables (a damaged index; a ``ValueError``)."""


class FilterCatalog:
    """Filters over ``tables`` (name → frame, rows = FAISS ids) of generation ``gen``."""

    def __init__(self, gen: Path, tables: dict[str, pd.DataFrame]) -> None:
        self.gen = Path(gen)
        self.tables = tables
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._columns: dict[str, list[str]] = {}
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def columns(self, table: str) -> list[str]:
        """The filterable columns of ``table``."""
        self._connect()
        return list(self._columns[table])

    def ids(self, where: str, table: str) -> np.ndarray:
        """Sorted row ids int64 of ``table`` matching ``where`` (read-only array). Raises
        ``FilterError``."""
        key = (table, where)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        con = self._connect()
        if table not in self._columns:
            raise FilterError(f"unknown table {table!r}: use one of {sorted(self._columns)}")
        clause = validate_where(where, self._columns[table])
        cur = con.cursor()
        try:
            got = cur.execute(f"SELECT {ROW_ID} FROM {table} WHERE {clause}").fetchnumpy()
        except duckdb.Error as e:
            raise FilterError(f"filter {where!r} failed on the {table} table: {e}") from None
        finally:
            cur.close()
        ids = np.sort(np.asarray(got[ROW_ID], np.int64))
        ids.setflags(write=False)
        with self._lock:
            self._cache[key] = ids
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ids

    def _connect(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                self._con = self._materialise()
            return self._con

    def _materialise(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        cat = self.gen / store.CATALOG
        views: set[str] = set()
        if cat.is_file():
            con.execute("SET file_search_path = " + _quote(self.gen.as_posix()))
            try:
                con.execute(f"ATTACH {_quote(cat.as_posix())} AS cat (READ_ONLY)")
            except duckdb.Error as e:
                raise CatalogError(f"{cat} cannot be read ({e}); rebuild the index") from None
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'cat'"
            ).fetchall()
            views = {r[0] for r in rows}
        for name, frame in self.tables.items():
            keys = KEYS[name]
            ids = frame[keys].assign(**{ROW_ID: np.arange(len(frame), dtype=np.int64)})
            if name in views:
                con.register("__keys", ids)
                on = " AND ".join(f"s.{k} = k.{k}" for k in keys)
                con.execute(
                    f"CREATE TABLE {name} AS SELECT k.{ROW_ID}, s.* FROM cat.{name} s "
                    f"JOIN __keys k ON {on}"
                )
                con.unregister("__keys")
            else:
                con.register("__frame", frame.assign(**{ROW_ID: ids[ROW_ID].to_numpy()}))
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM __frame")
                con.unregister("__frame")
            n = con.execute(f"SELECT count(*), count(DISTINCT {ROW_ID}) FROM {name}").fetchone()
            if n != (len(frame), len(frame)):
                raise CatalogError(
                    f"{cat}: view {name} has {n[0]} rows matching {n[1]} of the {len(frame)} "
                    "rows of its Parquet table; rebuild the index"
                )
            cols = [d[0] for d in con.execute(f"SELECT * FROM {name} LIMIT 0").description]
            self._columns[name] = [c for c in cols if c != ROW_ID]
        if views:
            con.execute("DETACH cat")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
