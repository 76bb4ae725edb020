"""Connecting to Ray: start an embedded local cluster or join an existing one.

With no address (and no RAY_ADDRESS) we start Ray in-process on loopback, with a few more logical
CPUs than the physical count so that Ray Data read/write tasks are never starved by train workers
or inference actors (../shared/RAY_NOTES.md §0.3). The dashboard stays on: Train V2 needs it to
clean up placement groups of stopped Tune trials (§0.2).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

# Quieter and faster Train V2 defaults (RAY_NOTES §7); the user's own environment wins.
_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
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


def default_num_cpus() -> int:
    """Logical CPUs for the embedded cluster: physical cores + 4 headroom for Ray Data tasks."""
    return (os.cpu_count() or 2) + 4


def start_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> RayInfo:
    """Join ``address`` (``auto``, ``HOST:PORT``, ``ray://...``) or start an embedded local Ray.

    ``address="local"`` always starts a fresh local cluster (tests). A ``None`` address falls back
    to ``RAY_ADDRESS`` and then to a fresh embedded cluster.
    """
    if ray.is_initialized():
        r = ray.cluster_resources()
        return RayInfo(ray.get_runtime_context().gcs_address, False, r.get("CPU", 0), r.get("GPU", 0))
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True,
                  configure_logging=True)
    embedded = address == "local"
    if embedded:
        kwargs.update(num_cpus=num_cpus or default_num_cpus(), include_dashboard=True,
                      dashboard_host="127.0.0.1", object_store_memory=512 * 2**20,
                      _node_ip_address="127.0.0.1")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only embedded cluster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ray.init(address=address, **kwargs)
    _quiet_ray_data()
    r = ray.cluster_resources()
    return RayInfo(ray.get_runtime_context().gcs_address, embedded, r.get("CPU", 0), r.get("GPU", 0))


def _quiet_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = False
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))
