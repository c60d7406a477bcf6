"""Embed RNA and DNA profiles with the model; merged into ``work/molecular.parquet``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from indexer.records import WORK
from threads_search.atomic import atomic_path
from threads_search.errors import ConfigError
from threads_search.molecular import RnaUnitsError
from threads_search.molecular.dna import read_dna
from threads_search.molecular.rna import read_rna_matrix
from threads_search.vectorstore.writer import read_embeddings, write_embeddings

MOLECULAR_WORK = "molecular.parquet"


def rna_units_for(model_units: str | None, rna_units: str | None) -> str:
    """The units an RNA matrix is read in: the model bundle's (recorded at training, DESIGN.md
    "Inputs"). ``rna_units`` (``--rna-units``) may only confirm them: another value →
    ``ConfigError`` naming both and the fix, since embedding values as units the model was not
    trained on gives embeddings that silently match nothing."""
    have = model_units or "tpm"
    if rna_units is None or rna_units == have:
        return have
    from threads_search.molecular.rna import UNITS

    if rna_units not in UNITS:
        raise ConfigError(f"--rna-units must be one of {', '.join(UNITS)}, got {rna_units!r}")
    raise ConfigError(
        f"--rna-units {rna_units} conflicts with the model bundle, trained on RNA in {have} "
        f"units: profiles are embedded in the model's units. Drop --rna-units (or pass "
        f"--rna-units {have}) and give the matrix in {have}; for {rna_units} data, train a model "
        f"with --rna-units {rna_units}"
    )


def embed_profiles(model, rna: str | None, rna_units: str | None, dna: str | None):
    """(table sample_id/kind/patient_id, embeddings ``[M, E]``) for the given files. RNA is read
    in the model's units (:func:`rna_units_for`), and embedded exactly as
    ``model.embed_rna(matrix)`` (the Python API) embeds it."""
    frames, embs = [], []
    if rna:
        if model.rna is None:
            raise ConfigError(
                f"--rna {rna}: the model bundle has no RNA encoder: give a model trained with RNA"
            )
        units = rna_units_for(model.rna_units, rna_units)
        m = read_rna_matrix(rna, units=units)
        try:
            embs.append(model.embed_rna(m))
        except RnaUnitsError as e:
            looks = " (these values look log-scale)" if e.hint else ""
            raise RnaUnitsError(
                f"{e.detail}: the model bundle was trained on {units} values and --rna is read "
                f"in its units: give the matrix in {units}{looks}",
                units,
            ) from None
        pid = m.metadata["patient_id"] if "patient_id" in m.metadata.columns else None
        pid = None if pid is None else pid.to_numpy()
        frames.append(pd.DataFrame({"sample_id": m.samples, "kind": "rna", "patient_id": pid}))
    if dna:
        if model.dna is None:
            raise ConfigError(
                f"--dna {dna}: the model bundle has no DNA encoder: give a model trained with DNA"
            )
        mat = read_dna(dna)
        embs.append(model.embed_dna(mat.reset_index()))
        ids = mat.index.astype(str)
        frames.append(pd.DataFrame({"sample_id": ids, "kind": "dna", "patient_id": None}))
    if not frames:
        return None, None
    table = pd.concat(frames, ignore_index=True)
    return table, np.concatenate(embs).astype(np.float32)


def merge_molecular(index_dir: Path, model_hash: str, table, emb):
    """Merge new embeddings into the work table (same sample_id + kind replaced); entries made
    by another model are dropped. Returns the full (table, embeddings) or (None, None)."""
    path = Path(index_dir) / WORK / MOLECULAR_WORK
    old_t, old_e = (None, None)
    if path.exists():
        old_t, old_e = read_embeddings(path)
        keep = (old_t["model_hash"] == model_hash).to_numpy()
        old_t, old_e = old_t[keep].reset_index(drop=True), old_e[keep]
    if table is not None:
        table = table.assign(model_hash=model_hash)
        if old_t is not None and len(old_t):
            new_keys = set(zip(table.sample_id, table.kind, strict=True))
            keep = np.array(
                [k not in new_keys for k in zip(old_t.sample_id, old_t.kind, strict=True)]
            )
            table = pd.concat([old_t[keep], table], ignore_index=True)
            emb = np.concatenate([old_e[keep], emb])
        with atomic_path(path) as tmp:
            write_embeddings(tmp, table, emb)
        return table, emb
    return (old_t, old_e) if old_t is not None and len(old_t) else (None, None)
