"""What an index run takes from a FEATURES_DIR: its h5 files reconciled with ``status.parquet``.

Every slide of the folder ends in exactly one place, never dropped silently:

- status ``done`` and its ``h5/<id>.h5`` present: a source;
- an h5 with no status row (a run killed between writing the h5 and its row, or rows lost by an
  older version's concurrent runs) whose ``config_hash`` is the folder's: *adopted* as a source
  and listed in ``adopted``;
- anything else is a *problem* (slide id → reason, reported as failed): a ``failed`` row (the
  features stage's reason), ``done`` without its h5, an h5 without a row made with other
  settings or unreadable.

A folder without ``status.parquet`` (h5 files put there by hand) gives every h5, as before.
Ids come from the h5 file names under ``h5/`` (``threads_search.paths.slide_id_of``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from threads_search.paths import display_text, slide_file, slide_id_of


@dataclass
class FeatureSources:
    """``sources``: slide_id → {h5, path, thumbnail}; ``adopted``: ids taken without a status
    row; ``problems``: slide_id → reason."""

    sources: dict[str, dict] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


def _h5_files(fdir: Path) -> dict[str, Path]:
    root = fdir / "h5"
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


def _source(fdir: Path, sid: str, h5: Path, path: str) -> dict:
    thumb = slide_file(fdir / "thumbnails", sid, ".jpg")
    return {"h5": h5, "path": path, "thumbnail": thumb if thumb.exists() else None}


def feature_sources(fdir: Path, only: set[str] | None = None) -> FeatureSources:
    """Reconcile ``fdir`` (rules in the module docstring); ``only`` limits it to those ids."""
    fdir = Path(fdir)
    out = FeatureSources()
    h5s = _h5_files(fdir)
    st_path = fdir / "status.parquet"
    if not st_path.exists():
        for sid, h5 in h5s.items():
            if only is None or sid in only:
                out.sources[sid] = _source(fdir, sid, h5, "")
        return out
    st = pd.read_parquet(st_path)
    rows = {str(r["slide_id"]): r for r in st.to_dict("records")}
    chash = (json.loads((fdir / "config.json").read_text()) or {}).get("config_hash")
    for sid in sorted(set(rows) | set(h5s)):
        if only is not None and sid not in only:
            continue
        row, h5 = rows.get(sid), h5s.get(sid)
        state = row["state"] if row is not None else None
        if state == "done" and h5 is not None:
            out.sources[sid] = _source(fdir, sid, h5, str(row["path"] or ""))
        elif state == "done":
            out.problems[sid] = (
                f"features: status.parquet of {fdir} says done but h5/{sid}.h5 is missing "
                "(run the features stage again)"
            )
        elif state == "failed":
            out.problems[sid] = f"features: {row['error']}"
        elif h5 is not None:
            _adopt_or_report(out, fdir, sid, h5, chash)
        else:
            out.problems[sid] = f"features: status.parquet of {fdir} has state {state!r}"
    return out


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
        f"settings ({made}, folder {chash}); not indexed: run the features stage again"
    )


def _is_features_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").exists() and (p / "h5").is_dir()


def _check_encoder(fdir: Path, model) -> None:
    cfg = json.loads((fdir / "config.json").read_text())
    have, want = cfg.get("patch_encoder"), model.patch_encoder["name"]
    if have != want:
        raise ValueError(
            f"{fdir} holds {have!r} features but the model expects patch encoder {want!r}"
        )


def split_inputs(cfg, model, summary):
    """The run's inputs: (slide_id → source of every usable slide of the FEATURES_DIRs given,
    checked against the model's patch encoder; the slide files and folders given). In
    ``summary`` (an ``IndexSummary``), the FEATURES_DIRs' problems and ids given twice are
    recorded in ``summary.failed`` and adopted h5 files in ``summary.adopted``."""
    sources: dict[str, dict] = {}
    files: list[Path] = []
    for item in cfg.inputs:
        p = Path(item)
        if _is_features_dir(p):
            _check_encoder(p, model)
            found = feature_sources(p)
            summary.failed.update(found.problems)
            summary.adopted.extend(found.adopted)
            add_sources(sources, found.sources, str(p), summary)
        else:
            files.append(p)
    return sources, files


def add_sources(sources: dict, new: dict, origin: str, summary) -> None:
    """Add ``new`` sources (from ``origin``) to ``sources``; an id already there keeps its first
    source and the second is reported as failed."""
    for sid, src in new.items():
        if sid in sources:
            first = sources[sid].get("origin", "?")
            summary.failed[sid] = (
                f"slide id {sid!r} is given twice (by {display_text(first)} and by "
                f"{display_text(origin)}); the first is indexed: index such inputs separately"
            )
            continue
        sources[sid] = {**src, "origin": origin}
