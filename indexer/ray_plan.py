"""The Ray engine's features plan: every slide given → its :class:`SlideSource`, and which
slides need their features made, decided on the driver before any Ray work starts.

FEATURES_DIR slides are ready (``split_inputs``). For slide files, each slide's features in
FEATURES_DIR are skipped, adopted or made again by the local engine's rule, the one public
planner of the features stage (``threads_search.features.reuse``: ``reuse_features`` — status
done, or an h5 renamed into place before a kill, and made from the file there now; a file
changed since is listed in ``summary.features_redone`` — and ``id_conflict``). The features
settings, lock and sources are the local engine's too (``indexer.core``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from indexer.core import (
    SlideSource,
    add_sources,
    feature_source,
    features_config,
    features_dir,
    features_lock_command,
    split_inputs,
)
from threads_search.paths import display_text
from threads_search.wsi.fingerprint import to_text


class FeaturesPlan:
    """``sources``: slide_id → source of every slide given (as the local engine's inputs);
    ``need_features``: the ids whose features the pipeline makes; ``mpp``: their ``--mpp-csv``
    µm/px (None: from the file); ``fingerprints``: their files', taken before reading them;
    ``config``: the features settings; ``status``: FEATURES_DIR's ``StatusTable`` (None
    without slide files). With slide files it takes the FEATURES_DIR lock into ``locks`` (an
    ``ExitStack`` the caller holds until the run ends); inputs discovery finds unusable (a link
    loop, a folder without slides) are recorded as failed at once."""

    def __init__(self, cfg, index_dir: Path, model, summary, locks) -> None:
        self.sources, files = split_inputs(cfg, model, summary)
        self.need_features: set[str] = set()
        self.mpp: dict[str, float | None] = {}
        self.fingerprints: dict[str, dict | None] = {}
        self.fdir = features_dir(cfg, index_dir)
        self.config = features_config(cfg, model, workers=0)
        self.status = None
        if files:
            self._plan_files(cfg, files, locks, summary, features_lock_command(cfg, index_dir))

    def _plan_files(self, cfg, files: list[Path], locks, summary, command: str) -> None:
        from threads_search.features.extract import check_config, features_lock
        from threads_search.features.reuse import id_conflict, reuse_features
        from threads_search.features.status import StatusTable
        from threads_search.patch_encoders import get_patch_encoder_spec
        from threads_search.wsi import discover_slides, load_mpp_csv, lookup_override

        self.fdir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(features_lock(self.fdir, command))
        check_config(self.fdir, self.config)
        spec = get_patch_encoder_spec(self.config.patch_encoder).to_dict()
        self.config.save(self.fdir, {"encoder_spec": spec})
        self.status = StatusTable(self.fdir)
        chash = self.config.hash()
        overrides = load_mpp_csv(cfg.mpp_csv) if cfg.mpp_csv else {}
        new: dict[str, SlideSource] = {}
        changed = False  # status rows set here (adopted, fingerprint recorded): saved at the end
        for ref in discover_slides(files):
            sid = ref.slide_id
            if ref.problem is not None:  # recorded as the local engine's features stage does
                reason = display_text(": ".join(ref.problem))
                summary.failed[sid] = reason
                self.status.set(
                    sid,
                    path=display_text(ref.path),
                    state="failed",
                    error=reason,
                    n_patches=0,
                    seconds=0.0,
                    config_hash=chash,
                    finished=time.time(),
                )
                continue
            prev = self.status.get(sid)  # a slide that failed before is tried again (as local)
            clash = id_conflict(prev, ref.path)
            if clash:  # another file's slide (as local: its row and h5 stay)
                summary.failed[sid] = clash
                continue
            src = feature_source(self.fdir, sid, ref.path, None)
            use = reuse_features(prev, src.h5, ref.path, chash, retry_failed=True)
            new[sid] = replace(src, source_fingerprint=use.fingerprint)
            self.mpp[sid] = lookup_override(overrides, ref.path, sid)
            self.fingerprints[sid] = use.fingerprint
            if use.action == "compute":
                self.need_features.add(sid)
                if use.note:
                    summary.features_redone.append(sid)
            elif use.action == "adopt":
                self.set_status(sid, "done", "", use.n_patches, 0.0, new)
                changed = True
            elif use.record:  # an older version's row, trusted: its file's fingerprint now
                self.status.update(sid, source_fingerprint=to_text(use.fingerprint))
                changed = True
        if changed:
            self.status.save()
        add_sources(self.sources, new, "the slide files given", summary)

    def set_status(self, sid, state, error, n, seconds, sources=None) -> None:
        """One status row (saved with the others by the pipeline's ``_save_status``)."""
        path = (sources or self.sources)[sid].path
        self.status.rows[sid] = {
            "slide_id": sid,
            "path": display_text(path),
            "state": state,
            "error": error,
            "n_patches": n,
            "seconds": seconds,
            "config_hash": self.config.hash(),
            "finished": time.time(),
            "source_fingerprint": to_text(self.fingerprints.get(sid)),
        }
