"""Per-gene z-score of RNA profiles over a model's gene vocabulary: :class:`RnaNormalizer`
(fitted on the training set in log space, saved as ``rna_normalization.json``), and the
vectorised alignment of any profile's genes to that vocabulary."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from threads_search.atomic import write_text
from threads_search.errors import MissingError
from threads_search.molecular import MissingGenesWarning, MolecularDataError
from threads_search.molecular.rna import (
    _check_finite,
    _check_units,
    check_finite,
    check_linear,
    float_array,
    gene_arrow,
    gene_names,
)
from threads_search.molecular.tables import _examples


@dataclass
class RnaNormalizer:
    """Per-gene z-score over the vocabulary ``genes`` (model order), fitted in log space.

    ``std`` is floored at ``std_floor`` (near-constant training genes do not explode); z-scores
    are clipped to ``±clip``. Saved as ``rna_normalization.json``.
    """

    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    units: str = "tpm"
    std_floor: float = 0.1
    clip: float = 10.0
    n_samples: int = 0
    min_coverage: float = 0.5
    _vocab: pa.Array | None = field(default=None, init=False, repr=False, compare=False)
    _last_positions: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(
        cls, log_values: pd.DataFrame, units: str = "tpm", std_floor: float = 0.1, **kw
    ) -> RnaNormalizer:
        """Fit on a training matrix already in log space (samples × genes; the columns become
        the vocabulary, in order). ``units`` records what the raw data were."""
        _check_units(units)
        if len(log_values) == 0 or log_values.shape[1] == 0:
            raise MolecularDataError("RNA normaliser: cannot fit on an empty matrix")
        check_finite(log_values, "training matrix")
        arr = log_values.to_numpy(dtype=np.float64)
        names = gene_names(log_values.columns)
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()
            raise MolecularDataError(f"RNA normaliser: duplicate genes {_examples(dup)}")
        genes = list(names)
        std = np.maximum(arr.std(axis=0), std_floor)
        return cls(genes, arr.mean(axis=0), std, units, std_floor, n_samples=len(arr), **kw)

    @property
    def vocabulary(self) -> pa.Array:
        """The vocabulary as a pyarrow string array (built once), the value set of lookups."""
        if self._vocab is None or len(self._vocab) != len(self.genes):
            self._vocab = pa.array(self.genes, pa.string())
        return self._vocab

    def positions(self, columns) -> np.ndarray:
        """int64 ``[len(columns)]``: each column's gene (Ensembl version stripped) as a position
        in the vocabulary, -1 outside it; one hash lookup in pyarrow, no Python loop. The answer
        for the last pandas ``Index`` seen is kept (an ``Index`` is immutable): profiles cut
        from one matrix or built on one gene index share it, so repeated queries skip the
        lookup (read-only array)."""
        last = self._last_positions
        if last is not None and last[0] is columns:
            return last[1]
        found = pc.index_in(gene_arrow(columns), value_set=self.vocabulary)
        pos = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        if isinstance(columns, pd.Index):
            pos.flags.writeable = False
            self._last_positions = (columns, pos)
        return pos

    def align(self, log_values: pd.DataFrame, source: str = "profile") -> pd.DataFrame:
        """Reindex samples × genes (log space) to the vocabulary. Genes absent are filled with the
        training mean (z = 0) and reported with a :class:`MissingGenesWarning`; coverage below
        ``min_coverage`` → :class:`MolecularDataError`. Genes outside the vocabulary are dropped;
        a gene given twice keeps its first column."""
        arr = log_values.to_numpy(dtype=np.float64)
        out = self._place(arr, self.positions(log_values.columns), source)
        return pd.DataFrame(out, index=log_values.index, columns=pd.Index(self.genes, dtype=object))

    def _place(self, arr: np.ndarray, pos: np.ndarray, source: str) -> np.ndarray:
        """float64 ``[n, len(genes)]`` from ``arr`` ``[n, len(pos)]`` whose column ``j`` is gene
        ``pos[j]`` (-1: outside the vocabulary): one fancy-indexed copy, the rest the training
        mean; a gene's first column wins. Checks coverage and warns about absent genes."""
        n = len(self.genes)
        src = np.flatnonzero(pos >= 0)
        dst = pos[src]
        if src.size and np.bincount(dst, minlength=n).max() > 1:  # keep each gene's first column
            dst, first = np.unique(dst, return_index=True)
            src = src[first]
        if dst.size < n:
            present = np.zeros(n, bool)
            present[dst] = True
            missing = np.asarray(self.genes, dtype=object)[~present]
            frac = dst.size / n
            if frac < self.min_coverage:
                raise MolecularDataError(
                    f"RNA {source}: covers {dst.size} of the model's {n} genes ({frac:.1%}), "
                    f"below the {self.min_coverage:.0%} minimum; e.g. missing: {_examples(missing)}"
                )
            warnings.warn(
                MissingGenesWarning(
                    f"RNA {source}: {len(missing)} of the model's {n} genes "
                    f"({len(missing) / n:.1%}) are absent, filled with the training mean "
                    f"(z = 0): {_examples(missing)}"
                ),
                stacklevel=3,
            )
        out = np.empty((arr.shape[0], n), np.float64)
        out[:] = self.mean
        out[:, dst] = arr[:, src]
        return out

    def transform(self, log_values: pd.DataFrame, source: str = "profile") -> np.ndarray:
        """Samples × genes (log space) → aligned z-scores float32 ``[n, len(genes)]``."""
        arr = log_values.to_numpy(dtype=np.float64)
        _check_finite(arr, log_values.index, log_values.columns, source)
        return self._zscore(self._place(arr, self.positions(log_values.columns), source))

    def transform_raw(
        self, values: pd.DataFrame, units: str, source: str = "profile"
    ) -> np.ndarray:
        """Samples × genes in ``units`` → aligned z-scores float32 ``[n, len(genes)]``: the
        result of ``transform(transform_units(values, units))``, computed on arrays with one
        vocabulary lookup, so a 20,000-gene profile costs about a millisecond. Genes outside the
        vocabulary only count towards counts' library size, so a repeated one is not an error
        here even for log units (repeated vocabulary genes are: summed for tpm/counts, an error
        for log). Raises as ``transform_units`` does."""
        _check_units(units)
        arr = float_array(values, source)
        _check_finite(arr, values.index, values.columns, source)
        if units != "log":
            check_linear(arr, units, values.index, values.columns, source)
        pos = self.positions(values.columns)
        n = len(self.genes)
        inside = np.flatnonzero(pos >= 0)
        counts = np.bincount(pos[inside], minlength=n)
        if inside.size and counts.max() > 1:  # a vocabulary gene repeated
            if units == "log":
                rep = np.asarray(self.genes, dtype=object)[counts > 1]
                raise MolecularDataError(
                    f"RNA {source}: gene(s) {_examples(rep)} appear more than once; log-scale "
                    "values cannot be merged: drop the duplicates"
                )
            merged = np.zeros((arr.shape[0], n))
            np.add.at(merged.T, pos[inside], arr[:, inside].T)
            lib = arr.sum(axis=1, keepdims=True)
            arr, pos = merged[:, counts > 0], np.flatnonzero(counts > 0)
        else:
            lib = arr.sum(axis=1, keepdims=True) if units == "counts" else None
            arr, pos = arr[:, inside], pos[inside]
        if units == "counts":
            arr = arr / lib * 1e6
        if units != "log":
            arr = np.log1p(arr)
        return self._zscore(self._place(arr, pos, source))

    def _zscore(self, aligned: np.ndarray) -> np.ndarray:
        z = (aligned - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "format": "threads-search-rna-normalization",
            "version": 1,
            "units": self.units,
            "std_floor": self.std_floor,
            "clip": self.clip,
            "min_coverage": self.min_coverage,
            "n_samples": self.n_samples,
            "genes": list(self.genes),
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
        }

    @classmethod
    def from_dict(cls, d: dict) -> RnaNormalizer:
        try:
            genes, mean, std = list(d["genes"]), np.asarray(d["mean"]), np.asarray(d["std"])
        except KeyError as e:
            raise MolecularDataError(f"RNA normalisation: missing key {e}") from e
        if not len(genes) == len(mean) == len(std):
            raise MolecularDataError(
                f"RNA normalisation: {len(genes)} genes but {len(mean)} means, {len(std)} stds"
            )
        settings = ("units", "std_floor", "clip", "n_samples", "min_coverage")
        options = {k: d[k] for k in settings if k in d}  # others: the dataclass defaults
        return cls(genes, mean.astype(np.float64), std.astype(np.float64), **options)

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (``threads_search.atomic``)."""
        write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> RnaNormalizer:
        path = Path(path)
        if not path.exists():
            raise MissingError(f"RNA normalisation file not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))
