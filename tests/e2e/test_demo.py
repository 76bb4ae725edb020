"""The `make run` job (cfgdiff demo), in its quick form: every stage runs for real and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfgdiff.config import ExperimentConfig, apply_overrides
from cluster.pipeline import DemoPlan, run_demo

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quick_demo_runs_every_stage(ray_session, tmp_path):
    lines = []
    report = run_demo(DemoPlan.quick(str(tmp_path / "demo")), skip_tune=True, echo=lines.append)
    text = "\n".join(lines)
    for stage in ("1/6 demo data", "2/6 convert", "3/6 train", "4/6 tune: skipped", "5/6 infer", "6/6 score"):
        assert stage in text
    t = report["table"]
    assert set(t) == {"mean-fill", "kriging (Bayes optimum)", "cfgdiff (mean of K)"}
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
