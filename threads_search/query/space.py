"""One searchable table of the index (slides or molecular samples): the metadata frame, its
memory-mapped FAISS index from the vector store (row i = FAISS id i) and exact k-NN over all
rows or a subset of them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionDtype

from threads_search.vectorstore.vectors import (
    SUBSET_EXACT_MAX,
    drop_padding,
    index_kind,
    normalize,
    search,
    search_subset,
    subset_vectors,
)

RESULT_COLUMNS = ("rank", "score", "thumbnail")  # added to result frames by the index


@dataclass
class Space:
    """``name``: "slides" | "molecular"; ``table``: rows aligned with ``index`` (None when the
    table is empty); ``emb_path``: the embeddings Parquet (read row by row for IVF-PQ only)."""

    name: str
    table: pd.DataFrame
    index: object | None
    emb_path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _patients: dict | None = field(default=None, repr=False)
    _arrays: list | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """FAISS index kind: flat | hnsw | ivf | ivfpq | other | none."""
        return index_kind(self.index) if self.index is not None else "none"

    def rows(self, ids) -> np.ndarray:
        """Exact normalised embeddings float32 ``[len(ids), E]`` of rows ``ids``: reconstructed
        from the index when it stores exact vectors, else read from the embeddings Parquet."""
        ids = np.asarray(ids, np.int64)
        if self.kind in ("flat", "hnsw", "ivf"):
            return subset_vectors(self.index, ids)
        if self.kind == "streaming":
            return self.index.reconstruct_batch(ids)
        import pyarrow as pa
        import pyarrow.dataset as ds

        col = ds.dataset(self.emb_path).take(pa.array(ids), columns=["embedding"])
        col = col.column("embedding").combine_chunks()
        return normalize(col.values.to_numpy(zero_copy_only=False).reshape(len(ids), -1))

    def patient(self, row: int | None):
        """patient_id of ``row`` (None when unknown)."""
        if row is None or "patient_id" not in self.table:
            return None
        p = self.table["patient_id"].iat[row]
        return None if pd.isna(p) else p

    def patient_rows(self, patient) -> np.ndarray:
        """Rows of ``patient`` (a grouping built once, thread-safe)."""
        with self._lock:
            if self._patients is None:
                t = self.table
                ok = "patient_id" in t and len(t)
                self._patients = t.groupby("patient_id", sort=False).indices if ok else {}
        return np.asarray(self._patients.get(patient, []), np.int64)

    def knn(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, exclude
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) by cosine of ``q`` ``[E]`` over rows ``allowed`` (None = all)
        minus rows ``exclude``. Without ``allowed``: the index is asked for ``k + |exclude|``
        hits and the excluded ones dropped (as exact as the index). With ``allowed``: exact
        brute force over the subset's vectors, except subsets above a quarter of a flat index
        (FAISS ID selector over an exact scan: exact too) or above ``SUBSET_EXACT_MAX`` rows of
        an approximate index (selector search, restricted to the subset but approximate)."""
        q = normalize(q)
        exclude = np.unique(np.asarray(exclude, np.int64))
        if allowed is None:
            s, i = search(self.index, q, k + exclude.size)
            s, i = drop_padding(s[0], i[0])
            keep = ~np.isin(i, exclude)
            return s[keep][:k], i[keep][:k]
        allowed = np.setdiff1d(allowed, exclude, assume_unique=True)
        m = allowed.size
        if m == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        small = m <= (self.index.ntotal // 4 if self.kind == "flat" else SUBSET_EXACT_MAX)
        small = small or self.kind == "streaming"  # exact over the subset's vectors on disk
        if not small:
            s, i = search_subset(self.index, q, k, allowed)
            return drop_padding(s[0], i[0])
        # einsum, not BLAS: one matrix-vector product, where waking BLAS threads on a busy
        # machine costs more (ms) than the product itself
        sc = np.einsum("ij,j->i", self.rows(allowed), q[0])
        top = np.argpartition(-sc, k - 1)[:k] if k < m else np.arange(m)
        top = top[np.lexsort((allowed[top], -sc[top]))]
        return sc[top], allowed[top]

    def frame(self, ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        """``rank``, ``score`` then the table's columns for rows ``ids``. A table column named
        like a result column (``rank``, ``score``, ``thumbnail``: an index written before such
        metadata columns were renamed when indexing) comes back as ``meta_<name>``, never as a
        second column of the same name."""
        ids = np.asarray(ids, np.int64)
        out = {"rank": np.arange(1, len(ids) + 1), "score": np.asarray(scores, np.float64)}
        for name, values in self._columns():
            out[f"meta_{name}" if name in RESULT_COLUMNS else name] = values[ids]
        return pd.DataFrame(out, copy=False)

    def _columns(self) -> list[tuple[str, object]]:
        """(name, values) of the table's columns, as arrays that take row ids directly (numpy
        arrays, or pandas extension arrays keeping their dtype); built once: a result frame is
        then one fancy index per column (no DataFrame take and concat on the query path)."""
        with self._lock:
            if self._arrays is None:
                self._arrays = [
                    (str(c), col.array if isinstance(col.dtype, ExtensionDtype) else col.to_numpy())
                    for c, col in self.table.items()
                ]
        return self._arrays
