"""Embeddings on disk as Parquet shards: :class:`ShardSet` (read, in row order, a chunk at a
time) and :class:`ShardWriter` / :func:`write_shards` (write). The input of the out-of-core
build in :mod:`threads_search.vectorstore.streaming`.

Rows ``0..N-1`` are the rows of the files in name order; column ``embedding`` (by default) is a
(fixed-size) list of float32 ``[D]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from threads_search.errors import InputError, MissingError

ROW_GROUP_BYTES = 64 * 2**20  # Parquet row groups written by ShardWriter (one read at a time)


class ShardSet:
    """Parquet files holding the rows ``0..N-1`` in order, column ``column`` a (fixed-size)
    list of float32 ``[D]``. Opening reads only the footers."""

    def __init__(self, paths: str | Path | Iterable[str | Path], column: str = "embedding"):
        items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        files = [f for p in items for f in (sorted(p.glob("*.parquet")) if p.is_dir() else [p])]
        self.paths = sorted(files)
        if not self.paths:
            raise MissingError(f"no Parquet files in {[str(p) for p in items]}")
        self.column = column
        self.counts = [pq.ParquetFile(p).metadata.num_rows for p in self.paths]
        self.n = int(sum(self.counts))
        first = next(self.iter_chunks(1), None)
        if first is None:
            raise InputError(f"{self.paths[0]}: no rows")
        self.dim = first[1].shape[1]

    def iter_chunks(self, rows: int, shard: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row id, float32 [<= rows, D])`` blocks in row order (of one shard only when
        ``shard`` is given). Reads one row group at a time, single-threaded, without
        pre-buffering (a 1024-d row group of 16k rows holds 64 MiB); row groups above
        ``rows`` are read in batches of ``rows``."""
        start = sum(self.counts[:shard]) if shard is not None else 0
        for i, path in enumerate(self.paths):
            if shard is not None and i != shard:
                continue
            f = pq.ParquetFile(path, pre_buffer=False)
            for g in range(f.metadata.num_row_groups):
                if f.metadata.row_group(g).num_rows <= rows:
                    parts = [f.read_row_group(g, columns=[self.column], use_threads=False)]
                else:
                    parts = f.iter_batches(
                        batch_size=rows, row_groups=[g], columns=[self.column], use_threads=False
                    )
                for part in parts:
                    block = _as_matrix(part.column(0), path, self.column)
                    del part
                    yield start, block
                    start += len(block)
        pa.default_memory_pool().release_unused()

    def take(self, row_sets: list[np.ndarray], chunk_rows: int) -> list[np.ndarray]:
        """For each array of sorted row ids, those rows as float32 ``[len, D]``; all sets
        gathered in one streaming pass."""
        outs = [np.empty((len(r), self.dim), np.float32) for r in row_sets]
        done = [0] * len(row_sets)
        for start, block in self.iter_chunks(chunk_rows):
            for s, rows in enumerate(row_sets):
                j = done[s]
                hi = int(np.searchsorted(rows, start + len(block)))
                if hi > j:
                    outs[s][j:hi] = block[rows[j:hi] - start]
                    done[s] = hi
        return outs


def _as_matrix(col, path: Path, name: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_fixed_size_list(col.type):
        raise InputError(f"{path}: column {name!r} is {col.type}, expected list<float32>")
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if n and flat.size % n:
        raise InputError(f"{path}: column {name!r} has rows of different lengths")
    return flat.reshape(n, -1 if n else 0).astype(np.float32, copy=False)


class ShardWriter:
    """Push float32 blocks ``[b, D]`` in row order; they land in ``part-NNNNN.parquet`` files of
    ``rows_per_shard`` rows (column ``embedding``, fixed-size list<float32>, uncompressed, row
    groups of ``row_group`` rows, default ``ROW_GROUP_BYTES``), one block held at a time. Use as a
    context manager, or call ``close``."""

    def __init__(self, out_dir: str | Path, rows_per_shard: int, row_group: int | None = None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard, self.row_group = rows_per_shard, row_group
        self._writer, self._rows, self._part = None, 0, 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, np.float32)
        while len(block):
            if self._writer is None:
                schema = pa.schema([("embedding", pa.list_(pa.float32(), block.shape[1]))])
                path = self.out / f"part-{self._part:05d}.parquet"
                self._writer = pq.ParquetWriter(path, schema, compression="none")
            take = min(len(block), self.rows_per_shard - self._rows)
            flat = pa.array(block[:take].reshape(-1), pa.float32())
            arr = pa.FixedSizeListArray.from_arrays(flat, block.shape[1])
            rg = self.row_group or max(1, ROW_GROUP_BYTES // (4 * block.shape[1]))
            self._writer.write_table(pa.table({"embedding": arr}), row_group_size=rg)
            self._rows, block = self._rows + take, block[take:]
            if self._rows == self.rows_per_shard:
                self._next()

    def _next(self) -> None:
        self._writer.close()
        self._writer, self._rows, self._part = None, 0, self._part + 1

    def close(self) -> ShardSet:
        if self._writer is not None:
            self._next()
        return ShardSet([self.out])

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._next()


def write_shards(
    out_dir: str | Path,
    chunks: Iterable[np.ndarray],
    rows_per_shard: int,
    row_group: int | None = None,
) -> ShardSet:
    """Write an iterable of float32 blocks with a ``ShardWriter``; returns the ``ShardSet``."""
    w = ShardWriter(out_dir, rows_per_shard, row_group)
    with w:
        for block in chunks:
            w.write(block)
    return ShardSet([out_dir])
