"""Per-slide work records: the resumable unit of indexing.

``INDEX_DIR/work/slides/<slide_id>.npz`` holds one slide's embedding ``[E]`` float32, its
attention (coords ``[N, 2]`` int64 level-0 px, scores ``[H, N]`` float32), its patch vectors for
region search (``patches`` ``[N, D]`` float16, L2-normalised patch features; absent with
``--no-regions``) and a JSON ``meta``
(source fingerprint, ``threads_search.wsi.fingerprint``; model hash; table row). Written
atomically; a committed generation is a pure function of the records, so a run killed at any
moment is finished by re-running it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.atomic import atomic_path, remove_orphans
from threads_search.paths import slide_file, slide_id_of
from threads_search.wsi.fingerprint import fingerprint  # noqa: F401 - importable from here too

WORK = "work"
MODELS = "models"  # INDEX_DIR/models/<hash>: the installed model bundles


@dataclass
class SlideRecord:
    slide_id: str
    embedding: np.ndarray  # float32 [E]
    coords: np.ndarray  # int64 [N, 2]
    attention: np.ndarray  # float32 [H, N]
    meta: dict  # fingerprint, model_hash, row (slides-table fields), thumbnail, patch, source
    patches: np.ndarray | None = None  # float16 [N, D] normalised patch features (regions)


def records_dir(index_dir: Path) -> Path:
    return Path(index_dir) / WORK / "slides"


def record_path(index_dir: Path, slide_id: str) -> Path:
    """``work/slides/<slide_id>.npz``; raises ``UnsafeSlideIdError`` for an id that could name
    a file outside it."""
    return slide_file(records_dir(index_dir), slide_id, ".npz")


def write_record(index_dir: Path, rec: SlideRecord) -> None:
    """Write ``rec`` to its ``record_path`` atomically (a reader or a re-run never sees half a
    record)."""
    with atomic_path(record_path(index_dir, rec.slide_id)) as tmp:
        np.savez(
            tmp,
            embedding=rec.embedding.astype(np.float32),
            coords=rec.coords,
            attention=rec.attention.astype(np.float32),
            meta=np.array(json.dumps(rec.meta, default=str)),
            **({"patches": rec.patches} if rec.patches is not None else {}),
        )


def read_meta(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            return json.loads(str(z["meta"]))
    except Exception:  # noqa: BLE001 - an unreadable record is simply redone
        return None


def read_record(path: Path, slide_id: str) -> SlideRecord:
    """The record at ``path`` without its patch vectors (``read_patches`` reads those, one record
    at a time: all of them together may not fit in memory)."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return SlideRecord(slide_id, z["embedding"], z["coords"], z["attention"], meta)


def read_patches(path: Path) -> np.ndarray | None:
    """The record's patch vectors float16 ``[N, D]`` (None when it was made without them)."""
    with np.load(path) as z:
        return np.asarray(z["patches"], np.float16) if "patches" in z.files else None


def list_records(index_dir: Path) -> dict[str, Path]:
    """slide_id → record path, for every complete record (temporaries and names that are not
    valid ids are left out)."""
    root = records_dir(index_dir)
    if not root.exists():
        return {}
    out = {}
    for p in root.rglob("*.npz"):
        sid = slide_id_of(root, p, ".npz")
        if sid is not None:
            out[sid] = p
    return out


def remove_orphan_temps(index_dir: Path) -> list[Path]:
    """Delete the temporaries killed writers left in ``INDEX_DIR/work`` and ``INDEX_DIR/models``
    (``threads_search.atomic.remove_orphans``; call it holding the index lock). Not FEATURES_DIR,
    even when it lies inside INDEX_DIR: it has its own lock and its own clean-up. Returns what
    was deleted."""
    root = Path(index_dir)
    return [p for sub in (WORK, MODELS) for p in remove_orphans(root / sub)]
