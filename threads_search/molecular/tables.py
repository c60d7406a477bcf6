"""Tables: reading CSV/TSV/Parquet, sample-id columns, the pairs file and the metadata file.

Pairs: ``slide_id``, ``sample_id`` and optional ``patient_id``. ``pair_by="patient"`` pairs every
slide with every sample of the same patient; a row's patient is its ``patient_id`` when given, else
the TCGA patient barcode: the id's first 12 characters (``TCGA-A1-A0SB-01Z-00-DX1`` →
``TCGA-A1-A0SB``).

Metadata: any of ``slide_id``, ``sample_id``, ``patient_id`` (at least one); every other column is
user metadata.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from threads_search.errors import ConfigError, MissingError
from threads_search.molecular import MolecularDataError

ID_COLUMNS = ("slide_id", "sample_id", "patient_id")
_TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".tab": "\t", ".maf": "\t"}


def _examples(items, n: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(str(x) for x in items[:n]) + more


def read_table(
    path: str | Path, what: str = "table", allow_duplicate_columns: bool = False
) -> pd.DataFrame:
    """Read a CSV (``,``), TSV/TXT/TAB/MAF (tab; ``#`` lines before the header skipped) or
    Parquet file (each text kind optionally ``.gz``). ``slide_id``/``sample_id``/``patient_id``
    columns are read as strings (leading zeros kept). Text must be UTF-8 (otherwise
    :class:`MolecularDataError` naming the file and line). A header naming a column twice (which
    pandas would silently rename ``GENE.1``) → :class:`MolecularDataError`, or with
    ``allow_duplicate_columns`` the frame keeps both columns under the name as written."""
    path = Path(path)
    if not path.exists():
        raise MissingError(f"{what} file not found: {path}")
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    suffix = Path(base).suffix
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        if not isinstance(df.index, pd.RangeIndex):  # a stored index: unnamed → "" column
            df = df.rename_axis(df.index.name or "").reset_index()
        for col in ID_COLUMNS:
            if col in df.columns:
                df[col] = _as_str(df[col])
        return df
    if suffix not in _TEXT_SUFFIXES:
        raise MolecularDataError(
            f"{what} {path}: unsupported file type {suffix or '(none)'!r}; "
            "use .csv, .tsv, .txt, .maf (optionally .gz) or .parquet"
        )
    sep = _TEXT_SUFFIXES[suffix]
    skip = _leading_comment_lines(path) if sep == "\t" else 0
    try:
        try:
            header = pd.read_csv(path, sep=sep, skiprows=skip, nrows=0).columns
        except pd.errors.EmptyDataError as e:
            raise MolecularDataError(f"{what} {path} is empty") from e
        # ids stay strings (leading zeros kept), including an unnamed first column (an index)
        ids = [c for c in header if c in ID_COLUMNS or c == header[0] and c.startswith("Unnamed: ")]
        df = pd.read_csv(
            path, sep=sep, skiprows=skip, dtype=dict.fromkeys(ids, str), low_memory=False
        )
    except UnicodeDecodeError as e:
        raise MolecularDataError(_not_utf8(path, what)) from e
    return _restore_duplicate_columns(df, path, what, sep, skip, allow_duplicate_columns)


def _open_text(path: Path, errors: str = "strict"):
    import gzip

    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors, newline="")
    return open(path, encoding="utf-8", errors=errors, newline="")  # noqa: SIM115


def _not_utf8(path: Path, what: str) -> str:
    """The message for a file that is not UTF-8: where the first bad byte is, and the fix."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f" (byte 0x{data[e.start]:02x} on line {line})"
    return (
        f"{what} {path}: not UTF-8 text{where}, e.g. saved as Latin-1/Windows-1252; save it as "
        f"UTF-8 (Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name})"
    )


def _restore_duplicate_columns(
    df: pd.DataFrame, path: Path, what: str, sep: str, skip: int, allow: bool
) -> pd.DataFrame:
    """pandas renames a repeated header ``G`` to ``G.1``: find repeats in the raw header and
    refuse them, or (``allow``) give the columns back their written names."""
    import csv

    with _open_text(path, "replace") as f:
        for _ in range(skip):
            f.readline()
        raw = next(csv.reader(f, delimiter=sep), [])
    if len(raw) != df.shape[1]:
        return df
    seen: dict[str, int] = {}
    for c in raw:
        if c.strip():
            seen[c] = seen.get(c, 0) + 1
    dup = [c for c, n in seen.items() if n > 1]
    if not dup:
        return df
    if not allow or any(c in ID_COLUMNS for c in dup):
        raise MolecularDataError(
            f"{what} {path}: column(s) {_examples(map(repr, dup))} appear more than once in the "
            "header; rename or remove the repeats"
        )
    cols = [r if r in seen and seen[r] > 1 else c for r, c in zip(raw, df.columns, strict=True)]
    return df.set_axis(cols, axis=1)


def _leading_comment_lines(path: Path) -> int:
    n = 0
    with _open_text(path, "replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            n += 1
    return n


def _as_str(s: pd.Series) -> pd.Series:
    return s.map(lambda v: v if pd.isna(v) else str(v).strip()).astype(object)


def set_sample_index(
    df: pd.DataFrame, source: str, id_column: str | None = None, what: str = "matrix"
) -> pd.DataFrame:
    """Move the sample-id column to the index (named ``sample_id``, values str).

    The id column is ``id_column`` if given, else ``sample_id``, else a first column with no
    header (``""`` or pandas' ``Unnamed: 0``, i.e. a written index). Missing, empty or duplicate
    ids → :class:`MolecularDataError` naming them.
    """
    cols = [str(c) for c in df.columns]
    df = df.set_axis(cols, axis=1)
    if id_column is not None:
        if id_column not in cols:
            raise MolecularDataError(f"{what} {source}: no id column {id_column!r}")
        col = id_column
    elif "sample_id" in cols:
        col = "sample_id"
    elif cols and (cols[0] == "" or cols[0].startswith("Unnamed: ")):
        col = cols[0]  # an unnamed first column: a written index, taken as the sample ids
    else:
        raise MolecularDataError(
            f"{what} {source}: no 'sample_id' column (columns: {_examples(cols)}); "
            "name the id column sample_id or pass id_column="
        )
    if cols.count(col) > 1:
        raise MolecularDataError(f"{what} {source}: the id column {col!r} appears more than once")
    ids = _as_str(df[col])
    bad = ids.isna() | (ids == "")
    if bad.any():
        rows = [i + 2 for i in bad.to_numpy().nonzero()[0]]
        raise MolecularDataError(f"{what} {source}: empty sample id on data rows {_examples(rows)}")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise MolecularDataError(f"{what} {source}: duplicate sample ids {_examples(dup)}")
    out = df.drop(columns=[col])
    out.index = pd.Index(ids.to_numpy(dtype=object), name="sample_id")
    return out


def patient_barcode(identifier: str) -> str:
    """TCGA patient barcode: the first 12 characters (``TCGA-XX-XXXX``). An id shorter than 12
    characters, or whose 13th character is not ``-``, ``.`` or ``_``, is rejected."""
    s = str(identifier)
    if len(s) < 12 or (len(s) > 12 and s[12] not in "-._"):
        raise MolecularDataError(
            f"{s!r} is not a TCGA barcode (patient = first 12 characters, e.g. TCGA-A1-A0SB); "
            "give a patient_id column instead"
        )
    return s[:12]


def read_pairs(path: str | Path, pair_by: str = "sample") -> pd.DataFrame:
    """Slide ↔ molecular-sample pairs → DataFrame ``slide_id, sample_id, patient_id`` (str;
    ``patient_id`` None where unknown), one row per distinct pair.

    ``pair_by="sample"``: the file's rows as given (both ids required on every row).
    ``pair_by="patient"``: every slide id and every sample id in the file is attached to its
    patient (row ``patient_id`` if present, else :func:`patient_barcode`); the result is all
    slide × sample combinations per patient. Rows may then give only one of the two ids.
    Patients with slides but no samples (or the reverse) are reported in a warning.
    """
    if pair_by not in ("sample", "patient"):
        raise ConfigError(f"pair_by must be 'sample' or 'patient', got {pair_by!r}")
    df = read_table(path, "pairs")
    missing = [c for c in ("slide_id", "sample_id") if c not in df.columns]
    if missing:
        raise MolecularDataError(
            f"pairs {path}: missing column(s) {missing} (columns: {_examples(df.columns)})"
        )
    for c in ID_COLUMNS:
        df[c] = _as_str(df[c]) if c in df.columns else None
    if pair_by == "sample":
        bad = df["slide_id"].isna() | df["sample_id"].isna()
        if bad.any():
            rows = [i + 2 for i in bad.to_numpy().nonzero()[0]]
            raise MolecularDataError(
                f"pairs {path}: slide_id or sample_id empty on rows {_examples(rows)} "
                "(pair_by='patient' accepts rows with one id)"
            )
        for kind in ("slide_id", "sample_id"):
            _one_patient_each(df[[kind, "patient_id"]].dropna(), kind, path)
        out = df[["slide_id", "sample_id", "patient_id"]].drop_duplicates(["slide_id", "sample_id"])
        return out.reset_index(drop=True)

    def patients(kind: str) -> pd.DataFrame:
        part = df[df[kind].notna()]
        pat = [
            p if isinstance(p, str) and p else patient_barcode(i)
            for i, p in zip(part[kind], part["patient_id"], strict=True)
        ]
        out = pd.DataFrame({kind: part[kind].to_numpy(), "patient_id": pat}).drop_duplicates()
        _one_patient_each(out, kind, path)
        return out

    slides, samples = patients("slide_id"), patients("sample_id")
    out = slides.merge(samples, on="patient_id", how="inner")
    lonely = sorted(set(slides["patient_id"]) ^ set(samples["patient_id"]))
    if lonely:
        warnings.warn(
            f"pairs {path}: {len(lonely)} patient(s) have slides but no samples or the reverse "
            f"and are left unpaired: {_examples(lonely)}",
            UserWarning,
            stacklevel=2,
        )
    out = out[["slide_id", "sample_id", "patient_id"]].drop_duplicates(["slide_id", "sample_id"])
    return out.reset_index(drop=True)


def _one_patient_each(links: pd.DataFrame, kind: str, path) -> None:
    """``links`` (``kind``, ``patient_id``; no nulls): an id with two patients → error."""
    links = links.drop_duplicates()
    n = links.groupby(kind, sort=False)["patient_id"].nunique()
    bad = list(n[n > 1].index)
    if not bad:
        return
    what = kind.removesuffix("_id")
    cases = []
    for i in bad[:5]:
        pats = sorted(links.loc[links[kind] == i, "patient_id"])
        cases.append(f"{what} {i!r}: patients {', '.join(map(repr, pats))}")
    raise MolecularDataError(
        f"pairs {path}: {len(bad)} {what}(s) belong to more than one patient "
        f"({'; '.join(cases)}{', ...' if len(bad) > 5 else ''}); a {what} has one patient: "
        "fix the pairs file"
    )


def _check_metadata_names(columns, path) -> None:
    """Metadata columns become SQL filter columns, whose names DuckDB matches ignoring case:
    two names differing only in case, or an id column in another case, are refused."""
    by_lower: dict[str, list[str]] = {}
    for c in columns:
        by_lower.setdefault(c.lower(), []).append(c)
    clash = [names for names in by_lower.values() if len(names) > 1]
    if clash:
        pairs = "; ".join(" and ".join(map(repr, names)) for names in clash[:5])
        raise MolecularDataError(
            f"metadata {path}: columns {pairs} differ only in case, which filters (SQL: "
            "--where) cannot tell apart; rename or merge them"
        )
    for c in columns:
        if c.lower() in ID_COLUMNS and c not in ID_COLUMNS:
            raise MolecularDataError(
                f"metadata {path}: column {c!r} is not an id column (ids are lowercase: "
                f"{c.lower()!r}); rename it to {c.lower()!r}"
            )


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Metadata table: at least one of ``slide_id``/``sample_id``/``patient_id`` (str), any other
    columns kept as they are. Duplicate non-empty ``slide_id`` or ``sample_id`` values, or
    duplicate ``patient_id`` among rows that name neither a slide nor a sample, are ambiguous →
    :class:`MolecularDataError` naming them; so are column names that differ only in case
    (``site`` and ``Site``: SQL filters cannot tell them apart) and id columns written in
    another case (``Slide_ID``)."""
    df = read_table(path, "metadata")
    df = df.set_axis([str(c) for c in df.columns], axis=1)
    _check_metadata_names(df.columns, path)
    present = [c for c in ID_COLUMNS if c in df.columns]
    if not present:
        raise MolecularDataError(
            f"metadata {path}: needs at least one of the columns {list(ID_COLUMNS)} "
            f"(columns: {_examples(df.columns)})"
        )
    for c in present:
        df[c] = _as_str(df[c])
    for c in ("slide_id", "sample_id"):
        if c in df.columns:
            ids = df[c].dropna()
            dup = ids[ids.duplicated()].unique()
            if len(dup):
                raise MolecularDataError(f"metadata {path}: duplicate {c} {_examples(dup)}")
    if "patient_id" in df.columns:
        own = pd.Series(False, index=df.index)
        for c in ("slide_id", "sample_id"):
            if c in df.columns:
                own |= df[c].notna()
        ids = df.loc[~own, "patient_id"].dropna()
        dup = ids[ids.duplicated()].unique()
        if len(dup):
            raise MolecularDataError(
                f"metadata {path}: duplicate patient rows (no slide_id/sample_id) for "
                f"patient_id {_examples(dup)}"
            )
    return df
