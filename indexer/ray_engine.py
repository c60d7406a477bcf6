"""``threads-search index --engine ray``: the index build with slides distributed on Ray.

Same steps, files and commit as the local engine (``indexer.build``): lock, model install,
work records keyed by source fingerprint + model hash, one driver-side commit through
``write_generation`` (``index_session`` / ``select_work`` / ``commit`` of ``indexer.build``);
``open_index`` cannot tell which engine built an index, and either engine resumes the other's
work. What differs is how a slide becomes a work record:

    plan_task (CPU) ─► read_task x chunks (CPU) ─► SlideWorker.encode (actor, GPU if any)
                                                       └─► SlideWorker.finish: h5 + work record

Slides stream through with bounded in-flight work (slides and patch chunks), so an archive of
any size runs in constant driver memory. Worker crashes are retried by Ray (tasks
``max_retries``, actors ``max_restarts``/``max_task_retries``), I/O errors a bounded number of
times (``TransientError``); a slide still failing is recorded with its reason and the job goes
on. Killed at any moment, a re-run skips every slide whose record or feature h5 was written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path

from indexer import ray_tasks as rt
from indexer.build import (
    IndexSummary,
    add_sources,
    commit,
    features_dir,
    index_session,
    select_work,
    split_inputs,
)
from indexer.config import IndexConfig
from indexer.records import read_meta, record_path
from threads_search.paths import display_text
from threads_search.wsi.fingerprint import to_text

log = logging.getLogger(__name__)
RETRIES = 3  # per task / actor call, on worker death (and on TransientError)
STATUS_SAVE_SECONDS = 5.0  # status.parquet is rewritten at most this often (and at the end)
MAX_INFLIGHT_SLIDES: int | None = None  # None: 2 x (reader slots + encoder actors)


# Environment of the processes a local Ray starts: HTTP(S) through a closed loopback port (the
# dashboard's cloud-metadata probe fails on 127.0.0.1), loopback itself direct (Ray's gRPC).
_LOCAL_ONLY_ENV = {
    **dict.fromkeys(
        ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"), "http://127.0.0.1:9"
    ),
    **dict.fromkeys(("no_proxy", "NO_PROXY"), "127.0.0.1,localhost,::1"),
}


@contextlib.contextmanager
def _local_only_env():
    """``_LOCAL_ONLY_ENV`` in ``os.environ`` while Ray starts its processes, then restored."""
    saved = {k: os.environ.get(k) for k in _LOCAL_ONLY_ENV}
    os.environ.update(_LOCAL_ONLY_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connect to the Ray cluster at ``address``, or start a local Ray bound to loopback
    (dashboard off, usage stats off). Reuses (and leaves running) a Ray already initialised in
    this process; shuts down only what it started.

    Network of a local Ray (observed with ``strace -f -e trace=connect`` on Ray 2.60): every
    Ray process listens and connects on 127.0.0.1 or Unix sockets only
    (``_node_ip_address``), the dashboard web UI is not started (``include_dashboard=False``)
    and usage stats are never sent (``RAY_USAGE_STATS_ENABLED=0`` unless the caller set it).
    No setting turns off one more thing: ``ray.init`` always starts the dashboard head process
    (``ray/dashboard/dashboard.py --modules-to-load=UsageStatsHead``), and that module, whatever
    the usage-stats setting, guesses the cloud provider once at start-up
    (``usage_lib.get_cluster_config_to_report`` → ``get_cloud_from_metadata_requests``): HTTP
    GETs (Python ``requests``) to 169.254.169.254:80 and ``metadata.google.internal``. The local
    Ray's processes are therefore started with an HTTP proxy that is a closed loopback port
    (``_LOCAL_ONLY_ENV``: ``http(s)_proxy=http://127.0.0.1:9``, ``no_proxy`` = loopback, so
    Ray's own gRPC on 127.0.0.1 goes direct): the probe fails at once on 127.0.0.1 and no
    packet leaves the machine (not even its DNS lookup). The driver's own environment is
    restored once Ray has started. With ``address`` the cluster is the caller's: its processes
    run with whatever settings it was started with."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:  # a single-machine Ray listens on 127.0.0.1 only (read at import of ray)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise ValueError(f"--ray-address {address}: cannot connect to a Ray head ({e})") from e
    else:
        with _local_only_env():
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
            )
    try:
        yield ray
    finally:
        ray.shutdown()


def run_index_ray(cfg: IndexConfig, progress=None) -> IndexSummary:
    """``run_index`` for ``cfg.engine == "ray"``: same arguments, same result."""
    t0 = time.perf_counter()
    # The driver's model embeds the molecular profiles and checks inputs; actors load their own.
    # The FEATURES_DIR lock (taken by the plan when slide files are given) is held to the end.
    with index_session(cfg, engine=" --engine ray") as sess, contextlib.ExitStack() as locks:
        plan = _SourcePlan(cfg, sess.index_dir, sess.model, sess.summary, locks)
        todo = select_work(sess, plan.sources)
        if todo:
            with ray_session(cfg.ray_address, None if cfg.ray_address else max(cfg.workers, 1)):
                t1 = time.perf_counter()
                _Pipeline(cfg, plan, sess.index_dir, sess.index_dir / sess.model_rel, sess.mhash,
                          sess.summary, progress).run(todo)  # fmt: skip
                sess.summary.embed_seconds = time.perf_counter() - t1
        commit(sess)
    sess.summary.wall_seconds = time.perf_counter() - t0
    return sess.summary


class _SourcePlan:
    """Every slide given in this run → its source (as the local engine's inputs),
    without running anything: FEATURES_DIR slides are ready; slide files get their future h5
    path in FEATURES_DIR and whether their features are already there, by the local engine's
    rule (``threads_search.features.extract.reuse_features``: status done, or an h5 renamed
    into place before a kill, and made from the file there now; a file changed since is
    listed in ``summary.features_redone``). With slide files it takes the FEATURES_DIR lock into
    ``locks`` (an ``ExitStack`` the caller holds until the run ends); inputs discovery finds
    unusable (a link loop, a folder without slides) are recorded as failed at once."""

    def __init__(self, cfg: IndexConfig, index_dir: Path, model, summary, locks) -> None:
        from threads_search.features import default_config
        from threads_search.features.extract import (
            check_config,
            features_lock,
            h5_path,
            id_conflict,
            reuse_features,
            thumbnail_path,
        )
        from threads_search.features.status import StatusTable
        from threads_search.patch_encoders import get_patch_encoder_spec
        from threads_search.wsi import discover_slides, load_mpp_csv, lookup_override

        self.sources, files = split_inputs(cfg, model, summary)
        self.need_features: set[str] = set()
        self.mpp: dict[str, float | None] = {}
        self.fingerprints: dict[str, dict | None] = {}  # slide file's, taken before reading it
        self.fdir = features_dir(cfg, index_dir)
        pe = model.patch_encoder
        self.config = default_config(pe["name"], pe["patch_size"], pe["target_mpp"],
                                     checkpoint=cfg.checkpoint, workers=0,
                                     batch_size=cfg.batch_size, device=cfg.device)  # fmt: skip
        self.status = None
        if not files:
            return
        self.fdir.mkdir(parents=True, exist_ok=True)
        command = f"threads-search index --engine ray → {index_dir} (features stage)"
        locks.enter_context(features_lock(self.fdir, command))
        check_config(self.fdir, self.config)
        spec = get_patch_encoder_spec(self.config.patch_encoder).to_dict()
        self.config.save(self.fdir, {"encoder_spec": spec})
        self.status = StatusTable(self.fdir)
        chash = self.config.hash()
        overrides = load_mpp_csv(cfg.mpp_csv) if cfg.mpp_csv else {}
        new = {}
        changed = False  # status rows set here (adopted, fingerprint recorded): saved at the end
        for ref in discover_slides(files):
            sid, h5 = ref.slide_id, h5_path(self.fdir, ref.slide_id)
            if ref.problem is not None:  # recorded as the local engine's features stage does
                reason = display_text(": ".join(ref.problem))
                summary.failed[sid] = reason
                row = dict(state="failed", error=reason, n_patches=0, seconds=0.0)
                self.status.set(
                    sid, path=display_text(ref.path), config_hash=chash, finished=time.time(), **row
                )
                continue
            prev = self.status.get(sid)  # a slide that failed before is tried again (as local)
            clash = id_conflict(prev, ref.path)
            if clash:  # another file's slide (as local: its row and h5 stay)
                summary.failed[sid] = clash
                continue
            use = reuse_features(prev, h5, ref.path, chash, retry_failed=True)
            thumb = thumbnail_path(self.fdir, sid)
            src = {"h5": str(h5), "path": str(ref.path), "thumbnail": str(thumb)}
            new[sid] = {**src, "source_fingerprint": use.fingerprint}
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
        """One status row (saved with the others by ``_Pipeline._save_status``)."""
        path = (sources or self.sources)[sid]["path"]
        self.status.rows[sid] = {
            "slide_id": sid, "path": display_text(path), "state": state, "error": error,
            "n_patches": n, "seconds": seconds, "config_hash": self.config.hash(),
            "finished": time.time(), "source_fingerprint": to_text(self.fingerprints.get(sid)),
        }  # fmt: skip


class _Pipeline:
    """The driver's event loop: admits slides while in-flight work is under its bounds, turns
    each finished plan into reader chunks, hands chunks to encoder actors, and records each
    slide's outcome. Only object references and small dicts pass through the driver."""

    def __init__(self, cfg, plan: _SourcePlan, index_dir, model_dir, mhash, summary, progress):
        import ray

        self.ray, self.cfg, self.plan = ray, cfg, plan
        self.summary, self.progress = summary, progress
        self.index_dir, self.mhash = str(index_dir), mhash
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        gpw = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if gpw > gpus:
            raise ValueError(f"--gpus-per-worker {gpw}: the Ray cluster has {gpus:g} GPU(s)")
        self.cpu_per_patch = _cpu_per_patch(plan.config.patch_encoder)
        self.chunk = rt.chunk_rows(plan.config, self.cpu_per_patch)
        if gpw > 0:
            n_actors, actor_cpus = int(gpus // gpw), 0
        elif self.cpu_per_patch:  # readers encode: actors only run the slide encoder
            n_actors, actor_cpus = 1, 0
        else:  # torch patch encoder on CPUs: one core each, a quarter of the cluster
            n_actors, actor_cpus = max(1, int(cpus // 4)), 1
        device = cfg.device if cfg.device != "auto" else ("cuda" if gpw > 0 else "cpu")
        actor_cls = ray.remote(num_cpus=actor_cpus, num_gpus=gpw, max_restarts=RETRIES,
                               max_task_retries=RETRIES)(rt.SlideWorker)  # fmt: skip
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

    def run(self, todo: list[tuple[str, dict, dict]]) -> None:
        ray = self.ray
        queue = deque(todo)
        active: dict[str, dict] = {}  # sid → job (coords, chunks left, chunk refs)
        waiting: dict = {}  # ObjectRef → (kind, sid)
        n_chunks = 0
        log.debug("todo %s", [t[0] for t in todo])
        if self.progress is not None:
            self.progress.start_embedding(len(todo))
        while queue or waiting or active:  # a plan just done leaves its slide only in active
            while queue and len(active) < self.max_slides:
                sid, src, fp = queue.popleft()
                job = {"slide_id": sid, "src": src, "fp": fp, "mhash": self.mhash,
                       "index_dir": self.index_dir, "path": src["path"], "t0": time.time()}  # fmt: skip
                active[sid] = job
                if sid in self.plan.need_features:
                    ref = self.plan_fn.remote(src["path"], sid, self.plan.mpp.get(sid),
                                              self.plan.config, str(self.plan.fdir))  # fmt: skip
                    waiting[ref] = ("plan", sid)
                else:
                    waiting[self.call("embed", _public(job))] = ("embed", sid)
            for sid, job in active.items():  # feed reader chunks, oldest slides first
                while job.get("left") and n_chunks < self.max_chunks:
                    coords = job["left"].popleft()
                    read = self.read_fn.remote(job["path"], job["attrs"]["level0_mpp"], coords,
                                               self.plan.config, self.cpu_per_patch)  # fmt: skip
                    ref = read if self.cpu_per_patch else self.call("encode", read)
                    job["refs"].append(ref)
                    waiting[ref] = ("chunk", sid)
                    n_chunks += 1
                if job.get("left") is not None and not job["left"]:
                    job["left"] = None  # every chunk submitted: the finish call waits for them
                    ref = self.call("finish", _public(job), *job["refs"])
                    waiting[ref] = ("finish", sid)
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0, fetch_local=False)
            for ref in ready:
                kind, sid = waiting.pop(ref)
                log.debug("%s %s ready (queue %d, active %d, waiting %d)", kind, sid, len(queue),
                          len(active), len(waiting))  # fmt: skip
                if kind == "chunk":
                    n_chunks -= 1  # an error here resurfaces in the slide's finish call
                    continue
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - recorded, the job goes on
                    self._failed(active.pop(sid), kind, _reason(e))
                    self._check_actors(e)
                    continue
                if kind == "plan":
                    job = active[sid]
                    fp = to_text(self.plan.fingerprints.get(sid))  # as the local h5 attrs
                    attrs = {**out["attrs"], "source_fingerprint": fp} if fp else out["attrs"]
                    job["coords"], job["attrs"] = out["coords"], attrs
                    n = len(out["coords"])
                    job["left"] = deque(out["coords"][i : i + self.chunk]
                                        for i in range(0, n, self.chunk))  # fmt: skip
                    job["refs"] = []
                else:
                    self._done(active.pop(sid), out)
            self._save_status()
        self._save_status(force=True)
        done = set(self.summary.indexed) | set(self.summary.failed)
        for sid in sorted({t[0] for t in todo} - done):  # never silently: an engine bug shows
            self.summary.failed[sid] = "error: not processed by the Ray pipeline"

    def _done(self, job: dict, out: dict) -> None:
        sid, s = job["slide_id"], self.summary
        if out["n_patches"] is not None:
            self.plan.set_status(sid, "done", "", out["n_patches"], time.time() - job["t0"])
        if out["embed_error"]:
            s.failed[sid] = out["embed_error"]
        else:
            s.indexed.append(sid)
            rec = read_meta(record_path(Path(self.index_dir), sid)) or {}
            s.n_patches += int((rec.get("row") or {}).get("n_patches") or 0)
        self._tick(sid)

    def _failed(self, job: dict, kind: str, reason: str) -> None:
        sid = job["slide_id"]
        self.summary.failed[sid] = reason
        if kind in ("plan", "finish"):  # the features stage failed: as the local engine records
            Path(job["src"]["h5"]).unlink(missing_ok=True)
            self.plan.set_status(sid, "failed", reason, 0, time.time() - job["t0"])
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


def _public(job: dict) -> dict:
    """What a worker needs of a job (no object references, no reader queue)."""
    return {k: v for k, v in job.items() if k not in ("left", "refs", "t0")}


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
