"""Patch reading in parallel workers, each with its own OpenSlide handle: a torch ``Dataset``
read by a batched ``DataLoader`` in worker processes (``backend="process"``, the default), or
the same batches read by a pool of threads in this process (``backend="thread"``).

Threads work because OpenSlide decodes with the GIL released (ctypes) and the patch is then
unpacked in C; they skip what worker processes pay per batch (a shared-memory segment, a file
descriptor sent over a socket, pickling) and the cold pages each new batch writes. Processes
suit a ``transform`` written in Python (it holds the GIL) and isolate a crashing reader."""

from __future__ import annotations

import copy
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from threads_search.wsi.slide import Slide


class PatchDataset(Dataset):
    """Item ``i`` → ``(patch, coord)``: patch uint8 ``[patch_size, patch_size, 3]`` (or
    ``transform(patch)``), coord int64 ``[2]`` level-0 (x, y).

    ``mpp`` is the level-0 µm/px resolved once by the caller so workers never disagree.
    """

    def __init__(
        self,
        path: str | Path,
        coords: np.ndarray,
        patch_size: int = 512,
        target_mpp: float = 0.5,
        mpp: float | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.path = str(path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.patch_size = patch_size
        self.target_mpp = target_mpp
        self.mpp = mpp
        self.transform = transform
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def _handle(self) -> Slide:
        # One OpenSlide handle per process: handles must not cross a fork.
        if self._slide is None or self._pid != os.getpid():
            self._slide = Slide(self.path, mpp=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, i: int):
        return torch.from_numpy(self.read(i)), torch.from_numpy(self.coords[i])

    def read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Patch ``i`` (transformed if a transform is set), written into ``out`` when given."""
        x, y = self.coords[i]
        direct = out if self.transform is None else None  # decoded straight into ``out``
        patch = self._handle().read_patch(int(x), int(y), self.patch_size, self.target_mpp, direct)
        if self.transform is not None:
            patch = self.transform(patch)
        patch = np.require(patch, requirements=["C", "W"])  # PIL-backed arrays are read-only
        if out is None or patch is out:
            return patch
        out[...] = patch
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_pid"] = None
        return state


class PatchBatches(Dataset):
    """Item ``b`` → batch ``b`` of ``PatchDataset``: ``(patches [n, ...], coords [n, 2])``,
    read into one array by one worker (no per-patch collation or messages)."""

    def __init__(self, patches: PatchDataset, batch_size: int) -> None:
        self.patches = patches
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.patches) // self.batch_size)

    def __getitem__(self, b: int):
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, len(self.patches))
        first = torch.from_numpy(self.patches.read(lo))
        out = _batch_tensor(first, hi - lo)
        out[0] = first
        slots = out.numpy()
        for i in range(lo + 1, hi):  # each patch is decoded straight into its slot
            self.patches.read(i, slots[i - lo])
        return out, torch.from_numpy(self.patches.coords[lo:hi])


def _batch_tensor(first: torch.Tensor, n: int) -> torch.Tensor:
    """Empty ``[n, *first.shape]`` tensor; in a loader worker it lives in shared memory from the
    start (as torch's own collate does), so sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty((n, *first.shape), dtype=first.dtype)
    storage = first._typed_storage()._new_shared(n * first.numel(), device=first.device)
    return first.new(storage).resize_(n, *first.shape)


def _worker_init(_: int) -> None:
    # Each worker is one reader: no intra-op thread pools competing for the cores.
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # BLAS/OpenMP pools inherited from the parent
    except ImportError:  # pragma: no cover - scikit-learn brings it
        pass


class ThreadedPatchLoader:
    """Iterable of the batches of ``PatchBatches`` read by ``workers`` threads (one OpenSlide
    handle each), ``2 * workers`` batches in flight, yielded in order."""

    def __init__(self, batches: PatchBatches, workers: int) -> None:
        self.batches = batches
        self.workers = max(1, workers)
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, b: int):
        mine = getattr(self._local, "batches", None)
        if mine is None:  # this thread's own copy (a copy drops the slide handle: its own one)
            mine = PatchBatches(copy.copy(self.batches.patches), self.batches.batch_size)
            self._local.batches = mine
        return mine[b]

    def __iter__(self) -> Iterator:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="patch-reader") as pool:
            todo = iter(range(len(self.batches)))
            pending = deque(pool.submit(self._read, b) for b in islice(todo, 2 * self.workers))
            try:
                while pending:
                    batch = pending.popleft().result()
                    pending.extend(pool.submit(self._read, b) for b in islice(todo, 1))
                    yield batch
            finally:
                for f in pending:
                    f.cancel()


def patch_loader(
    path: str | Path,
    coords: np.ndarray,
    patch_size: int = 512,
    target_mpp: float = 0.5,
    mpp: float | None = None,
    batch_size: int = 32,
    workers: int = 2,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    backend: str = "process",
) -> DataLoader | ThreadedPatchLoader:
    """Batches ``(patches [B, ps, ps, 3] uint8 | transformed [B, ...], coords [B, 2] int64)``
    in the order of ``coords``. ``workers=0`` reads in this process; ``backend`` ``process``
    (DataLoader worker processes) or ``thread`` (see the module docstring)."""
    ds = PatchBatches(
        PatchDataset(path, coords, patch_size, target_mpp, mpp, transform), batch_size
    )
    if backend == "thread" and workers > 0:
        return ThreadedPatchLoader(ds, workers)
    if backend not in ("process", "thread"):
        raise ValueError(f"backend must be 'process' or 'thread', got {backend!r}")
    return DataLoader(
        ds,
        batch_size=None,  # each item is already a batch
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
