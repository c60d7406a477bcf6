"""The read-only index over one committed generation of the vector store: :class:`Index`
(opened with :func:`open_index`): its tables, its model, its filters and the queries. How a
query becomes a vector and the rows to leave out is :mod:`threads_search.query.resolve`.

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

from threads_search.errors import ThreadsSearchError
from threads_search.query import prototypes as proto
from threads_search.query.catalog import FilterCatalog
from threads_search.query.errors import IndexFormatError, QueryError
from threads_search.query.region_search import RegionSearch, no_regions_reason
from threads_search.query.resolve import QueryResolution
from threads_search.query.space import Space
from threads_search.vectorstore import store
from threads_search.vectorstore.vectors import load_index

__all__ = ["MOLECULAR_KEYS", "Index", "IndexFormatError", "QueryError", "open_index"]

MOLECULAR_KEYS = ["sample_id", "patient_id", "kind"]


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


_FILES = {  # space → (table, FAISS file, embeddings, columns of its table when absent)
    "slides": (
        store.SLIDES,
        store.FAISS_SLIDES,
        store.SLIDE_EMB,
        ["slide_id", "path", "patient_id"],
    ),
    "molecular": (store.MOLECULAR, store.FAISS_MOLECULAR, store.MOLECULAR_EMB, MOLECULAR_KEYS),
}


def _open_space(gen: Path, name: str, mmap: bool) -> Space:
    """The ``name`` space of generation ``gen``: its table and memory-mapped FAISS file."""
    table, faiss, emb, empty = _FILES[name]
    if (gen / table).exists():
        try:
            frame = pd.read_parquet(gen / table)
        except (OSError, ValueError) as e:  # truncated or not Parquet (pyarrow's ArrowInvalid)
            raise IndexFormatError(f"{gen / table} cannot be read ({e}); rebuild the index") from e
    else:
        frame = pd.DataFrame({c: pd.Series(dtype=str) for c in empty})
    streaming = gen / store.FAISS_SLIDES_STREAMING
    if name == "slides" and len(frame) and (streaming / "streaming.json").is_file():
        from threads_search.vectorstore.streaming import open_streaming

        index = open_streaming(streaming, mmap)  # vectors on disk, exact re-ranking
    else:
        index = load_index(gen / faiss, mmap=mmap) if len(frame) else None
    if index is not None and index.ntotal != len(frame):
        raise IndexFormatError(
            f"{gen}: {name} table has {len(frame)} rows but its FAISS index {index.ntotal}; "
            "rebuild the index"
        )
    return Space(name, frame, index, gen / emb)


class Index(QueryResolution, RegionSearch):
    """A committed index opened read-only (see the module docstring). ``model``: a
    ``ThreadsModel`` or bundle folder overriding the one named in ``index.json``; ``mmap``:
    memory-map the FAISS files (default; False reads them into memory, slower to open);
    ``checkpoint``: the weights of the index's patch encoder when it is a pretrained one, for
    queries given as pixels (slide files, images, regions of slide files), encoded on
    ``device``."""

    def __init__(
        self,
        index_dir: str | Path,
        model=None,
        device: str = "cpu",
        mmap: bool = True,
        checkpoint: str | Path | None = None,
    ) -> None:
        self.root = Path(index_dir)
        manifest = store.read_manifest(self.root)
        _check_format(manifest, self.root)
        self._manifest = manifest
        self.generation_dir = gen = Path(manifest["generation_dir"])
        self._s = _open_space(gen, "slides", mmap)
        self._m = _open_space(gen, "molecular", mmap)
        self._catalog = FilterCatalog(gen, {"slides": self._s.table, "molecular": self._m.table})
        self._slide_pos = pd.Index(self._s.table["slide_id"])
        is_dir = isinstance(model, (str, Path))
        self._model = None if is_dir else model
        self._model_dir = Path(model) if is_dir else None
        self._device = device
        self._checkpoint = None if checkpoint is None else str(checkpoint)
        self._pixel_encoder = None  # built on the first query given as pixels
        self._encoder_lock = threading.Lock()  # held while building it (a checkpoint: seconds)
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

    def vectors(self, table: str = "slides") -> np.ndarray:
        """Normalised embeddings float32 ``[N, E]`` of every row of ``table`` ("slides" or
        "molecular"), in table order (row i = FAISS id i): exact where the index keeps exact
        vectors, else read from the embeddings Parquet."""
        if table not in ("slides", "molecular"):
            raise QueryError(f"table must be 'slides' or 'molecular', got {table!r}")
        space = self._s if table == "slides" else self._m
        n = len(space.table)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(space.rows(np.arange(n)), np.float32)

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
        keys = ("type", "params", "recall_at_k", "k", "target_recall", "memory_bytes", "choice")
        faiss_info = {
            name: {k: (m[name]["faiss"]).get(k) for k in keys}
            for name in ("slides", "molecular")
            if (m.get(name) or {}).get("faiss")
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
            "regions": _region_info(m.get("regions")),
            "regions_missing": None if m.get("regions") else no_regions_reason(m),
            "versions": m.get("versions"),
        }

    def warm(self) -> None:
        """Build the lazy parts now (filter catalog, patient groups, slide-id lookup), e.g. in a
        background thread right after opening, so that the first query does not pay for them
        (about a second at 100k slides)."""
        self._catalog.columns("slides")
        self._s.patient_rows(None)
        self._m.patient_rows(None)
        self._slide_pos.get_indexer([""])

    def batch_effects(self, column: str = "site", labels=None, k: int = 10) -> dict:
        """How well the slide embeddings predict the batch ``column`` (default ``site``, else
        the TCGA tissue source site of TCGA-shaped ids) and each ``labels`` column: linear
        probe and kNN same-value share with chance and lift, and a ``warning`` when the batch
        is more predictable than every label (:mod:`~threads_search.query.batch`)."""
        from threads_search.query.batch import slide_batch_effects

        return slide_batch_effects(self._s, column, labels, k)

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
                    except (ThreadsSearchError, FileNotFoundError, ValueError) as e:
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
        self,
        rna=None,
        dna=None,
        k: int = 10,
        where: str | None = None,
        exclude_same_patient: bool = False,
    ) -> pd.DataFrame:
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
        self,
        query,
        k: int = 10,
        where: str | None = None,
        kind: str | None = None,
        exclude_same_patient: bool = False,
    ) -> pd.DataFrame:
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
        self,
        label: str,
        prototypes: str = "molecular",
        where: str | None = None,
        slides=None,
        min_samples: int = 5,
        kind: str | None = None,
    ) -> pd.DataFrame:
        """Zero-shot classification by class prototypes (:mod:`~threads_search.query.prototypes`).

        Prototypes: mean normalised embedding per value of metadata column ``label`` over the
        indexed molecular samples (``prototypes="molecular"``; ``kind`` keeps only "rna" or
        "dna" samples) or over the slides (``"slide"``, leave-one-out: a slide never scores
        against a prototype holding its own embedding). Rows with a null label are skipped;
        classes with fewer than ``min_samples`` samples are left out with a
        ``SmallClassWarning`` and listed in ``attrs["excluded_classes"]``. Scored slides: all,
        or the ``slides`` ids, intersected with ``where`` when given. Returns ``slide_id,
        predicted, score_<class>...`` (cosine; classes sorted by value, numbers numerically:
        ``threads_search.eval.embedding.class_order``, ties to the first) plus the slides' own
        ``label`` column when they have one; ``attrs``: class_sizes, excluded_classes,
        min_samples, prototypes, label."""
        if prototypes not in ("molecular", "slide"):
            raise QueryError(f"prototypes must be 'molecular' or 'slide', got {prototypes!r}")
        src = self._space("molecular" if prototypes == "molecular" else "slides")
        targets = self._targets(where, slides)
        try:
            return proto.classify_slides(
                src, self._space("slides"), targets, label, prototypes == "slide", min_samples, kind
            )
        except ThreadsSearchError as e:
            raise QueryError(f"classify by {label!r}: {e}") from None


def _region_info(r: dict | None) -> dict | None:
    """The region index's size, type and projection for ``info`` (None: it has none; a
    generation written before projections compares the raw features)."""
    if not r:
        return None
    f = r.get("faiss") or {}
    keys = ("count", "slides", "dim", "bytes_per_patch")
    from threads_search.vectorstore.projection import OLDER, RegionProjection

    older = RegionProjection.identity(int(r.get("dim") or 0), OLDER).describe()
    return {
        **{k: r.get(k) for k in keys},
        "type": f.get("type"),
        "recall_at_k": f.get("recall_at_k"),
        "projection": r.get("projection") or older,
    }


def open_index(
    index_dir: str | Path,
    model=None,
    device: str = "cpu",
    mmap: bool = True,
    checkpoint: str | Path | None = None,
) -> Index:
    """Open a committed index read-only (cheap; see :class:`Index`). ``model``: optional
    ``ThreadsModel`` or bundle folder overriding ``index.json``'s; ``mmap=False`` reads the
    FAISS files into memory instead of mapping them; ``checkpoint``: the pretrained patch
    encoder's weights, for queries given as pixels. Raises ``IndexNotFoundError`` (no
    ``index.json``) or ``IndexFormatError`` (other format version)."""
    return Index(index_dir, model=model, device=device, mmap=mmap, checkpoint=checkpoint)
