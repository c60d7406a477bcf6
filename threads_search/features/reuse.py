"""Whether a slide's features already in a FEATURES_DIR are reused, or made (again).

The one rule of the features stage (``features.extract``) and of the Ray engine's plan
(``indexer.ray_plan``): ``reuse_features`` (status row, h5 and the slide file's fingerprint,
``threads_search.wsi.fingerprint``) and ``id_conflict`` (a row that belongs to another file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from threads_search.features.h5io import FeatureFileError, read_features
from threads_search.paths import display_text
from threads_search.wsi.fingerprint import from_text, same_source, source_fingerprint

CHANGED = "changed since its features were made"


def id_conflict(prev: dict | None, path) -> str:
    """The reason ``path`` cannot take the status row ``prev`` of its slide id (a row made for
    another file that still exists: e.g. ``features A --out F`` then ``features B --out F`` with
    ``A/x.svs`` and ``B/x.svs``), else ``""``. A row whose file is gone (a moved archive) or
    is the same file by another path is this slide's."""
    old = str((prev or {}).get("path") or "")
    if not old or old == display_text(path) or not os.path.exists(old):
        return ""
    try:
        if os.path.samefile(old, path):
            return ""
    except OSError:
        pass
    sid = prev.get("slide_id")
    return (
        f"id-conflict: this FEATURES_DIR already holds slide id {sid!r} for {old}, another file; "
        "give all the folders in one run (ids then differ, e.g. A/x.svs and B/x.svs) or use "
        "another --out"
    )


def _existing_h5(path: Path, config_hash: str) -> tuple[int, dict | None] | None:
    """(patches, recorded ``source_fingerprint`` or None) of a readable h5 at ``path`` made with
    ``config_hash``; None when there is none."""
    if not path.exists():
        return None
    try:
        ff = read_features(path)
    except FeatureFileError:
        return None
    if ff.attrs.get("config_hash") != config_hash:
        return None
    return len(ff.coords), from_text(ff.attrs.get("source_fingerprint"))


def adopt_existing(path: Path, config_hash: str) -> int | None:
    """An h5 renamed into place before its status row was written (killed in between): its
    number of patches, or None. (``reuse_features`` also checks the slide file.)"""
    found = _existing_h5(path, config_hash)
    return None if found is None else found[0]


@dataclass
class Reuse:
    """What a run does with one slide (``reuse_features``): ``action`` "skip" (its status row
    stands), "adopt" (an h5 without a usable row is taken: write its row) or "compute";
    ``n_patches`` of the features kept; ``fingerprint``: the slide file's, taken now (None: not
    readable); ``note``: why features made before are not reused; ``record``: the row stands
    but has no fingerprint (an older version's): store ``fingerprint`` in it."""

    action: str
    n_patches: int = 0
    fingerprint: dict | None = None
    note: str = ""
    record: bool = False


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def reuse_features(
    prev: dict | None, h5: Path, path, config_hash: str, retry_failed: bool, readable: bool = True
) -> Reuse:
    """The skip rule of the features stage and of the Ray engine's plan, for the slide file at
    ``path`` whose status row is ``prev`` (or None) and whose h5 is ``h5``:

    - a ``done`` row of this config with its h5: skipped, unless the file's fingerprint now
      differs from the row's: recomputed (note "changed since its features were made"). A row
      without a fingerprint (written before they were recorded) is trusted: an older run could
      not record one, and redoing a whole archive on upgrade would be silent and costly; it
      gets the file's fingerprint now (``record``), so a later replacement is caught;
    - a ``failed`` row of this config: skipped unless ``retry_failed``, or the file changed
      since it failed (tried again);
    - an h5 of this config without such a row (a run killed before writing the row): adopted,
      unless its ``source_fingerprint`` attribute differs from the file's (recomputed);
    - anything else: computed.

    ``readable`` False (discovery found a problem): the file is neither read nor adopted."""
    fp = source_fingerprint(path) if readable else None
    if prev and prev.get("config_hash") == config_hash:
        recorded = from_text(prev.get("source_fingerprint"))
        changed = same_source(recorded, fp) is False
        if prev.get("state") == "done" and h5.exists():
            if changed:
                return Reuse("compute", fingerprint=fp, note=CHANGED)
            record = recorded is None and fp is not None
            return Reuse("skip", _int(prev.get("n_patches")), fp, record=record)
        if prev.get("state") == "failed" and not retry_failed:
            if changed:
                return Reuse("compute", fingerprint=fp, note="changed since it failed: tried again")
            return Reuse("skip", 0, fp)
    found = _existing_h5(h5, config_hash) if readable else None
    if found is not None:
        if same_source(found[1], fp) is False:
            return Reuse("compute", fingerprint=fp, note=CHANGED)
        return Reuse("adopt", found[0], fp)
    return Reuse("compute", fingerprint=fp)
