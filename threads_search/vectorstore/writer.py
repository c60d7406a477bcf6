"""Write one complete generation of the vector store (tables, FAISS files, catalog) and commit it.

Row ``i`` of ``slides.parquet`` / ``slide_embeddings.parquet`` is FAISS id ``i`` of
``faiss/slides.index``; likewise for the molecular tables and ``faiss/molecular.index``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from threads_search.paths import slide_file
from threads_search.vectorstore import store
from threads_search.vectorstore.autotune import build_index
from threads_search.vectorstore.vectors import save_index

SLIDE_COLUMNS = [
    "slide_id",
    "path",
    "patient_id",
    "mpp",
    "width",
    "height",
    "n_patches",
    "tissue_area_mm2",
]
MOLECULAR_COLUMNS = ["sample_id", "patient_id", "kind"]
IN_MEMORY_REGIONS = 2 * 2**30  # float32 bytes of region vectors built in memory; more: compressed
COMPRESSED_MIN = 20_000  # fewer region vectors are always built in memory (a few MB)


def write_embeddings(path: Path, ids: pd.DataFrame, emb: np.ndarray) -> None:
    """Parquet with the id columns of ``ids`` and ``embedding`` as fixed-size list<float32>."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    table = pa.Table.from_pandas(ids.reset_index(drop=True), preserve_index=False)
    dim = emb.shape[1] if emb.ndim == 2 else 0
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    col = (
        pa.FixedSizeListArray.from_arrays(flat, dim)
        if dim
        else pa.array([], pa.list_(pa.float32()))
    )
    pq.write_table(table.append_column("embedding", col), path)


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Inverse of ``write_embeddings``: (id columns, float32 ``[N, E]``)."""
    table = pq.read_table(path)
    col = table.column("embedding").combine_chunks()
    n = len(col)
    dim = col.type.list_size if n else 0
    emb = col.values.to_numpy(zero_copy_only=False).reshape(n, dim).astype(np.float32, copy=False)
    return table.drop(["embedding"]).to_pandas(), emb


def _catalog(gen: Path, has_molecular: bool) -> None:
    """``catalog.duckdb``: views over the generation's Parquet tables, paths relative to it
    (open with ``SET file_search_path`` to the generation folder)."""
    con = duckdb.connect(str(gen / store.CATALOG))
    try:
        con.execute(f"SET file_search_path = '{gen.as_posix()}'")
        views = {"slides": store.SLIDES, "slide_embeddings": store.SLIDE_EMB}
        if has_molecular:
            views.update(molecular=store.MOLECULAR, molecular_embeddings=store.MOLECULAR_EMB)
        for name, file in views.items():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{file}')")
    finally:
        con.close()


def _faiss(vectors: np.ndarray, path: Path, index_type: str, memory_budget: int | None) -> dict:
    kw = {"memory_budget": memory_budget} if memory_budget else {}
    index, info = build_index(vectors, index_type=index_type, **kw)
    save_index(index, path)
    return info


def write_generation(
    index_dir: str | Path,
    slides: pd.DataFrame,
    slide_emb: np.ndarray,
    molecular: pd.DataFrame | None = None,
    molecular_emb: np.ndarray | None = None,
    attention: dict[str, pd.DataFrame] | None = None,
    thumbnails: dict[str, Path] | None = None,
    manifest: dict | None = None,
    index_type: str = "auto",
    memory_budget: int | None = None,
    regions=None,
) -> dict:
    """Write and commit a generation. ``slides`` rows align with ``slide_emb`` ``[N, E]``;
    ``molecular`` rows with ``molecular_emb`` ``[M, E]``; ``attention``: slide_id → frame
    (x, y, score[, score_h<k>]) in level-0 px; ``thumbnails``: slide_id → JPEG path to copy;
    per-slide files are named by ``threads_search.paths.slide_file`` (an unsafe id raises
    ``UnsafeSlideIdError`` before anything is committed); ``regions``: the region rows and their
    float16 ``[P, D]`` patch vectors (``indexer.regions.RegionRows``), indexed for region
    search. Returns
    the committed manifest."""
    t0 = time.perf_counter()
    root = Path(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    gen = store.new_generation(root)
    try:
        info = _slide_tables(gen, slides, slide_emb, index_type, memory_budget)
        info.update(_molecular_tables(gen, molecular, molecular_emb))
        info.update(_region_tables(gen, regions, memory_budget))
        _slide_files(gen, attention or {}, thumbnails or {})
        _catalog(gen, "molecular" in info)
        full = {
            **(manifest or {}),
            "counts": {
                "slides": info["slides"]["count"],
                "molecular": info["molecular"]["count"] if "molecular" in info else 0,
            },
            **info,
            "write_seconds": time.perf_counter() - t0,
            "committed": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return store.commit(root, gen, full)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)  # never committed: nobody can be reading it
        raise


def _slide_tables(gen: Path, slides, slide_emb, index_type: str, memory_budget) -> dict:
    """The slide table, its embeddings and FAISS file, rows sorted by slide_id."""
    order = np.argsort(slides["slide_id"].to_numpy(), kind="stable")
    slides = slides.iloc[order].reset_index(drop=True)
    slide_emb = np.asarray(slide_emb, np.float32)[order]
    slides.to_parquet(gen / store.SLIDES, index=False)
    write_embeddings(gen / store.SLIDE_EMB, slides[["slide_id"]], slide_emb)
    info = {"slides": {"count": len(slides), "dim": int(slide_emb.shape[1]) if len(slides) else 0}}
    if not len(slides):
        return info
    n, dim = slide_emb.shape
    if memory_budget and n * dim * 4 > memory_budget and n >= COMPRESSED_MIN:
        from threads_search.vectorstore.streaming import build_streaming

        out = gen / store.FAISS_SLIDES_STREAMING  # from the embeddings Parquet, in chunks
        kind = index_type if index_type in ("ivf", "ivfpq") else "auto"
        info["slides"]["faiss"] = build_streaming([gen / store.SLIDE_EMB], out, memory_budget, kind)
        return info
    path = gen / store.FAISS_SLIDES
    info["slides"]["faiss"] = _faiss(slide_emb, path, index_type, memory_budget)
    return info


def _molecular_tables(gen: Path, molecular, molecular_emb) -> dict:
    """The molecular table, its embeddings and (flat) FAISS file, rows sorted by sample_id
    then kind; nothing (and ``{}``) without molecular samples."""
    if molecular is None or len(molecular) == 0:
        return {}
    order = np.lexsort((molecular["kind"].to_numpy(), molecular["sample_id"].to_numpy()))
    molecular = molecular.iloc[order].reset_index(drop=True)
    molecular_emb = np.asarray(molecular_emb, np.float32)[order]
    molecular.to_parquet(gen / store.MOLECULAR, index=False)
    write_embeddings(gen / store.MOLECULAR_EMB, molecular[["sample_id", "kind"]], molecular_emb)
    kinds = molecular["kind"].value_counts().to_dict()
    faiss_info = _faiss(molecular_emb, gen / store.FAISS_MOLECULAR, "flat", None)
    return {"molecular": {"count": len(molecular), "by_kind": kinds, "faiss": faiss_info}}


def _region_tables(gen: Path, regions, memory_budget) -> dict:
    """``regions.parquet``, ``region_vectors.npy`` (float16, filled chunk by chunk from
    ``regions.chunks()``), ``region_projection.npz`` (fitted on those vectors:
    ``vectorstore.projection``) and ``faiss/regions.index`` over the projected vectors: chosen
    by size (``autotune``) while the float32 vectors fit ``IN_MEMORY_REGIONS`` bytes and the memory budget, else the compressed
    index (``vectorstore.compressed``: PQ codes in RAM, re-ranked from the vectors on disk).
    Nothing (and ``{}``) without regions."""
    if regions is None or len(regions) == 0:
        return {}
    regions.table.to_parquet(gen / store.REGIONS, index=False)
    from threads_search.patch_encoders import tissue_dims
    from threads_search.vectorstore.compressed import NpyRows, build_compressed, write_npy_rows
    from threads_search.vectorstore.projection import RegionProjection, projected_rows

    n, dim = len(regions), regions.dim
    row = write_npy_rows(gen / store.REGION_VECTORS, n, dim, regions.chunks())
    if row != n:
        raise RuntimeError(f"region vectors: {row} rows for a table of {n}")
    vec = NpyRows(gen / store.REGION_VECTORS)
    blocks = (vec[a : a + (1 << 16)] for a in range(0, n, 1 << 16))
    n_slides = int(regions.table["slide_id"].nunique())
    tissue = tissue_dims(regions.encoder)
    proj = RegionProjection.fit(blocks, dim, regions.features, tissue, n_slides)
    proj.save(gen / store.REGION_PROJECTION)
    rows = projected_rows(vec, proj)  # what FAISS indexes
    limit = min(IN_MEMORY_REGIONS, memory_budget or IN_MEMORY_REGIONS)
    if n * proj.out_dim * 4 <= limit or n < COMPRESSED_MIN:
        x = np.asarray(rows[:], np.float32)
        faiss_info = _faiss(x, gen / store.FAISS_REGIONS, "auto", None)
    else:
        sids = regions.table["slide_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])  # each slide's first row
        faiss_info = build_compressed(rows, gen / store.FAISS_REGIONS, groups=starts)
    files = (store.REGIONS, store.REGION_VECTORS, store.FAISS_REGIONS, store.REGION_PROJECTION)
    on_disk = sum((gen / f).stat().st_size for f in files)
    return {
        "regions": {
            "count": n,
            "slides": n_slides,
            "dim": dim,
            "bytes_per_patch": on_disk / n,
            "projection": proj.describe(),
            "faiss": faiss_info,
        }
    }


def _slide_files(gen: Path, attention: dict, thumbnails: dict) -> None:
    """``attention/<slide_id>.parquet`` and ``thumbnails/<slide_id>.jpg`` (hard links when the
    file system allows)."""
    (gen / store.ATTENTION).mkdir()
    for sid, frame in attention.items():
        dest = slide_file(gen / store.ATTENTION, sid, ".parquet")
        dest.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(dest, index=False)
    (gen / store.THUMBNAILS).mkdir()
    for sid, src in thumbnails.items():
        dest = slide_file(gen / store.THUMBNAILS, sid, ".jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # same file system: no copy
        except OSError:
            shutil.copyfile(src, dest)
