"""Writer locks on INDEX_DIR and FEATURES_DIR with real processes racing: exactly one writer,
no lost generation, a killed holder (and its forked children) never blocks, an empty or garbage
lock file never blocks, a second features run is refused naming the holder."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from indexer.build import run_index
from indexer.config import IndexConfig
from threads_search.cli import app
from threads_search.features import default_config, extract_features
from threads_search.features.extract import features_lock
from threads_search.locking import WriterLockedError
from threads_search.synth import make_archive, make_slide
from threads_search.vectorstore import store
from threads_search.vectorstore.store import IndexLock, IndexLockedError

runner = CliRunner()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORK = mp.get_context("fork")
DEAD_PID = 2**22 + 12345  # above pid_max on Linux: no such process


def _stale(path, kind: int) -> None:
    """A lock file as a killed writer (or something else) left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [f'{{"pid": {DEAD_PID}, "host": "{os.uname().nodename}", "since": 0}}', "", "garbage"]
    path.write_text(text[kind % 3])


def _contender(out, rank, n, trials, wins, barrier):
    """One writer process: each trial, try the lock with the others at the same instant; the
    winner writes and commits a generation, then holds on until every one has tried."""
    for t in range(trials):
        if rank == 0:
            _stale(out / ".lock", t)
        barrier.wait()
        lock = IndexLock(out, command=f"contender {rank}")
        try:
            lock.__enter__()
        except IndexLockedError:
            lock = None
        if lock is not None:
            store.remove_uncommitted(out)  # what a real writer does first
            gen = store.new_generation(out)
            (gen / "marker").write_text(str(rank))
            time.sleep(0.002)
            store.commit(out, gen, {"trial": t})
            wins[t * n + rank] = 1
        barrier.wait()  # everyone has tried before the winner lets go
        if lock is not None:
            lock.__exit__(None, None, None)
        barrier.wait()


def test_stale_lock_take_over_has_exactly_one_winner(tmp_path):
    n, trials = 4, 40
    out = tmp_path / "idx"
    out.mkdir()
    wins = FORK.Array("i", n * trials)
    barrier = FORK.Barrier(n)
    procs = [
        FORK.Process(target=_contender, args=(out, r, n, trials, wins, barrier)) for r in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    per_trial = [sum(wins[t * n : (t + 1) * n]) for t in range(trials)]
    assert per_trial == [1] * trials  # never two writers, never none
    m = store.read_manifest(out)  # the last commit is whole and readable
    assert m["trial"] == trials - 1 and os.path.isfile(os.path.join(m["generation_dir"], "marker"))
    assert len(list((out / store.GENERATIONS).iterdir())) <= 2


def _churn(out, rank, rounds, counts):
    """Take and release the lock as fast as possible; a marker created exclusively while
    holding it proves nobody else holds it at the same time."""
    marker = out / "inside"
    for _ in range(rounds):
        try:
            with IndexLock(out, command=f"churn {rank}"):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    counts[2 * rank + 1] += 1  # two holders at once
                    continue
                os.close(fd)
                counts[2 * rank] += 1
                os.unlink(marker)
        except IndexLockedError:
            pass
    while True:  # progress: every process gets the lock once the others are done churning
        try:
            with IndexLock(out, command=f"churn {rank} (last)"):
                counts[2 * rank] += 1
                return
        except IndexLockedError:
            time.sleep(0.01)


def test_lock_excludes_under_churn(tmp_path):
    n, rounds = 4, 300
    out = tmp_path / "idx"
    out.mkdir()
    counts = FORK.Array("i", 2 * n)
    procs = [FORK.Process(target=_churn, args=(out, r, rounds, counts)) for r in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    assert sum(counts[1::2]) == 0  # never two holders at once
    assert all(c >= 1 for c in counts[0::2])  # and every process got in
    assert not (out / ".lock").exists()  # released by unlinking, as a clean exit does


HOLDER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from threads_search.vectorstore.store import IndexLock
lock = IndexLock({out!r}, command="holder for the test")
lock.__enter__()
child = os.fork()
if child == 0:  # a reader worker forked while the lock is held: outlives its parent
    time.sleep(120)
    os._exit(0)
print("HOLDING", child, flush=True)
time.sleep(600)
"""


def test_killed_holder_and_its_children_never_block(tmp_path):
    out = tmp_path / "idx"
    code = textwrap.dedent(HOLDER.format(repo=REPO, out=str(out)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        word, child = proc.stdout.readline().split()
        assert word == "HOLDING"
        with pytest.raises(IndexLockedError, match=f"pid {proc.pid} .*holder for the test"):
            IndexLock(out).__enter__()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        with IndexLock(out) as lock:  # its forked child still runs, yet the lock is free
            assert lock.took_over["pid"] == proc.pid
            os.kill(int(child), 0)  # the child was alive all along
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None:
            os.kill(int(child), signal.SIGKILL)


@pytest.mark.parametrize("content", ["", "garbage", '{"pid": -1}', '{"pid": 7, "host": "other"}'])
def test_empty_or_garbage_lock_file_is_stale(tmp_path, content):
    out = tmp_path / "idx"
    out.mkdir()
    (out / ".lock").write_text(content)
    with IndexLock(out) as lock:
        assert (lock.took_over is None) == (content == "")
    assert not (out / ".lock").exists()


def test_holder_without_details_is_described_as_such(tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # locked, details not written yet
    try:
        with pytest.raises(IndexLockedError, match="not written its pid") as e:
            IndexLock(out).__enter__()
        said = str(e.value).replace(str(out), "INDEX_DIR")  # the temp path may hold "-1"
        assert "1970" not in said and "pid -1" not in said and "-1 " not in said
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def three_slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock_slides")
    make_archive(root / "a", n_slides=3, width=1536, height=1024, mpp=0.5, seed=8)
    for i in range(3):
        make_slide(root / "b" / f"other_{i}.svs", 1536, 1024, 0.5, seed=20 + i)
    return root


def test_second_features_writer_is_refused(tmp_path, three_slides, hed_bundle):
    feats = tmp_path / "feats"
    slides = three_slides / "a"
    cfg = default_config("hed-texture", workers=0, batch_size=8)
    with features_lock(feats, "features holder for the test"):
        with pytest.raises(WriterLockedError, match=f"pid {os.getpid()} .*features holder"):
            extract_features([slides], feats, cfg)
        res = runner.invoke(app, ["features", str(slides), "--out", str(feats)])
        assert res.exit_code == 2 and "features holder" in " ".join(res.output.split())
        res = runner.invoke(
            app,
            [
                "index",
                str(slides),
                "--model",
                str(hed_bundle),
                "--out",
                str(tmp_path / "idx"),
                "--features-dir",
                str(feats),
            ],
        )
        assert res.exit_code == 2 and "features holder" in " ".join(res.output.split())
    assert not (feats / "status.parquet").exists() and not (feats / "h5").exists()


def test_two_features_runs_on_one_folder_lose_no_status_row(tmp_path, three_slides, hed_bundle):
    feats = tmp_path / "feats"
    runs = []
    for part in ("a", "b"):  # two runs, other slides, one FEATURES_DIR, started together
        cmd = [
            sys.executable,
            "-m",
            "threads_search",
            "features",
            str(three_slides / part),
            "--out",
            str(feats),
            "--workers",
            "0",
        ]
        runs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = [(p.wait(300), " ".join(p.stdout.read().split())) for p in runs]
    for rc, text in outs:  # each run either did its work or was refused naming the other
        assert rc == 0 or (rc == 2 and "is being written by pid" in text), text
    st = pd.read_parquet(feats / "status.parquet")
    h5 = sorted(p.stem for p in (feats / "h5").glob("*.h5"))
    assert sorted(st.slide_id) == h5 and (st.state == "done").all()
    expected = {"a": {f"slide_{i:03d}" for i in range(3)}, "b": {f"other_{i}" for i in range(3)}}
    for (rc, _), part in zip(outs, "ab", strict=True):
        assert (expected[part] <= set(h5)) == (rc == 0)
    s = run_index(IndexConfig(inputs=[str(feats)], model=str(hed_bundle), out=str(tmp_path / "i")))
    assert sorted(s.indexed) == h5 and not s.failed and not s.adopted
