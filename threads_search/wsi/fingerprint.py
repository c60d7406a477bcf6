"""A slide file's cheap fingerprint: what tells a replaced file (new scan, re-export) from the
one that features or an index entry were made from.

``fingerprint`` is size (bytes), modification time (ns) and a SHA-256 of the first and last MiB
(a file, or the files of a DICOM WSI folder): two reads of at most 1 MiB per slide, cheap enough
for 10^5 slides. It is recorded in FEATURES_DIR ``status.parquet`` (column
``source_fingerprint``) and in each feature h5 (attribute ``source_fingerprint`` on ``coords``)
as JSON text (``to_text``), and in the index's work records. Any difference counts as a change:
a copy that does not keep modification times (``cp`` without ``-p``) is taken for a new file and
recomputed, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

KEYS = ("size", "mtime_ns", "partial_sha256")


def fingerprint(path: str | Path, chunk: int = 1 << 20) -> dict:
    """``{"size", "mtime_ns", "partial_sha256"}`` of ``path`` (a file, or a folder's files for
    DICOM). Only regular files are read (a FIFO is never opened). Raises ``OSError``."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    size = 0
    mtime = 0
    for f in files:
        st = f.stat()
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode):
            continue
        with open(f, "rb") as fh:
            h.update(fh.read(chunk))
            if st.st_size > chunk:
                fh.seek(max(chunk, st.st_size - chunk))
                h.update(fh.read(chunk))
    return {"size": size, "mtime_ns": mtime, "partial_sha256": h.hexdigest()[:32]}


def source_fingerprint(path: str | Path) -> dict | None:
    """``fingerprint(path)``, or None when ``path`` cannot be read now (gone, no permission,
    neither a regular file nor a folder)."""
    try:
        st = os.stat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None
        return fingerprint(path)
    except (OSError, ValueError):
        return None


def to_text(fp: dict | None) -> str | None:
    """JSON text of the fingerprint's keys (None stays None): what status rows and h5 attrs hold."""
    if not fp:
        return None
    return json.dumps({k: fp[k] for k in KEYS if k in fp}, sort_keys=True)


def from_text(value) -> dict | None:
    """The fingerprint recorded as ``to_text`` (a dict is taken as is); None for anything else
    (a status row or h5 written before fingerprints were recorded: unknown)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value:
        return None
    try:
        fp = json.loads(value)
    except ValueError:
        return None
    return fp if isinstance(fp, dict) and all(k in fp for k in KEYS) else None


def same_source(recorded: dict | None, now: dict | None) -> bool | None:
    """True/False when both fingerprints are known (their ``KEYS`` compared, other keys such as
    ``of`` ignored), None when either is unknown."""
    if not recorded or not now:
        return None
    return all(recorded.get(k) == now.get(k) for k in KEYS)
