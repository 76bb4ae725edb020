"""Runs on S3 storage (#21.2): a real S3 API (moto's server on 127.0.0.1, the session's `s3_server`), reached
by Ray Train, its workers and cfgdiff through AWS_ENDPOINT_URL: train, a killed worker's restart, and
`--resume` with more steps, with the same weights as the same runs on local disk."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import torch
from safetensors.torch import load_file

from cluster import storage as storage_io
from cluster.train import TrainJob, run_training
from tests.helpers import run_cli

from .conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def bucket(s3_server):
    fs = pafs.S3FileSystem(endpoint_override=s3_server.removeprefix("http://"), scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir("cfgdiff")
    return "s3://cfgdiff"


def _weights(where: str, tmp_path, tag: str) -> dict[str, torch.Tensor]:
    local = storage_io.fetch(where, tmp_path / tag)
    return load_file(str(local / "model.safetensors"))


def test_train_restart_and_resume_on_s3_equal_the_local_disk_runs(ray_session, tiny_data, bucket, tmp_path, capsys):
    cfg = tiny_config(tiny_data, "train.max_steps=12", "train.checkpoint_every=4", "train.keep_checkpoints=2")
    runs = f"{bucket}/runs"
    # a worker dies at step 6; Ray restarts the group from the step-4 checkpoint, read back from S3
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="s3run", storage=runs, workers=1,
                              max_failures=1, fail_at_step=6))
    assert s["step"] == 12 and s["export_dir"] == f"{runs}/s3run/export"
    assert storage_io.exists(f"{runs}/s3run/.fault_injected"), "the fault really fired"
    names = sorted(p.rsplit("/", 1)[1] for p in storage_io.checkpoints(f"{runs}/s3run"))
    assert names[-1] == "step_0000012" and len(names) == 2, names  # train.keep_checkpoints=2
    for f in ("export/model.safetensors", "export/README.md", "config.json", "best/config.json"):
        assert storage_io.exists(f"{runs}/s3run/{f}"), f
    fs, path = storage_io.location(f"{runs}/s3run/tensorboard")
    assert any(i.base_name.startswith("events.") for i in fs.get_file_info(pafs.FileSelector(path))), "TB on S3"
    # the same run on local disk, uninterrupted: the same weights, bit for bit
    local = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="disk", storage=str(tmp_path / "runs"),
                                  workers=1))
    ref = load_file(f"{local['export_dir']}/model.safetensors")
    got = _weights(f"{runs}/s3run/export", tmp_path, "s3export")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # --resume on S3 with more steps, through the CLI (and --storage-endpoint, the same server)
    import os

    code, out, err = run_cli(["train", "--data", str(tiny_data), "--out", runs, "--resume", "s3run", "--steps", "16",
                              "--storage-endpoint", os.environ["AWS_ENDPOINT_URL"]], capsys)
    assert code == 0 and "done: 16 steps" in out, err
    code, out, err = run_cli(["train", "--data", str(tiny_data), "--out", str(tmp_path / "runs"), "--resume", "disk",
                              "--steps", "16"], capsys)
    assert code == 0, err
    ref = load_file(str(tmp_path / "runs" / "disk" / "export" / "model.safetensors"))
    got = _weights(f"{runs}/s3run/export", tmp_path, "s3export16")
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed on S3 = resumed on disk"


def test_unreachable_or_missing_s3_storage_fails_in_one_line(tiny_data, bucket, capsys, monkeypatch):
    import os
    import time

    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])  # --storage-endpoint sets it: restored
    code, _, err = run_cli(["train", "--data", str(tiny_data), "--out", "s3://no-such-bucket/runs", "--steps", "2"],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "--out s3://no-such-bucket/runs: cannot reach the storage" in err, err
    code, _, err = run_cli(["train", "--data", str(tiny_data), "--out", f"{bucket}/runs", "--resume", "nothing"], capsys)
    assert code == 2 and "--resume nothing: no run at s3://cfgdiff/runs/nothing" in err, err
    code, _, err = run_cli(["train", "--data", str(tiny_data), "--out", f"{bucket}/runs", "--storage-endpoint",
                            "localhost:9000"], capsys)
    assert code == 2 and "--storage-endpoint 'localhost:9000': expected http(s)://HOST[:PORT]" in err, err
    t0 = time.time()  # nothing listens there: one line, in seconds (pyarrow's retries), before any worker
    code, _, err = run_cli(["train", "--data", str(tiny_data), "--out", f"{bucket}/runs", "--storage-endpoint",
                            "http://127.0.0.1:9"], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot reach the storage" in err and time.time() - t0 < 30, err
