"""A Ray cluster for ``threads-search index --engine ray``: :func:`ray_session` connects to one
(``--ray-address``) or starts a local Ray bound to loopback, and no packet of it leaves the
machine (its docstring says how, and ``tests/test_ray_engine.py`` checks it with strace).
"""

from __future__ import annotations

import contextlib
import os

from threads_search.errors import ConfigError

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
            raise ConfigError(
                f"--ray-address {address}: cannot connect to a Ray head ({e}); give the address "
                "of a running cluster (`ray start --head` prints it), or none for a local Ray"
            ) from e
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
