"""INDEX_DIR on disk: generations committed by atomically replacing ``index.json``.

An index spans many files, so each update writes a new *generation* folder
(``generations/g<sequence>-<random>/`` holding the tables, FAISS files and catalog of DESIGN.md)
and commits it by replacing ``index.json`` at the root, which names the current generation. A
reader resolves ``index.json`` once and only touches that generation, so it never sees a
half-written index. Generations are ordered by their sequence number (one more than any
existing), never by clock time; folders named by the previous version (``<local time>-<random>``)
count as sequence 0, ordered by name. Older generations are deleted only after the commit, and
never the one ``index.json`` named before it (a reader may have opened it just before). Writers
hold ``INDEX_DIR/.lock`` (``threads_search.locking``: an OS lock, released when the writer ends).

This is the vector store's layout on disk; the read-only index over it is
:class:`threads_search.query.Index`.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

from threads_search.atomic import remove_orphans, write_text
from threads_search.errors import InputError, MissingError
from threads_search.locking import DirLock, WriterLockedError

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
FAISS_SLIDES_STREAMING = "faiss/slides_streaming"  # a streaming build (vectorstore.streaming)
REGIONS = "regions.parquet"  # one row per indexed patch (region search)
REGION_VECTORS = "region_vectors.npy"  # float16 [P, D] normalised patch features
FAISS_REGIONS = "faiss/regions.index"
REGION_PROJECTION = "region_projection.npz"  # what region search compares (vectorstore.projection)
CATALOG = "catalog.duckdb"


class IndexNotFoundError(MissingError):
    """No committed index at the path (a ``FileNotFoundError`` too)."""


class ManifestError(InputError):
    """``index.json`` exists but cannot be read (not JSON, no generation named): a damaged
    index (a ``ValueError`` too)."""


# Another writer holds a lock the run needs (INDEX_DIR, or the FEATURES_DIR it writes features
# into); the message names the holder. One class for both, so callers catch one name.
IndexLockedError = WriterLockedError


def read_manifest(index_dir: str | Path) -> dict:
    """The committed ``index.json`` (with ``generation_dir`` resolved). Raises
    ``IndexNotFoundError`` naming what is missing."""
    root = Path(index_dir)
    path = root / INDEX_JSON
    if not path.exists():
        hint = " (an index build may have been interrupted before its first commit)"
        hint = hint if (root / GENERATIONS).exists() else ""
        raise IndexNotFoundError(f"no index at {root}: {INDEX_JSON} is missing{hint}")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexNotFoundError(f"{path} is not a threads-search index.json")
    if not isinstance(manifest.get("generation"), str):
        raise ManifestError(f"{path} names no generation; rebuild the index")
    gen = root / GENERATIONS / manifest["generation"]
    if not gen.is_dir():
        raise IndexNotFoundError(f"{path} names generation {manifest['generation']!r}, missing")
    manifest["generation_dir"] = str(gen)
    return manifest


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} cannot be read ({e}); rebuild the index") from e


_NEW_NAME = re.compile(r"g(\d+)-[0-9a-f]+")


def generation_key(name: str) -> tuple[int, str]:
    """Order of generation folders: (sequence, name); old time-named folders are sequence 0."""
    m = _NEW_NAME.fullmatch(name)
    return (int(m.group(1)), name) if m else (0, name)


def _generations(root: Path) -> list[Path]:
    gens = root / GENERATIONS
    if not gens.exists():
        return []
    return sorted((p for p in gens.iterdir() if p.is_dir()), key=lambda p: generation_key(p.name))


def _committed(root: Path) -> str | None:
    """The generation ``index.json`` names (whether or not its folder exists); None without
    ``index.json``. Raises ``ManifestError`` when ``index.json`` cannot be read."""
    path = root / INDEX_JSON
    if not path.exists():
        return None
    manifest = _read_json(path)
    name = manifest.get("generation") if isinstance(manifest, dict) else None
    if not isinstance(name, str):
        raise ManifestError(f"{path}: 'generation' is not a name")
    return name


def _committed_or_none(root: Path) -> str | None:
    try:
        return _committed(root)
    except ManifestError:
        return None


def new_generation(index_dir: str | Path) -> Path:
    """An empty, not yet visible generation folder, numbered after every existing one."""
    root = Path(index_dir)
    names = [p.name for p in _generations(root)]
    names += [n for n in [_committed_or_none(root)] if n]
    seq = 1 + max((generation_key(n)[0] for n in names), default=0)
    path = root / GENERATIONS / f"g{seq:06d}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    (path / "faiss").mkdir()
    return path


def commit(index_dir: str | Path, generation: Path, manifest: dict, keep: int = 2) -> dict:
    """Make ``generation`` current by atomically replacing ``index.json``; then delete older
    generations but the ``keep - 1`` newest and the one ``index.json`` named before this commit.
    Returns the manifest written."""
    root = Path(index_dir)
    previous = _committed_or_none(root)
    manifest = {
        **manifest,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generation": generation.name,
        "generation_sequence": generation_key(generation.name)[0],
    }
    manifest.pop("generation_dir", None)
    text = json.dumps(manifest, indent=2, default=str)
    write_text(root / INDEX_JSON, text, fsync=True)  # the commit point
    _prune_generations(root, generation.name, keep, previous)
    return manifest


def _prune_generations(root: Path, current: str, keep: int, previous: str | None) -> None:
    key = generation_key(current)
    older = [p for p in _generations(root) if generation_key(p.name) < key]
    keepers = {current, previous} | {p.name for p in older[len(older) - max(keep - 1, 0) :]}
    for p in older:
        if p.name not in keepers:
            shutil.rmtree(p, ignore_errors=True)


def remove_uncommitted(index_dir: str | Path) -> None:
    """Delete what killed writers left (call with the lock held): temporaries at the root
    (``threads_search.atomic.remove_orphans``: an unfinished ``index.json``) and generation
    folders after the committed one in sequence order. With nothing committed, every
    generation folder goes; with an unreadable ``index.json``, none (nothing is deleted that
    might be current)."""
    root = Path(index_dir)
    remove_orphans(root, recursive=False)
    try:
        current = _committed(root)
    except ManifestError:
        return
    for p in _generations(root):
        if current is None or generation_key(p.name) > generation_key(current):
            shutil.rmtree(p, ignore_errors=True)


class IndexLock(DirLock):
    """Exclusive writer lock ``INDEX_DIR/.lock`` (``threads_search.locking.DirLock``); a second
    writer gets ``IndexLockedError`` naming the holder's pid, host and command."""

    def __init__(self, index_dir: str | Path, command: str = "") -> None:
        super().__init__(index_dir, command, IndexLockedError)
