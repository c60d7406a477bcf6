"""``threads-search index --engine ray``: the index build with slides distributed on Ray.

Same steps, files and commit as the local engine: the driver steps of ``indexer.core`` (lock,
model install, work records keyed by source fingerprint + model hash, one driver-side commit
through ``write_generation``) and the per-slide step of ``indexer.slide_step``, run by worker
actors; ``open_index`` cannot tell which engine built an index, and either engine resumes the
other's work. What differs is how a slide becomes a work record:

    plan_task (CPU) ─► read_task x chunks (CPU) ─► SlideWorker.encode (actor, GPU if any)
                                                       └─► SlideWorker.finish: h5 + work record

(``indexer.ray_tasks``; a slide whose features exist goes straight to ``SlideWorker.embed``.)
Slides stream through with bounded in-flight work (slides and patch chunks), so an archive of
any size runs in constant driver memory. Worker crashes are retried by Ray (tasks
``max_retries``, actors ``max_restarts``/``max_task_retries``), I/O errors a bounded number of
times (``TransientError``); a slide still failing is recorded with its reason and the job goes
on. Killed at any moment, a re-run skips every slide whose record or feature h5 was written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from indexer import ray_tasks as rt
from indexer.core import IndexSummary, commit, index_session, select_work
from indexer.ray_cluster import ray_session
from indexer.ray_plan import FeaturesPlan
from indexer.slide_step import SlideJob
from threads_search.errors import ConfigError
from threads_search.wsi.fingerprint import to_text

__all__ = ["MAX_INFLIGHT_SLIDES", "ray_session", "run_ray"]

log = logging.getLogger(__name__)
RETRIES = 3  # per task / actor call, on worker death (and on TransientError)
STATUS_SAVE_SECONDS = 5.0  # status.parquet is rewritten at most this often (and at the end)
MAX_INFLIGHT_SLIDES: int | None = None  # None: 2 x (reader slots + encoder actors)


def run_ray(cfg, progress=None) -> IndexSummary:
    """``run_index`` for ``cfg.engine == "ray"``: same arguments, same result."""
    t0 = time.perf_counter()
    # The driver's model embeds the molecular profiles and checks inputs; actors load their own.
    # The FEATURES_DIR lock (taken by the plan when slide files are given) is held to the end.
    with index_session(cfg) as sess, contextlib.ExitStack() as locks:
        plan = FeaturesPlan(cfg, sess.index_dir, sess.model, sess.summary, locks)
        jobs = select_work(sess, plan.sources)
        if jobs:
            with ray_session(cfg.ray_address, None if cfg.ray_address else max(cfg.workers, 1)):
                t1 = time.perf_counter()
                model_dir = sess.index_dir / sess.model_rel
                _Pipeline(cfg, plan, model_dir, sess.summary, progress).run(jobs)
                sess.summary.embed_seconds = time.perf_counter() - t1
        commit(sess)
    sess.summary.wall_seconds = time.perf_counter() - t0
    return sess.summary


@dataclass
class _InFlight:
    """A slide on its way through the pipeline (driver side only): its job, when it was
    admitted, and once planned its coords, h5 attributes, the chunks still to read (None once
    all are submitted) and the references of those submitted."""

    job: SlideJob
    t0: float
    coords: np.ndarray | None = None
    attrs: dict | None = None
    left: deque | None = None
    refs: list = field(default_factory=list)


class _Pipeline:
    """The driver's event loop: admits slides while in-flight work is under its bounds, turns
    each finished plan into reader chunks, hands chunks to encoder actors, and records each
    slide's outcome. Only object references and small objects pass through the driver."""

    def __init__(self, cfg, plan: FeaturesPlan, model_dir, summary, progress):
        import ray

        self.ray, self.cfg, self.plan = ray, cfg, plan
        self.summary, self.progress = summary, progress
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        gpw = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if gpw > gpus:
            raise ConfigError(
                f"--gpus-per-worker {gpw:g}: the Ray cluster has {gpus:g} GPU(s); give at most "
                f"{gpus:g} (0: encode on CPUs)"
            )
        self.cpu_per_patch = _cpu_per_patch(plan.config.patch_encoder)
        self.chunk = rt.chunk_rows(plan.config, self.cpu_per_patch)
        if gpw > 0:
            n_actors, actor_cpus = int(gpus // gpw), 0
        elif self.cpu_per_patch:  # readers encode: actors only run the slide encoder
            n_actors, actor_cpus = 1, 0
        else:  # torch patch encoder on CPUs: one core each, a quarter of the cluster
            n_actors, actor_cpus = max(1, int(cpus // 4)), 1
        device = cfg.device if cfg.device != "auto" else ("cuda" if gpw > 0 else "cpu")
        actor_cls = ray.remote(
            num_cpus=actor_cpus, num_gpus=gpw, max_restarts=RETRIES, max_task_retries=RETRIES
        )(rt.SlideWorker)
        args = (str(model_dir), plan.config, device, not self.cpu_per_patch)
        self.new_actor = lambda: actor_cls.remote(*args)
        self.actors = [self.new_actor() for _ in range(max(n_actors, 1))]
        self.replacements = len(self.actors) * 2
        hook = getattr(progress, "ray_workers", None)
        if hook is not None:  # e.g. to show where the encoders run (waits for them to start)
            hook(ray.get([a.describe.remote() for a in self.actors]))
        opts = {"max_retries": RETRIES, "retry_exceptions": [rt.TransientError]}
        self.plan_fn = ray.remote(**opts, num_cpus=1)(rt.plan_task)
        self.read_fn = ray.remote(**opts, num_cpus=cfg.cpus_per_reader)(rt.read_task)
        slots = max(1, int(cpus // max(cfg.cpus_per_reader, 1e-3)))
        self.max_slides = MAX_INFLIGHT_SLIDES or 2 * (slots + len(self.actors))
        self.max_chunks = 2 * (slots + len(self.actors))
        self._rr = 0
        self._saved = time.monotonic()

    def call(self, method: str, *args):
        """``method`` on the next actor (round robin), retried on I/O errors too."""
        self._rr += 1
        actor = self.actors[self._rr % len(self.actors)]
        return getattr(actor, method).options(retry_exceptions=[rt.TransientError]).remote(*args)

    def run(self, jobs: list[SlideJob]) -> None:
        queue = deque(jobs)
        active: dict[str, _InFlight] = {}
        waiting: dict = {}  # ObjectRef → (kind, slide_id)
        self.n_chunks = 0
        log.debug("todo %s", [j.slide_id for j in jobs])
        if self.progress is not None:
            self.progress.start_embedding(len(jobs))
        while queue or waiting or active:  # a plan just done leaves its slide only in active
            while queue and len(active) < self.max_slides:
                self._admit(queue.popleft(), active, waiting)
            for slide in active.values():  # feed reader chunks, oldest slides first
                self._feed(slide, waiting)
            ready, _ = self.ray.wait(list(waiting), num_returns=1, timeout=1.0, fetch_local=False)
            for ref in ready:
                kind, sid = waiting.pop(ref)
                log.debug("%s %s ready (queue %d, active %d)", kind, sid, len(queue), len(active))
                if kind == "chunk":
                    self.n_chunks -= 1  # an error here resurfaces in the slide's finish call
                    continue
                try:
                    out = self.ray.get(ref)
                except Exception as e:  # noqa: BLE001 - recorded, the job goes on
                    self._failed(active.pop(sid), kind, _reason(e))
                    self._check_actors(e)
                    continue
                if kind == "plan":
                    self._planned(active[sid], out)
                else:
                    self._done(active.pop(sid), out)
            self._save_status()
        self._save_status(force=True)
        done = set(self.summary.indexed) | set(self.summary.failed)
        for sid in sorted({j.slide_id for j in jobs} - done):  # never silently: a bug shows
            self.summary.failed[sid] = "error: not processed by the Ray pipeline"

    def _admit(self, job: SlideJob, active: dict, waiting: dict) -> None:
        """Start ``job``: its plan task when its features are to be made, else its embedding."""
        sid = job.slide_id
        active[sid] = _InFlight(job, time.time())
        if sid in self.plan.need_features:
            p = self.plan
            ref = self.plan_fn.remote(job.source.path, sid, p.mpp.get(sid), p.config, str(p.fdir))
            waiting[ref] = ("plan", sid)
        else:
            waiting[self.call("embed", job)] = ("embed", sid)

    def _planned(self, slide: _InFlight, out: rt.Planned) -> None:
        """A slide's grid is known: queue its reader chunks."""
        fp = to_text(self.plan.fingerprints.get(slide.job.slide_id))  # as the local h5 attrs
        slide.attrs = {**out.attrs, "source_fingerprint": fp} if fp else out.attrs
        slide.coords, n = out.coords, len(out.coords)
        slide.left = deque(out.coords[i : i + self.chunk] for i in range(0, n, self.chunk))

    def _feed(self, slide: _InFlight, waiting: dict) -> None:
        """Submit ``slide``'s reader chunks while under the chunk bound; once all are
        submitted, its finish call (which waits for them)."""
        while slide.left and self.n_chunks < self.max_chunks:
            mpp = slide.attrs["level0_mpp"]
            coords = slide.left.popleft()
            config, stain_attrs = self.plan.config, slide.attrs  # attrs: the slide's stain fit
            args = (slide.job.source.path, mpp, coords, config, self.cpu_per_patch, stain_attrs)
            read = self.read_fn.remote(*args)
            ref = read if self.cpu_per_patch else self.call("encode", read)
            slide.refs.append(ref)
            waiting[ref] = ("chunk", slide.job.slide_id)
            self.n_chunks += 1
        if slide.left is not None and not slide.left:
            slide.left = None
            ref = self.call("finish", slide.job, slide.coords, slide.attrs, *slide.refs)
            waiting[ref] = ("finish", slide.job.slide_id)

    def _done(self, slide: _InFlight, out: rt.SlideDone) -> None:
        sid, s = slide.job.slide_id, self.summary
        if out.features is not None:
            self.plan.set_status(sid, "done", "", out.features, time.time() - slide.t0)
        if out.error:
            s.failed[sid] = out.error
        else:
            s.indexed.append(sid)
            s.n_patches += out.embedded
        self._tick(sid)

    def _failed(self, slide: _InFlight, kind: str, reason: str) -> None:
        sid = slide.job.slide_id
        self.summary.failed[sid] = reason
        if kind in ("plan", "finish"):  # the features stage failed: as the local engine records
            slide.job.source.h5.unlink(missing_ok=True)
            self.plan.set_status(sid, "failed", reason, 0, time.time() - slide.t0)
        self._tick(sid)

    def _tick(self, sid: str) -> None:
        if self.progress is not None:
            self.progress.embedded(sid)

    def _check_actors(self, err: Exception) -> None:
        """Replace actors that died for good (restarts exhausted), a bounded number of times."""
        ray = self.ray
        if not isinstance(err, ray.exceptions.RayActorError) or self.replacements <= 0:
            return
        for i, a in enumerate(self.actors):
            try:
                ray.get(a.pid.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if self.replacements > 0:
                    self.actors[i] = self.new_actor()
                    self.replacements -= 1

    def _save_status(self, force: bool = False) -> None:
        st = self.plan.status
        if st is not None and (force or time.monotonic() - self._saved > STATUS_SAVE_SECONDS):
            st.save()
            self._saved = time.monotonic()


def _cpu_per_patch(name: str) -> bool:
    """Whether readers can encode: a weight-free ``cpu_per_patch`` encoder (built here to ask);
    encoders with weights are torch networks, run by the actors."""
    from threads_search.patch_encoders import create_patch_encoder, get_patch_encoder_spec

    if get_patch_encoder_spec(name).needs_checkpoint:
        return False
    return bool(getattr(create_patch_encoder(name, device="cpu"), "cpu_per_patch", False))


def _reason(err: Exception) -> str:
    """The reason text of a failed Ray call: the worker's ``SlideFailed``/``TransientError``
    message, or what killed the worker after its retries."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, (rt.SlideFailed, rt.TransientError)):
        return str(cause)
    if isinstance(cause, Exception):
        return f"error: {type(cause).__name__}: {cause}"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"worker failed after {RETRIES} retries: {type(err).__name__}: {first}"[:500]
