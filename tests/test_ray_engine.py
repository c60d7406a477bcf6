"""``threads-search index --engine ray`` on a local Ray (2 CPUs, loopback, no dashboard): the
same index as the local engine, a killed worker actor, a killed driver resumed; and the only
connections a local Ray makes outside loopback (strace of all its processes)."""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1 only

import numpy as np
import pandas as pd
import pytest

import threads_search as ts
from indexer.build import run_index
from indexer.config import IndexConfig
from indexer.records import list_records
from threads_search.errors import ConfigError
from threads_search.features.h5io import read_features
from threads_search.synth import make_archive
from threads_search.vectorstore import store
from threads_search.vectorstore.writer import read_embeddings

ray = pytest.importorskip("ray")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (start-up is slow), shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, hed_bundle):
    """A 4-slide synthetic archive and its index built by the local engine."""
    root = tmp_path_factory.mktemp("ray_engine")
    slides = make_archive(root / "slides", n_slides=4, width=2048, height=1536, seed=7)
    cfg = IndexConfig(
        inputs=[str(root / "slides")], model=str(hed_bundle), out=str(root / "loc"), workers=0
    )
    s = run_index(cfg)
    assert not s.failed and len(s.indexed) == 4
    return root, sorted(x.slide_id for x in slides)


def _cfg(root, hed_bundle, out, **kw) -> IndexConfig:
    return IndexConfig(
        inputs=[str(root / "slides")], model=str(hed_bundle), out=str(out), engine="ray", **kw
    )


def _tables(index_dir):
    gen = store.read_manifest(index_dir)["generation_dir"]
    ids, emb = read_embeddings(f"{gen}/slide_embeddings.parquet")
    return gen, pd.read_parquet(f"{gen}/slides.parquet"), ids, emb


def _assert_same_index(a, b):
    """Same ids, slide rows, embeddings (float tolerance) and attention."""
    gen_a, slides_a, ids_a, emb_a = _tables(a)
    gen_b, slides_b, ids_b, emb_b = _tables(b)
    assert list(ids_a.slide_id) == list(ids_b.slide_id) == list(slides_b.slide_id)
    cols = ["slide_id", "path", "mpp", "width", "height", "n_patches", "tissue_area_mm2"]
    pd.testing.assert_frame_equal(slides_a[cols], slides_b[cols])
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-5)
    for sid in ids_a.slide_id:
        att_a = pd.read_parquet(f"{gen_a}/attention/{sid}.parquet")
        att_b = pd.read_parquet(f"{gen_b}/attention/{sid}.parquet")
        np.testing.assert_array_equal(att_a[["x", "y"]], att_b[["x", "y"]])
        np.testing.assert_allclose(att_a.score, att_b.score, atol=1e-5)


class Recorder:
    """A progress object: records the engine's encoder workers and finished slides, and runs
    ``on_first`` at the first finished slide."""

    def __init__(self, on_first=None) -> None:
        self.workers, self.done, self.on_first = [], [], on_first

    def start_embedding(self, n: int) -> None:
        self.total = n

    def ray_workers(self, workers: list[dict]) -> None:
        self.workers = workers

    def embedded(self, sid: str) -> None:
        self.done.append(sid)
        if len(self.done) == 1 and self.on_first is not None:
            self.on_first()


def test_ray_index_equals_local(ray_address, local_index, hed_bundle, tmp_path):
    root, ids = local_index
    out = root / "ray"
    broken = tmp_path / "broken.svs"  # one unreadable slide: recorded, the job goes on
    broken.write_bytes(b"II*\x00garbage" * 50)
    cfg = _cfg(root, hed_bundle, out, workers=2)
    cfg.inputs.append(str(broken))
    prog = Recorder()
    s = run_index(cfg, progress=prog)
    assert sorted(s.indexed) == ids and set(s.failed) == {"broken"} and s.committed
    alone = IndexConfig(inputs=[str(broken)], model=str(hed_bundle), out=str(tmp_path / "b"))
    assert s.failed == run_index(alone).failed  # the local engine's reason, word for word
    assert sorted(prog.done) == sorted([*ids, "broken"]) and len(prog.workers) == 1
    assert prog.workers[0]["pid"] != os.getpid() and prog.workers[0]["device"] == "cpu"
    _assert_same_index(root / "loc", out)
    # per-slide features are the local engine's, and the FEATURES_DIR status says so
    for sid in ids:
        fa = read_features(root / "loc" / "features" / "h5" / f"{sid}.h5")
        fb = read_features(out / "features" / "h5" / f"{sid}.h5")
        np.testing.assert_array_equal(fa.coords, fb.coords)
        np.testing.assert_allclose(fa.features, fb.features, atol=1e-6)
        assert fa.attrs == fb.attrs
        assert (out / "features" / "thumbnails" / f"{sid}.jpg").stat().st_size > 500
    st = pd.read_parquet(out / "features" / "status.parquet").set_index("slide_id")
    assert sorted(st.index) == sorted([*ids, "broken"])
    assert set(st.state[ids]) == {"done"} and st.state["broken"] == "failed"
    assert st.error["broken"] == s.failed["broken"]
    # open_index cannot tell the engines apart
    ma, mb = store.read_manifest(root / "loc"), store.read_manifest(out)
    assert set(ma) == set(mb) and ma["slides"]["faiss"]["type"] == mb["slides"]["faiss"]["type"]
    ix = ts.open_index(out)
    assert list(ix.slides.slide_id) == ids
    hits = ix.search_slides(ids[0], k=3)
    assert len(hits) == 3 and set(hits.slide_id) <= set(ids)
    # a re-run changes nothing and starts no Ray work
    again = run_index(_cfg(root, hed_bundle, out), progress=Recorder())
    assert sorted(again.skipped) == ids and not again.indexed and not again.committed
    assert not again.failed


def test_ray_normalises_stain_as_the_local_engine(ray_address, local_index, tmp_path):
    """A model trained on Reinhard-normalised features: both engines fit each slide's stain in
    the plan step and normalise every patch read; features and index agree, and differ from
    the un-normalised ones."""
    from conftest import make_bundle

    from threads_search.patch_encoders import get_patch_encoder_spec

    root, ids = local_index
    pe = {**get_patch_encoder_spec("hed-texture").to_dict(), "stain": {"method": "reinhard"}}
    bundle = make_bundle(tmp_path / "model", pe)
    loc = IndexConfig(inputs=[str(root / "slides")], model=str(bundle), out=str(tmp_path / "l"))
    assert sorted(run_index(loc).indexed) == ids
    s = run_index(_cfg(root, bundle, tmp_path / "r", workers=2))
    assert sorted(s.indexed) == ids and not s.failed
    _assert_same_index(tmp_path / "l", tmp_path / "r")
    for sid in ids:
        fl = read_features(tmp_path / "l" / "features" / "h5" / f"{sid}.h5")
        fr = read_features(tmp_path / "r" / "features" / "h5" / f"{sid}.h5")
        assert fl.attrs["stain_method"] == fr.attrs["stain_method"] == "reinhard"
        assert fl.attrs == fr.attrs  # the same per-slide fit recorded
        np.testing.assert_allclose(fl.features, fr.features, atol=1e-6)
        plain = read_features(root / "loc" / "features" / "h5" / f"{sid}.h5")
        np.testing.assert_array_equal(plain.coords, fl.coords)
        assert np.abs(plain.features - fl.features).max() > 1e-3  # normalisation applied


def test_worker_killed_mid_job(ray_address, local_index, hed_bundle, monkeypatch):
    """The encoder actor is SIGKILLed after the first slide, with the other slides still to
    go: Ray restarts it and every slide is indexed. One slide in flight at a time makes the
    kill land at the same point whatever the machine's load (the driver admits the next slide
    only after the kill, so exactly one slide is recorded when it lands)."""
    import indexer.ray_engine

    monkeypatch.setattr(indexer.ray_engine, "MAX_INFLIGHT_SLIDES", 1)
    root, ids = local_index
    out = root / "ray_killed"
    state = {}

    def kill_worker():
        state["records_at_kill"] = len(list_records(out))
        pid = prog.workers[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30  # not our child: wait until it is gone
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
        state["dead"] = not _alive(pid)

    prog = Recorder(on_first=kill_worker)
    s = run_index(_cfg(root, hed_bundle, out), progress=prog)
    assert state == {"records_at_kill": 1, "dead": True}  # the rest went to a restarted actor
    assert sorted(s.indexed) == ids and not s.failed
    _assert_same_index(root / "loc", out)


def test_more_gpus_per_worker_than_the_cluster_has_is_a_config_error(
    ray_address, local_index, hed_bundle, tmp_path
):
    """``--gpus-per-worker`` above the cluster's GPUs: a ``ConfigError`` (one line, exit 2 in
    the CLI) naming both, before any Ray work starts; nothing committed."""
    root, _ = local_index
    out = tmp_path / "gpus"
    with pytest.raises(ConfigError, match="--gpus-per-worker 1: the Ray cluster has 0 GPU"):
        run_index(_cfg(root, hed_bundle, out, gpus_per_worker=1.0))
    assert not (out / store.INDEX_JSON).exists() and not list_records(out)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


DRIVER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from indexer.build import run_index
from indexer.config import IndexConfig
import indexer.ray_engine
indexer.ray_engine.MAX_INFLIGHT_SLIDES = 1  # nothing else in flight while blocked below

class Stop:
    def start_embedding(self, n):
        pass
    def embedded(self, sid):
        print("EMBEDDED", sid, flush=True)
        time.sleep(600)  # killed here by the test

cfg = IndexConfig(inputs=[{slides!r}], model={model!r}, out={out!r}, engine="ray",
                  ray_address={address!r})
run_index(cfg, progress=Stop())
"""


def _settled_records(out, quiet: float = 1.5, limit: float = 30.0) -> set[str]:
    """Work records once the killed job's workers (stopped by Ray when their driver dies)
    have written nothing for ``quiet`` seconds."""
    seen, since, t0 = set(list_records(out)), time.time(), time.time()
    while time.time() - since < quiet and time.time() - t0 < limit:
        time.sleep(0.5)
        now = set(list_records(out))
        if now != seen:
            seen, since = now, time.time()
    return seen


def test_driver_killed_then_resumed(ray_address, local_index, hed_bundle):
    root, ids = local_index
    out = root / "ray_resumed"
    script = DRIVER.format(
        repo=REPO,
        slides=str(root / "slides"),
        model=str(hed_bundle),
        out=str(out),
        address=ray_address,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and not line.startswith("EMBEDDED"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert line.startswith("EMBEDDED"), f"driver ended without a slide (rc={proc.poll()})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (out / store.INDEX_JSON).exists()  # killed before its commit
    before = _settled_records(out)
    assert len(before) == 1  # one slide finished, the others never started
    prog = Recorder()
    s = run_index(_cfg(root, hed_bundle, out), progress=prog)  # takes over the stale lock
    assert not s.failed, s.failed
    assert set(s.skipped) == before and sorted(s.skipped + s.indexed) == ids
    assert sorted(prog.done) == sorted(s.indexed) and len(s.indexed) == len(ids) - 1
    _assert_same_index(root / "loc", out)


NET_PROBE = """
import sys
sys.path.insert(0, {repo!r})
from indexer.ray_engine import ray_session

def one(x):
    return x + 1

with ray_session(None, 1) as ray:
    print("RESULT", ray.get(ray.remote(one).remote(1)), flush=True)
"""


def _dns_names(strace_args: str) -> set[str]:
    """Question names of the DNS queries in the string literals of one strace send line."""
    names = set()
    for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', strace_args):
        b, pos, labels = codecs.escape_decode(lit)[0], 12, []
        while pos < len(b) and b[pos]:
            labels.append(b[pos + 1 : pos + 1 + b[pos]].decode("ascii", "replace"))
            pos += 1 + b[pos]
        names.add(".".join(labels))
    return names


def _outside_connects(trace: str) -> list[tuple[str, str, int, str, set[str]]]:
    """``(pid's program, address, port, result, DNS names asked)`` for every ``connect()`` in
    an ``strace -f`` log of connect, send*, execve and clone* that is not loopback or Unix."""
    lines = trace.splitlines()
    prog, parent = {}, {}
    for line in lines:  # first pass: each pid's program (threads and forks: their parent's)
        m = re.match(r'(\d+)\s+execve\("[^"]*", \[(.*?)\]', line)
        if m:
            prog[m.group(1)] = m.group(2)[:300]
        m = re.match(r"(\d+)\s+(?:<\.\.\. )?(?:clone3?|v?fork)[( ].*= (\d+)$", line)
        if m:
            parent[m.group(2)] = m.group(1)

    def program(pid: str) -> str:
        for _ in range(64):
            if pid in prog or pid not in parent:
                break
            pid = parent[pid]
        return prog.get(pid, "?")

    found = []
    dns: dict[tuple[str, str], set[str]] = {}  # (pid, fd) of a socket connected to port 53
    for line in lines:
        m = re.match(r"(\d+)\s+send(?:to|mmsg)\((\d+), (.*)", line)
        if m and (m.group(1), m.group(2)) in dns:
            dns[(m.group(1), m.group(2))] |= _dns_names(m.group(3))
            continue
        m = re.match(r"(\d+)\s+connect\((\d+), (.*)", line)
        if not m:
            continue
        pid, fd, rest = m.groups()
        dns.pop((pid, fd), None)  # the descriptor now names another socket
        m = re.match(r'\{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), .*?"([^"]+)"', rest)
        if not m or _local(m.group(2)):
            continue
        port, addr = int(m.group(1)), m.group(2)
        names: set[str] = set()
        if port == 53:
            dns[(pid, fd)] = names  # filled by the sends on that socket
        found.append((program(pid), addr, port, rest.rsplit("= ", 1)[-1], names))
    return found


def _local(addr: str) -> bool:
    """Loopback or unspecified (IPv4, IPv6 or IPv4-mapped IPv6)."""
    ip = ipaddress.ip_address(addr)
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or ip.is_unspecified


def test_local_ray_connects_nowhere_outside_loopback(tmp_path):
    """A local Ray started by ``ray_session`` (usage stats left to it) makes no connection
    outside loopback, not even its dashboard's cloud-metadata probe or that probe's DNS lookup
    (strace of every process of the job); the probe goes to the closed loopback proxy."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed (apt-get install strace)")
    log = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    calls = "connect,sendto,sendmmsg,execve,clone,clone3,fork,vfork"
    opts = ["-f", "-qq", "-s", "256", "-e", f"trace={calls}"]
    cmd = [strace, *opts, "-o", str(log), sys.executable, "-c", NET_PROBE.format(repo=REPO)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if res.returncode != 0 and "ptrace" in res.stderr:
        pytest.skip(f"strace cannot trace here: {res.stderr.strip()[:200]}")
    assert "RESULT 2" in res.stdout, res.stderr[-2000:]
    text = log.read_text(errors="replace")
    seen = _outside_connects(text)
    assert any("raylet" in p for p in _programs(log)), "the trace did not follow Ray's processes"
    inet = re.findall(r"^\d+\s+connect\(\d+, \{sa_family=AF_INET", text, re.MULTILINE)
    assert len(inet) > 3, "no TCP connect seen (not even Ray's own on 127.0.0.1)"
    assert not seen, seen
    probe = re.findall(r"connect\(\d+, \{sa_family=AF_INET, sin_port=htons\(9\), ", text)
    assert probe, "the dashboard's metadata probe did not go to the loopback proxy"


def _programs(log) -> list[str]:
    return re.findall(r'\d+\s+execve\("([^"]*)"', log.read_text(errors="replace"))
