"""Which slides of a FEATURES_DIR have usable features: its h5 files reconciled with
``status.parquet``. The one rule for every reader of a FEATURES_DIR (``index`` through
``indexer.sources``, ``train`` through ``trainer.data``), so they agree on the slides.

Every slide of the folder ends in exactly one place, never dropped silently:

- status ``done`` and its ``h5/<id>.h5`` present: a source, unless its slide file (the row's
  ``path``) is there now and differs from the file the features were made from (the row's
  ``source_fingerprint``): then a problem, "changed since its features were made". A row
  without a fingerprint (written before they were recorded) or whose file is not reachable
  from here (features copied to another machine) is trusted, as before;
- an h5 with no status row (a run killed between writing the h5 and its row, or rows lost by an
  older version's concurrent runs) whose ``config_hash`` is the folder's: *adopted* as a source
  and listed in ``adopted``;
- anything else is a *problem* (slide id → reason): a ``failed`` row (the features stage's
  reason; also listed in ``failed``), ``done`` without its h5, an h5 without a row made with
  other settings or unreadable, a row whose slide id could name a file outside ``h5/``.

A folder without ``status.parquet`` (h5 files put there by hand) gives every h5.
Ids come from the h5 file names under ``h5/`` (``threads_search.paths.slide_id_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from threads_search.features.config import load_config
from threads_search.features.status import STATUS_NAME
from threads_search.paths import (
    UnsafeSlideIdError,
    check_slide_id,
    display_text,
    slide_file,
    slide_id_of,
)
from threads_search.wsi.fingerprint import from_text, same_source, source_fingerprint


@dataclass
class FeatureSources:
    """``sources``: slide_id → {h5, path, thumbnail, source_fingerprint (the slide file's now, or
    None)}; ``adopted``: ids taken without a status row; ``problems``: slide_id → reason, for
    every slide that has no usable features; ``failed``: the ids of ``problems`` whose status
    row says the features stage failed (the others are unusable files or rows)."""

    sources: dict[str, dict] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def unusable(self) -> dict[str, str]:
        """``problems`` other than ``failed`` rows: files or rows that cannot be used."""
        failed = set(self.failed)
        return {s: why for s, why in self.problems.items() if s not in failed}


def h5_files(fdir: Path) -> dict[str, Path]:
    """slide_id → ``h5/<id>.h5`` for every complete h5 under ``fdir/h5`` (temporaries and names
    that are not valid ids left out)."""
    root = Path(fdir) / "h5"
    out = {}
    for p in sorted(root.rglob("*.h5")) if root.is_dir() else []:
        sid = slide_id_of(root, p, ".h5")
        if sid is not None:
            out[sid] = p
    return out


def _config_hash_of(h5: Path) -> str | None:
    """The ``config_hash`` attribute an h5 was written with (None if it has none). Raises
    ``OSError`` for an unreadable file."""
    import h5py

    with h5py.File(h5, "r") as f:
        if "coords" not in f:
            raise OSError("no 'coords' dataset")
        v = f["coords"].attrs.get("config_hash")
    return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))


def _source(fdir: Path, sid: str, h5: Path, path: str, fp: dict | None = None) -> dict:
    thumb = slide_file(fdir / "thumbnails", sid, ".jpg")
    thumb = thumb if thumb.exists() else None
    return {"h5": h5, "path": path, "thumbnail": thumb, "source_fingerprint": fp}


def feature_sources(fdir: str | Path, only: set[str] | None = None) -> FeatureSources:
    """Reconcile ``fdir`` (rules in the module docstring); ``only`` limits it to those ids.
    Reads the first and last MiB of each done slide's file that is reachable (its fingerprint)."""
    fdir = Path(fdir)
    out = FeatureSources()
    h5s = h5_files(fdir)
    st_path = fdir / STATUS_NAME
    if not st_path.exists():
        for sid, h5 in h5s.items():
            if only is None or sid in only:
                out.sources[sid] = _source(fdir, sid, h5, "")
        return out
    st = pd.read_parquet(st_path)
    rows = {str(r["slide_id"]): r for r in st.to_dict("records")}
    chash = (load_config(fdir) or {}).get("config_hash")
    for sid in sorted(set(rows) | set(h5s)):
        if only is not None and sid not in only:
            continue
        row, h5 = rows.get(sid), h5s.get(sid)
        state = row["state"] if row is not None else None
        try:
            check_slide_id(sid)
        except UnsafeSlideIdError as e:  # a row no writer of ours makes: never read its file
            out.problems[sid] = f"features: a row of status.parquet of {fdir} is unusable: {e}"
            continue
        if state == "done" and h5 is not None:
            _done(out, fdir, sid, h5, row)
        elif state == "done":
            out.problems[sid] = (
                f"features: status.parquet of {fdir} says done but h5/{sid}.h5 is missing "
                "(run the features stage again)"
            )
        elif state == "failed":
            out.problems[sid] = f"features: {row['error']}"
            out.failed.append(sid)
        elif h5 is not None:
            _adopt_or_report(out, fdir, sid, h5, chash)
        else:
            out.problems[sid] = f"features: status.parquet of {fdir} has state {state!r}"
    return out


def _done(out: FeatureSources, fdir: Path, sid: str, h5: Path, row: dict) -> None:
    path = row.get("path")
    path = path if isinstance(path, str) else ""
    now = source_fingerprint(path) if path else None
    if same_source(from_text(row.get("source_fingerprint")), now) is False:
        out.problems[sid] = (
            f"features: {path} changed since its features were made (status.parquet of {fdir} "
            "records another file at this path); not used: run the features stage on it again"
        )
        return
    out.sources[sid] = _source(fdir, sid, h5, path, now)


def _adopt_or_report(out: FeatureSources, fdir: Path, sid: str, h5: Path, chash) -> None:
    try:
        have = _config_hash_of(h5)
    except OSError as e:
        out.problems[sid] = (
            f"features: {display_text(h5)} has no status row and is unreadable ({e})"
        )
        return
    if have is not None and have == chash:
        out.sources[sid] = _source(fdir, sid, h5, "")
        out.adopted.append(sid)
        return
    made = f"config_hash {have}" if have else "no config_hash"
    out.problems[sid] = (
        f"features: {display_text(h5)} has no status row and was not made with this folder's "
        f"settings ({made}, folder {chash}); not used: run the features stage again"
    )
