"""How a query becomes something to search with: :class:`QueryResolution`, the half of
:class:`~threads_search.query.index.Index` that turns what the caller gave (an indexed slide_id
or sample_id, a slide or feature-file path, a vector, a molecular profile) into a normalised
query vector ``[E]``, the rows to leave out (the query itself, its patient) and the rows to score.

A slide id or the path of an indexed slide is looked up (its stored vector, no model needed);
another existing path is embedded with the index's model, as is a molecular profile. Every
fault of the caller's input is a :class:`~threads_search.query.errors.QueryError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.errors import ThreadsSearchError
from threads_search.linalg import l2_normalize
from threads_search.molecular import RnaUnitsError
from threads_search.query.errors import QueryError
from threads_search.query.space import Space


class QueryResolution:
    """Mixed into ``Index``, whose ``__init__`` sets what this uses: ``root``, ``_s`` / ``_m``
    (slide / molecular :class:`Space`), ``_slide_pos`` (``pd.Index`` of slide ids), ``_lock``,
    ``_paths`` (None until the path lookup is built); and ``dim``, ``model``, ``filter_ids``,
    ``thumbnail``."""

    def _space(self, name: str) -> Space:
        sp = self._s if name == "slides" else self._m
        if sp.index is None:
            raise QueryError(f"index {self.root} has no {name} to search")
        return sp

    def _path_row(self, path: str) -> int:
        """Row of the indexed slide whose file is ``path`` (absolute or not), or -1."""
        with self._lock:
            if self._paths is None:
                col = self._s.table["path"] if "path" in self._s.table else pd.Series(dtype=str)
                self._paths = {os.path.abspath(str(p)): i for i, p in col.dropna().items()}
        return self._paths.get(os.path.abspath(path), -1)

    def _indexed_row(self, query: str | Path) -> int:
        """Row of the indexed slide ``query`` names: its slide_id (a ``str``), else the path of
        its file; -1 when none."""
        row = int(self._slide_pos.get_indexer([query])[0]) if isinstance(query, str) else -1
        return row if row >= 0 else self._path_row(str(query))

    def _slide_query(self, query) -> tuple[np.ndarray, int | None]:
        """(query vector [E], row of the indexed slide or None)."""
        if not isinstance(query, (str, Path)):
            return self._vector(query), None
        s = str(query)
        row = self._indexed_row(query)
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
            emb = model.embed_slide(Path(s), checkpoint=self._checkpoint, device=self._device)
            return np.asarray(emb, np.float32), None
        except (ThreadsSearchError, OSError, ValueError, RuntimeError) as e:
            # the file's fault (decoders raise OSError/ValueError/RuntimeError on bad data)
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
        return l2_normalize(emb)[0], None

    @staticmethod
    def _exclusions(sp: Space, patient, flag: bool | None, own_row, what: str) -> list:
        """Rows to leave out: the query's own row, and its patient's rows when ``flag`` (None:
        when the patient is known)."""
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

    def _targets(self, where, slides) -> np.ndarray:
        """Slide rows to classify: all, or the ``slides`` ids, within ``where``."""
        rows = self.filter_ids(where, "slides")
        if slides is None:
            return np.arange(len(self._s.table), dtype=np.int64) if rows is None else rows
        ids = [slides] if isinstance(slides, str) else [str(s) for s in slides]
        pos = self._slide_pos.get_indexer(ids).astype(np.int64)
        if (pos < 0).any():
            bad = [s for s, p in zip(ids, pos, strict=True) if p < 0]
            raise QueryError(f"slides not in the index: {', '.join(bad[:5])}")
        return pos if rows is None else pos[np.isin(pos, rows)]

    def _run(self, sp: Space, q, k: int, where: str | None, exclude, allowed=None):
        """The result frame of the ``k`` nearest rows of ``sp`` to ``q`` within ``where`` and
        ``allowed``, ``exclude`` left out (slides get their ``thumbnail``)."""
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
