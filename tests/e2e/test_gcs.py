"""gs:// against a real GCS JSON API (#21.1): gcp-storage-emulator's server on 127.0.0.1, reached through the
standard STORAGE_EMULATOR_HOST. convert to gs://, infer from gs:// to gs:// (checkpoint, data and outputs there)
and evaluate on gs:// give what the same commands give on local disk. Ray Train and Tune storage on gs:// is not
covered here: Ray resolves a gs:// storage path itself, with Google's default credentials, which an emulator
cannot give (see the README's object-storage section)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from cfgdiff import fsio
from tests.helpers import run_cli

from .remote_runs import infer_and_evaluate_equal_local

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def gcs_bucket():
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
    saved = os.environ.get(fsio.GCS_EMULATOR_ENV)
    os.environ[fsio.GCS_EMULATOR_ENV] = f"http://127.0.0.1:{port}"
    try:
        yield "gs://cfgdiff"
    finally:
        server.terminate()
        server.wait(10)
        if saved is None:
            os.environ.pop(fsio.GCS_EMULATOR_ENV, None)
        else:
            os.environ[fsio.GCS_EMULATOR_ENV] = saved


def test_convert_infer_and_evaluate_on_gcs_equal_the_local_runs(ray_session, tiny_checkpoint, tiny_data, gcs_bucket,
                                                                tmp_path, capsys):
    b = gcs_bucket
    x = str(tiny_data.parent / "x.npy")
    code, _, err = run_cli(["--quiet", "convert", x, "--degrade", "drop:0.7", "--val-fraction", "0.1", "--seed", "0",
                            "--out", f"{b}/data"], capsys)
    assert code == 0, err
    local = fsio.download(f"{b}/data", tmp_path / "fetched")
    names = sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert all((tiny_data / n).read_bytes() == (local / n).read_bytes() for n in names), "same bytes as on disk"
    code, _, err = run_cli(["convert", x, "--degrade", "drop:0.7", "--out", "gs://no-such-bucket/d"], capsys)
    assert code == 2 and err.count("\n") == 1 and "gs://no-such-bucket/d" in err, err

    infer_and_evaluate_equal_local(b, f"{b}/data", tiny_checkpoint, tiny_data, tmp_path, capsys)
