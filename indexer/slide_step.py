"""The per-slide step of both engines: a slide's features → its embedding and attention → its
work record (``indexer.records``).

:class:`SlideJob` is one slide to embed (what ``core.select_work`` returns); :func:`embed_job`
runs it: the local engine in its own process, the Ray engine in a worker actor
(``ray_tasks.SlideWorker``). The feature h5 is read once; a failure raises (the engine records
it as the slide's reason) and leaves no record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.records import SlideRecord, write_record
from indexer.sources import SlideSource
from threads_search.features.h5io import FeatureFile, read_features
from threads_search.linalg import l2_normalize
from threads_search.models.threads_model import check_patch_encoder
from threads_search.paths import display_text


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed. ``source``: what it is made from; ``fingerprint``: the key of its
    record, the slide file's fingerprint (its h5's when the file is not there) with ``of``
    naming that file (``core.source_fingerprint``); ``model_hash``: the installed model's
    (``INDEX_DIR/models/<hash>``); ``index_dir``: where its record is written. Picklable (Ray)."""

    source: SlideSource
    fingerprint: dict
    model_hash: str
    index_dir: Path
    regions: bool = True  # keep the patch vectors for the region index

    @property
    def slide_id(self) -> str:
        return self.source.slide_id


def slide_record(job: SlideJob, ff: FeatureFile, embedding, attention) -> SlideRecord:
    """The work record of ``job``: ``embedding`` ``[E]``, ``attention`` ``[H, N]`` (None: an
    encoder without attention, stored as ``[0, N]``), the features' coords ``[N, 2]`` level-0
    px, and the slides-table row (µm/px, level-0 size in px, tissue area in mm²)."""
    src, a = job.source, ff.attrs
    row = {
        "slide_id": job.slide_id,
        "path": display_text(src.path),
        "mpp": a.get("level0_mpp"),
        "width": a.get("level0_width"),
        "height": a.get("level0_height"),
        "n_patches": len(ff.coords),
        "tissue_area_mm2": a.get("tissue_area_mm2"),
    }
    if attention is None:
        attention = np.zeros((0, len(ff.coords)), np.float32)
    thumb = src.thumbnail
    size_px = a.get("patch_size_level0")
    um = a.get("patch_size", 0) * a.get("target_mpp", 0) if "target_mpp" in a else None
    meta = {
        "fingerprint": job.fingerprint,
        "model_hash": job.model_hash,
        "row": row,
        "thumbnail": str(thumb) if thumb is not None and Path(thumb).exists() else None,
        "patch": {"size_px": size_px, "size_um": um},
        "has_patches": job.regions,
    }
    patches = l2_normalize(ff.features).astype(np.float16) if job.regions else None
    return SlideRecord(job.slide_id, embedding, ff.coords, attention, meta, patches)


def embed_job(model, job: SlideJob) -> SlideRecord:
    """Read the slide's feature h5 (once), embed it with ``model`` (a loaded bundle) and write
    its work record atomically; returns the record. Raises ``FeatureFileError`` (unreadable h5),
    ``InputError`` (another patch encoder's features) or the model's error (e.g. NaN features)."""
    h5 = job.source.h5
    ff = read_features(h5)
    check_patch_encoder(ff, model.patch_encoder, Path(h5))
    embedding, attention = model.embed_slide(ff.features, return_attention=True)
    rec = slide_record(job, ff, embedding, attention)
    write_record(job.index_dir, rec)
    return rec
