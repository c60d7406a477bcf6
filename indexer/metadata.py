"""Join user metadata to slides and molecular samples (DESIGN.md "Inputs").

A slide takes the metadata row whose ``slide_id`` matches, else its patient's row; a molecular
sample the row whose ``sample_id`` matches, else its patient's row. Patients come from the pairs
file (or ``patient_id`` columns). Rows that match nothing are reported, never dropped silently.
"""

from __future__ import annotations

import pandas as pd

ID_COLUMNS = ("slide_id", "sample_id", "patient_id")


def patients_from_pairs(pairs: pd.DataFrame | None) -> tuple[dict, dict]:
    """slide_id → patient_id and sample_id → patient_id from a pairs table."""
    if pairs is None or "patient_id" not in pairs.columns:
        return {}, {}
    p = pairs.dropna(subset=["patient_id"])
    return (dict(zip(p.slide_id, p.patient_id, strict=True)),
            dict(zip(p.sample_id, p.patient_id, strict=True)))  # fmt: skip


def _value_columns(meta: pd.DataFrame) -> list[str]:
    return [c for c in meta.columns if c not in ID_COLUMNS]


def join(
    table: pd.DataFrame, id_col: str, meta: pd.DataFrame | None
) -> tuple[pd.DataFrame, set[int]]:
    """Add the metadata columns to ``table`` (which has ``id_col`` and ``patient_id``).
    Returns the joined table and the metadata row positions used."""
    if meta is None or meta.empty:
        return table, set()
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
    out = pd.concat([table.reset_index(drop=True), picked.reset_index(drop=True)], axis=1)
    return out, used


def fill_patients(table: pd.DataFrame, id_col: str, mapping: dict, meta: pd.DataFrame | None):
    """Fill ``patient_id`` from the pairs mapping, else from a metadata row naming the id."""
    pid = table[id_col].map(mapping)
    if meta is not None and id_col in meta.columns and "patient_id" in meta.columns:
        m = meta.dropna(subset=[id_col, "patient_id"])
        pid = pid.fillna(table[id_col].map(dict(zip(m[id_col], m["patient_id"], strict=True))))
    if "patient_id" in table.columns:
        pid = table["patient_id"].where(table["patient_id"].notna(), pid)
    return table.assign(patient_id=pid.astype(object).where(pid.notna(), None))
