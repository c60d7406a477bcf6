"""The read-only query engine over one committed index generation: :class:`Index`.

Opening (``open_index``) resolves ``index.json`` once, reads the slide and molecular tables, and
memory-maps the FAISS indexes; embeddings are never loaded whole (query and subset vectors are
reconstructed from the FAISS index, exact for flat/HNSW/IVF-Flat, or read row by row from the
embeddings Parquet for IVF-PQ). The model bundle is loaded on first need only (a query that must
embed a new slide or a molecular profile). Everything else is immutable after opening, so one
``Index`` can serve many threads; lazy parts are built once under a lock and each DuckDB call uses
its own cursor.

Filters (``where=``): a SQL boolean expression over the metadata columns, checked by
:mod:`threads_search.query.sql_guard`, run by DuckDB on an in-memory copy of the catalog's
``slides``/``molecular`` views (made on first use: the catalog is attached read-only, copied with
the row id = FAISS id, detached; then external access is disabled and the configuration locked).
Filtered search is exact over the matching rows (brute force over their vectors; for large
subsets of an approximate index, FAISS with an ID selector, which still never returns a row
outside the filter).

Result frames: ``rank`` (1..k), ``score`` (cosine, higher = more similar), the id column
(``slide_id`` or ``sample_id``), the metadata columns, and for slides ``thumbnail`` (absolute
path or None).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from threads_search.index import store
from threads_search.index.vectors import (
    SUBSET_EXACT_MAX,
    drop_padding,
    index_kind,
    load_index,
    normalize,
    search,
    search_subset,
    subset_vectors,
)
from threads_search.query import prototypes as proto
from threads_search.query.sql_guard import FilterError, validate_where

ROW_ID = "__row_id__"
_KEYS = {"slides": ["slide_id"], "molecular": ["sample_id", "kind"]}
_KEYS_MOL = ["sample_id", "patient_id", "kind"]


class QueryError(ValueError):
    """A query cannot be answered; the message names the input at fault."""


class IndexFormatError(ValueError):
    """The index was written in a format this version cannot read."""


@dataclass
class _Space:
    """One searchable table: rows = FAISS ids."""

    name: str
    table: pd.DataFrame
    index: object | None
    emb_path: Path

    @property
    def kind(self) -> str:
        return index_kind(self.index) if self.index is not None else "none"

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Exact normalised embeddings float32 ``[len(ids), E]`` of rows ``ids``."""
        ids = np.asarray(ids, np.int64)
        if self.kind in ("flat", "hnsw", "ivf"):
            return subset_vectors(self.index, ids)
        import pyarrow as pa
        import pyarrow.dataset as ds

        col = ds.dataset(self.emb_path).take(pa.array(ids), columns=["embedding"])
        col = col.column("embedding").combine_chunks()
        return normalize(col.values.to_numpy(zero_copy_only=False).reshape(len(ids), -1))


def _check_format(manifest: dict, root: Path) -> None:
    fv = manifest.get("format_version")
    if fv == store.FORMAT_VERSION:
        return
    newer = isinstance(fv, int) and fv > store.FORMAT_VERSION
    what = "upgrade threads-search, or " if newer else ""
    raise IndexFormatError(
        f"index {root} has format version {fv}; this threads-search reads version "
        f"{store.FORMAT_VERSION}: {what}rebuild it with `threads-search index ... --out {root}`"
    )


class Index:
    """A committed index opened read-only (see the module docstring). ``model``: a
    ``ThreadsModel`` or bundle folder overriding the one named in ``index.json``."""

    def __init__(self, index_dir: str | Path, model=None, device: str = "cpu") -> None:
        self.root = Path(index_dir)
        manifest = store.read_manifest(self.root)
        _check_format(manifest, self.root)
        self._manifest = manifest
        self.generation_dir = gen = Path(manifest["generation_dir"])
        slides = pd.read_parquet(gen / store.SLIDES)
        fs = gen / store.FAISS_SLIDES
        self._s = _Space(
            "slides", slides, load_index(fs) if len(slides) else None, gen / store.SLIDE_EMB
        )
        if (gen / store.MOLECULAR).exists():
            mol = pd.read_parquet(gen / store.MOLECULAR)
            mindex = load_index(gen / store.FAISS_MOLECULAR) if len(mol) else None
        else:
            mol, mindex = pd.DataFrame({c: pd.Series(dtype=str) for c in _KEYS_MOL}), None
        self._m = _Space("molecular", mol, mindex, gen / store.MOLECULAR_EMB)
        for sp in (self._s, self._m):
            if sp.index is not None and sp.index.ntotal != len(sp.table):
                raise IndexFormatError(
                    f"{gen}: {sp.name} table has {len(sp.table)} rows but "
                    f"its FAISS index {sp.index.ntotal}; rebuild the index"
                )
        self._slide_pos = pd.Index(slides["slide_id"])
        self._model = model if model is not None and not isinstance(model, (str, Path)) else None
        self._model_dir = Path(model) if isinstance(model, (str, Path)) else None
        self._device = device
        self._lock = threading.Lock()
        self._db: tuple[duckdb.DuckDBPyConnection, dict[str, list[str]]] | None = None
        self._lazy: dict[str, object] = {}

    # -- tables and metadata -------------------------------------------------------------
    @property
    def slides(self) -> pd.DataFrame:
        """The slide table (row i = FAISS id i) with its metadata columns."""
        return self._s.table.copy(deep=False)

    @property
    def molecular(self) -> pd.DataFrame:
        """The molecular-sample table (sample_id, patient_id, kind, metadata); may be empty."""
        return self._m.table.copy(deep=False)

    @property
    def manifest(self) -> dict:
        return copy.deepcopy(self._manifest)

    @property
    def dim(self) -> int:
        return int(self._s.index.d) if self._s.index is not None else 0

    def thumbnail(self, slide_id: str) -> str | None:
        """Absolute path of the slide's thumbnail JPEG, or None."""
        p = self.generation_dir / store.THUMBNAILS / f"{slide_id}.jpg"
        return str(p.resolve()) if p.is_file() else None

    def attention(self, slide_id: str) -> pd.DataFrame | None:
        """Per-patch attention (x, y level-0 px; score) of an indexed slide, or None."""
        p = self.generation_dir / store.ATTENTION / f"{slide_id}.parquet"
        return pd.read_parquet(p) if p.is_file() else None

    def info(self) -> dict:
        """Summary for ``threads-search info``: model, encoder, counts, FAISS, build, versions."""
        m = self._manifest
        model = dict(m.get("model") or {})
        cfg_path = self._model_path(required=False)
        if cfg_path is not None and (cfg_path / "config.json").is_file():
            cfg = json.loads((cfg_path / "config.json").read_text())
            model.update(
                path=str(cfg_path),
                patch_encoder=cfg.get("patch_encoder"),
                slide_encoder=(cfg.get("slide_encoder") or {}).get("name"),
                molecular_encoders=sorted(cfg.get("molecular_encoders") or {}),
            )
        faiss_info = {}
        for name in ("slides", "molecular"):
            f = (m.get(name) or {}).get("faiss") or {}
            if f:
                faiss_info[name] = {
                    k: f.get(k)
                    for k in ("type", "params", "recall_at_k", "k", "target_recall", "memory_bytes")
                }
        return {
            "index_dir": str(self.root.resolve()),
            "generation": m.get("generation"),
            "built": m.get("committed"),
            "format_version": m.get("format_version"),
            "counts": m.get("counts"),
            "dim": self.dim,
            "model": model,
            "faiss": faiss_info,
            "versions": m.get("versions"),
        }

    # -- model ---------------------------------------------------------------------------
    def _model_path(self, required: bool = True) -> Path | None:
        if self._model_dir is not None:
            return self._model_dir
        d = (self._manifest.get("model") or {}).get("dir")
        if not d:
            if required:
                raise QueryError(
                    f"{self.root / store.INDEX_JSON} names no model bundle "
                    "(model.dir); pass model= to open_index"
                )
            return None
        return Path(d) if os.path.isabs(d) else self.root / d

    @property
    def model(self):
        """The index's ``ThreadsModel``, loaded on first use."""
        with self._lock:
            if self._model is None:
                from threads_search.models.bundle import load_model

                path = self._model_path()
                try:
                    self._model = load_model(path, device=self._device)
                except (FileNotFoundError, ValueError) as e:
                    raise QueryError(f"cannot load the index's model bundle {path}: {e}") from e
                if self._model.embedding_dim != self.dim and self.dim:
                    raise QueryError(
                        f"model {path} embeds in {self._model.embedding_dim}-d, "
                        f"the index holds {self.dim}-d vectors"
                    )
            return self._model

    # -- filters -------------------------------------------------------------------------
    def _filter_db(self) -> tuple[duckdb.DuckDBPyConnection, dict[str, list[str]]]:
        with self._lock:
            if self._db is None:
                self._db = _materialise(
                    self.generation_dir, {"slides": self._s.table, "molecular": self._m.table}
                )
            return self._db

    def filter_ids(self, where: str | None, table: str = "slides") -> np.ndarray | None:
        """Sorted row ids int64 of ``table`` ("slides" | "molecular") matching ``where``
        (None when ``where`` is None/blank). Raises ``FilterError``."""
        if where is None or (isinstance(where, str) and not where.strip()):
            return None
        db, cols = self._filter_db()
        if table not in cols:
            raise QueryError(f"unknown table {table!r}: use 'slides' or 'molecular'")
        clause = validate_where(where, cols[table])
        cur = db.cursor()
        try:
            got = cur.execute(f"SELECT {ROW_ID} FROM {table} WHERE {clause}").fetchnumpy()[ROW_ID]
        except duckdb.Error as e:
            raise FilterError(f"filter {where!r} failed on the {table} table: {e}") from None
        finally:
            cur.close()
        return np.sort(np.asarray(got, np.int64))

    def select(self, where: str | None = None, table: str = "slides") -> pd.DataFrame:
        """Rows of ``table`` matching ``where`` (all when None)."""
        sp = self._space(table)
        ids = self.filter_ids(where, table)
        return (
            sp.table.copy(deep=False) if ids is None else sp.table.take(ids).reset_index(drop=True)
        )

    # -- helpers -------------------------------------------------------------------------
    def _space(self, name: str) -> _Space:
        if name not in ("slides", "molecular"):
            raise QueryError(f"unknown table {name!r}: use 'slides' or 'molecular'")
        sp = self._s if name == "slides" else self._m
        if sp.index is None:
            raise QueryError(f"index {self.root} has no {name} to search")
        return sp

    def _by_patient(self, name: str) -> dict:
        key = f"patients_{name}"
        with self._lock:
            if key not in self._lazy:
                t = (self._s if name == "slides" else self._m).table
                self._lazy[key] = t.groupby("patient_id", sort=False).indices if len(t) else {}
            return self._lazy[key]

    def _by_path(self) -> dict:
        with self._lock:
            if "paths" not in self._lazy:
                paths = self._s.table.get("path", pd.Series(dtype=str)).dropna()
                self._lazy["paths"] = {os.path.abspath(str(p)): i for i, p in paths.items()}
            return self._lazy["paths"]

    def _patient(self, sp: _Space, row: int | None):
        if row is None or "patient_id" not in sp.table:
            return None
        p = sp.table["patient_id"].iat[row]
        return None if pd.isna(p) else p

    def _slide_query(self, query) -> tuple[np.ndarray, int | None]:
        """(query vector [E], row of the indexed slide or None)."""
        if isinstance(query, (str, Path)):
            s = str(query)
            row = self._slide_pos.get_indexer([s])[0] if isinstance(query, str) else -1
            if row < 0:
                row = self._by_path().get(os.path.abspath(s), -1)
            if row >= 0:
                return self._s.rows([row])[0], int(row)
            p = Path(s)
            if not p.exists():
                ex = ", ".join(map(str, self._s.table["slide_id"].head(3)))
                raise QueryError(
                    f"{s!r} is neither a slide_id of this index (e.g. {ex}) "
                    "nor an existing slide or feature file"
                )
            try:
                return self.model.embed_slide(p), None
            except QueryError:
                raise
            except Exception as e:
                raise QueryError(f"cannot embed slide {p}: {e}") from e
        return self._vector(query), None

    def _vector(self, v) -> np.ndarray:
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        try:
            v = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise QueryError(f"query must be an id, a path or a vector, not {type(v)}") from e
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise QueryError(f"query vector has shape {v.shape}, the index holds {self.dim}-d")
        if not np.isfinite(v).all() or not np.any(v):
            raise QueryError("query vector must be finite and non-zero")
        return v

    def _molecular_query(self, kind: str, value) -> tuple[np.ndarray, object]:
        """(normalised embedding [E], patient or None) of an indexed sample id or a profile."""
        t = self._m.table
        if isinstance(value, str):
            hit = np.flatnonzero(t["sample_id"].to_numpy() == value) if len(t) else []
            rows = [r for r in hit if t["kind"].iat[r] == kind]
            if not rows:
                other = sorted({t["kind"].iat[r] for r in hit})
                why = f"it is a {'/'.join(other)} sample" if other else "no such sample"
                raise QueryError(
                    f"{kind}={value!r}: not an indexed {kind} sample ({why}); "
                    f"pass a profile or an indexed {kind} sample_id"
                )
            return self._m.rows(rows[:1])[0], self._patient(self._m, rows[0])
        fn = self.model.embed_rna if kind == "rna" else self.model.embed_dna
        try:
            emb = np.asarray(fn(value), np.float32)
        except (TypeError, ValueError, KeyError) as e:
            raise QueryError(f"cannot embed the {kind.upper()} profile: {e}") from e
        if emb.ndim == 2:
            if emb.shape[0] != 1:
                raise QueryError(f"{kind}= must be one profile, got {emb.shape[0]} samples")
            emb = emb[0]
        return normalize(emb)[0], None

    def _knn(self, sp: _Space, q: np.ndarray, k: int, allowed, exclude) -> tuple:
        if k < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        q = normalize(q)
        exclude = np.unique(np.asarray(exclude, np.int64))
        if allowed is None:
            s, i = search(sp.index, q, k + exclude.size)
            s, i = drop_padding(s[0], i[0])
            keep = ~np.isin(i, exclude)
            return s[keep][:k], i[keep][:k]
        allowed = np.setdiff1d(allowed, exclude, assume_unique=True)
        m = allowed.size
        if m == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        small = m <= (sp.index.ntotal // 4 if sp.kind == "flat" else SUBSET_EXACT_MAX)
        if not small:
            return drop_padding(*(a[0] for a in search_subset(sp.index, q, k, allowed)))
        sc = sp.rows(allowed) @ q[0]
        top = np.argpartition(-sc, k - 1)[:k] if k < m else np.arange(m)
        top = top[np.lexsort((allowed[top], -sc[top]))]
        return sc[top], allowed[top]

    def _frame(self, sp: _Space, ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        meta = sp.table.take(np.asarray(ids, np.int64)).reset_index(drop=True)
        head = pd.DataFrame(
            {"rank": np.arange(1, len(ids) + 1), "score": np.asarray(scores, np.float64)}
        )
        out = pd.concat([head, meta], axis=1)
        if sp is self._s:
            out["thumbnail"] = [self.thumbnail(s) for s in meta["slide_id"]]
        return out

    def _exclusions(self, sp: _Space, patient, flag, own_row, what: str) -> list:
        exclude = [own_row] if own_row is not None and sp is self._s else []
        if flag is None:
            flag = patient is not None
        if flag:
            if patient is None:
                raise QueryError(
                    f"exclude_same_patient=True needs a query whose patient is "
                    f"known ({what}); pass exclude_same_patient=False"
                )
            exclude.extend(self._by_patient(sp.name).get(patient, []))
        return exclude

    # -- queries -------------------------------------------------------------------------
    def search_slides(
        self, query, k: int = 10, where: str | None = None, exclude_same_patient: bool | None = None
    ) -> pd.DataFrame:
        """Nearest slides to ``query``: an indexed slide_id (or the path of an indexed slide),
        a path to a new slide or feature ``.h5`` (embedded with the index's model), or a vector
        ``[E]``. The query slide itself is never returned; ``exclude_same_patient`` (default:
        True when the query's patient_id is known) drops every slide of the query's patient."""
        sp = self._space("slides")
        q, row = self._slide_query(query)
        patient = self._patient(sp, row)
        exclude = self._exclusions(sp, patient, exclude_same_patient, row, "an indexed slide")
        s, i = self._knn(sp, q, k, self.filter_ids(where, "slides"), exclude)
        return self._frame(sp, i, s)

    def search_by_molecule(
        self,
        rna=None,
        dna=None,
        k: int = 10,
        where: str | None = None,
        exclude_same_patient: bool = False,
    ) -> pd.DataFrame:
        """Nearest slides to a molecular query. ``rna`` / ``dna``: a profile (RNA: dict gene →
        value, Series, one-row DataFrame or RnaMatrix; DNA: list of mutated genes, dict, Series,
        one-row binary DataFrame or one sample's MAF rows), embedded with the index's model, or
        the sample_id of an indexed sample of that kind. Both given: the query is the mean of
        the two normalised embeddings. ``exclude_same_patient`` (default False: finding the
        sample's own slides is the usual aim) needs indexed sample ids."""
        sp = self._space("slides")
        parts = [
            self._molecular_query(kd, v) for kd, v in (("rna", rna), ("dna", dna)) if v is not None
        ]
        if not parts:
            raise QueryError("give rna= and/or dna= (a profile or an indexed sample_id)")
        q = np.mean([p[0] for p in parts], axis=0)
        patients = {p[1] for p in parts} - {None}
        patient = patients.pop() if len(patients) == 1 else None
        exclude = self._exclusions(sp, patient, exclude_same_patient, None, "indexed sample ids")
        s, i = self._knn(sp, q, k, self.filter_ids(where, "slides"), exclude)
        return self._frame(sp, i, s)

    def search_molecules(
        self,
        query,
        k: int = 10,
        where: str | None = None,
        kind: str | None = None,
        exclude_same_patient: bool | None = None,
    ) -> pd.DataFrame:
        """Nearest molecular samples to a slide (slide_id, path or vector, as in
        ``search_slides``). ``kind``: "rna" | "dna" | None (both). ``where`` filters the
        molecular table. ``exclude_same_patient`` (default: True when the query slide's
        patient_id is known) drops the query patient's own samples."""
        sp = self._space("molecular")
        q, row = self._slide_query(query)
        patient = self._patient(self._s, row)
        exclude = self._exclusions(sp, patient, exclude_same_patient, row, "an indexed slide")
        allowed = self.filter_ids(where, "molecular")
        if kind is not None:
            if kind not in ("rna", "dna"):
                raise QueryError(f"kind must be 'rna', 'dna' or None, got {kind!r}")
            of_kind = np.flatnonzero(sp.table["kind"].to_numpy() == kind)
            allowed = of_kind if allowed is None else np.intersect1d(allowed, of_kind)
        s, i = self._knn(sp, q, k, allowed, exclude)
        return self._frame(sp, i, s)

    def classify(
        self,
        label: str,
        prototypes: str = "molecular",
        where: str | None = None,
        slides=None,
        min_samples: int = 5,
        kind: str | None = None,
        chunk: int = 16_384,
    ) -> pd.DataFrame:
        """Zero-shot classification by class prototypes (:mod:`threads_search.query.prototypes`).

        Prototypes: mean normalised embedding per value of metadata column ``label`` over the
        indexed molecular samples (``prototypes="molecular"``, optionally only ``kind``) or
        slides (``"slide"``: leave-one-out, a slide never scores against a prototype holding
        its own embedding); rows with a null label are skipped; classes with fewer than
        ``min_samples`` samples are left out with a ``SmallClassWarning``. Scored slides: all,
        the ``slides`` ids, and/or those matching ``where``. Returns ``slide_id, predicted,
        score_<class>...`` (cosine), plus the slides' own ``label`` column when they have one;
        ``attrs``: class_sizes, excluded_classes, min_samples, prototypes, label."""
        if prototypes not in ("molecular", "slide"):
            raise QueryError(f"prototypes must be 'molecular' or 'slide', got {prototypes!r}")
        src = self._space("molecular" if prototypes == "molecular" else "slides")
        if label not in src.table.columns:
            raise QueryError(
                f"no column {label!r} in the {src.name} table; columns: "
                + ", ".join(map(str, src.table.columns))
            )
        mask = src.table[label].notna().to_numpy()
        if kind is not None:
            mask &= (src.table["kind"] == kind).to_numpy()
        src_rows = np.flatnonzero(mask)
        labels = src.table[label].iloc[src_rows]
        try:
            protos = proto.build_prototypes(
                src.rows(src_rows),
                labels,
                min_samples,
                f"{'molecular samples' if src is self._m else 'slides'}",
            )
        except ValueError as e:
            raise QueryError(f"classify by {label!r}: {e}") from None
        targets = self._targets(where, slides)
        own = None
        if prototypes == "slide":
            lookup = dict(
                zip(
                    src_rows, pd.Categorical(labels.map(proto._py), categories=protos.classes).codes
                )
            )
            own = np.array([lookup.get(r, -1) for r in targets], np.int64)
        sl = self._space("slides")
        scores = np.vstack(
            [
                proto.score(
                    sl.rows(targets[a : a + chunk]),
                    protos,
                    None if own is None else own[a : a + chunk],
                )
                for a in range(0, len(targets), chunk)
            ]
            or [np.zeros((0, len(protos.classes)))]
        )
        out = pd.DataFrame(
            {
                "slide_id": sl.table["slide_id"].take(targets).to_numpy(),
                "predicted": proto.predict(scores, protos.classes),
            }
        )
        for j, c in enumerate(protos.classes):
            out[f"score_{c}"] = scores[:, j]
        if label in sl.table.columns:
            out[label] = sl.table[label].take(targets).to_numpy()
        out.attrs.update(
            class_sizes=protos.class_sizes,
            excluded_classes=protos.excluded,
            min_samples=min_samples,
            prototypes=prototypes,
            label=label,
        )
        return out

    def _targets(self, where, slides) -> np.ndarray:
        rows = self.filter_ids(where, "slides")
        if slides is not None:
            ids = [slides] if isinstance(slides, str) else list(slides)
            pos = self._slide_pos.get_indexer(ids)
            if (pos < 0).any():
                bad = [s for s, p in zip(ids, pos, strict=True) if p < 0]
                raise QueryError(f"slides not in the index: {', '.join(map(str, bad[:5]))}")
            pos = pos.astype(np.int64)
            return pos if rows is None else pos[np.isin(pos, rows)]
        return np.arange(len(self._s.table), dtype=np.int64) if rows is None else rows


def _materialise(gen: Path, tables: dict[str, pd.DataFrame]):
    """In-memory DuckDB with one table per name (``ROW_ID`` + the catalog view's columns), copied
    from ``catalog.duckdb`` (attached read-only) or, without a catalog, from the frames; then
    file access is switched off and the configuration locked. → (connection, columns)."""
    con = duckdb.connect(":memory:")
    cat = gen / store.CATALOG
    attached = cat.is_file()
    if attached:
        con.execute("SET file_search_path = '" + gen.as_posix().replace("'", "''") + "'")
        path = cat.as_posix().replace("'", "''")
        con.execute(f"ATTACH '{path}' AS cat (READ_ONLY)")
        views = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'cat'"
            ).fetchall()
        }
    cols: dict[str, list[str]] = {}
    for name, frame in tables.items():
        keys = _KEYS[name]
        ids = frame[keys].copy()
        ids[ROW_ID] = np.arange(len(frame), dtype=np.int64)
        con.register("__keys", ids)
        if attached and name in views:
            on = " AND ".join(f"s.{k} = k.{k}" for k in keys)
            con.execute(
                f"CREATE TABLE {name} AS SELECT k.{ROW_ID}, s.* FROM cat.{name} s "
                f"JOIN __keys k ON {on}"
            )
        else:
            con.register("__frame", frame.assign(**{ROW_ID: ids[ROW_ID].to_numpy()}))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM __frame")
            con.unregister("__frame")
        con.unregister("__keys")
        n = con.execute(f"SELECT count(*), count(DISTINCT {ROW_ID}) FROM {name}").fetchone()
        if n != (len(frame), len(frame)):
            raise IndexFormatError(
                f"{cat}: view {name} has {n[0]} rows matching {n[1]} of the "
                f"{len(frame)} rows of its Parquet table; rebuild the index"
            )
        cols[name] = [
            c for c in con.execute(f"SELECT * FROM {name} LIMIT 0").columns if c != ROW_ID
        ]
    if attached:
        con.execute("DETACH cat")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, cols


def open_index(index_dir: str | Path, model=None, device: str = "cpu") -> Index:
    """Open a committed index read-only (cheap; see :class:`Index`). ``model``: optional
    ``ThreadsModel`` or bundle folder overriding ``index.json``'s. Raises
    ``IndexNotFoundError`` (no ``index.json``) or ``IndexFormatError`` (other format version)."""
    return Index(index_dir, model=model, device=device)
