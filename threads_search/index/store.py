"""INDEX_DIR on disk: generations committed by atomically replacing ``index.json``.

An index spans many files, so each update writes a new *generation* folder
(``generations/<name>/`` holding the tables, FAISS files and catalog of DESIGN.md) and commits it
by replacing ``index.json`` at the root, which names the current generation. A reader resolves
``index.json`` once and only touches that generation, so it never sees a half-written index;
older generations are deleted only after the commit (the newest previous one is kept, so a
reader that opened it just before keeps working). Writers hold ``INDEX_DIR/.lock``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from threads_search.procs import pid_alive

INDEX_JSON = "index.json"
GENERATIONS = "generations"
FORMAT = "threads-search-index"
FORMAT_VERSION = 1

# Logical names inside a generation (DESIGN.md "Index").
SLIDES = "slides.parquet"
SLIDE_EMB = "slide_embeddings.parquet"
MOLECULAR = "molecular.parquet"
MOLECULAR_EMB = "molecular_embeddings.parquet"
ATTENTION = "attention"
THUMBNAILS = "thumbnails"
FAISS_SLIDES = "faiss/slides.index"
FAISS_MOLECULAR = "faiss/molecular.index"
CATALOG = "catalog.duckdb"


class IndexNotFoundError(FileNotFoundError):
    """No committed index at the path."""


class IndexLockedError(RuntimeError):
    """Another writer holds the index lock; the message names it."""


def read_manifest(index_dir: str | Path) -> dict:
    """The committed ``index.json`` (with ``generation_dir`` resolved). Raises
    ``IndexNotFoundError`` naming what is missing."""
    root = Path(index_dir)
    path = root / INDEX_JSON
    if not path.exists():
        hint = " (an index build may have been interrupted before its first commit)"
        hint = hint if (root / GENERATIONS).exists() else ""
        raise IndexNotFoundError(f"no index at {root}: {INDEX_JSON} is missing{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise IndexNotFoundError(f"{path} is not a threads-search index.json")
    gen = root / GENERATIONS / manifest["generation"]
    if not gen.is_dir():
        raise IndexNotFoundError(f"{path} names generation {manifest['generation']!r}, missing")
    manifest["generation_dir"] = str(gen)
    return manifest


def new_generation(index_dir: str | Path) -> Path:
    """An empty, not yet visible generation folder."""
    name = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    path = Path(index_dir) / GENERATIONS / name
    path.mkdir(parents=True)
    (path / "faiss").mkdir()
    return path


def commit(index_dir: str | Path, generation: Path, manifest: dict, keep: int = 2) -> dict:
    """Make ``generation`` current by atomically replacing ``index.json``; then delete all but
    the ``keep`` newest generations. Returns the manifest written."""
    root = Path(index_dir)
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
                "generation": generation.name}  # fmt: skip
    manifest.pop("generation_dir", None)
    tmp = root / f".{INDEX_JSON}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / INDEX_JSON)
    _prune_generations(root, generation.name, keep)
    return manifest


def _prune_generations(root: Path, current: str, keep: int) -> None:
    gens = sorted((p for p in (root / GENERATIONS).iterdir() if p.is_dir()), key=lambda p: p.name)
    keepers = {current} | {p.name for p in [g for g in gens if g.name <= current][-keep:]}
    for p in gens:
        if p.name not in keepers:
            shutil.rmtree(p, ignore_errors=True)


def remove_uncommitted(index_dir: str | Path) -> None:
    """Delete generation folders newer than the committed one (left by killed writers)."""
    root = Path(index_dir)
    gens = root / GENERATIONS
    if not gens.exists():
        return
    try:
        current = read_manifest(root)["generation"]
    except IndexNotFoundError:
        current = ""
    for p in gens.iterdir():
        if p.is_dir() and p.name > current:
            shutil.rmtree(p, ignore_errors=True)


class IndexLock:
    """Exclusive writer lock ``INDEX_DIR/.lock`` holding the holder's pid, host and command.

    A lock whose process is gone (same host) is stale and taken over with a note."""

    def __init__(self, index_dir: str | Path, command: str = "") -> None:
        self.path = Path(index_dir) / ".lock"
        self.command = command
        self.took_over: dict | None = None

    def __enter__(self) -> IndexLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": self.command}  # fmt: skip
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == info["host"] and not pid_alive(holder["pid"]):
                    self.took_over = holder
                    self.path.unlink(missing_ok=True)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                raise IndexLockedError(
                    f"{self.path.parent} is being written by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {since} ({holder.get('command') or 'unknown'}); "
                    f"wait for it, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            return self
        raise IndexLockedError(f"could not take {self.path}")

    def _holder(self) -> dict:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return json.loads(self.path.read_text())
        return {"pid": -1, "host": "?"}

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
