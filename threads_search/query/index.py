"""The read-only query engine over one committed index generation: :class:`Index`.

Opening (``open_index``) resolves ``index.json`` once, reads the slide and molecular tables and
memory-maps the FAISS indexes; embeddings are never loaded whole (query and subset vectors are
reconstructed from the FAISS index, exact for flat/HNSW/IVF-Flat, or read row by row from the
embeddings Parquet for IVF-PQ). The model bundle is loaded on first need only (a query that must
embed a new slide or a molecular profile). Everything else is immutable after opening, so one
``Index`` can serve many threads; lazy parts are built once under a lock, and each DuckDB call
uses its own cursor.

Filters (``where=``): a SQL boolean expression over the metadata columns, checked by
:mod:`~threads_search.query.sql_guard` and run by DuckDB on an in-memory copy of the catalog with
file access off (:mod:`~threads_search.query.catalog`). Filtered search is exact over the
matching rows (:meth:`Space.knn <threads_search.query.space.Space.knn>`) and never returns a row
outside the filter.

Result frames: ``rank`` (1..k), ``score`` (cosine, higher = more similar), the id column
(``slide_id`` or ``sample_id``), the metadata columns, and for slides ``thumbnail`` (absolute
path or None).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.molecular import RnaUnitsError
from threads_search.query import prototypes as proto
from threads_search.query.catalog import FilterCatalog
from threads_search.query.space import Space
from threads_search.vectorstore import store
from threads_search.vectorstore.vectors import load_index, normalize

MOLECULAR_KEYS = ["sample_id", "patient_id", "kind"]


class QueryError(ValueError):
    """A query cannot be answered; the message names the input at fault."""


class IndexFormatError(ValueError):
    """The index was written in a format this version cannot read."""


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


def _space(
    gen: Path, name: str, table: str, faiss: str, emb: str, empty: list[str], mmap: bool
) -> Space:
    if (gen / table).exists():
        frame = pd.read_parquet(gen / table)
    else:
        frame = pd.DataFrame({c: pd.Series(dtype=str) for c in empty})
    index = load_index(gen / faiss, mmap=mmap) if len(frame) else None
    if index is not None and index.ntotal != len(frame):
        raise IndexFormatError(
            f"{gen}: {name} table has {len(frame)} rows but its FAISS index {index.ntotal}; "
            "rebuild the index"
        )
    return Space(name, frame, index, gen / emb)


class Index:
    """A committed index opened read-only (see the module docstring). ``model``: a
    ``ThreadsModel`` or bundle folder overriding the one named in ``index.json``; ``mmap``:
    memory-map the FAISS files (default; False reads them into memory, slower to open)."""

    def __init__(
        self, index_dir: str | Path, model=None, device: str = "cpu", mmap: bool = True
    ) -> None:
        self.root = Path(index_dir)
        manifest = store.read_manifest(self.root)
        _check_format(manifest, self.root)
        self._manifest = manifest
        self.generation_dir = gen = Path(manifest["generation_dir"])
        self._s = _space(gen, "slides", store.SLIDES, store.FAISS_SLIDES, store.SLIDE_EMB,
                         ["slide_id", "path", "patient_id"], mmap)  # fmt: skip
        self._m = _space(gen, "molecular", store.MOLECULAR, store.FAISS_MOLECULAR,
                         store.MOLECULAR_EMB, MOLECULAR_KEYS, mmap)  # fmt: skip
        self._catalog = FilterCatalog(gen, {"slides": self._s.table, "molecular": self._m.table})
        self._slide_pos = pd.Index(self._s.table["slide_id"])
        is_dir = isinstance(model, (str, Path))
        self._model = None if is_dir else model
        self._model_dir = Path(model) if is_dir else None
        self._device = device
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # held while loading: seconds
        self._model_ok = False
        self._paths: dict[str, int] | None = None
        self._thumbs = str((gen / store.THUMBNAILS).resolve())

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
        """``index.json`` (with ``generation_dir``)."""
        return copy.deepcopy(self._manifest)

    @property
    def dim(self) -> int:
        """Embedding dimension (0 for an empty index)."""
        return int(self._s.index.d) if self._s.index is not None else 0

    def thumbnail(self, slide_id: str) -> str | None:
        """Absolute path of the slide's thumbnail JPEG, or None (also for an id that cannot
        name a file of this index: absolute, ``..``; see ``threads_search.paths``)."""
        from threads_search.paths import UnsafeSlideIdError, slide_file

        try:
            p = str(slide_file(self._thumbs, slide_id, ".jpg"))
        except UnsafeSlideIdError:
            return None
        return p if os.path.isfile(p) else None

    def attention(self, slide_id: str) -> pd.DataFrame | None:
        """Per-patch attention (x, y in level-0 px; score...) of an indexed slide, or None (also
        for an id that cannot name a file of this index)."""
        from threads_search.paths import UnsafeSlideIdError, slide_file

        try:
            p = slide_file(self.generation_dir / store.ATTENTION, slide_id, ".parquet")
        except UnsafeSlideIdError:
            return None
        return pd.read_parquet(p) if p.is_file() else None

    def info(self) -> dict:
        """Summary for ``threads-search info``: model, encoder, counts, FAISS type and measured
        recall, build time, generation, versions."""
        m = self._manifest
        model = dict(m.get("model") or {})
        path = self._model_path(required=False)
        if path is not None and (path / "config.json").is_file():
            cfg = json.loads((path / "config.json").read_text())
            model.update(
                path=str(path.resolve()),
                patch_encoder=cfg.get("patch_encoder"),
                slide_encoder=(cfg.get("slide_encoder") or {}).get("name"),
                molecular_encoders=sorted(cfg.get("molecular_encoders") or {}),
            )
        keys = ("type", "params", "recall_at_k", "k", "target_recall", "memory_bytes")
        faiss_info = {
            name: {k: (m[name]["faiss"]).get(k) for k in keys}
            for name in ("slides", "molecular")
            if (m.get(name) or {}).get("faiss")
        }
        return {
            "index_dir": str(self.root.resolve()), "generation": m.get("generation"),
            "built": m.get("committed"), "format_version": m.get("format_version"),
            "counts": m.get("counts"), "dim": self.dim, "model": model, "faiss": faiss_info,
            "versions": m.get("versions"),
        }  # fmt: skip

    def warm(self) -> None:
        """Build the lazy parts now (filter catalog, patient groups, slide-id lookup), e.g. in a
        background thread right after opening, so that the first query does not pay for them
        (about a second at 100k slides)."""
        self._catalog.columns("slides")
        self._s.patient_rows(None)
        self._m.patient_rows(None)
        self._slide_pos.get_indexer([""])

    # -- model ---------------------------------------------------------------------------
    def _model_path(self, required: bool = True) -> Path | None:
        if self._model_dir is not None:
            return self._model_dir
        d = (self._manifest.get("model") or {}).get("dir")
        if not d:
            if required:
                raise QueryError(
                    f"{self.root / store.INDEX_JSON} names no model bundle (model.dir), needed "
                    "to embed this query; pass model= to open_index"
                )
            return None
        return Path(d) if os.path.isabs(d) else self.root / d

    @property
    def model(self):
        """The index's ``ThreadsModel`` (loaded on first use), checked against the index's
        embedding dimension."""
        with self._model_lock:
            if not self._model_ok:
                path = self._model_path() if self._model is None else "given model"
                if self._model is None:
                    from threads_search.models.bundle import load_model

                    try:
                        self._model = load_model(path, device=self._device)
                    except (FileNotFoundError, ValueError) as e:
                        raise QueryError(f"cannot load the index's model bundle {path}: {e}") from e
                if self.dim and self._model.embedding_dim != self.dim:
                    raise QueryError(
                        f"model ({path}) embeds in {self._model.embedding_dim}-d, the index holds "
                        f"{self.dim}-d vectors"
                    )
                self._model_ok = True
            return self._model

    @property
    def rna_units(self) -> str | None:
        """The RNA units the index's model was trained on, in which profiles are read unless
        told otherwise (from its ``config.json``: the model is not loaded); None when it has
        no RNA encoder or no bundle is known."""
        if self._model is not None:
            return self._model.rna_units if self._model.rna is not None else None
        from threads_search.models.bundle import bundle_rna_units

        path = self._model_path(required=False)
        return None if path is None else bundle_rna_units(path)

    # -- filters -------------------------------------------------------------------------
    def filter_ids(self, where: str | None, table: str = "slides") -> np.ndarray | None:
        """Sorted row ids int64 of ``table`` ("slides" | "molecular") matching the SQL boolean
        expression ``where`` (None when ``where`` is None or blank). Raises ``FilterError``."""
        if where is None or (isinstance(where, str) and not where.strip()):
            return None
        return self._catalog.ids(where, table)

    def filter_columns(self, table: str = "slides") -> list[str]:
        """Columns a ``where`` filter on ``table`` may use."""
        return self._catalog.columns(table)

    def select(self, where: str | None = None, table: str = "slides") -> pd.DataFrame:
        """Rows of ``table`` matching ``where`` (all when None)."""
        t = (self._s if table == "slides" else self._m).table
        ids = self.filter_ids(where, table)
        return t.copy(deep=False) if ids is None else t.take(ids).reset_index(drop=True)

    # -- query resolution ----------------------------------------------------------------
    def _space(self, name: str) -> Space:
        sp = self._s if name == "slides" else self._m
        if sp.index is None:
            raise QueryError(f"index {self.root} has no {name} to search")
        return sp

    def _path_row(self, path: str) -> int:
        with self._lock:
            if self._paths is None:
                col = self._s.table["path"] if "path" in self._s.table else pd.Series(dtype=str)
                self._paths = {os.path.abspath(str(p)): i for i, p in col.dropna().items()}
        return self._paths.get(os.path.abspath(path), -1)

    def _slide_query(self, query) -> tuple[np.ndarray, int | None]:
        """(query vector [E], row of the indexed slide or None)."""
        if not isinstance(query, (str, Path)):
            return self._vector(query), None
        s = str(query)
        row = int(self._slide_pos.get_indexer([s])[0]) if isinstance(query, str) else -1
        if row < 0:
            row = self._path_row(s)
        if row >= 0:
            return self._s.rows([row])[0], row
        if not Path(s).exists():
            ex = ", ".join(map(str, self._s.table["slide_id"].head(3)))
            raise QueryError(
                f"{s!r} is neither a slide_id of this index (e.g. {ex}) nor an existing slide "
                "or feature file"
            )
        model = self.model
        try:
            return np.asarray(model.embed_slide(Path(s)), np.float32), None
        except Exception as e:
            raise QueryError(f"cannot embed slide {s}: {e}") from e

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
            raise QueryError(f"query vector has shape {v.shape}; the index holds {self.dim}-d")
        if not np.isfinite(v).all() or not np.any(v):
            raise QueryError("query vector must be finite and non-zero")
        return v

    def _molecular_query(self, kind: str, value) -> tuple[np.ndarray, object]:
        """(normalised embedding [E], patient or None) of an indexed sample id or a profile."""
        t = self._m.table
        if isinstance(value, str):
            hit = np.flatnonzero(t["sample_id"].to_numpy() == value) if len(t) else []
            rows = [int(r) for r in hit if t["kind"].iat[r] == kind]
            if not rows:
                other = sorted({str(t["kind"].iat[r]) for r in hit})
                why = f"it is a {'/'.join(other)} sample" if other else "no such sample"
                raise QueryError(
                    f"{kind}={value!r} is not an indexed {kind} sample ({why}); pass a profile "
                    f"or the sample_id of an indexed {kind} sample"
                )
            return self._m.rows(rows[:1])[0], self._m.patient(rows[0])
        model = self.model
        try:
            emb = np.asarray((model.embed_rna if kind == "rna" else model.embed_dna)(value))
        except RnaUnitsError as e:
            raise QueryError(
                f"cannot embed the RNA profile: {e.detail}: the index's model reads profiles in "
                f"{e.units} units (those it was trained on): give the profile in {e.units}"
            ) from e
        except (TypeError, ValueError, KeyError) as e:
            raise QueryError(f"cannot embed the {kind.upper()} profile: {e}") from e
        if emb.ndim == 2:
            if emb.shape[0] != 1:
                raise QueryError(f"{kind}= must be one profile, got {emb.shape[0]} samples")
            emb = emb[0]
        return normalize(emb)[0], None

    def _run(self, sp: Space, q, k: int, where: str | None, exclude, allowed=None):
        if int(k) < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        ids = self.filter_ids(where, sp.name)
        if allowed is not None:
            ids = allowed if ids is None else np.intersect1d(ids, allowed)
        scores, rows = sp.knn(q, int(k), ids, exclude)
        out = sp.frame(rows, scores)
        if sp is self._s:
            out["thumbnail"] = [self.thumbnail(s) for s in out["slide_id"]]
        return out

    @staticmethod
    def _exclusions(sp: Space, patient, flag: bool | None, own_row, what: str) -> list:
        exclude = [own_row] if own_row is not None else []
        if flag is None:
            flag = patient is not None
        if flag:
            if patient is None:
                raise QueryError(
                    f"exclude_same_patient=True needs a query whose patient is known ({what}); "
                    "pass exclude_same_patient=False"
                )
            exclude.extend(sp.patient_rows(patient).tolist())
        return exclude

    # -- queries -------------------------------------------------------------------------
    def search_slides(
        self, query, k: int = 10, where: str | None = None, exclude_same_patient: bool | None = None
    ) -> pd.DataFrame:
        """Nearest slides to ``query``: an indexed slide_id (or the path of an indexed slide),
        the path of a new slide or feature ``.h5`` (embedded with the index's model), or a
        vector ``[E]``. The query slide itself is never returned; ``exclude_same_patient``
        (default: True when the query's patient_id is known) drops every slide of its patient.
        ``where``: SQL over the slide metadata; results are exact within the filter."""
        sp = self._space("slides")
        q, row = self._slide_query(query)
        ex = self._exclusions(sp, sp.patient(row), exclude_same_patient, row, "an indexed slide")
        return self._run(sp, q, k, where, ex)

    def search_by_molecule(
        self, rna=None, dna=None, k: int = 10, where: str | None = None,
        exclude_same_patient: bool = False,
    ) -> pd.DataFrame:  # fmt: skip
        """Nearest slides to a molecular query. ``rna`` / ``dna``: a profile (RNA: dict gene →
        value, Series, one-row DataFrame or RnaMatrix, in the model's units unless an RnaMatrix
        says otherwise; DNA: list of mutated genes, dict, Series, one-row binary DataFrame or one
        sample's MAF rows), embedded with the index's model, or the sample_id of an indexed
        sample of that kind. Both given: the query is the mean of the two normalised embeddings.

        Same patient: like :meth:`search_molecules` (the other cross-modal direction), the
        query patient's own slides are kept by default, since a sample's own slides are the
        match cross-modal retrieval looks for; ``exclude_same_patient=True`` drops them (needs
        indexed sample ids, whose patient is known). Only slide → slide search
        (:meth:`search_slides`) drops the query's patient by default."""
        sp = self._space("slides")
        given = [(kd, v) for kd, v in (("rna", rna), ("dna", dna)) if v is not None]
        if not given:
            raise QueryError("give rna= and/or dna= (a profile or an indexed sample_id)")
        parts = [self._molecular_query(kd, v) for kd, v in given]
        q = np.mean([p[0] for p in parts], axis=0)
        patients = {p[1] for p in parts} - {None}
        patient = patients.pop() if len(patients) == 1 else None
        ex = self._exclusions(sp, patient, exclude_same_patient, None, "indexed sample ids")
        return self._run(sp, q, k, where, ex)

    def search_molecules(
        self, query, k: int = 10, where: str | None = None, kind: str | None = None,
        exclude_same_patient: bool = False,
    ) -> pd.DataFrame:  # fmt: skip
        """Nearest molecular samples to a slide (slide_id, path or vector, as in
        ``search_slides``). ``kind``: "rna" | "dna" | None (both). ``where`` filters the
        molecular table. Same patient: as in :meth:`search_by_molecule` (the other cross-modal
        direction), the query patient's own samples are kept by default (they are the expected
        match); ``exclude_same_patient=True`` drops them (needs a query slide whose patient_id
        is known)."""
        sp = self._space("molecular")
        if kind not in (None, "rna", "dna"):
            raise QueryError(f"kind must be 'rna', 'dna' or None, got {kind!r}")
        q, row = self._slide_query(query)
        patient = self._s.patient(row)
        ex = self._exclusions(sp, patient, exclude_same_patient, None, "an indexed slide")
        of_kind = None if kind is None else np.flatnonzero(sp.table["kind"].to_numpy() == kind)
        return self._run(sp, q, k, where, ex, allowed=of_kind)

    def classify(
        self, label: str, prototypes: str = "molecular", where: str | None = None, slides=None,
        min_samples: int = 5, kind: str | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Zero-shot classification by class prototypes (:mod:`~threads_search.query.prototypes`).

        Prototypes: mean normalised embedding per value of metadata column ``label`` over the
        indexed molecular samples (``prototypes="molecular"``; ``kind`` keeps only "rna" or
        "dna" samples) or over the slides (``"slide"``, leave-one-out: a slide never scores
        against a prototype holding its own embedding). Rows with a null label are skipped;
        classes with fewer than ``min_samples`` samples are left out with a
        ``SmallClassWarning`` and listed in ``attrs["excluded_classes"]``. Scored slides: all,
        or the ``slides`` ids, intersected with ``where`` when given. Returns ``slide_id,
        predicted, score_<class>...`` (cosine) plus the slides' own ``label`` column when they
        have one; ``attrs``: class_sizes, excluded_classes, min_samples, prototypes, label."""
        if prototypes not in ("molecular", "slide"):
            raise QueryError(f"prototypes must be 'molecular' or 'slide', got {prototypes!r}")
        src = self._space("molecular" if prototypes == "molecular" else "slides")
        targets = self._targets(where, slides)
        try:
            return proto.classify_slides(src, self._space("slides"), targets, label,
                                         prototypes == "slide", min_samples, kind)  # fmt: skip
        except ValueError as e:
            raise QueryError(f"classify by {label!r}: {e}") from None

    def _targets(self, where, slides) -> np.ndarray:
        rows = self.filter_ids(where, "slides")
        if slides is None:
            return np.arange(len(self._s.table), dtype=np.int64) if rows is None else rows
        ids = [slides] if isinstance(slides, str) else [str(s) for s in slides]
        pos = self._slide_pos.get_indexer(ids).astype(np.int64)
        if (pos < 0).any():
            bad = [s for s, p in zip(ids, pos, strict=True) if p < 0]
            raise QueryError(f"slides not in the index: {', '.join(bad[:5])}")
        return pos if rows is None else pos[np.isin(pos, rows)]


def open_index(index_dir: str | Path, model=None, device: str = "cpu", mmap: bool = True) -> Index:
    """Open a committed index read-only (cheap; see :class:`Index`). ``model``: optional
    ``ThreadsModel`` or bundle folder overriding ``index.json``'s; ``mmap=False`` reads the
    FAISS files into memory instead of mapping them. Raises ``IndexNotFoundError`` (no
    ``index.json``) or ``IndexFormatError`` (other format version)."""
    return Index(index_dir, model=model, device=device, mmap=mmap)
