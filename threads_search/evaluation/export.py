"""``threads-search export``: the index's slide and molecular embeddings, with their ids and
metadata, in one file for other tools (e.g. Patho-Bench-style pipelines).

- ``.parquet``: one row per item; ``kind`` (slide | rna | dna), ``id`` (the slide_id or
  sample_id), ``slide_id``, ``sample_id``, ``patient_id``, the metadata columns, and
  ``embedding`` (fixed-size list<float32>, L2-normalised as in the index).
- ``.h5`` / ``.hdf5``: groups ``slides`` and ``molecular``, each with ``embeddings`` float32
  ``[N, E]``, ``ids`` (utf-8 strings, row order of ``embeddings``) and ``meta/<column>``
  (numbers as numbers, everything else as utf-8 strings; missing as NaN or ""); file attributes
  ``index``, ``dim``, ``model``.

Written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from threads_search.atomic import atomic_path
from threads_search.errors import ConfigError

SUFFIXES = (".parquet", ".h5", ".hdf5")


def export(index, out: str | Path) -> dict:
    """Write the embeddings of ``index`` (an ``Index`` or INDEX_DIR) to ``out`` (format by its
    suffix, see the module docstring). Returns ``path``, ``slides``, ``molecular``, ``dim``."""
    from threads_search.query import open_index

    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out {out}: the file name must end in {', '.join(SUFFIXES)}")
    index = open_index(index) if isinstance(index, (str, Path)) else index
    slides, mol = index.slides, index.molecular
    s_emb, m_emb = index.vectors("slides"), index.vectors("molecular")
    if out.suffix.lower() == ".parquet":
        _parquet(out, slides, s_emb, mol, m_emb)
    else:
        _h5(out, index, slides, s_emb, mol, m_emb)
    return {"path": out, "slides": len(slides), "molecular": len(mol), "dim": index.dim}


def _parquet(out: Path, slides, s_emb, mol, m_emb) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = slides.assign(kind="slide", id=slides["slide_id"].astype(str))
    m = mol.assign(id=mol["sample_id"].astype(str))
    frame = pd.concat([s, m], ignore_index=True)
    lead = ["kind", "id", "slide_id", "sample_id", "patient_id"]
    frame = frame.reindex(columns=lead + [c for c in frame.columns if c not in lead])
    frame = frame.astype({c: object for c in frame.columns if frame[c].dtype == object})
    emb = np.vstack([s_emb, m_emb]).astype(np.float32)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    table = table.append_column("embedding", vec)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def _h5(out: Path, index, slides, s_emb, mol, m_emb) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["index"] = str(Path(index.root).resolve())
        f.attrs["dim"] = int(index.dim)
        f.attrs["model"] = json.dumps(index.manifest.get("model") or {})
        for name, table, emb, id_col in (
            ("slides", slides, s_emb, "slide_id"),
            ("molecular", mol, m_emb, "sample_id"),
        ):
            g = f.create_group(name)
            g.create_dataset("embeddings", data=emb.astype(np.float32))
            g.create_dataset("ids", data=table[id_col].astype(str).to_numpy(object), dtype=text)
            meta = g.create_group("meta")
            for col in table.columns:
                v = table[col]
                if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
                    meta.create_dataset(str(col), data=v.to_numpy(np.float64))
                else:
                    vals = v.astype(object).where(v.notna(), "").astype(str).to_numpy(object)
                    meta.create_dataset(str(col), data=vals, dtype=text)
