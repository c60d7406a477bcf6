"""Join user metadata to slides and molecular samples (DESIGN.md "Inputs").

Patients: a slide's is the pairs file's ``patient_id``, else that of the metadata row naming the
slide; a molecular sample's is the pairs file's, else the metadata row's, else the profile's own
``patient_id`` column, else the patient of the slides the pairs file links it to (when those
agree).

Values: a slide takes the metadata row whose ``slide_id`` matches, else its patient's row (one
naming neither a slide nor a sample). A molecular sample takes the row whose ``sample_id``
matches, else its patient's row; cells still empty then take the patient's *slide-level* values:
those of the rows keyed by ``slide_id`` with that ``patient_id``, per column, when the patient's
rows agree (the usual clinical table has one row per slide). A column on which a patient's slide
rows disagree is left empty for that patient's samples and reported.

Names: metadata columns named like a built-in or result column (:data:`RESERVED`, any case) are
renamed ``meta_<name>`` and reported. Rows that match nothing are counted and reported, never
dropped silently. :func:`attach` does all of it and returns a :class:`MetadataReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from threads_search.molecular import MolecularDataError
from threads_search.vectorstore.writer import SLIDE_COLUMNS

ID_COLUMNS = ("slide_id", "sample_id", "patient_id")
# built-in table columns and the columns query results add: a metadata column may not shadow one
RESERVED = (
    *SLIDE_COLUMNS[1:2],
    *SLIDE_COLUMNS[3:],
    "kind",
    "rank",
    "score",
    "thumbnail",
    "__row_id__",
)
PREFIX = "meta_"


@dataclass
class MetadataReport:
    """What the join did that a user should know: ``unmatched_rows`` (metadata rows matching no
    slide or sample), ``renamed`` (column → new name), ``conflicts`` (column → {patients: count,
    examples: {patient_id: [values]}}: slide rows disagreeing, so not given to the patient's
    molecular samples), ``sample_patients`` (sample_id → the different patients of the slides
    the pairs link it to; its patient is left unknown), ``from_slide_rows`` (molecular samples
    that took values from their patient's slide rows)."""

    unmatched_rows: int = 0
    renamed: dict = field(default_factory=dict)
    conflicts: dict = field(default_factory=dict)
    sample_patients: dict = field(default_factory=dict)
    from_slide_rows: int = 0

    def notes(self) -> list[str]:
        """One line per finding, for the index summary."""
        out = []
        if self.renamed:
            pairs = ", ".join(f"{a} → {b}" for a, b in self.renamed.items())
            out.append(f"metadata columns named like built-in/result columns renamed: {pairs}")
        for col, c in self.conflicts.items():
            ex = "; ".join(f"{p}: {', '.join(map(str, v))}" for p, v in c["examples"].items())
            out.append(
                f"metadata column {col!r}: the slide rows of {c['patients']} patient(s) disagree "
                f"(e.g. {ex}), so their molecular samples get no {col!r}"
            )
        if self.sample_patients:
            ex = "; ".join(
                f"{s}: {', '.join(p)}" for s, p in list(self.sample_patients.items())[:5]
            )
            out.append(
                f"{len(self.sample_patients)} molecular sample(s) are paired with slides of "
                f"different patients, so their patient is unknown (e.g. {ex})"
            )
        if self.from_slide_rows:
            out.append(
                f"{self.from_slide_rows} molecular sample(s) took patient-level values from "
                "their patient's slide rows"
            )
        return out  # unmatched_rows: printed by the summary on its own line

    def to_dict(self) -> dict:
        return {
            "unmatched_rows": self.unmatched_rows,
            "renamed_columns": dict(self.renamed),
            "slide_row_conflicts": self.conflicts,
            "sample_patient_conflicts": self.sample_patients,
            "molecular_from_slide_rows": self.from_slide_rows,
            "notes": self.notes(),
        }


def rename_reserved(meta: pd.DataFrame | None) -> tuple[pd.DataFrame | None, dict]:
    """Metadata columns named like :data:`RESERVED` ones (case-insensitive) → ``meta_<name>``;
    returns (frame, old → new). A new name already taken → :class:`MolecularDataError`."""
    if meta is None:
        return None, {}
    renamed = {c: PREFIX + c for c in meta.columns if str(c).lower() in RESERVED}
    taken = {str(c).lower() for c in meta.columns}
    clash = [new for new in renamed.values() if new.lower() in taken]
    if clash:
        raise MolecularDataError(
            f"metadata: columns {list(renamed)} are built-in or result column names and would be "
            f"renamed {list(renamed.values())}, but {clash} exist too: rename them"
        )
    return (meta.rename(columns=renamed) if renamed else meta), renamed


def patients_from_pairs(pairs: pd.DataFrame | None) -> tuple[dict, dict]:
    """slide_id → patient_id and sample_id → patient_id from a pairs table."""
    if pairs is None or "patient_id" not in pairs.columns:
        return {}, {}
    p = pairs.dropna(subset=["patient_id"])
    slides = dict(zip(p.slide_id, p.patient_id, strict=True))
    return slides, dict(zip(p.sample_id, p.patient_id, strict=True))


def _value_columns(meta: pd.DataFrame) -> list[str]:
    return [c for c in meta.columns if c not in ID_COLUMNS]


def fill_patients(table: pd.DataFrame, id_col: str, mapping: dict, meta: pd.DataFrame | None):
    """Fill ``patient_id``: the table's own (a profile's ``patient_id`` column), else the pairs
    ``mapping``, else a metadata row naming the id. Two of them naming different patients for
    one id → :class:`MolecularDataError` naming the id and both patients."""
    ids = table[id_col]
    given = [("the pairs file", ids.map(mapping).astype(object))]
    if meta is not None and id_col in meta.columns and "patient_id" in meta.columns:
        m = meta.dropna(subset=[id_col, "patient_id"])
        by_meta = ids.map(dict(zip(m[id_col], m["patient_id"], strict=True))).astype(object)
        given.append(("the metadata", by_meta))
    if "patient_id" in table.columns:
        given.insert(0, ("the profile file", table["patient_id"].astype(object)))
    pid = given[0][1]
    for k, (name, other) in enumerate(given[1:], start=1):
        clash = pid.notna() & other.notna() & (pid != other)
        if clash.any():
            first = " / ".join(n for n, _ in given[:k])
            cases = "; ".join(
                f"{id_col.removesuffix('_id')} {i!r}: {p!r} vs {o!r}"
                for i, p, o in zip(ids[clash][:5], pid[clash][:5], other[clash][:5], strict=True)
            )
            raise MolecularDataError(
                f"{int(clash.sum())} id(s) have another patient_id in {name} than in {first} "
                f"({cases}); an id has one patient: fix one of the files"
            )
        pid = pid.where(pid.notna(), other)
    return table.assign(patient_id=pid.where(pid.notna(), None))


def patients_via_slides(mol: pd.DataFrame, pairs, slides: pd.DataFrame) -> tuple:
    """Samples still without a patient take the patient of the slides the pairs link them to,
    when those agree. Returns (table, sample_id → [patients] for samples whose slides
    disagree)."""
    if pairs is None or not mol["patient_id"].isna().any():
        return mol, {}
    slide_pat = slides.dropna(subset=["patient_id"]).set_index("slide_id")["patient_id"]
    links = pairs[["slide_id", "sample_id"]].assign(patient=pairs["slide_id"].map(slide_pat))
    links = links.dropna(subset=["patient"]).drop_duplicates(["sample_id", "patient"])
    n = links.groupby("sample_id")["patient"].nunique()
    one = links[links["sample_id"].isin(n.index[n == 1])].set_index("sample_id")["patient"]
    pid = mol["patient_id"].where(mol["patient_id"].notna(), mol["sample_id"].map(one))
    need = set(mol.loc[mol["patient_id"].isna(), "sample_id"])
    many = {s: sorted(links.loc[links["sample_id"] == s, "patient"]) for s in n.index[n > 1]}
    out = mol.assign(patient_id=pid.astype(object).where(pid.notna(), None))
    return out, {s: p for s, p in many.items() if s in need}


def patient_values(meta: pd.DataFrame | None, patients) -> tuple[pd.DataFrame | None, dict]:
    """Per patient of ``patients``, the values its slide-keyed metadata rows agree on
    (DataFrame indexed by patient_id, value columns; empty where they disagree or say nothing),
    and the conflicts (:class:`MetadataReport` ``conflicts``)."""
    if meta is None or not {"slide_id", "patient_id"} <= set(meta.columns):
        return None, {}
    rows = meta[meta["slide_id"].notna() & meta["patient_id"].isin(list(patients))]
    cols = _value_columns(meta)
    if rows.empty or not cols:
        return None, {}
    g = rows.groupby("patient_id", sort=False)[cols]
    distinct = g.nunique(dropna=True)
    agreed = g.first().mask(distinct > 1)
    conflicts = {}
    for col in cols:
        bad = distinct.index[distinct[col] > 1]
        if len(bad):
            ex = {}
            for p in bad[:3]:
                ex[p] = sorted(map(str, rows.loc[rows["patient_id"] == p, col].dropna().unique()))
            conflicts[col] = {"patients": len(bad), "examples": ex}
    return agreed, conflicts


def join(
    table: pd.DataFrame, id_col: str, meta: pd.DataFrame | None, fallback=None
) -> tuple[pd.DataFrame, set[int], int]:
    """Add the metadata columns to ``table`` (which has ``id_col`` and ``patient_id``).
    ``fallback``: per-patient values (:func:`patient_values`) filling cells still empty.
    Returns the joined table, the metadata row positions used and how many rows took a value
    from ``fallback``."""
    if meta is None or meta.empty:
        return table, set(), 0
    cols = [c for c in _value_columns(meta) if c not in table.columns]
    used: set[int] = set()
    by_id, by_patient = {}, {}
    if id_col in meta.columns:
        for i, v in enumerate(meta[id_col]):
            if isinstance(v, str) and v:
                by_id[v] = i
    if "patient_id" in meta.columns:
        no_id = meta[id_col].isna() if id_col in meta.columns else pd.Series(True, meta.index)
        other = [c for c in ("slide_id", "sample_id") if c in meta.columns and c != id_col]
        for i, (v, free) in enumerate(zip(meta["patient_id"], no_id.to_numpy(), strict=True)):
            row_other = any(isinstance(meta[c].iat[i], str) for c in other)
            if isinstance(v, str) and v and free and not row_other:
                by_patient.setdefault(v, i)
    rows = []
    for sid, pid in zip(table[id_col], table["patient_id"], strict=True):
        i = by_id.get(sid)
        if i is None and isinstance(pid, str):
            i = by_patient.get(pid)
        rows.append(i)
        if i is not None:
            used.add(i)
    picked = meta[cols].reset_index(drop=True).reindex([-1 if i is None else i for i in rows])
    picked = picked.reset_index(drop=True)
    filled = 0
    if fallback is not None and len(fallback):
        fb = fallback.reindex(table["patient_id"].to_numpy()).reset_index(drop=True)
        took = pd.Series(False, index=picked.index)
        for c in cols:
            gap = picked[c].isna() & fb[c].notna()
            if gap.any():
                picked[c] = picked[c].astype(object).where(~gap, fb[c])
                took |= gap
        filled = int(took.sum())
    out = pd.concat([table.reset_index(drop=True), picked], axis=1)
    return out, used, filled


def attach(slides: pd.DataFrame, mol: pd.DataFrame | None, meta, pairs):
    """Patients and metadata for the slide table (:data:`SLIDE_COLUMNS` but ``patient_id``)
    and the molecular table (``sample_id``, ``kind``, ``patient_id``, maybe ``model_hash``), as
    the module docstring says. Returns (slides, molecular, :class:`MetadataReport`)."""
    report = MetadataReport()
    meta, report.renamed = rename_reserved(meta)
    slide_pat, sample_pat = patients_from_pairs(pairs)
    slides = fill_patients(slides.assign(patient_id=None), "slide_id", slide_pat, meta)
    slides = slides[SLIDE_COLUMNS]
    slides, used, _ = join(slides, "slide_id", meta)
    if mol is not None:
        mol = mol.drop(columns=["model_hash"], errors="ignore")
        mol = fill_patients(mol, "sample_id", sample_pat, meta)
        mol, report.sample_patients = patients_via_slides(mol, pairs, slides)
        fallback, report.conflicts = patient_values(meta, mol["patient_id"].dropna())
        mol, used_m, report.from_slide_rows = join(mol, "sample_id", meta, fallback)
        used |= used_m
    if meta is not None:
        report.unmatched_rows = len(meta) - len(used)
    return slides, mol, report
