"""What an index run takes from its inputs: one :class:`SlideSource` per slide.

FEATURES_DIRs are reconciled with their ``status.parquet`` (``threads_search.features.reconcile``,
the rule the trainer follows too: done rows with their h5, rowless h5 files of the folder's
settings adopted, the rest reported as failed with the reason, including a slide file changed
since its features were made); slide files and folders are left for the features stage of the
engine, which gives their sources once their features are (to be) made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from threads_search.errors import InputError
from threads_search.features.reconcile import FeatureSources, feature_sources
from threads_search.paths import display_text

__all__ = ["FeatureSources", "SlideSource", "add_sources", "feature_sources", "split_inputs"]


@dataclass(frozen=True)
class SlideSource:
    """What one slide's embedding is made from.

    ``h5``: its feature file (``FEATURES_DIR/h5/<slide_id>.h5``; the Ray engine names it before
    the file is made); ``path``: the slide file (``""`` when unknown: features given without
    their slides); ``thumbnail``: its JPEG (None, or a path that may not exist yet: checked when
    the slide is embedded); ``source_fingerprint``: the slide file's fingerprint as the features
    stage or the reconciliation took it (None: taken when needed); ``origin``: the input that
    gave it (for the "given twice" message)."""

    slide_id: str
    h5: Path
    path: str = ""
    thumbnail: Path | None = None
    source_fingerprint: dict | None = None
    origin: str = ""

    @classmethod
    def from_reconciled(cls, slide_id: str, found: dict) -> SlideSource:
        """The source of a ``FeatureSources.sources`` entry (h5, path, thumbnail, fingerprint)."""
        thumb = found.get("thumbnail")
        return cls(
            slide_id,
            Path(found["h5"]),
            str(found.get("path") or ""),
            Path(thumb) if thumb else None,
            found.get("source_fingerprint"),
        )


def _is_features_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").exists() and (p / "h5").is_dir()


def _check_encoder(fdir: Path, model) -> None:
    try:
        cfg = json.loads((fdir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(
            f"{fdir / 'config.json'} cannot be read ({e}): give a FEATURES_DIR written by "
            "`threads-search features`"
        ) from None
    have, want = cfg.get("patch_encoder"), model.patch_encoder["name"]
    if have != want:
        raise InputError(
            f"{fdir} holds {have!r} features but the model expects patch encoder {want!r}: "
            f"give a FEATURES_DIR made with {want!r}, or its slide files"
        )


def split_inputs(cfg, model, summary) -> tuple[dict[str, SlideSource], list[Path]]:
    """The run's inputs: (slide_id → source of every usable slide of the FEATURES_DIRs given,
    checked against the model's patch encoder; the slide files and folders given). In
    ``summary`` (an ``IndexSummary``), the FEATURES_DIRs' problems and ids given twice are
    recorded in ``summary.failed`` and adopted h5 files in ``summary.adopted``."""
    sources: dict[str, SlideSource] = {}
    files: list[Path] = []
    for item in cfg.inputs:
        p = Path(item)
        if _is_features_dir(p):
            _check_encoder(p, model)
            found = feature_sources(p)
            summary.failed.update(found.problems)
            summary.adopted.extend(found.adopted)
            new = {sid: SlideSource.from_reconciled(sid, d) for sid, d in found.sources.items()}
            add_sources(sources, new, str(p), summary)
        else:
            files.append(p)
    return sources, files


def add_sources(
    sources: dict[str, SlideSource], new: dict[str, SlideSource], origin: str, summary
) -> None:
    """Add ``new`` sources (from ``origin``) to ``sources``; an id already there keeps its first
    source and the second is reported as failed."""
    for sid, src in new.items():
        if sid in sources:
            first = sources[sid].origin or "?"
            summary.failed[sid] = (
                f"slide id {sid!r} is given twice (by {display_text(first)} and by "
                f"{display_text(origin)}); the first is indexed: index such inputs separately"
            )
            continue
        sources[sid] = replace(src, origin=origin)
