"""DNA mutations: MAF files or binary sample × gene matrices → multi-hot over a gene panel.

MAF (tab-separated, ``#`` lines before the header skipped): columns ``Hugo_Symbol``,
``Tumor_Sample_Barcode``, ``Variant_Classification``. Variants classed as one of
:data:`SILENT_CLASSIFICATIONS` (``Silent``, ``Intron``, ``3'UTR``, ``5'UTR``, ``3'Flank``,
``5'Flank``, ``IGR``, ``RNA``) are dropped, as are rows whose gene is empty or ``Unknown``. Every
barcode in the file stays a sample, all-zero if all its variants were dropped (it was sequenced
and carries no kept mutation).

Binary matrix (CSV/TSV/Parquet): a ``sample_id`` column (or unnamed first column) and one column
per gene, values 0/1 (or booleans); anything else (2, 0.5, NaN, text) → :class:`MolecularDataError`
naming the sample and gene.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.molecular import MolecularDataError, UnknownGenesWarning
from threads_search.molecular.tables import _examples, read_table, set_sample_index

SILENT_CLASSIFICATIONS = frozenset(
    ["Silent", "Intron", "3'UTR", "5'UTR", "3'Flank", "5'Flank", "IGR", "RNA"]
)
MAF_COLUMNS = ("Hugo_Symbol", "Tumor_Sample_Barcode", "Variant_Classification")
# standard MAF columns: any of them marks a table as a MAF (a mutation matrix has gene columns)
_MAF_OTHER = (
    "Entrez_Gene_Id Chromosome Start_Position End_Position Reference_Allele Tumor_Seq_Allele1 "
    "Tumor_Seq_Allele2 Variant_Type NCBI_Build Matched_Norm_Sample_Barcode HGVSp_Short"
)
MAF_HINT_COLUMNS = frozenset([*MAF_COLUMNS, *_MAF_OTHER.split()])


def read_maf(path: str | Path) -> pd.DataFrame:
    """The three MAF columns of ``path`` (str), every variant row kept."""
    df = read_table(path, "MAF")
    missing = [c for c in MAF_COLUMNS if c not in df.columns]
    if missing:
        raise MolecularDataError(
            f"MAF {path}: missing column(s) {missing} (columns: {_examples(df.columns)})"
        )
    return df[list(MAF_COLUMNS)].astype(object)


def maf_to_matrix(maf: pd.DataFrame, source: str = "MAF") -> pd.DataFrame:
    """MAF rows → binary int8 sample × gene frame (index ``sample_id`` in first-seen order;
    genes sorted). Silent classes and empty/``Unknown`` genes are dropped (module docstring)."""
    missing = [c for c in MAF_COLUMNS if c not in maf.columns]
    if missing:
        raise MolecularDataError(f"{source}: missing column(s) {missing}")
    barcode = maf["Tumor_Sample_Barcode"]
    if barcode.isna().any():
        rows = [i + 2 for i in barcode.isna().to_numpy().nonzero()[0]]
        raise MolecularDataError(f"{source}: empty Tumor_Sample_Barcode on rows {_examples(rows)}")
    samples = pd.unique(barcode.astype(str).str.strip())
    gene = maf["Hugo_Symbol"]
    keep = (
        ~maf["Variant_Classification"].isin(SILENT_CLASSIFICATIONS)
        & gene.notna()
        & ~gene.astype(str).isin(["", "Unknown"])
    )
    kept = pd.DataFrame(
        {
            "sample_id": barcode[keep].astype(str).str.strip(),
            "gene": gene[keep].astype(str).str.strip(),
        }
    )
    genes = sorted(kept["gene"].unique())
    index = pd.Index(samples, name="sample_id")
    arr = np.zeros((len(index), len(genes)), dtype=np.int8)
    arr[index.get_indexer(kept["sample_id"]), pd.Index(genes).get_indexer(kept["gene"])] = 1
    return pd.DataFrame(arr, index=index, columns=genes)


def validate_binary_matrix(df: pd.DataFrame, source: str = "DNA matrix") -> pd.DataFrame:
    """Check every value is 0/1 (or bool) → int8 copy; otherwise :class:`MolecularDataError`
    naming up to five offending (sample, gene, value) cells."""
    try:  # numeric/bool frames: one conversion, no per-column work
        arr = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        arr = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = (arr != 0.0) & (arr != 1.0)  # NaN and non-numeric text are neither
    if bad.any():
        rows, cols = bad.nonzero()
        vals = [df.iat[r, c] for r, c in zip(rows[:5], cols[:5], strict=True)]
        vals = [v.item() if isinstance(v, np.generic) else v for v in vals]
        cells = [
            f"({df.index[r]}, {df.columns[c]}) = {v!r}"
            for r, c, v in zip(rows[:5], cols[:5], vals, strict=True)
        ]
        raise MolecularDataError(
            f"{source}: {int(bad.sum())} value(s) are not 0/1: {_examples(cells)}"
        )
    return pd.DataFrame(arr.astype(np.int8), index=df.index, columns=[str(c) for c in df.columns])


def read_binary_matrix(path: str | Path, id_column: str | None = None) -> pd.DataFrame:
    """A binary mutation matrix file → validated int8 sample × gene frame (index ``sample_id``)."""
    df = set_sample_index(read_table(path, "DNA matrix"), str(path), id_column, "DNA matrix")
    return validate_binary_matrix(df, f"DNA matrix {path}")


def read_dna(path: str | Path, id_column: str | None = None) -> pd.DataFrame:
    """A MAF (by its columns, or a ``.maf`` name) or a binary matrix → int8 sample × gene frame.
    A file that looks like a MAF (any standard MAF column) but lacks one of
    :data:`MAF_COLUMNS` → :class:`MolecularDataError` naming what is missing. A gene column
    written twice in a binary matrix counts as mutated if either says so."""
    df = read_table(path, "DNA", allow_duplicate_columns=True)
    if _looks_like_maf(df.columns) or _suffix(path) == ".maf":
        _check_maf_columns(df.columns, f"MAF {path}")
        return maf_to_matrix(df[list(MAF_COLUMNS)].astype(object), f"MAF {path}")
    df = set_sample_index(df, str(path), id_column, "DNA matrix")
    return validate_binary_matrix(df, f"DNA matrix {path}")


def _suffix(path) -> str:
    name = Path(path).name.lower()
    return Path(name[:-3] if name.endswith(".gz") else name).suffix


def _looks_like_maf(columns) -> bool:
    return bool(set(map(str, columns)) & MAF_HINT_COLUMNS)


def _check_maf_columns(columns, source: str) -> None:
    cols = [str(c) for c in columns]
    missing = [c for c in MAF_COLUMNS if c not in cols]
    if missing:
        has = [c for c in cols if c in MAF_HINT_COLUMNS]
        raise MolecularDataError(
            f"{source}: looks like a MAF (has {', '.join(has) or 'a .maf name'}) but has no "
            f"{' / '.join(missing)} column; a MAF needs {', '.join(MAF_COLUMNS)} (one row per "
            "variant, the sample in Tumor_Sample_Barcode)"
        )
    twice = [c for c in MAF_COLUMNS if cols.count(c) > 1]
    if twice:
        raise MolecularDataError(f"{source}: column(s) {twice} appear more than once")


def multi_hot(matrix: pd.DataFrame, genes: list[str], source: str = "DNA") -> np.ndarray:
    """Binary sample × gene frame → float32 ``[n, len(genes)]`` in ``genes`` (panel) order.

    Panel genes absent from ``matrix`` count as not mutated. Mutated genes outside the panel are
    ignored and reported in an :class:`UnknownGenesWarning` (count and examples)."""
    matrix = validate_binary_matrix(matrix, source)
    if matrix.columns.duplicated().any():  # the same gene twice: mutated if either says so
        matrix = matrix.T.groupby(level=0, sort=False).max().T
    cols = pd.Index(matrix.columns)
    outside = list(cols[~cols.isin(genes) & matrix.to_numpy().any(axis=0)])
    if outside:
        warnings.warn(
            UnknownGenesWarning(
                f"{source}: {len(outside)} mutated gene(s) outside the model's {len(genes)}-gene "
                f"panel are ignored: {_examples(outside)}"
            ),
            stacklevel=2,
        )
    return matrix.reindex(columns=genes, fill_value=0).to_numpy(dtype=np.float32)


def as_dna_frame(mutations) -> tuple[pd.DataFrame, bool]:
    """Coerce mutations → (binary samples × genes frame, ``single``).

    list/set of mutated genes, dict gene → 0/1, Series: one sample (``single``). DataFrame: MAF
    rows (by their columns; samples in first-seen order) or a binary matrix whose optional
    ``sample_id`` column becomes the index."""
    if isinstance(mutations, (list, tuple, set, frozenset)):
        genes = [str(g) for g in dict.fromkeys(mutations)]
        return pd.DataFrame([[1] * len(genes)], index=["profile"], columns=genes), True
    if isinstance(mutations, dict):
        return pd.DataFrame([mutations], index=["profile"]), True
    if isinstance(mutations, pd.Series):
        return mutations.to_frame(name=mutations.name or "profile").T, True
    if not isinstance(mutations, pd.DataFrame):
        raise TypeError(f"DNA mutations must be list/dict/Series/DataFrame, not {type(mutations)}")
    if _looks_like_maf(mutations.columns):
        _check_maf_columns(mutations.columns, "MAF rows")
        return maf_to_matrix(mutations), False
    if "sample_id" in mutations.columns:
        return mutations.set_index("sample_id"), False
    return mutations, False
