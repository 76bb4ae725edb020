"""The CLI on a real local Ray: a full train -> info -> infer flow, and bad input rejected before workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import noise_lines
from tests.helpers import run_cli as run

from .conftest import TINY_MODEL, TINY_TRAIN

pytestmark = [pytest.mark.ray, pytest.mark.slow]




def _sets(*extra):
    return [a for kv in TINY_MODEL + TINY_TRAIN + list(extra) for a in ("--set", kv)]


def test_cli_train_info_infer(ray_session, tiny_data, tmp_path, capsys):
    code, out, err = run(["train", "--data", str(tiny_data), "--out", str(tmp_path), "--name", "cli",
                          "--steps", "10", *_sets("train.checkpoint_every=0")], capsys)
    assert code == 0, err
    assert "tensorboard --logdir" in out and "done: 10 steps" in out
    export = tmp_path / "cli" / "export"
    # #21.3: an export to share: config, weights and a model card (no training state), 0644/0755 under umask 022
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (export / "README.md").read_text()
    assert "steps: 10" in card and f"cfgdiff train --data {tiny_data}" in card and "| psnr |" in card, card
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in export.iterdir()} == {0o666 & ~umask}
    assert stat.S_IMODE(export.stat().st_mode) == 0o777 & ~umask
    code, out, err = run(["export", str(tmp_path / "cli"), "--checkpoint", "best", "--out", str(tmp_path / "shared")],
                         capsys)
    assert code == 0 and "model.safetensors" in out, err
    assert "| psnr |" in (tmp_path / "shared" / "README.md").read_text()
    code, out, _ = run(["info", str(export)], capsys)
    assert code == 0 and "parameters:" in out and "GFLOPs" in out
    code, out, err = run(["--quiet", "infer", str(export), "--input", str(tiny_data), "--out", str(tmp_path / "r.npy"),
                          "--steps", "2", "--actors", "2", "--num-samples", "2"], capsys)
    assert code == 0, err
    assert "32 rows" in out and "images/s" in out and "model calls per image" in out and "steady state" in out
    m = json.loads((tmp_path / "r.metrics.json").read_text())["metrics"]
    assert {"psnr", "ssim", "mae_missing", "known_error", "coverage_2std", "std_error_corr"} <= set(m)
    code, _, err = run(["infer", str(export), "--input", str(tiny_data), "--out", str(tmp_path / "r.npy")], capsys)
    assert code == 2 and "--overwrite" in err
    # README "Reconstruct": your own arrays with the default flags are reconstructed whole (#17.1)
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(5, 16, 16)).astype(np.float32)
    mask = (rng.uniform(size=(5, 16, 16)) > 0.6).astype(np.uint8)
    np.save(tmp_path / "observed.npy", cond)
    np.save(tmp_path / "mask.npy", mask)
    code, out, err = run(["--quiet", "infer", str(export), "--input", str(tmp_path / "observed.npy"), "--mask",
                          str(tmp_path / "mask.npy"), "--out", str(tmp_path / "recon.npy"), "--steps", "2"], capsys)
    assert code == 0, err
    rec = np.load(tmp_path / "recon.npy")
    assert rec.shape == (5, 1, 16, 16) and np.array_equal(rec[:, 0][mask == 1], cond[mask == 1])
    obs_nan = np.where(mask == 1, cond, np.nan)
    np.save(tmp_path / "observed_nan.npy", obs_nan)
    code, out, err = run(["--quiet", "infer", str(export), "--input", str(tmp_path / "observed_nan.npy"), "--out",
                          str(tmp_path / "recon_nan.npy"), "--steps", "2"], capsys)
    assert code == 0 and np.array_equal(np.load(tmp_path / "recon_nan.npy"), rec), "NaN form = mask form"
    # bad flags and bad rows: exit 2, first line names the option or the input, nothing written
    bad_inf = cond.copy()
    bad_inf[3, 2, 2] = np.inf
    np.save(tmp_path / "inf.npy", bad_inf)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, match in [
        (["--input", str(tmp_path / "observed.npy"), "--mask", str(tmp_path / "mask.npy"), "--split", "val"],
         "--split val: applies to cfgdiff dataset directories"),
        (["--input", str(tiny_data), "--steps", "0"], "--steps must be >= 1"),
        (["--input", str(tiny_data), "--model-batch", "-1"], "--model-batch must be >= 0"),
        (["--input", str(tmp_path / "inf.npy"), "--mask", str(tmp_path / "mask.npy")], "inf in the condition at row 3"),
    ]:
        code, _, err = run(["infer", str(export), "--out", str(tmp_path / "x.npy"), *args], capsys)
        first = err.splitlines()[0] if err else ""
        assert code == 2 and match in first and "Traceback" not in err, (args, err)
        assert ".cfgdiff-infer-" not in err, "errors name the user's file, not a temp folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, _, err = run(["infer", str(export), "--input", str(tiny_data), "--out", str(tmp_path / "q.npy"),
                        "--method", "euler"], capsys)
    assert code == 2 and "euler" in err
    # resume the finished run for 5 more steps: the step count continues
    code, out, err = run(["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--resume", "cli",
                          "--steps", "15"], capsys)
    assert code == 0 and "done: 15 steps" in out, err
    # a pickle in the latest training_state.pt: refused before any worker starts, in one line, run untouched
    import pickle

    from cluster.train import latest_checkpoint

    latest = Path(latest_checkpoint(tmp_path / "cli"))
    (latest / "training_state.pt").write_bytes(pickle.dumps({"x": 1}, protocol=4) + b"junk")
    cfg_before = (tmp_path / "cli" / "config.json").read_bytes()
    code, _, err = run(["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--resume", "cli",
                        "--steps", "20"], capsys)
    assert code == 2 and err.count("\n") == 1 and "training_state.pt: refused to load" in err, err
    assert (tmp_path / "cli" / "config.json").read_bytes() == cfg_before, "a failed resume rewrites nothing"
    code, _, err = run(["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--resume", "cli",
                        "--set", "train.lr=0.5"], capsys)
    assert code == 2 and "--resume cli: cannot change train.lr" in err


@pytest.mark.parametrize("args,match", [
    (["--data", "/nonexistent/ds"], "does not exist"),
    (["--set", "model.in_channels=3"], "targets have 1 channels but model.in_channels=3"),
    (["--set", "model.image_size=[32,32]"], "images are 16x16"),
    (["--gpu"], "GPU"),
    (["--set", "model.dimm=3"], "unknown key 'dimm'"),
    (["--workers", "3"], "divisible by --workers=3"),
    (["--workers", "16", "--set", "train.batch_size=16"], "--workers 16 x 1 CPU per worker needs 16 CPUs"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
])
def test_cli_train_bad_input_before_workers(ray_session, tiny_data, tmp_path, capsys, args, match):
    base = ["train", "--storage", str(tmp_path), "--name", "bad", *_sets()]
    if "--data" not in args:
        base += ["--data", str(tiny_data)]
    code, _, err = run(base + args, capsys)
    assert code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists(), "nothing started, nothing written"


@pytest.mark.parametrize("cmd", ["train", "infer"])
def test_unreachable_ray_address_fails_fast_with_one_line(tiny_data, tmp_path, cmd):
    """#16.13: nothing listens on the port: exit 2 and one line, not minutes of Ray's retry lines."""
    args = (["train", "--data", str(tiny_data), "--storage", str(tmp_path)] if cmd == "train" else
            ["infer", str(tmp_path / "ck"), "--input", str(tiny_data), "--out", str(tmp_path / "o.npy")])
    if cmd == "infer":  # a real checkpoint, so that the address is what fails
        from cfgdiff.checkpoint import save_checkpoint
        from cfgdiff.config import ExperimentConfig
        from cfgdiff.normalize import Normalization
        from cfgdiff.unet import ConditionalUNet

        cfg = ExperimentConfig.from_dict({"model": {"image_size": [16, 16], "dim": 8, "groups": 4, "dim_mults": [1, 2],
                                                    "num_res_blocks": 1, "heads": 1, "dim_head": 4}})
        save_checkpoint(tmp_path / "ck", ConditionalUNet(cfg.model).state_dict(), cfg, Normalization.identity(1, 1))
    r = subprocess.run([sys.executable, "-m", "cli.main", *args, "--ray-address", "127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--ray-address 127.0.0.1:9: cannot connect" in r.stderr
    assert not (tmp_path / "cfgdiff-run").exists() and not (tmp_path / "o.npy").exists()


def test_two_concurrent_embedded_clusters_each_find_their_own(ray_session, tiny_data, tiny_checkpoint, tmp_path):
    """#16.8: with another Ray running on the host (this session's), a `cfgdiff train` and a `cfgdiff infer`
    run at once, each with its own embedded Ray; the address is exported before start-up, so Ray's internal
    clients (Train's placement-group cleaner) never fail with "Found multiple active Ray instances"."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sets = _sets("train.checkpoint_every=0", "train.val_batches=1")
    cmds = [["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--name", "c0", "--steps", "3", *sets],
            ["infer", tiny_checkpoint, "--input", str(tiny_data), "--out", str(tmp_path / "r.npy"), "--steps", "2"]]
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", *c, "--num-cpus", "3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "multiple active Ray instances" not in out + err and "Traceback" not in err, err[-2000:]
        # #16.10: a clean console; Ray's own lines (raylet, GCS, workers' INFO) stay in Ray's log files
        assert not noise_lines(out + err), noise_lines(out + err)
    assert "done: 3 steps" in outs[0][0] and "embedded local" in outs[0][0] and "32 rows" in outs[1][0]
    assert "epoch 1 step 3: val_loss" in outs[0][1], "rank 0's validation line, drawn by the driver (cluster.progress)"
    assert (tmp_path / "c0" / "train.log").read_text().count("step-time split") == 1, "the run's own log file"




def test_ctrl_c_during_infer_writes_nothing(ray_session, tiny_data, tiny_checkpoint, tmp_path):
    """#16.15: SIGINT while actors reconstruct: exit 130 within seconds, one line, no output or temp files."""
    import signal
    import time

    out = tmp_path / "r.npy"
    cmd = [sys.executable, "-m", "cli.main", "infer", tiny_checkpoint, "--input", str(tiny_data), "--out", str(out),
           "--steps", "150", "--num-samples", "4", "--batch-size", "4", "--ray-address", ray_session.address]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".cfgdiff-infer-*/rec.npy")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(2.0)  # the actors are sampling
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.time() - t0 < 30 and "interrupted; nothing was written" in err and "Traceback" not in err, err[-2000:]
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_ctrl_c_during_train_keeps_checkpoints_and_says_how_to_continue(ray_session, tiny_data, tmp_path):
    """#16.15: SIGINT during `cfgdiff train`: exit 130, one line naming the step and the resume command,
    the checkpoints left as they are."""
    import signal
    import time

    cmd = [sys.executable, "-m", "cli.main", "train", "--data", str(tiny_data), "--storage", str(tmp_path), "--name",
           "int", "--steps", "400", "--ray-address", ray_session.address, *_sets("train.checkpoint_every=5")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "int").glob("step_*/config.json")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and f"--out {tmp_path} --resume int --steps 400" in err, err[-2000:]
    assert "Traceback" not in err
    assert list((tmp_path / "int").glob("step_*/model.safetensors")), "checkpoints kept"
