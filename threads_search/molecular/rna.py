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

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from threads_search.errors import ConfigError
from threads_search.molecular import MolecularDataError, RnaUnitsError
from threads_search.molecular.tables import _examples, read_table, set_sample_index

UNITS = ("tpm", "counts", "log")
NON_GENE_COLUMNS = frozenset(
    {
        "slide_id",
        "sample_id",
        "patient_id",
        "case_id",
        "subject_id",
        "age",
        "sex",
        "gender",
        "race",
        "ethnicity",
        "er",
        "pr",
        "her2",
        "grade",
        "stage",
        "size",
        "time",
        "event",
        "status",
        "os",
        "pfs",
        "dfs",
        "dss",
        "rfs",
        "label",
        "subtype",
        "cohort",
        "project",
        "site",
        "batch",
        "diagnosis",
        "vital_status",
        "days_to_death",
        "days_to_last_follow_up",
    }
)
_NON_GENE = sorted(NON_GENE_COLUMNS)
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


def gene_arrow(columns) -> pa.Array:
    """Column labels → pyarrow string array of gene names with Ensembl versions stripped (as
    :func:`strip_gene_version`), vectorised: no Python loop per gene for str labels."""
    idx = pd.Index(columns)
    if isinstance(idx.dtype, pd.StringDtype) and idx.dtype.storage == "pyarrow":
        arr = pa.array(idx.array)
    else:
        try:
            arr = pa.array(idx.to_numpy(dtype=object), pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # labels that are not all str
            arr = pa.array([str(c) for c in idx], pa.string())
    if len(arr) and pc.any(pc.starts_with(arr, "ENS")).as_py():
        arr = pc.replace_substring_regex(arr, _ENSEMBL.pattern, r"\1\2")
    return arr


def gene_names(columns) -> pd.Index:
    """Column labels → object Index of str gene names, Ensembl versions stripped (vectorised)."""
    return pd.Index(gene_arrow(columns).to_numpy(zero_copy_only=False), dtype=object)


def read_rna_matrix(
    path: str | Path,
    *,
    units: str = "tpm",
    genes: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    id_column: str | None = None,
) -> RnaMatrix:
    """Load an expression matrix (see the module docstring). Values are returned as in the file;
    ``RnaMatrix.log_values()`` applies the units transform. A gene column written twice in the
    header is merged like versions that collide (summed for tpm/counts, an error for log); a
    text cell in a gene column → :class:`MolecularDataError` naming sample, gene and value."""
    _check_units(units)
    source = str(path)
    table = read_table(path, "RNA matrix", allow_duplicate_columns=True)
    df = set_sample_index(table, source, id_column, "RNA matrix")
    cols = pd.Index(df.columns.astype(str))
    numeric = numeric_columns(df)
    if genes is not None:
        names = gene_names(cols)
        wanted = gene_names(genes)
        is_gene = np.asarray(names.isin(wanted))
        absent = wanted[~wanted.isin(names[is_gene])].unique()
        if len(absent):
            raise MolecularDataError(
                f"RNA matrix {source}: genes= not in file: {_examples(absent)}"
            )
        reject_text_cells(df, is_gene & ~numeric, f"RNA matrix {source}", always=True)
    else:
        lower = cols.str.lower()
        candidate = ~(np.asarray(cols.isin(list(exclude))) | lower.isin(_NON_GENE))
        reject_text_cells(df, candidate & ~numeric, f"RNA matrix {source}")
        is_gene = candidate & numeric
    if not is_gene.any():
        raise MolecularDataError(
            f"RNA matrix {source}: no numeric gene columns (columns: {_examples(df.columns)})"
        )
    values = clean_gene_columns(df.iloc[:, np.flatnonzero(is_gene)], units, source)
    meta = df.iloc[:, np.flatnonzero(~is_gene)].copy()
    return RnaMatrix(values, units, meta, list(meta.columns), source)


def numeric_columns(df: pd.DataFrame) -> np.ndarray:
    """bool ``[n_columns]``: the column holds numbers (not booleans); by position, one test per
    distinct dtype."""
    dtypes = df.dtypes
    test = {d: _numeric_dtype(d) for d in pd.unique(dtypes.to_numpy())}
    return np.fromiter((test[d] for d in dtypes.to_numpy()), bool, len(dtypes))


def _numeric_dtype(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def reject_text_cells(df: pd.DataFrame, mask: np.ndarray, source: str, always=False) -> None:
    """Columns ``mask`` (by position) hold text. Those whose non-empty cells are mostly numbers
    (or every such column, ``always``) are gene columns with bad cells →
    :class:`MolecularDataError` naming up to five (sample, gene, value) cells; the others are
    non-gene (metadata) columns and pass."""
    bad = []
    for j in np.flatnonzero(mask):
        col = df.iloc[:, j]
        num = pd.to_numeric(col, errors="coerce")
        text = col.notna().to_numpy() & num.isna().to_numpy()
        n_num = int(num.notna().sum())
        if text.any() and (always or 0 < int(text.sum()) <= n_num):
            bad += [(df.index[i], df.columns[j], col.iat[i]) for i in np.flatnonzero(text)[:5]]
    if bad:
        cells = [f"sample {s!r}, gene {g!r} = {v!r}" for s, g, v in bad]
        raise MolecularDataError(
            f"RNA {source}: non-numeric expression value(s): {_examples(cells)}; expression "
            "values must be numbers: fix these cells (a gene column with text is not ignored)"
        )


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ConfigError(f"RNA units must be one of {UNITS}, got {units!r}")


def check_finite(values: pd.DataFrame, source: str) -> None:
    """NaN/inf anywhere → :class:`MolecularDataError` naming the samples and genes."""
    _check_finite(values.to_numpy(dtype=np.float64), values.index, values.columns, source)


def _check_finite(arr: np.ndarray, index, columns, source: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = bad.any(axis=1).nonzero()[0], bad.any(axis=0).nonzero()[0]
        raise MolecularDataError(
            f"RNA {source}: {int(bad.sum())} missing or infinite value(s) in sample(s) "
            f"{_examples(index[rows])}, gene(s) {_examples(columns[cols])}"
        )


def float_array(values: pd.DataFrame, source: str) -> np.ndarray:
    """float64 ``[samples, genes]``; text cells → :class:`MolecularDataError` naming them."""
    try:
        return values.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        reject_text_cells(values, ~numeric_columns(values), source, always=True)
        raise MolecularDataError(f"RNA {source}: non-numeric expression values") from None


def clean_gene_columns(values: pd.DataFrame, units: str, source: str) -> pd.DataFrame:
    """Check finiteness, strip Ensembl versions, merge duplicates (sum for tpm/counts; error for
    log). Returns float64, columns in first-seen order. Vectorised (numpy, no loop per gene)."""
    _check_units(units)
    arr = float_array(values, source)
    names = gene_names(values.columns)
    _check_finite(arr, values.index, names, source)
    dup = names.duplicated()
    if dup.any():
        if units == "log":
            raise MolecularDataError(
                f"RNA {source}: gene(s) {_examples(names[dup].unique())} appear more than once "
                "(repeated header, or after stripping Ensembl versions); log-scale values cannot "
                "be merged: drop the duplicates"
            )
        codes, names = pd.factorize(names)  # first-seen order
        merged = np.zeros((arr.shape[0], len(names)))
        np.add.at(merged.T, codes, arr.T)
        arr = merged
    return pd.DataFrame(arr, index=values.index, columns=pd.Index(names, dtype=object))


def transform_units(values: pd.DataFrame, units: str, source: str = "profile") -> pd.DataFrame:
    """Samples × genes in ``units`` → log space (see the module docstring); float64. Negative
    tpm/counts values, or a profile with zero total counts → :class:`RnaUnitsError`."""
    values = clean_gene_columns(values, units, source)
    if units == "log":
        return values
    arr = values.to_numpy()
    check_linear(arr, units, values.index, values.columns, source)
    if units == "counts":
        arr = arr / arr.sum(axis=1, keepdims=True) * 1e6
    return pd.DataFrame(np.log1p(arr), index=values.index, columns=values.columns)


def check_linear(arr: np.ndarray, units: str, index, columns, source: str) -> None:
    """tpm/counts values ``arr`` ``[samples, genes]``: negatives, or (counts) a sample with zero
    total → :class:`RnaUnitsError` naming the samples (and genes)."""
    neg = arr < 0
    if neg.any():
        rows, cols = neg.any(axis=1).nonzero()[0], neg.any(axis=0).nonzero()[0]
        raise RnaUnitsError(
            f"RNA {source}: negative {units} values in sample(s) {_examples(index[rows])}, "
            f"gene(s) {_examples(columns[cols])}",
            units,
            "log-scale data needs units='log'",
        )
    if units == "counts":
        empty = (arr.sum(axis=1) <= 0).nonzero()[0]
        if len(empty):
            raise RnaUnitsError(
                f"RNA {source}: sample(s) {_examples(index[empty])} have zero total counts", units
            )


def as_rna_frame(profile) -> tuple[pd.DataFrame, bool, str | None]:
    """Coerce one profile or many → (samples × genes frame, ``single``, units or None).

    dict gene → value / Series: one sample (``single``). DataFrame: rows are samples; a
    ``sample_id`` column becomes the index; boolean and :data:`NON_GENE_COLUMNS` columns are
    dropped, and so are text columns unless their cells are mostly numbers (a gene column with a
    bad cell: :class:`MolecularDataError`). :class:`RnaMatrix`: its values, with its units."""
    if isinstance(profile, RnaMatrix):
        return profile.values, False, profile.units
    if isinstance(profile, dict):  # arrays straight from the dict: no per-gene pandas work
        n = len(profile)
        genes = pd.Index(np.fromiter(profile.keys(), dtype=object, count=n), dtype=object)
        try:
            row = np.fromiter(profile.values(), dtype=np.float64, count=n)
        except (TypeError, ValueError):  # text or None: kept, and named by the value check
            row = np.fromiter(profile.values(), dtype=object, count=n)
        return pd.DataFrame(row[None, :], index=["profile"], columns=genes), True, None
    if isinstance(profile, pd.Series):
        name = profile.name if profile.name is not None else "profile"
        row = profile.to_numpy()[None, :]
        return pd.DataFrame(row, index=[name], columns=profile.index), True, None
    if not isinstance(profile, pd.DataFrame):
        raise TypeError(f"RNA profile must be dict/Series/DataFrame/RnaMatrix, not {type(profile)}")
    df = profile.set_index("sample_id") if "sample_id" in profile.columns else profile
    numeric = numeric_columns(df)
    candidate = ~np.asarray(pd.Index(df.columns).astype(str).str.lower().isin(_NON_GENE))
    reject_text_cells(df, candidate & ~numeric, "profile")
    return df.iloc[:, np.flatnonzero(candidate & numeric)], False, None
