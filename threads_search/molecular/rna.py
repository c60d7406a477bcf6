"""RNA expression: matrix loading, units transform, per-gene z-score and vocabulary alignment.

Matrix file (CSV/TSV/Parquet): one row per sample; the id column is ``sample_id`` (or a first
column with no header, i.e. a written index, or ``id_column=``); one column per gene.

Gene columns: with ``genes=`` exactly those (must be numeric). Otherwise every numeric column
except boolean ones, ``exclude=`` ones and the common clinical names in
:data:`NON_GENE_COLUMNS` (case-insensitive: ``age``, ``er``, ``grade``, ``size``, ``time``,
``event``, ...). The other columns are kept as ``RnaMatrix.metadata`` and listed in
``RnaMatrix.ignored_columns``. Gene names are kept as written (e.g. Affymetrix probe ids, or R's
``X200726_at``) except Ensembl versions, which are stripped (``ENSG00000141510.12`` →
``ENSG00000141510``; ``_PAR_Y`` kept). Genes that collide after stripping are summed for tpm/counts
units (linear scale) and rejected for log units.

Units → log space (:func:`transform_units`): ``tpm``: log1p(TPM); ``counts``: per-sample CPM
(counts / total counts over all the profile's genes × 1e6), then log1p; ``log``: as is (already
log-scale, e.g. log2 microarray intensities). NaN/inf, or negatives in tpm/counts, are rejected
naming the sample(s) and gene(s).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.molecular import MissingGenesWarning, MolecularDataError
from threads_search.molecular.tables import _examples, read_table, set_sample_index

UNITS = ("tpm", "counts", "log")
NON_GENE_COLUMNS = frozenset(
    {
        "slide_id", "sample_id", "patient_id", "case_id", "subject_id", "age", "sex", "gender",
        "race", "ethnicity", "er", "pr", "her2", "grade", "stage", "size", "time", "event",
        "status", "os", "pfs", "dfs", "dss", "rfs", "label", "subtype", "cohort", "project",
        "site", "batch", "diagnosis", "vital_status", "days_to_death", "days_to_last_follow_up",
    }
)  # fmt: skip
_ENSEMBL = re.compile(r"^(ENS[A-Z]*\d+)\.\d+(_PAR_Y)?$")


def strip_gene_version(gene: str) -> str:
    """``ENSG00000141510.12`` → ``ENSG00000141510`` (``..._PAR_Y`` keeps its suffix); other
    names unchanged."""
    m = _ENSEMBL.match(str(gene))
    return m.group(1) + (m.group(2) or "") if m else str(gene)


@dataclass
class RnaMatrix:
    """``values``: float64 ``[samples, genes]`` in the file's ``units`` (index ``sample_id``);
    ``metadata``: the non-gene columns (same index); ``ignored_columns``: their names."""

    values: pd.DataFrame
    units: str
    metadata: pd.DataFrame
    ignored_columns: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def genes(self) -> list[str]:
        return list(self.values.columns)

    @property
    def samples(self) -> list[str]:
        return list(self.values.index)

    def __len__(self) -> int:
        return len(self.values)

    def log_values(self) -> pd.DataFrame:
        """The values in log space (see :func:`transform_units`)."""
        return transform_units(self.values, self.units, self.source)

    def summary(self) -> str:
        ign = f"; ignored non-gene columns: {_examples(self.ignored_columns)}"
        return (
            f"RNA {self.source}: {len(self)} samples x {len(self.genes)} genes ({self.units})"
            + (ign if self.ignored_columns else "")
        )


def read_rna_matrix(
    path: str | Path,
    *,
    units: str = "tpm",
    genes: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    id_column: str | None = None,
) -> RnaMatrix:
    """Load an expression matrix (see the module docstring). Values are returned as in the file;
    ``RnaMatrix.log_values()`` applies the units transform."""
    _check_units(units)
    source = str(path)
    df = set_sample_index(read_table(path, "RNA matrix"), source, id_column, "RNA matrix")
    if genes is not None:
        wanted = {strip_gene_version(g) for g in genes}
        gene_cols = [c for c in df.columns if strip_gene_version(c) in wanted]
        absent = sorted(wanted - {strip_gene_version(c) for c in gene_cols})
        if absent:
            raise MolecularDataError(
                f"RNA matrix {source}: genes= not in file: {_examples(absent)}"
            )
        bad = [c for c in gene_cols if not _is_numeric(df[c])]
        if bad:
            raise MolecularDataError(
                f"RNA matrix {source}: non-numeric values in gene columns {_examples(bad)}"
            )
    else:
        skip = set(exclude)
        gene_cols = [
            c
            for c in df.columns
            if c not in skip and c.lower() not in NON_GENE_COLUMNS and _is_numeric(df[c])
        ]
    if not gene_cols:
        raise MolecularDataError(
            f"RNA matrix {source}: no numeric gene columns (columns: {_examples(df.columns)})"
        )
    ignored = [c for c in df.columns if c not in set(gene_cols)]
    values = clean_gene_columns(df[gene_cols].astype(np.float64), units, source)
    return RnaMatrix(values, units, df[ignored].copy(), ignored, source)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"RNA units must be one of {UNITS}, got {units!r}")


def check_finite(values: pd.DataFrame, source: str) -> None:
    """NaN/inf anywhere → :class:`MolecularDataError` naming the samples and genes."""
    arr = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = bad.any(axis=1).nonzero()[0], bad.any(axis=0).nonzero()[0]
        raise MolecularDataError(
            f"RNA {source}: {int(bad.sum())} missing or infinite value(s) in sample(s) "
            f"{_examples(values.index[rows])}, gene(s) {_examples(values.columns[cols])}"
        )


def clean_gene_columns(values: pd.DataFrame, units: str, source: str) -> pd.DataFrame:
    """Check finiteness, strip Ensembl versions, merge duplicates (sum for tpm/counts; error for
    log). Returns float64, columns in first-seen order."""
    _check_units(units)
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise MolecularDataError(f"RNA {source}: non-numeric expression values ({e})") from e
    values.columns = [strip_gene_version(c) for c in values.columns]
    check_finite(values, source)
    dup = values.columns[values.columns.duplicated()].unique()
    if len(dup):
        if units == "log":
            raise MolecularDataError(
                f"RNA {source}: gene(s) {_examples(dup)} appear more than once (after stripping "
                "Ensembl versions); log-scale values cannot be merged: drop the duplicates"
            )
        order = list(dict.fromkeys(values.columns))
        values = values.T.groupby(level=0, sort=False).sum().T[order]
    return values


def transform_units(values: pd.DataFrame, units: str, source: str = "profile") -> pd.DataFrame:
    """Samples × genes in ``units`` → log space (see the module docstring); float64."""
    values = clean_gene_columns(values, units, source)
    if units == "log":
        return values
    arr = values.to_numpy()
    neg = arr < 0
    if neg.any():
        rows, cols = neg.any(axis=1).nonzero()[0], neg.any(axis=0).nonzero()[0]
        raise MolecularDataError(
            f"RNA {source}: negative {units} values in sample(s) {_examples(values.index[rows])}, "
            f"gene(s) {_examples(values.columns[cols])}; log-scale data needs units='log'"
        )
    if units == "counts":
        lib = arr.sum(axis=1, keepdims=True)
        empty = (lib[:, 0] <= 0).nonzero()[0]
        if len(empty):
            raise MolecularDataError(
                f"RNA {source}: sample(s) {_examples(values.index[empty])} have zero total counts"
            )
        arr = arr / lib * 1e6
    return pd.DataFrame(np.log1p(arr), index=values.index, columns=values.columns)


def as_rna_frame(profile) -> tuple[pd.DataFrame, bool, str | None]:
    """Coerce one profile or many → (samples × genes frame, ``single``, units or None).

    dict gene → value / Series: one sample (``single``). DataFrame: rows are samples; a
    ``sample_id`` column becomes the index; non-numeric, boolean and :data:`NON_GENE_COLUMNS`
    columns are dropped. :class:`RnaMatrix`: its values, with its units."""
    if isinstance(profile, RnaMatrix):
        return profile.values, False, profile.units
    if isinstance(profile, dict):
        return pd.DataFrame([profile], index=["profile"]), True, None
    if isinstance(profile, pd.Series):
        return profile.to_frame(name=profile.name or "profile").T, True, None
    if not isinstance(profile, pd.DataFrame):
        raise TypeError(f"RNA profile must be dict/Series/DataFrame/RnaMatrix, not {type(profile)}")
    df = profile.set_index("sample_id") if "sample_id" in profile.columns else profile
    keep = [c for c in df.columns if str(c).lower() not in NON_GENE_COLUMNS and _is_numeric(df[c])]
    return df[keep], False, None


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
        genes = [strip_gene_version(g) for g in log_values.columns]
        if len(set(genes)) != len(genes):
            dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique()
            raise MolecularDataError(f"RNA normaliser: duplicate genes {_examples(dup)}")
        std = np.maximum(arr.std(axis=0), std_floor)
        return cls(genes, arr.mean(axis=0), std, units, std_floor, n_samples=len(arr), **kw)

    def align(self, log_values: pd.DataFrame, source: str = "profile") -> pd.DataFrame:
        """Reindex samples × genes (log space) to the vocabulary. Genes absent are filled with the
        training mean (z = 0) and reported with a :class:`MissingGenesWarning`; coverage below
        ``min_coverage`` → :class:`MolecularDataError`. Genes outside the vocabulary are dropped."""
        cols = [strip_gene_version(c) for c in log_values.columns]
        present = set(cols) & set(self.genes)
        missing = [g for g in self.genes if g not in present]
        n = len(self.genes)
        frac = len(present) / n
        if frac < self.min_coverage:
            raise MolecularDataError(
                f"RNA {source}: covers {len(present)} of the model's {n} genes ({frac:.1%}), below "
                f"the {self.min_coverage:.0%} minimum; e.g. missing: {_examples(missing)}"
            )
        if missing:
            warnings.warn(
                MissingGenesWarning(
                    f"RNA {source}: {len(missing)} of the model's {n} genes "
                    f"({len(missing) / n:.1%}) are absent, filled with the training mean "
                    f"(z = 0): {_examples(missing)}"
                ),
                stacklevel=2,
            )
        values = log_values.set_axis(cols, axis=1)
        values = values.loc[:, ~values.columns.duplicated()]
        out = values.reindex(columns=self.genes)
        fill = pd.Series(self.mean, index=self.genes)
        return out.fillna(fill)

    def transform(self, log_values: pd.DataFrame, source: str = "profile") -> np.ndarray:
        """Samples × genes (log space) → aligned z-scores float32 ``[n, len(genes)]``."""
        check_finite(log_values, source)
        arr = self.align(log_values, source).to_numpy(dtype=np.float64)
        z = np.clip((arr - self.mean) / self.std, -self.clip, self.clip)
        return z.astype(np.float32)

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
        return cls(
            genes, mean.astype(np.float64), std.astype(np.float64), d.get("units", "tpm"),
            d.get("std_floor", 0.1), d.get("clip", 10.0), d.get("n_samples", 0),
            d.get("min_coverage", 0.5),
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> RnaNormalizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"RNA normalisation file not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))
