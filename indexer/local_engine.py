"""``threads-search index`` (``--engine local``, the default): every step in this process.

One slide end to end: ``split_inputs`` gives its source (a FEATURES_DIR slide), or the
features stage makes its h5 (``threads_search.features.extract_features``: skip, adopt or
compute by ``features.reuse.reuse_features``; patches read by ``--workers`` processes) and
:func:`_features_stage` turns it into a source; ``select_work`` makes it a job unless its work
record is current; ``slide_step.embed_job`` embeds it and writes the record; ``commit`` puts
every record into a new generation. A slide that fails at any step is recorded in
``summary.failed`` with its reason and the others go on.
"""

from __future__ import annotations

import time
from pathlib import Path

from indexer.core import (
    IndexSession,
    IndexSummary,
    SlideSource,
    add_sources,
    commit,
    feature_source,
    features_config,
    features_dir,
    features_lock_command,
    index_session,
    select_work,
    split_inputs,
)
from indexer.slide_step import embed_job
from threads_search.paths import display_text


def run_local(cfg, progress=None) -> IndexSummary:
    """``run_index`` for ``cfg.engine == "local"``: same arguments, same result."""
    t0 = time.perf_counter()
    device = cfg.device if cfg.device != "auto" else "cpu"
    with index_session(cfg, device=device) as sess:
        summary = sess.summary
        sources, files = split_inputs(cfg, sess.model, summary)
        if files:
            made = _features_stage(sess, files, progress)
            add_sources(sources, made, "the slide files given", summary)
        jobs = select_work(sess, sources)
        if progress:
            progress.start_embedding(len(jobs))
        for job in jobs:
            t1 = time.perf_counter()
            try:
                rec = embed_job(sess.model, job)
                summary.indexed.append(job.slide_id)
                summary.n_patches += len(rec.coords)
            except Exception as e:  # noqa: BLE001 - one bad slide never kills the batch
                summary.failed[job.slide_id] = f"{type(e).__name__}: {e}"
            summary.embed_seconds += time.perf_counter() - t1
            if progress:
                progress.embedded(job.slide_id)
        commit(sess)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _features_stage(sess: IndexSession, files: list[Path], progress) -> dict[str, SlideSource]:
    """The features stage for the slide files given (holding the FEATURES_DIR lock); returns
    slide_id → source of each slide with features. In the summary: the failed ones with their
    reason, and those whose features were made again because their file changed since."""
    from threads_search.features import extract_features

    cfg, summary = sess.cfg, sess.summary
    fdir = features_dir(cfg, sess.index_dir)
    # An index run finishes the job: slides that failed before (a killed run, a file fixed
    # since) are tried again, and reported again if they still fail.
    outcomes = extract_features(
        files,
        fdir,
        features_config(cfg, sess.model, workers=cfg.workers),
        mpp_csv=cfg.mpp_csv,
        progress=progress,
        retry_failed=True,
        lock_command=features_lock_command(cfg, sess.index_dir),
    )
    summary.features_redone.extend(o.slide_id for o in outcomes if o.note)
    made = {}
    for o in outcomes:
        src = feature_source(fdir, o.slide_id, o.path, o.fingerprint)
        if o.state == "failed":
            summary.failed[o.slide_id] = o.error
        elif not src.h5.exists():
            why = f"features: {display_text(src.h5)} is missing after the features stage"
            summary.failed[o.slide_id] = why
        else:
            made[o.slide_id] = src
    return made
