"""Shared fixtures. One fresh local Ray per session, started only when a test asks for it."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

# Quieter, faster Ray Train V2 (../shared/RAY_NOTES.md §7); set before Ray is imported anywhere.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # tests bind Ray to loopback only

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A suite started in the background by a non-interactive shell (`pytest &`, nohup) inherits SIGINT ignored
# (POSIX), and so would every cfgdiff process it starts: the Ctrl-C tests would then test nothing (their
# processes ignore Ctrl-C and run to the end). Python's own handler here makes children start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

RAY_CPUS = 6  # a few more logical CPUs than workers + actors so Ray Data is never starved


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server, over HTTP) on 127.0.0.1 for the session. It starts before Ray, so every Ray
    process finds it through the standard AWS_ENDPOINT_URL, with throwaway credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def gcs_server():
    """A real GCS JSON API (gcp-storage-emulator's server) on 127.0.0.1 for the session, with a bucket ``cfgdiff``.
    It starts before Ray, so every Ray process finds it through the standard STORAGE_EMULATOR_HOST."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--in-memory", "--default-bucket", "cfgdiff"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.1)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    yield "gs://cfgdiff"
    server.terminate()
    server.wait(10)
    if saved is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture(scope="session")
def ray_session(s3_server, gcs_server):
    from cluster.runtime import start_ray, stop_ray

    # dashboard on: the tune tests need Train V2's placement-group cleaner (RAY_NOTES §0.2)
    info = start_ray(address="local", num_cpus=RAY_CPUS, quiet=True, object_store_mb=512, dashboard=True)
    assert info.address.startswith("127.0.0.1:"), info.address
    yield info
    stop_ray(info)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_cfgdiff_logger():
    """An in-process CLI call configures the ``cfgdiff`` logger for its console (``cli.common.setup_logging``);
    put it back after each test, so that later tests' ``caplog`` still sees cfgdiff's records."""
    log = logging.getLogger("cfgdiff")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved
