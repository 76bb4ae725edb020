"""Runs on S3 (#21.1, #21.2): a real S3 API (moto's server on 127.0.0.1, the session's `s3_server`), reached
by Ray Train, Ray Tune, their workers and cfgdiff through AWS_ENDPOINT_URL. With data and storage both on
s3://: convert, train, a killed worker's restart, `--resume` with more steps, tune with 2 trials interrupted and
resumed, infer from s3:// to s3:// and evaluate; each gives what the same command gives on local disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from safetensors.torch import load_file

from cfgdiff import fsio
from cfgdiff.export import step_checkpoints
from cluster import storage as storage_io
from cluster.train import TrainJob, run_training
from cluster.tune import TuneJob, run_tune
from tests.helpers import run_cli

from .conftest import tiny_config
from .remote_runs import INFER_FLAGS, infer_and_evaluate_equal_local

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def bucket(s3_server):
    fs = pafs.S3FileSystem(endpoint_override=s3_server.removeprefix("http://"), scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir("cfgdiff")
    return "s3://cfgdiff"


@pytest.fixture(scope="module")
def s3_data(bucket, tiny_data):
    """tiny_data's arrays converted by the CLI straight to S3 (the same options as tiny_data)."""
    from cli.main import main

    main(["--quiet", "convert", str(tiny_data.parent / "x.npy"), "--degrade", "drop:0.7", "--val-fraction", "0.1",
          "--seed", "0", "--out", f"{bucket}/data"])  # exits (SystemExit) only on an error
    return f"{bucket}/data"


def test_convert_to_s3_writes_the_local_dataset_byte_for_byte(s3_data, tiny_data, tmp_path, capsys):
    local = fsio.download(s3_data, tmp_path / "fetched")
    names = sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert all((tiny_data / n).read_bytes() == (local / n).read_bytes() for n in names), "same bytes as on disk"
    # an occupied --out is refused, a missing bucket is one line, and neither leaves anything behind
    x = str(tiny_data.parent / "x.npy")
    code, _, err = run_cli(["convert", x, "--degrade", "drop:0.7", "--out", s3_data], capsys)
    assert code == 2 and f"--out {s3_data}: exists and is not empty" in err, err
    code, _, err = run_cli(["convert", x, "--degrade", "drop:0.7", "--out", "s3://no-such-bucket/d"], capsys)
    assert code == 2 and err.count("\n") == 1 and "s3://no-such-bucket/d" in err, err


def _weights(where: str, tmp_path, tag: str) -> dict[str, torch.Tensor]:
    local = storage_io.fetch(where, tmp_path / tag)
    return load_file(str(local / "model.safetensors"))


def test_train_restart_and_resume_on_s3_equal_the_local_disk_runs(ray_session, tiny_data, s3_data, bucket, tmp_path,
                                                                   capsys):
    cfg = tiny_config(tiny_data, "train.max_steps=12", "train.checkpoint_every=4", "train.keep_checkpoints=2")
    runs = f"{bucket}/runs"
    # data read from S3; a worker dies at step 6; Ray restarts the group from the step-4 checkpoint, read back from S3
    s = run_training(TrainJob(data_dir=s3_data, config=cfg, run_name="s3run", storage=runs, workers=1,
                              max_failures=1, fail_at_step=6))
    assert s["step"] == 12 and s["export_dir"] == f"{runs}/s3run/export"
    assert storage_io.exists(f"{runs}/s3run/.fault_injected"), "the fault really fired"
    names = sorted(p.rsplit("/", 1)[1] for p in step_checkpoints(f"{runs}/s3run"))
    assert names[-1] == "step_0000012" and len(names) == 2, names  # train.keep_checkpoints=2
    for f in ("export/model.safetensors", "export/README.md", "config.json", "best/config.json"):
        assert storage_io.exists(f"{runs}/s3run/{f}"), f
    fs, path = storage_io.location(f"{runs}/s3run/tensorboard")
    assert any(i.base_name.startswith("events.") for i in fs.get_file_info(pafs.FileSelector(path))), "TB on S3"
    # the same run on local disk (data and storage), uninterrupted: the same weights, bit for bit
    local = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="disk", storage=str(tmp_path / "runs"),
                                  workers=1))
    ref = load_file(f"{local['export_dir']}/model.safetensors")
    got = _weights(f"{runs}/s3run/export", tmp_path, "s3export")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # --resume on S3 with more steps, through the CLI (and --storage-endpoint, the same server)
    import os

    code, out, err = run_cli(["train", "--data", s3_data, "--out", runs, "--resume", "s3run", "--steps", "16",
                              "--storage-endpoint", os.environ["AWS_ENDPOINT_URL"]], capsys)
    assert code == 0 and "done: 16 steps" in out, err
    code, out, err = run_cli(["train", "--data", str(tiny_data), "--out", str(tmp_path / "runs"), "--resume", "disk",
                              "--steps", "16"], capsys)
    assert code == 0, err
    ref = load_file(str(tmp_path / "runs" / "disk" / "export" / "model.safetensors"))
    got = _weights(f"{runs}/s3run/export", tmp_path, "s3export16")
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed on S3 = resumed on disk"
    # `cfgdiff export` from an S3 run to S3: the latest step's weights (the final EMA), without training state
    code, out, err = run_cli(["export", f"{runs}/s3run", "--out", f"{bucket}/shared/model"], capsys)
    assert code == 0 and "(README.md, config.json, model.safetensors)" in out, err
    got = _weights(f"{bucket}/shared/model", tmp_path, "shared")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    code, out, err = run_cli(["info", f"{bucket}/shared/model"], capsys)
    assert code == 0 and "parameters:" in out, err
    code, _, err = run_cli(["export", f"{runs}/s3run", "--out", f"{bucket}/shared/model"], capsys)
    assert code == 2 and "exists; choose another --out or pass --overwrite" in err, err


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


def test_infer_and_evaluate_from_s3_to_s3_equal_the_local_runs(ray_session, tiny_checkpoint, tiny_data, s3_data, bucket,
                                                             tmp_path, capsys):
    ckpt, _ = infer_and_evaluate_equal_local(bucket, s3_data, tiny_checkpoint, tiny_data, tmp_path, capsys)
    # an array input on S3 (conditions with NaN where unknown) is fetched and reconstructed whole
    cond = np.load(tmp_path / "rec.npy")[:, 0]
    cond[:, ::2] = np.nan
    np.save(tmp_path / "obs.npy", cond)
    fsio.upload(tmp_path / "obs.npy", f"{bucket}/in/obs.npy")
    code, out, err = run_cli(["--quiet", "infer", ckpt, "--input", f"{bucket}/in/obs.npy", "--out",
                              f"{bucket}/out/obs_rec.npy", "--steps", "2"], capsys)
    assert code == 0 and "6 rows" in out, err
    code, out, _ = run_cli(["serve", ckpt, "--print-config"], capsys)  # replicas load it from S3 too
    assert code == 0 and f"checkpoint: {ckpt}\n" in out, out
    code, _, err = run_cli(["infer", ckpt, "--input", s3_data, "--out", f"{bucket}/out/rec.npy", *INFER_FLAGS], capsys)
    assert code == 2 and f"{bucket}/out/rec.npy exists; pass --overwrite" in err, err


def test_tune_on_s3_interrupted_and_resumed_trains_like_local_disk(ray_session, tiny_data, s3_data, bucket, tmp_path):
    """`cfgdiff tune` with data and --out on S3, in its own process on the same cluster, is interrupted (SIGINT)
    after its first trial; resuming finishes the search without training the finished trial again (its export
    on S3 is untouched), and a trial's model is the one `cfgdiff train` makes with its p from local disk."""
    from .test_cli_ray import _sets

    out = f"{bucket}/tune"
    cmd = [sys.executable, "-m", "cli.main", "tune", "--data", s3_data, "--out", out, "--storage-endpoint",
           os.environ["AWS_ENDPOINT_URL"], "--ray-address", ray_session.address, "--p-grid", "0.2,0.3", "--w-grid",
           "0,1", "--epochs", "1", *_sets("train.lr=2e-3")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    deadline = time.time() + 240
    while time.time() < deadline and len(_trial_runs(out)) < 2:  # the second trial starts once Tune has the first done
        assert proc.poll() is None, "tune exited before it could be interrupted: " + proc.stderr.read()[-2000:]
        time.sleep(0.5)
    second = _trial_runs(out)[-1]
    first = {e: _mtime(f"{e}/model.safetensors") for e in _trial_exports(out) if not e.startswith(second)}
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and f"continue with `cfgdiff tune --data {s3_data} --out {out}" in err, err[-2000:]
    assert len(first) == 1, f"the first trial finished before the interrupt: {first}"
    cfg = tiny_config(tiny_data, "train.lr=2e-3")
    s = run_tune(TuneJob(data_dir=s3_data, config=cfg, out_dir=out, p_grid=(0.2, 0.3), w_grid=(0.0, 1.0), epochs=1,
                         resume=True))
    assert len(s["rows"]) == 2 and all(r["status"] == "completed" for r in s["rows"]), s["rows"]
    assert all(_mtime(f"{e}/model.safetensors") == t for e, t in first.items()), "finished trials were not rerun"
    best = json.loads(fsio.read_text(f"{out}/best.json"))
    assert best["checkpoint"].startswith(f"{out}/trials/") and fsio.is_file(f"{out}/trials.csv")
    # the trial finished after the resume is the Train run `cfgdiff train` makes with its p from local data and disk
    r = next(r for r in s["rows"] if r["checkpoint"] not in first)
    local = run_training(TrainJob(data_dir=str(tiny_data), config=replace(cfg, train=replace(cfg.train, p_uncond=r["p"])),
                                  run_name="p", storage=str(tmp_path), workers=1, epochs=1))
    ref = load_file(f"{local['export_dir']}/model.safetensors")
    got = _weights(r["checkpoint"], tmp_path, "trial")
    assert all(torch.equal(ref[k], got[k]) for k in ref), f"trial p={r['p']} differs from the local run"


def _mtime(where: str):
    fs, path = fsio.location(where)
    return fs.get_file_info(path).mtime


def _trial_runs(out: str) -> list[str]:
    """The trials' Train runs under the search (each writes its config.json when it starts), in trial order."""
    if not fsio.is_dir(f"{out}/trials"):
        return []
    fs, path = fsio.location(f"{out}/trials")
    return sorted(f"s3://{i.path}" for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory)


def _trial_exports(out: str) -> list[str]:
    return [f"{d}/export" for d in _trial_runs(out) if fsio.is_file(f"{d}/export/model.safetensors")]
