"""Connecting to Ray: start an embedded local cluster or join an existing one.

With no address (and no RAY_ADDRESS) we start Ray in-process on loopback, with a few more logical
CPUs than the physical count so that Ray Data read/write tasks are never starved by train workers
or inference actors (../shared/RAY_NOTES.md §0.3). The embedded cluster starts lean: no dashboard
(about 2 s of start-up and a process; ``--dashboard`` turns it on), except for ``cfgdiff tune``,
where Train V2 needs it to clean up the placement groups of trials that ASHA stops (§0.2).
Its address is exported as RAY_ADDRESS for Ray's own clients in this process, so that a second
cfgdiff command with its own embedded Ray on the same host never makes them ask "which cluster?".
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass

# Quieter and faster Train V2 defaults (RAY_NOTES §7); the user's own environment wins.
_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # the controller's poll (2 s by default): a run's end is seen sooner
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DATA_LOG_LEVEL": "ERROR",  # --verbose (quiet=False) restores Ray Data's INFO logs
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's new console engine printed its banner and paths even at verbose=0
}
for _k, _v in _ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)

import ray  # noqa: E402


@dataclass
class RayInfo:
    address: str  # GCS address of the cluster
    embedded: bool  # True when this process started the cluster
    num_cpus: float
    num_gpus: float
    connected_here: bool = True  # False when Ray was already initialised by the caller


_QUIET = True  # the console mode of the last start_ray (quiet unless --verbose)


def console_is_quiet() -> bool:
    """Whether Ray's own warnings stay off the console (the default; ``--verbose`` shows them)."""
    return _QUIET


def default_num_cpus() -> int:
    """Logical CPUs for the embedded cluster: physical cores + 4 headroom for Ray Data tasks."""
    return (os.cpu_count() or 2) + 4


def start_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
              object_store_mb: int | None = None, dashboard: bool = False) -> RayInfo:
    """Join ``address`` (``auto``, ``HOST:PORT``, ``ray://...``) or start an embedded local Ray.

    ``address="local"`` always starts a fresh local cluster (tests). ``dashboard`` applies to an embedded
    cluster only. A ``None`` address falls back
    to ``RAY_ADDRESS`` and then to a fresh embedded cluster, whose object store is ``object_store_mb``
    or Ray's default (30% of RAM, allocated only as objects are stored): training materializes a
    dataset that fits in half of it and then reads every epoch from shared memory.
    """
    if ray.is_initialized():  # already connected (a notebook, a test session, a pipeline stage)
        r = ray.cluster_resources()
        return RayInfo(ray.get_runtime_context().gcs_address, False, r.get("CPU", 0), r.get("GPU", 0), False)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    check_reachable(address)
    if not quiet:
        os.environ["RAY_DATA_LOG_LEVEL"] = "INFO"
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True,
                  configure_logging=True)
    if quiet:  # workers and actors log errors only; cfgdiff's own progress lines are prints
        kwargs["logging_config"] = ray.LoggingConfig(log_level="ERROR")
    embedded = address == "local"
    if not embedded and (forward := storage_env()):  # an embedded cluster inherits this environment
        kwargs["runtime_env"] = {"env_vars": forward}
    if embedded:
        kwargs.update(num_cpus=num_cpus or default_num_cpus(), include_dashboard=dashboard,
                      dashboard_host="127.0.0.1")
        if object_store_mb is not None:
            kwargs["object_store_memory"] = object_store_mb * 2**20
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only embedded cluster
        # Bind every Ray service of the embedded cluster to 127.0.0.1: Ray resolves "127.0.0.1" to the
        # host's routable IP unless multi-node support is off (what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
        # does at import time), so turn it off for this single-node cluster only.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    saved_env = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    if embedded:
        # Ray's own clients (Train's placement-group cleaner, a detached actor the raylet spawns with the
        # environment it had at start-up) look the cluster up with address "auto", which fails with "Found
        # multiple active Ray instances" when another cfgdiff command runs its own embedded Ray on the host.
        # So the GCS port is chosen here and exported before start-up, for every process of this cluster.
        port = _free_port()
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(address=address, **kwargs)
    except BaseException:
        _restore(saved_env)
        raise
    if embedded:
        _restore({"RAY_GCS_SERVER_PORT": saved_env["RAY_GCS_SERVER_PORT"]})
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_ray_logs()
    global _QUIET
    _QUIET = quiet
    if quiet:
        _quiet_ray_processes()
    r = ray.cluster_resources()
    return RayInfo(ray.get_runtime_context().gcs_address, embedded, r.get("CPU", 0), r.get("GPU", 0))


STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "STORAGE_EMULATOR_HOST")


def storage_env() -> dict[str, str]:
    """Where object storage is (an S3-compatible endpoint, its region): given to the job's workers on a
    cluster, so that they reach the storage the driver names. Credentials are not forwarded: a cluster's
    nodes hold their own (instance roles, environment, ~/.aws)."""
    return {k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _restore(env: dict[str, str | None]) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on ``HOST:PORT`` / ``ray://HOST:PORT`` where nothing listens: ``ray.init`` would retry for
    minutes, printing only its own C++ retry lines."""
    import socket

    from cfgdiff.errors import InputError

    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise InputError(f"--ray-address {address}: cannot connect ({e.strerror or e}); check that the head node "
                         "runs (`ray status` there) and the host and port (GCS 6379, Ray Client 10001)") from None


def quiet_ray_logs() -> None:
    """Turn down Ray Data / Train / Tune chatter in this process (driver, trial or worker).

    Only libraries this process has imported are touched: importing Ray Data and Train just to quiet
    them cost ~1.6 s of every ``cfgdiff infer`` start-up, which uses neither."""
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "ray.data" in sys.modules:
        ctx = ray.data.DataContext.get_current()
        ctx.print_on_execution_start = False
        ctx.enable_progress_bars = False
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")  # consume the one-time "progress bars disabled" notice
    if "ray.train" in sys.modules:
        # Train V2 names this logger by file path; it logs every report at INFO
        from ray.train.v2._internal.execution import context as _train_ctx

        logging.getLogger(_train_ctx.__file__).setLevel(logging.WARNING)


# what still reaches the console from Ray's own processes (raylet, GCS, autoscaler): crashes, not chatter
_SEVERE = re.compile(r"FATAL|Check failed|SIGSEGV|SIGABRT|SIGBUS|Aborted|out of memory|OOM", re.IGNORECASE)


def _quiet_ray_processes() -> None:
    """Route the lines of Ray's own processes away from this console unless they report a crash (#16.10).

    Ray forwards raylet/GCS stderr to the driver: worker start-up warnings on a 2-core host, "Failed to
    kill actor ... RpcError: Socket closed" at shutdown. They read as failures and stay in Ray's own log
    files (``/tmp/ray/session_latest/logs``); ``--verbose`` shows them. Workers' and actors' own output
    is forwarded as before."""
    from ray._private import worker as ray_worker

    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if dispatcher is None or not hasattr(ray_worker, "print_to_stdstream"):
        return  # another Ray version: leave its console as it is
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)

    def forward(data: dict) -> None:
        if data.get("pid") in ("raylet", "gcs_server", "autoscaler"):
            lines = [line for line in data.get("lines", []) if _SEVERE.search(line)]
            if not lines:
                return
            data = {**data, "lines": lines}
        ray_worker.print_to_stdstream(data, ignore_prefix)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", forward)


def stop_ray(info: RayInfo | None = None) -> None:
    """Disconnect (and stop an embedded cluster) unless Ray was already up before ``start_ray``."""
    if ray.is_initialized() and (info is None or info.connected_here):
        ray.shutdown()
    if info is not None and info.embedded and os.environ.get("RAY_ADDRESS") == info.address:
        del os.environ["RAY_ADDRESS"]  # exported by start_ray for this cluster only


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))
