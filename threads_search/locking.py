"""Exclusive writer locks on output folders (INDEX_DIR, FEATURES_DIR), by ``fcntl.flock``.

``DirLock(folder)`` holds an exclusive ``flock`` on ``folder/.lock`` for the writer's lifetime.
The kernel drops it when the process ends, however it ends (kill -9 included), so a lock is
never stale and nothing is "taken over": a killed writer's file is simply locked again. The
holder writes its pid, host, start time and command into the file, for the message that
refuses a second writer; an empty or unreadable file only means those details are unknown
(the message says so), it never blocks anyone.

Protocol (no moment where two writers hold it): open or create the file, ``flock(LOCK_EX |
LOCK_NB)``, then check that the path still names the inode that was locked; a releasing holder
unlinks the file while still holding it, so a writer that locked an unlinked inode retries.
Release: unlink, then close. Processes forked while the lock is held (patch-reader workers)
close their inherited descriptor at once, so a killed writer's lingering children never keep
its lock. Never delete ``.lock`` by hand while a writer runs: a new writer would then lock a new
file next to the running one.

NFS: Linux emulates ``flock`` on NFS with POSIX byte-range locks (NFSv4, or v3 with lockd),
which exclude writers on all clients, but per process, not per descriptor. On mounts with
``local_lock=flock``/``all``, or file systems without locking, it excludes only writers on the
same machine: run the writers of one folder on one machine there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from threads_search.errors import BusyError
from threads_search.paths import display_text

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)
_HELD: set[int] = set()  # descriptors of locks held by this process


def _close_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent keeps its lock
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class WriterLockedError(BusyError):
    """Another writer holds the folder's lock; the message names it when it is known (a
    ``ThreadsSearchError``, and a ``RuntimeError`` as before)."""


def _describe(holder: dict | None, raw: str) -> str:
    if holder is None:
        if raw.strip():
            return f"another process (its lock file holds unreadable details: {raw[:80]!r})"
        return "another process (it has not written its pid and command yet)"
    since = holder.get("since")
    when = ""
    if isinstance(since, (int, float)):
        when = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{when} "
        f"({holder.get('command') or 'command unknown'})"
    )


def _parse(raw: str) -> dict | None:
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


class DirLock:
    """Exclusive writer lock on ``folder`` (``folder/.lock``); a context manager.

    ``took_over`` holds the details left by a previous writer that ended without releasing
    (killed), or ``{"unreadable": text}`` when its file was empty or garbage; a note is logged.
    Raises ``error`` (a ``WriterLockedError``) naming the holder when another writer is active."""

    def __init__(self, folder: str | Path, command: str = "", error=WriterLockedError) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self.error = error
        self.took_over: dict | None = None
        self._fd: int | None = None
        self._owner = 0

    def __enter__(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = _read(fd)
                os.close(fd)
                raise self.error(
                    f"{self.path.parent} is being written by {_describe(_parse(raw), raw)}; "
                    f"wait for it to finish (its lock is released when that process ends)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had just unlinked: try the new one
        self._fd, self._owner = fd, os.getpid()
        _HELD.add(fd)
        self._note_previous(_read(fd))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        info["command"] = display_text(self.command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return self

    def _note_previous(self, raw: str) -> None:
        if not raw:
            return
        holder = _parse(raw)
        self.took_over = holder if holder is not None else {"unreadable": raw[:200]}
        what = _describe(holder, raw) if holder else f"unreadable details {raw[:80]!r}"
        note = "%s: the previous writer (%s) ended without releasing its lock (killed?); its "
        log.warning(note + "lock file was treated as stale", self.path.parent, what)

    def __exit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._owner:
            return
        _HELD.discard(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it (see the protocol)
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""
