"""The CLI on a real local Ray: a full train -> info -> infer flow, and bad input rejected before workers."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli as run

from .conftest import TINY_MODEL, TINY_TRAIN

pytestmark = [pytest.mark.ray, pytest.mark.slow]




def _sets(*extra):
    return [a for kv in TINY_MODEL + TINY_TRAIN + list(extra) for a in ("--set", kv)]


def test_cli_train_info_infer(ray_session, tiny_data, tmp_path, capsys):
    code, out, err = run(["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--name", "cli",
                          "--steps", "10", *_sets("train.checkpoint_every=0")], capsys)
    assert code == 0, err
    assert "tensorboard --logdir" in out and "done: 10 steps" in out
    export = tmp_path / "cli" / "export"
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
    code, _, err = run(["infer", str(export), "--input", str(tiny_data), "--out", str(tmp_path / "q.npy"),
                        "--method", "euler"], capsys)
    assert code == 2 and "euler" in err
    # resume the finished run for 5 more steps: the step count continues
    code, out, err = run(["train", "--data", str(tiny_data), "--storage", str(tmp_path), "--resume", "cli",
                          "--steps", "15"], capsys)
    assert code == 0 and "done: 15 steps" in out, err


@pytest.mark.parametrize("args,match", [
    (["--data", "/nonexistent/ds"], "does not exist"),
    (["--set", "model.in_channels=3"], "targets have 1 channels but model.in_channels=3"),
    (["--set", "model.image_size=[32,32]"], "images are 16x16"),
    (["--gpu"], "GPU"),
    (["--set", "model.dimm=3"], "unknown key 'dimm'"),
    (["--workers", "3"], "divisible by --workers=3"),
])
def test_cli_train_bad_input_before_workers(ray_session, tiny_data, tmp_path, capsys, args, match):
    base = ["train", "--storage", str(tmp_path), "--name", "bad", *_sets()]
    if "--data" not in args:
        base += ["--data", str(tiny_data)]
    code, _, err = run(base + args, capsys)
    assert code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists(), "nothing started, nothing written"
