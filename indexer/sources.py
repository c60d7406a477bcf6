"""What an index run takes from its inputs: FEATURES_DIRs reconciled with their
``status.parquet`` (``threads_search.features.reconcile``, the rule the trainer follows too:
done rows with their h5, rowless h5 files of the folder's settings adopted, the rest reported
as failed with the reason, including a slide file changed since its features were made), and
the slide files and folders given, for the features stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from threads_search.features.reconcile import FeatureSources, feature_sources
from threads_search.paths import display_text

__all__ = ["FeatureSources", "add_sources", "feature_sources", "split_inputs"]


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
