"""CLI contract: working commands only, one-line errors with exit code 2, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import numpy as np
import pytest

from tests.helpers import run_cli as run


def test_help_lists_only_working_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    listed = {line.split()[0] for line in out.split("Commands:")[1].strip().splitlines()}
    assert listed == {"convert", "demo", "demo-data", "evaluate", "export", "infer", "info", "serve", "train", "tune"}
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "0.1.0" in out


def _arrays(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 8, 8)).astype(np.float32))
    np.save(tmp_path / "x5.npy", np.zeros((5, 8, 8), np.float32))
    np.save(tmp_path / "half.npy", np.full((20, 8, 8), 0.5, np.float32))
    np.save(tmp_path / "nan.npy", np.full((20, 8, 8), np.nan, np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.float32))
    np.save(tmp_path / "amb.npy", np.zeros((4, 8, 8, 8), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "text.npy").write_text("1.0, 2.0\n3.0, 4.0\n")
    np.save(tmp_path / "c0.npy", np.zeros((4, 0, 8, 8), np.float32))
    np.save(tmp_path / "tiny.npy", np.zeros((4, 1, 1), np.float32))
    np.save(tmp_path / "n1.npy", np.zeros((4, 1, 32, 32), np.float32))


@pytest.mark.parametrize("args,match", [
    (["--condition", "{d}/x5.npy"], "x5.npy (condition): has N=5"),
    (["--condition", "{d}/x.npy", "--mask", "{d}/half.npy"], "must be binary"),
    (["--degrade", "smudge:3"], "unknown kind 'smudge'"),
    (["--condition", "{d}/x.npy", "--degrade", "drop:0.5"], "exclusive"),
])
def test_convert_bad_input_exit_2(tmp_path, capsys, args, match):
    _arrays(tmp_path)
    code, _, err = run(["convert", f"{tmp_path}/x.npy", "--out", f"{tmp_path}/o"] +
                       [a.format(d=tmp_path) for a in args], capsys)
    assert code == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target,extra,match", [
    ("nan.npy", [], "NaN or inf in the target at row 0"),
    ("empty.npy", [], "empty array"),
    ("amb.npy", [], "pass --layout"),
    ("bad.npy", [], "unreadable or truncated"),
    ("missing.npy", [], "no such file"),
    ("text.npy", [], "text.npy: not a .npy file (no NumPy header; starts with text)"),
    ("c0.npy", ["--layout", "NCHW"], "has 0 channels"),
    ("tiny.npy", [], "images are 1x1; cfgdiff needs at least 4x4"),
    ("n1.npy", ["--layout", "NHWC"], "--layout NHWC on shape (4, 1, 32, 32) makes 32 channels of 1x32"),
])
def test_convert_bad_target_exit_2(tmp_path, capsys, target, extra, match):
    """Table-driven: exit 2, the first stderr line names the file or option, no traceback, nothing written."""
    _arrays(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["convert", f"{tmp_path}/{target}", "--out", f"{tmp_path}/o", *extra], capsys)
    first = err.splitlines()[0]
    assert code == 2 and match in first and "Traceback" not in err, err
    assert target in first or "--" in first
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"


def test_convert_force_layout_and_input_inside_out(tmp_path, capsys):
    _arrays(tmp_path)
    code, _, err = run(["--quiet", "convert", f"{tmp_path}/n1.npy", "--layout", "NHWC", "--force-layout",
                        "--out", f"{tmp_path}/o"], capsys)
    assert code == 2 and "images are 1x32" in err  # forced: the layout is taken as given (then too small)
    data = tmp_path / "mine"
    data.mkdir()
    np.save(data / "x.npy", np.zeros((20, 8, 8), np.float32))
    code, _, err = run(["convert", str(data / "x.npy"), "--out", str(data), "--overwrite"], capsys)
    assert code == 2 and f"--out {data}: holds the input" in err
    assert (data / "x.npy").exists(), "the input survives"


def test_convert_and_demo_data_work(tmp_path, capsys):
    code, out, _ = run(["demo-data", "--out", str(tmp_path / "raw"), "--n", "40", "--size", "16"], capsys)
    assert code == 0 and (tmp_path / "raw" / "target.npy").exists()
    code, out, _ = run(["--quiet", "convert", str(tmp_path / "raw" / "target.npy"), "--degrade", "box:0.25",
                        "--out", str(tmp_path / "ds")], capsys)
    assert code == 0 and "36 train + 4 val rows" in out
    code, _, err = run(["convert", str(tmp_path / "raw" / "target.npy"), "--out", str(tmp_path / "ds")], capsys)
    assert code == 2 and "--overwrite" in err


def test_subprocess_prints_one_line_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cli.main", "convert", str(tmp_path / "nope.npy"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cli.main", "--debug", "convert", str(tmp_path / "nope.npy"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_renamed_flags_are_hidden_aliases_of_the_new_ones():
    """#17.9: one vocabulary; the old spellings still work for one release, hidden from --help."""
    from click.testing import CliRunner

    from cli.common import renamed

    @click.command()
    @click.option("--workers", type=int, default=1)
    @renamed("--actors", "workers", type=int)
    def cmd(workers):
        click.echo(f"workers={workers}")

    runner = CliRunner()
    assert runner.invoke(cmd, ["--actors", "3"]).output.strip() == "workers=3"
    assert runner.invoke(cmd, ["--workers", "2"]).output.strip() == "workers=2"
    assert runner.invoke(cmd, []).output.strip() == "workers=1"
    assert "--actors" not in runner.invoke(cmd, ["--help"]).output


@pytest.mark.parametrize("command,new,old", [
    ("tune", ["--trials", "--workers", "--threads-per-worker", "--precision", "--resume [NAME]"],
     ["--num-samples", "--workers-per-trial"]),
    ("train", ["--out", "--resume [NAME]", "--precision"], ["--storage"]),
    ("infer", ["--workers", "--gpu", "--gpus-per-worker", "--threads-per-worker", "--limit"],
     ["--actors", "--gpus-per-actor", "--threads-per-actor"]),
    ("evaluate", ["--gpu", "--precision", "not on Ray"], ["--ray-address"])])
def test_one_flag_vocabulary_in_help(command, new, old):
    from click.testing import CliRunner

    from cli.main import cli

    text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.split())
    assert all(n in text for n in new), [n for n in new if n not in text]
    listed = lambda flag: re.search(re.escape(flag) + r"(?![\w-])", text) is not None  # --storage, not --storage-endpoint
    assert not any(listed(o) for o in old), [o for o in old if listed(o)]


def test_hparams_report_validation_scores_at_the_tuned_w():
    """#17.8: the hparams tab holds PSNR/SSIM/MAE, at the best w when the run swept w (a Tune trial)."""
    from cfgdiff.config import ExperimentConfig
    from cluster.train_loop import _hparams

    cfg = ExperimentConfig()
    swept = {"psnr": 20.0, "ssim": 0.5, "mae_missing": 0.3, "best_w": 2.0, "best_psnr": 22.0, "best_ssim": 0.6,
             "best_mae_missing": 0.2}
    hp, m = _hparams(cfg, swept, {"loss": 0.1})
    assert hp["w"] == 2.0 and m == {"val_psnr": 22.0, "val_ssim": 0.6, "val_mae_missing": 0.2, "loss": 0.1}
    hp, m = _hparams(cfg, {"psnr": 20.0, "ssim": 0.5, "mae_missing": 0.3}, {})
    assert hp["w"] == cfg.sampler.w and m["val_psnr"] == 20.0 and m["loss"] is None


def test_turbulence_demo_and_convert_groups(tmp_path, capsys):
    code, out, _ = run(["demo-data", "--kind", "turbulence", "--out", str(tmp_path / "raw"), "--n", "64", "--size",
                        "8"], capsys)
    raw = tmp_path / "raw"
    assert code == 0 and "2 trajectories" in out and f"--groups {raw / 'groups.npy'}" in out
    code, out, _ = run(["--quiet", "convert", str(raw / "target.npy"), "--degrade", "drop:0.8", "--groups",
                        str(raw / "groups.npy"), "--val-fraction", "0.3", "--out", str(tmp_path / "ds")], capsys)
    assert code == 0 and "32 train + 32 val rows" in out  # one whole trajectory held out
    np.save(tmp_path / "bad.npy", np.zeros(63, np.int64))
    code, _, err = run(["convert", str(raw / "target.npy"), "--groups", str(tmp_path / "bad.npy"), "--out",
                        str(tmp_path / "ds2")], capsys)
    assert code == 2 and "expected shape (64,) of integers" in err and "found shape (63,)" in err
    assert not (tmp_path / "ds2").exists(), "nothing written before the groups were validated"
    code, _, err = run(["demo-data", "--kind", "turbulence", "--out", str(tmp_path / "r2"), "--size", "10"], capsys)
    assert code == 2 and "multiple of 4" in err
