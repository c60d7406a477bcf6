"""The features stage: plan (tissue, patch grid), encode and write slides into a FEATURES_DIR
(DESIGN.md layout).

One bad slide is recorded as failed with its reason and the others complete; a re-run skips
slides already done with the same config (``retry_failed`` redoes failures) unless the slide
file was replaced since (``reuse_features``: its fingerprint, recorded in the status row and
the h5, differs); every file appears atomically (``threads_search.atomic``; the temporaries of
a killed run are removed by the next one), so a run killed at any moment leaves nothing a
re-run would trust wrongly. One writer at a time: a run holds ``FEATURES_DIR/.lock``
(``features_lock``) from start to end, and a second one is refused naming the holder. Every
per-slide file is named through ``threads_search.paths.slide_file`` (never outside
FEATURES_DIR); paths and messages are stored as valid UTF-8 (``display_text``), so a file name
that is not UTF-8 is one more slide.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.atomic import remove_orphans
from threads_search.errors import ConfigError
from threads_search.features.config import FeaturesConfig, FeaturesConfigError, load_config
from threads_search.features.h5io import write_features
from threads_search.features.reuse import (  # noqa: F401 - public here too (ray engine)
    CHANGED,
    Reuse,
    adopt_existing,
    id_conflict,
    reuse_features,
)
from threads_search.features.stain import SlideStain, fit_plan, reader_transform, reference
from threads_search.features.stain_views import VIEWS_DATASET, AllLooks, view_transforms
from threads_search.features.status import StatusTable
from threads_search.locking import DirLock, WriterLockedError
from threads_search.paths import display_text, slide_file
from threads_search.wsi import SlideError, discover_slides, load_mpp_csv, lookup_override
from threads_search.wsi.fingerprint import to_text
from threads_search.wsi.plan import SlidePlan, plan_slide
from threads_search.wsi.reader import patch_loader
from threads_search.wsi.stain_norm import StainConfig
from threads_search.wsi.tissue import write_geojson, write_thumbnail_jpeg

STAGE_TISSUE = "tissue"  # stages reported by ``encode_slide_file(progress=...)``
STAGE_PATCHES = "patches"


@dataclass
class SlideOutcome:
    slide_id: str
    path: str
    state: str  # done | skipped | failed
    error: str = ""
    n_patches: int = 0
    seconds: float = 0.0
    # why a slide done before was redone ("changed since its features were made"), and/or why
    # its stain was not normalised ("stain not normalised (...)")
    note: str = ""
    fingerprint: dict | None = None  # of the slide file its features were made from


def h5_path(out_dir: Path, slide_id: str) -> Path:
    """``FEATURES_DIR/h5/<slide_id>.h5`` (``UnsafeSlideIdError`` for an unsafe id)."""
    return slide_file(Path(out_dir) / "h5", slide_id, ".h5")


def thumbnail_path(out_dir: Path, slide_id: str) -> Path:
    """``FEATURES_DIR/thumbnails/<slide_id>.jpg``."""
    return slide_file(Path(out_dir) / "thumbnails", slide_id, ".jpg")


def contours_path(out_dir: Path, slide_id: str) -> Path:
    """``FEATURES_DIR/contours/<slide_id>.geojson``."""
    return slide_file(Path(out_dir) / "contours", slide_id, ".geojson")


def features_lock(out_dir: str | Path, command: str = "") -> DirLock:
    """The writer lock of a FEATURES_DIR (``FEATURES_DIR/.lock``), held by the features command,
    the index's features stage and the Ray engine's plan for their whole run; a second writer
    gets ``WriterLockedError`` (also known as ``IndexLockedError``) naming the holder."""
    return DirLock(out_dir, command or f"threads-search features → {out_dir}", WriterLockedError)


def check_config(out_dir: Path, config: FeaturesConfig) -> None:
    """Refuse to mix features made with different settings in one folder
    (``FeaturesConfigError`` listing the settings that differ). The folder's ``config.json``
    may have been written by an earlier version (``FeaturesConfig.from_saved``)."""
    existing = load_config(out_dir)
    if existing is not None:
        _check_views(out_dir, existing, config)
    if existing is None or existing.get("config_hash") == config.hash():
        return
    try:
        old = FeaturesConfig.from_saved(existing).output_key()
    except ConfigError as e:
        raise FeaturesConfigError(
            f"{out_dir} holds features made with settings this version cannot read ({e}). "
            "Use another --out folder for these settings."
        ) from None
    new = config.output_key()
    keys = {**old, **new}  # ``stain`` is in only one of them when it is on in only one
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    if not diff:  # settings that no longer exist (an older version's) made its features
        diff = [f"config_hash: {existing.get('config_hash')!r} -> {config.hash()!r}"]
    raise FeaturesConfigError(
        f"{out_dir} holds features made with other settings ({'; '.join(diff)}). "
        "Use another --out folder for these settings."
    )


def _check_views(out_dir: Path, existing: dict, config: FeaturesConfig) -> None:
    old = {k: existing.get(k, v) for k, v in FeaturesConfig().views_key().items()}
    if old["stain_views"] == config.stain_views == 0 or old == config.views_key():
        return
    raise FeaturesConfigError(
        f"{out_dir} holds features made with --stain-views {old['stain_views']} "
        f"--stain-jitter {old['stain_jitter']}, not --stain-views {config.stain_views} "
        f"--stain-jitter {config.stain_jitter}: one folder holds one setting, so that every "
        "slide has the same views. Use another --out folder (or the folder's settings)."
    )


def encode_plan(
    plan: SlidePlan,
    encoder,
    config: FeaturesConfig,
    on_batch: Callable | None = None,
    stain: SlideStain | None = None,
):
    """Features ``[N, D]`` float32 for ``plan.coords`` (same order), each patch first
    normalised by ``stain`` (the slide's, ``features.stain.fit_plan``) when given."""
    if stain is None or stain.stats is None:
        return encode_looks(plan, encoder, config, [None], on_batch)[0]
    return encode_looks(plan, encoder, config, [stain], on_batch)[0]


def encode_looks(plan: SlidePlan, encoder, config: FeaturesConfig, looks, on_batch=None):
    """Features ``[L, N, D]`` float32 of ``plan.coords`` under each of the ``L`` ``looks``
    (uint8 patch transforms, None: as read), every patch read once: a per-patch CPU encoder
    encodes all looks in the reader processes, a batch encoder in this process."""
    grid = config.segment.grid
    per_patch = getattr(encoder, "cpu_per_patch", False)
    if len(looks) == 1:
        transform = reader_transform(looks[0], encoder.encode_one if per_patch else None)
    else:
        transform = AllLooks(tuple(looks), encoder.encode_one) if per_patch else None
    loader = patch_loader(
        plan.path,
        plan.coords,
        grid.patch_size,
        grid.target_mpp,
        mpp=plan.mpp,
        batch_size=config.batch_size,
        workers=config.workers,
        transform=transform,
    )
    dim, n_looks = encoder.spec.dim, len(looks)
    out = np.zeros((n_looks, len(plan.coords), dim), np.float32)
    i = 0
    for batch, _ in loader:
        if per_patch:
            feats = batch.numpy().reshape(len(batch), n_looks, dim)
        elif n_looks == 1:
            feats = encoder.encode(batch)[:, None]
        else:
            raw = batch.numpy()
            feats = np.stack([encoder.encode(t(raw) if t else raw) for t in looks], 1)
        out[:, i : i + len(feats)] = feats.transpose(1, 0, 2)
        i += len(feats)
        if on_batch is not None:
            on_batch(len(feats))
    if i != out.shape[1]:
        raise RuntimeError(f"{plan.path}: read {i} of {out.shape[1]} patches")
    return out


def h5_attrs(
    plan: SlidePlan,
    config: FeaturesConfig,
    source_fp: dict | None = None,
    stain: SlideStain | None = None,
) -> dict:
    """The attributes of a slide's h5 (on ``coords``); ``source_fingerprint`` (JSON text) when
    ``source_fp``, the slide file's fingerprint taken before it was read, is known; the slide's
    stain fit (``SlideStain.attrs``) when ``stain``."""
    grid = config.segment.grid
    extra = {"source_fingerprint": to_text(source_fp)} if source_fp else {}
    if stain is not None:
        extra.update(stain.attrs())
    return {
        "patch_size": grid.patch_size,
        "patch_size_level0": plan.patch_size_level0(grid),
        "target_mpp": grid.target_mpp,
        "level0_mpp": plan.mpp,
        "level0_width": plan.summary["width"],
        "level0_height": plan.summary["height"],
        "encoder": config.patch_encoder,
        "config_hash": config.hash(),
        "tissue_area_mm2": plan.tissue.area_mm2,
        "mpp_source": plan.summary["mpp_source"],
        **extra,
    }


def process_slide(
    ref, out_dir: Path, encoder, config, mpp=None, on_start=None, on_batch=None, source_fp=None
):
    """Plan + encode one slide and write its h5 (with ``source_fp``, the file's fingerprint
    taken before reading it), thumbnail and contours. Returns (n patches, note: ``""`` or why
    its stain was not normalised). Raises ``SlideError`` (also for a ``ref.problem`` found at
    discovery)."""
    if ref.problem is not None:
        raise SlideError(ref.path, *ref.problem)
    plan = plan_slide(ref.path, ref.slide_id, mpp=mpp, config=config.segment)
    if on_start is not None:
        on_start(len(plan.coords))
    plan.require_patches()
    stain = fit_plan(plan.path, plan.coords, plan.mpp, config)  # after the plan: it stays as is
    views, view_note = view_transforms(plan, config, stain)
    first = stain if stain is not None and stain.stats is not None else None
    feats, *views = encode_looks(plan, encoder, config, [first, *views], on_batch)
    views = np.stack(views) if views else None
    if config.dtype == "float16":
        feats = feats.astype(np.float16)
        views = views.astype(np.float16) if views is not None else None
    thumb = _display_thumb(plan, mpp)
    write_thumbnail_jpeg(thumb, plan.tissue, thumbnail_path(out_dir, ref.slide_id))
    write_geojson(plan.tissue, ref.slide_id, contours_path(out_dir, ref.slide_id))
    attrs = h5_attrs(plan, config, source_fp, stain)
    extra = {VIEWS_DATASET: views} if views is not None else None
    write_features(h5_path(out_dir, ref.slide_id), feats, plan.coords, attrs, extra)
    notes = [stain.note if stain is not None else "", view_note]
    return len(plan.coords), "; ".join(n for n in notes if n)


def _display_thumb(plan: SlidePlan, mpp: float | None, side: int = 1024) -> np.ndarray:
    """The detection thumbnail (~8 µm/px), or a finer one for small slides so that the stored
    thumbnail is about ``side`` px on its longest side."""
    if max(plan.thumb.shape[:2]) >= side // 2:
        return plan.thumb
    from threads_search.wsi import open_slide

    with open_slide(plan.path, mpp=mpp) as s:
        target = max(s.mpp, max(s.dimensions) * s.mpp / side)
        return s.thumbnail(target)[0]


def extract_features(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: FeaturesConfig,
    mpp_csv: str | Path | None = None,
    mpp: float | None = None,
    retry_failed: bool = False,
    progress=None,
    encoder=None,
    lock_command: str = "",
) -> list[SlideOutcome]:
    """Run the features stage over files/folders ``inputs``. ``progress`` is a
    ``FeaturesProgress``-like object (or None). Returns one outcome per slide (``path`` as
    found; ``error`` as stored, valid UTF-8). Holds the FEATURES_DIR lock throughout (its
    holder is described by ``lock_command``); raises ``WriterLockedError`` when another writer
    has it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with features_lock(out, lock_command):
        return _extract(inputs, out, config, mpp_csv, mpp, retry_failed, progress, encoder)


def _extract(inputs, out: Path, config, mpp_csv, mpp, retry_failed, progress, encoder):
    from threads_search.patch_encoders import create_patch_encoder

    check_config(out, config)
    if config.stain.method != "none":
        reference(config.stain)  # a bad reference is refused before any slide is read
    remove_orphans(out)  # temporaries of killed runs (the FEATURES_DIR lock is held)
    refs = discover_slides(inputs)
    overrides = load_mpp_csv(mpp_csv) if mpp_csv else {}
    status = StatusTable(out)
    if encoder is None:
        encoder = create_patch_encoder(
            config.patch_encoder, checkpoint=config.checkpoint, device=config.device
        )
    config.save(out, {"encoder_spec": encoder.spec.to_dict()})
    chash = config.hash()
    outcomes = []
    recorded = 0  # older rows given the fingerprint of their file
    if progress:
        progress.start_archive(len(refs))
    for ref in refs:
        prev = status.get(ref.slide_id)
        h5 = h5_path(out, ref.slide_id)
        clash = id_conflict(prev, ref.path)
        if clash:  # another file's slide: its row and h5 stay as they are
            outcomes.append(SlideOutcome(ref.slide_id, str(ref.path), "failed", clash))
            if progress:
                progress.slide_done(ref.slide_id, "failed", clash)
            continue
        slide_mpp = mpp
        if slide_mpp is None and ref.problem is None:
            slide_mpp = lookup_override(overrides, ref.path, ref.slide_id)
        # a slide that failed before is tried again when asked, or when this run gives it a
        # resolution (the usual fix of a "no-mpp" failure)
        retry = retry_failed or slide_mpp is not None
        use = reuse_features(prev, h5, ref.path, chash, retry, ref.problem is None)
        fp_text = to_text(use.fingerprint)
        if use.action == "skip":
            if use.record:  # an older version's row, trusted: saved once at the end
                status.update(ref.slide_id, source_fingerprint=fp_text)
                recorded += 1
            if prev["state"] == "failed":  # still failed: said again, never "already done"
                why = f"{prev['error']} (earlier run; --retry-failed tries it again)"
                o = SlideOutcome(ref.slide_id, str(ref.path), "failed", why)
            else:
                o = SlideOutcome(ref.slide_id, str(ref.path), "skipped", "", use.n_patches)
            o.fingerprint = use.fingerprint
            outcomes.append(o)
            if progress:
                progress.slide_done(ref.slide_id, o.state, o.error)
            continue
        if use.action == "adopt":
            row = dict(state="done", error="", n_patches=use.n_patches, seconds=0.0)
            status.set(ref.slide_id, **_row(ref, chash, fp_text), **row)
            skipped = SlideOutcome(ref.slide_id, str(ref.path), "skipped", "", use.n_patches)
            skipped.fingerprint = use.fingerprint
            outcomes.append(skipped)
            continue
        on_start = (lambda n, r=ref: progress.start_slide(r.slide_id, n)) if progress else None
        on_batch = progress.advance if progress else None
        t0 = time.perf_counter()
        stain_note = ""
        try:
            n, stain_note = process_slide(
                ref, out, encoder, config, slide_mpp, on_start, on_batch, use.fingerprint
            )
            state, error = "done", ""
        except SlideError as e:
            n, state, error = 0, "failed", f"{e.reason}: {e.detail}"
        except Exception as e:  # noqa: BLE001 - one bad slide never kills the batch
            n, state, error = 0, "failed", f"error: {type(e).__name__}: {e}"
            if os.environ.get("THREADS_SEARCH_DEBUG"):
                traceback.print_exc()
        dt = time.perf_counter() - t0
        error = display_text(error)
        if state == "failed":
            h5.unlink(missing_ok=True)  # a stale file from older settings must not be trusted
        row = dict(state=state, error=error, n_patches=n, seconds=dt)
        status.set(ref.slide_id, **_row(ref, chash, fp_text), **row)
        note = "; ".join(x for x in (use.note, stain_note) if x)
        o = SlideOutcome(ref.slide_id, str(ref.path), state, error, n, dt, note)
        o.fingerprint = use.fingerprint
        outcomes.append(o)
        if progress:
            progress.slide_done(ref.slide_id, state, error)
    if recorded:
        status.save()
    return outcomes


def _row(ref, config_hash: str, fp_text: str | None) -> dict:
    """The status-row fields of ``ref`` that every outcome records (path, settings, time,
    the slide file's fingerprint as JSON text)."""
    return {
        "path": display_text(ref.path),
        "config_hash": config_hash,
        "finished": time.time(),
        "source_fingerprint": fp_text,
    }


def encode_slide_file(
    path: str | Path,
    patch_encoder: str = "hed-texture",
    checkpoint: str | None = None,
    device: str = "auto",
    mpp: float | None = None,
    workers: int = 0,
    config: FeaturesConfig | None = None,
    patch_size: int | None = None,
    target_mpp: float | None = None,
    stain: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
):
    """Features ``[N, D]`` float32 and coords ``[N, 2]`` int64 for one slide file, nothing
    written; ``stain``: a ``StainConfig`` dict (e.g. a model's), the patches normalised as the
    features stage does. ``progress(stage, done, total)``, when given, is called as the work
    goes: ``("tissue", 0, 1)`` before the slide is read for its tissue mask and patch grid,
    then ``("patches", n, N)`` with ``n`` of the ``N`` patches encoded (first ``n = 0``, last
    ``n = N``). Raises ``SlideError`` (including ``no-tissue``)."""
    from threads_search.patch_encoders import create_patch_encoder

    cfg = config or default_config(
        patch_encoder, patch_size, target_mpp, checkpoint=checkpoint, device=device
    )
    cfg.workers = workers
    if stain is not None:
        cfg.stain = StainConfig.from_dict(stain)
    encoder = create_patch_encoder(cfg.patch_encoder, checkpoint=cfg.checkpoint, device=cfg.device)
    report = progress or (lambda stage, done, total: None)
    report(STAGE_TISSUE, 0, 1)
    plan = plan_slide(path, mpp=mpp, config=cfg.segment).require_patches()
    total, done = len(plan.coords), [0]
    report(STAGE_PATCHES, 0, total)

    def on_batch(n: int) -> None:
        done[0] += n
        report(STAGE_PATCHES, done[0], total)

    slide_stain = fit_plan(plan.path, plan.coords, plan.mpp, cfg)
    return encode_plan(plan, encoder, cfg, on_batch, stain=slide_stain), plan.coords


def default_config(
    patch_encoder: str = "hed-texture",
    patch_size: int | None = None,
    target_mpp: float | None = None,
    stain_normalize: str = "none",
    stain_reference: str | None = None,
    **kwargs,
) -> FeaturesConfig:
    """A config whose patch size and µm/px default to what ``patch_encoder`` expects;
    ``stain_normalize`` (``none``, ``macenko``, ``reinhard``) and ``stain_reference`` (None:
    built in; an image file or ``SLIDE:x,y,w,h``) set ``stain`` unless it is given."""
    from threads_search.patch_encoders import get_patch_encoder_spec
    from threads_search.wsi.grid import GridParams
    from threads_search.wsi.plan import SegmentConfig

    spec = get_patch_encoder_spec(patch_encoder)
    grid = GridParams(
        patch_size=patch_size or spec.patch_size, target_mpp=target_mpp or spec.target_mpp
    )
    kwargs.setdefault("stain", StainConfig(stain_normalize, stain_reference))
    return FeaturesConfig(patch_encoder=patch_encoder, segment=SegmentConfig(grid=grid), **kwargs)
