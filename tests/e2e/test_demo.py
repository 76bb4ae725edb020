"""The `make run` job (cfgdiff demo), in its quick form: every stage runs for real and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfgdiff.config import ExperimentConfig, apply_overrides
from cluster.pipeline import DemoPlan
from tests.helpers import noise_lines

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quick_demo_runs_every_stage_with_a_clean_console(ray_session, tmp_path):
    """`cfgdiff demo --quick` as a user runs it (a subprocess, its console captured): every stage reports, and
    no line reads as an error or as Ray's own noise (#17.7)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--quick", "--skip-tune", "--out", str(tmp_path / "demo"),
                        "--ray-address", ray_session.address], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not noise_lines(r.stdout + r.stderr), noise_lines(r.stdout + r.stderr)
    text = r.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    for stage in ("1/6 demo data", "2/6 convert", "3/6 train", "4/6 tune: skipped", "5/6 infer", "6/6 score"):
        assert stage in text
    t = report["table"]
    assert set(t) == {"mean-fill", "LMMSE (fitted covariance)", "kriging (Bayes optimum)", "cfgdiff (mean of K)"}
    # LMMSE with a covariance fitted on 352 training fields of these Gaussian fields: near the optimum, not past it
    assert 0.98 < t["LMMSE (fitted covariance)"]["mse_ratio"] < t["mean-fill"]["mse_ratio"]
    assert "beats LMMSE (fitted covariance)" in text or "does NOT beat LMMSE (fitted covariance)" in text
    # the exact posterior's own std is calibrated: mean +- 2 std covers ~95.4% of the missing pixels
    assert 0.9 < t["kriging (Bayes optimum)"]["coverage_2std"] < 0.99
    # the Bayes optimum is optimal: nothing beats it in MSE on missing pixels (up to sampling noise)
    assert t["mean-fill"]["mse_ratio"] > 1.0 and t["cfgdiff (mean of K)"]["known_error"] == 0.0
    out = tmp_path / "demo"
    for f in ("comparison.png", "infer/recon.grid.png", "report.json", "export/model.safetensors",
              "train/config.json", "data/cfgdiff.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "report.json").read_text())["train_steps"] == 40
    assert f"tensorboard --logdir {out}" in text and not (out / "runs").exists()  # one flat layout (#17.3)
    assert "exact samples score 0.650 at K=2" in text  # coverage is read against the finite-K ideal, not 0.95
    model = t["cfgdiff (mean of K)"]
    lo, hi = model["posterior_mean_mse_ratio_ci95"]
    assert lo <= model["posterior_mean_mse_ratio"] <= hi and "95% interval over the 32 fields" in text


def test_long_cpu_recipe_keeps_the_make_run_architecture():
    # README: configs/grf_long_cpu.json trains the `make run` model longer, with a bigger batch and fresh masks.
    root = Path(__file__).resolve().parents[2]
    long = ExperimentConfig.from_dict(json.loads((root / "configs" / "grf_long_cpu.json").read_text()))
    demo = apply_overrides(ExperimentConfig(), list(DemoPlan.default("unused").model))
    assert long.model == demo.model
    assert (long.train.precision, long.train.batch_size, long.train.max_steps) == ("bf16", 64, 20000)
    assert long.train.degrade == DemoPlan.default("unused").degrade
