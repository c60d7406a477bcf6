"""Start the UI: ``streamlit run ui/app.py`` on ``host:port`` against an index.

:func:`launch` (used by ``threads-search ui INDEX_DIR [--port] [--host] [--tile-port]``) runs
the server in the foreground until it stops or Ctrl-C; :func:`start` returns a running
:class:`UiServer` (tests, notebooks), stopped with :meth:`UiServer.stop`. The Deep Zoom tile
server runs inside the Streamlit process (a daemon thread bound to the same host, a free port
unless ``tile_port`` is given), so stopping Streamlit stops it too. The browser loads the
viewer's tiles from that second port: behind an SSH tunnel or a proxy that forwards one port,
fix it with ``tile_port`` and forward it too (``threads-search ui --help``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from threads_search.errors import ConfigError
from ui.settings import (
    DEFAULT_MAX_UPLOAD_MB,
    ENV_CHECKPOINT,
    ENV_HOST,
    ENV_INDEX,
    ENV_MAX_UPLOAD_MB,
    ENV_TILE_PORT,
)

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501


def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """``preferred`` when it can be bound on ``host``, else a free port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port on {host}")


def check_tile_port(host: str, port: int, tile_port: int) -> None:
    """Raise ``ConfigError`` when a fixed ``tile_port`` is the app's port or cannot be bound on
    ``host`` (0: a free port is picked later, nothing to check)."""
    if not tile_port:
        return
    if int(tile_port) == int(port):
        raise ConfigError(f"--tile-port {tile_port} is the app's own --port: choose another")
    if not 0 < int(tile_port) < 65536:
        raise ConfigError(f"--tile-port {tile_port} is not a port number (1-65535)")
    if free_port(host, int(tile_port)) != int(tile_port):
        raise ConfigError(f"--tile-port {tile_port} is in use on {host}: choose another port")


def command(index_dir: str | Path, host: str, port: int, max_upload_mb: int) -> list[str]:
    """The ``streamlit run`` command line."""
    options = {
        "server.address": host,
        "server.port": port,
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "server.maxUploadSize": max_upload_mb,
        "browser.gatherUsageStats": "false",
        "client.showErrorDetails": "none",
        "client.toolbarMode": "minimal",
        "global.developmentMode": "false",
        # Widgets are given their current value as their start on every run (ui.state.keep);
        # where the app also set that value through Session State, Streamlit logs a warning.
        "global.disableWidgetStateDuplicationWarning": "true",
        "theme.base": "light",
    }
    flags = [a for name, value in options.items() for a in (f"--{name}", str(value))]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        *flags,
        "--",
        str(Path(index_dir).resolve()),
    ]


def _env(index_dir, host: str, tile_port: int, max_upload_mb: int, checkpoint=None) -> dict:
    env = dict(os.environ)
    env.pop(ENV_CHECKPOINT, None)
    env.update(
        {
            ENV_INDEX: str(Path(index_dir).resolve()),
            ENV_HOST: host,
            ENV_TILE_PORT: str(tile_port),
            ENV_MAX_UPLOAD_MB: str(max_upload_mb),
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        }
    )
    if checkpoint is not None:
        env[ENV_CHECKPOINT] = str(Path(checkpoint).resolve())
    return env


def _check_index(index_dir, checkpoint=None) -> None:
    """Fail before starting a server when the index cannot be opened or ``checkpoint`` is not
    a file."""
    import threads_search as ts

    ts.open_index(index_dir)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(
            f"--checkpoint {checkpoint}: file not found (the index's patch encoder weights)"
        )


@dataclass
class UiServer:
    """A running UI: ``url`` (the app), ``process`` (the Streamlit server)."""

    url: str
    process: subprocess.Popen

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (and its tile server thread); kills it after ``timeout`` s."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    tile_port: int = 0,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
    timeout: float = 60.0,
    log=None,
    checkpoint: str | Path | None = None,
) -> UiServer:
    """Start the UI in the background and wait until it answers (``timeout`` s). ``port`` None:
    8501 when free, else any free port. ``log``: a file for the server's output (default:
    discarded); ``checkpoint``: the index's pretrained patch encoder weights (uploads). Raises
    ``RuntimeError`` with the server's output when it does not come up."""
    _check_index(index_dir, checkpoint)
    port = free_port(host, port or DEFAULT_PORT)
    check_tile_port(host, port, tile_port)
    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        command(index_dir, host, port, max_upload_mb),
        env=_env(index_dir, host, tile_port, max_upload_mb, checkpoint),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    server = UiServer(f"http://{url_host}:{port}", proc)
    if not wait_until_healthy(proc, server.url, timeout):
        server.stop()
        raise RuntimeError(f"the UI server did not answer on {server.url} within {timeout:.0f} s")
    return server


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    """Whether the Streamlit server ``proc`` at ``url`` answers its health check within
    ``timeout`` s (False: it did not; ``RuntimeError`` when it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the UI server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def launch(
    index_dir: str | Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
    tile_port: int = 0,
    checkpoint: str | Path | None = None,
) -> int:
    """Run the UI in the foreground until it exits or Ctrl-C; returns its exit code.
    ``port`` None: 8501 when free, else a free port; ``tile_port`` 0: the viewer's tiles on a
    free port; ``checkpoint``: the index's pretrained patch encoder weights, for uploaded slides
    and images. The URLs are printed. Raises ``ConfigError`` for an unusable ``tile_port`` or a
    missing ``checkpoint``."""
    _check_index(index_dir, checkpoint)
    port = free_port(host, port or DEFAULT_PORT) if port is None else int(port)
    check_tile_port(host, port, tile_port)
    tiles = f"; viewer tiles on port {tile_port}" if tile_port else ""
    print(
        f"threads-search UI for {index_dir}: http://{host}:{port}{tiles}  (Ctrl-C to stop)",
        flush=True,
    )
    proc = subprocess.Popen(
        command(index_dir, host, port, max_upload_mb),
        env=_env(index_dir, host, tile_port, max_upload_mb, checkpoint),
    )
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
