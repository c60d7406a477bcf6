"""The remote side of ``threads-search index --engine ray``: what runs on Ray workers.

- ``plan_task`` (CPU): open a slide, resolve µm/px, detect tissue, lay the patch grid, write the
  thumbnail and contours, fit the slide's stain statistics when asked
  (``features.stain.fit_plan``). Returns a ``Planned`` (coords ``[N, 2]`` int64 level-0 px, the
  h5 attributes, which record the stain fit).
- ``read_task`` (CPU, ``cpus_per_reader``): read one chunk of patches, uint8
  ``[B, ps, ps, 3]``, stain-normalised with the slide's fit; for CPU-per-patch encoders
  (hed-texture) it also encodes them, float32 ``[B, D]``, exactly as the local engine's reader
  processes do (``features.stain.reader_transform``).
- ``SlideWorker`` (actor, ``num_gpus=gpus_per_worker``): holds the patch encoder and the model
  bundle; ``encode`` turns patch chunks into features, ``finish`` writes the slide's feature h5
  and then runs the per-slide step (``indexer.slide_step.embed_job``: slide embedding +
  attention → work record), ``embed`` runs the latter on an h5 that exists.

Workers write per-slide files straight into FEATURES_DIR and INDEX_DIR/work (a file system
shared by all nodes); the driver alone writes ``status.parquet`` and commits the index.
Exceptions are mapped to two picklable kinds: ``SlideFailed`` (deterministic: not retried) and
``TransientError`` (I/O: retried by Ray, bounded).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.slide_step import SlideJob, embed_job

READ_BYTES = 64 * 2**20  # raw-patch chunk size handed from a reader to an encoder actor
FEATURE_ROWS = 256  # patches per reader task when the reader also encodes


class SlideFailed(Exception):
    """A slide failed for a reason retrying will not fix; the message is the reason."""


class TransientError(Exception):
    """An I/O failure that may succeed on another try (network file system, full disk)."""


@dataclass(frozen=True)
class Planned:
    """A slide's patch grid (``plan_task``): ``coords`` int64 ``[N, 2]`` level-0 px, and the
    attributes its feature h5 will hold (``features.extract.h5_attrs``)."""

    coords: np.ndarray
    attrs: dict


@dataclass(frozen=True)
class SlideDone:
    """What a worker returns for one slide: ``features``: patches of the feature h5 it wrote
    (None: the h5 existed); ``embedded``: patches of its work record (0: none written);
    ``error``: why the embedding failed (``""``: it did not; the features stage succeeded)."""

    features: int | None
    embedded: int
    error: str = ""


def _guard(fn):
    """Re-raise a worker's exception as ``SlideFailed``/``TransientError`` carrying the same
    reason text as the local engine (``SlideError`` → "reason: detail")."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from threads_search.wsi import SlideError

        try:
            return fn(*args, **kwargs)
        except SlideError as e:
            raise SlideFailed(f"{e.reason}: {e.detail}") from None
        except OSError as e:
            raise TransientError(f"error: {type(e).__name__}: {e}") from None
        except (SlideFailed, TransientError):
            raise
        except Exception as e:  # noqa: BLE001 - every other failure is the slide's
            raise SlideFailed(f"error: {type(e).__name__}: {e}") from None

    return run


def _single_thread() -> None:
    """One task = one core: no BLAS/torch thread pools fighting the other tasks."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


@functools.lru_cache(maxsize=4)
def _encoder(name: str, checkpoint: str | None, device: str):
    from threads_search.patch_encoders import create_patch_encoder

    return create_patch_encoder(name, checkpoint=checkpoint, device=device)


def chunk_rows(config, cpu_per_patch: bool) -> int:
    """Patches per reader task: ``FEATURE_ROWS`` when readers encode, else as many raw
    ``patch_size``² RGB patches as fit ``READ_BYTES`` (a multiple of the batch size)."""
    if cpu_per_patch:
        return FEATURE_ROWS
    ps = config.segment.grid.patch_size
    rows = max(1, READ_BYTES // (ps * ps * 3))
    return max(config.batch_size, rows // config.batch_size * config.batch_size)


@_guard
def plan_task(path: str, slide_id: str, mpp: float | None, config, features_dir: str) -> Planned:
    """Tissue + grid for one slide; writes ``thumbnails/`` and ``contours/`` of FEATURES_DIR.
    Raises ``SlideFailed`` (no tissue, …)."""
    from threads_search.features.extract import contours_path, h5_attrs, thumbnail_path
    from threads_search.features.stain import fit_plan
    from threads_search.wsi.plan import plan_slide
    from threads_search.wsi.tissue import write_geojson, write_thumbnail_jpeg

    _single_thread()
    plan = plan_slide(path, slide_id, mpp=mpp, config=config.segment).require_patches()
    out = Path(features_dir)
    write_thumbnail_jpeg(plan.thumb, plan.tissue, thumbnail_path(out, slide_id))
    write_geojson(plan.tissue, slide_id, contours_path(out, slide_id))
    stain = fit_plan(plan.path, plan.coords, plan.mpp, config)
    return Planned(plan.coords, h5_attrs(plan, config, stain=stain))


@_guard
def read_task(
    path: str, mpp: float, coords: np.ndarray, config, encode: bool, attrs: dict | None = None
) -> np.ndarray:
    """Patches at ``coords`` (level-0 px, top-left) read at the config's µm/px: uint8
    ``[B, ps, ps, 3]``, or their features float32 ``[B, D]`` when ``encode`` (CPU encoders);
    stain-normalised with the slide's fit recorded in ``attrs`` (its ``Planned.attrs``)."""
    from threads_search.features.stain import SlideStain, reader_transform
    from threads_search.wsi.reader import PatchDataset

    _single_thread()
    grid = config.segment.grid
    encode_one = None
    if encode:
        encode_one = _encoder(config.patch_encoder, config.checkpoint, "cpu").encode_one
    stain = SlideStain.from_attrs(attrs or {}, config.stain)
    transform = reader_transform(stain, encode_one)
    ds = PatchDataset(path, coords, grid.patch_size, grid.target_mpp, mpp, transform)
    items = [ds[i][0].numpy() for i in range(len(ds))]
    if encode:
        return np.stack(items).astype(np.float32, copy=False)
    return np.stack(items)


class SlideWorker:
    """Ray actor holding the model bundle and (for torch encoders) the patch encoder; on the
    GPU Ray assigned to it, else on the CPU. Restarted by Ray after a crash (bounded)."""

    def __init__(self, model_dir: str, config, device: str, load_patch_encoder: bool) -> None:
        import ray

        from threads_search.models.bundle import load_model

        if device == "auto":
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.device = device
        self.config = config
        self.model = load_model(model_dir, device=device)
        self.encoder = None
        if load_patch_encoder:
            self.encoder = _encoder(config.patch_encoder, config.checkpoint, device)

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        """Where this actor runs: ``pid``, Ray ``node`` id, torch ``device``."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "node": node, "device": self.device}

    @_guard
    def encode(self, patches: np.ndarray) -> np.ndarray:
        """uint8 ``[B, ps, ps, 3]`` → float32 ``[B, D]``, in ``batch_size`` batches."""
        import torch

        bs = self.config.batch_size
        parts = [
            self.encoder.encode(torch.from_numpy(np.ascontiguousarray(patches[i : i + bs])))
            for i in range(0, len(patches), bs)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @_guard
    def finish(self, job: SlideJob, coords: np.ndarray, attrs: dict, *chunks) -> SlideDone:
        """Write the slide's feature h5 from its feature ``chunks`` (float32 ``[B, D]`` each, in
        ``coords`` order; ``coords`` ``[N, 2]`` level-0 px; ``attrs`` of the h5), then its work
        record. A failed embedding keeps the h5 (the features stage succeeded), as in the local
        engine."""
        from threads_search.features.h5io import write_features

        feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        if len(feats) != len(coords):
            raise RuntimeError(f"{job.source.path}: read {len(feats)} of {len(coords)} patches")
        if self.config.dtype == "float16":
            feats = feats.astype(np.float16)
        write_features(job.source.h5, feats, coords, attrs)
        n, error = self._record(job)
        return SlideDone(len(feats), n, error)

    @_guard
    def embed(self, job: SlideJob) -> SlideDone:
        """Work record of a slide whose feature h5 already exists."""
        n, error = self._record(job)
        if error:
            raise SlideFailed(error)
        return SlideDone(None, n)

    def _record(self, job: SlideJob) -> tuple[int, str]:
        """(patches embedded, ``""``) or (0, the reason, worded as the local engine words it).
        I/O errors propagate (retried as ``TransientError``)."""
        from threads_search.features.h5io import FeatureFileError

        try:
            rec = embed_job(self.model, job)
        except OSError:
            raise
        except FeatureFileError as e:
            if isinstance(e.__cause__, OSError):  # h5 unreadable now: maybe a file system hiccup
                raise TransientError(f"{type(e).__name__}: {e}") from None
            return 0, f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - reported like the local engine's embed step
            return 0, f"{type(e).__name__}: {e}"
        return len(rec.coords), ""
