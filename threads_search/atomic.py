"""Atomic writes: every file threads-search writes appears whole or not at all.

A file is written under a temporary name beside its final one, then renamed onto it
(``os.replace``, atomic on POSIX file systems); a reader, or a re-run after ``kill -9``, never
sees a half-written file. One spelling for every temporary, files and folders alike::

    .<stem>.tmp-<pid>-<token><suffix>      e.g. .x.tmp-4242-1a2b3c4d.h5 for x.h5

(hidden, so folder scans skip it; the final suffix is kept, for writers that choose the format
by extension). :func:`remove_orphans` deletes the temporaries a killed writer left behind, by
that one pattern and the writer's pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from threads_search.procs import pid_alive

_TEMP = re.compile(r"^\.(?P<stem>.*)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})(?P<suffix>\.[^.]*)?$")


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (module docstring), unique per call."""
    p = Path(path)
    stem, suffix = (p.stem, p.suffix) if p.suffix else (p.name, "")
    return p.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def is_temporary(path: str | Path) -> bool:
    """Whether ``path``'s name is a temporary of :func:`temp_path`."""
    return _TEMP.match(Path(path).name) is not None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a path (h5py, Parquet,
    ``np.savez``, ``torch.save``, a folder being filled); when the block ends without error it
    is renamed onto ``path`` (a folder replaces an existing one), else removed. ``fsync``:
    flush a file to disk before the rename (for commit points such as ``index.json``)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync and tmp.is_file():
            _fsync(tmp)
        if tmp.is_dir() and final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", fsync: bool = False, **kwargs):
    """``open(path, mode)`` on a temporary name, renamed onto ``path`` when the block ends
    without error (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def remove_orphans(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporaries (files or folders) under ``folder`` whose writer process is gone
    (its pid no longer runs on this machine); call it with the folder's writer lock held.
    Returns what was deleted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob(".*.tmp-*") if recursive else root.glob(".*.tmp-*")
    gone = []
    for p in sorted(found, key=lambda q: len(q.parts)):
        m = _TEMP.match(p.name)
        if m and not pid_alive(int(m.group("pid"))) and (p.exists() or p.is_symlink()):
            _remove(p)
            gone.append(p)
    return gone
