"""`cfgdiff evaluate`: model vs classical baselines per degradation, the Bayes optimum, quality vs cost."""

from __future__ import annotations

import json

import pytest

from cfgdiff.evaluate import EvalOptions, run_evaluation
from tests.helpers import run_cli as run

pytestmark = [pytest.mark.ray]


def test_evaluate_baselines_bayes_and_sweep(tiny_checkpoint, tiny_data, tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"kind": "grf", "size": 16, "alpha": 4.0, "k0": 1.0, "mean": 0.0}))
    opts = EvalOptions(degrade=("drop:0.7", "box:0.3"), steps=3, num_samples=2, limit=8, w=1.5,
                       sweep=("ddim:2", "ddim:4", "ddim:4:r2,2"), demo_meta=str(demo))
    doc = run_evaluation(tiny_checkpoint, str(tiny_data), opts, out_dir=str(tmp_path / "ev"))
    assert set(doc["results"]) == {"drop:0.7", "box:0.3"}
    for rows in doc["results"].values():
        assert {"cfgdiff", "mean-fill", "linear (griddata)", "biharmonic", "opencv Telea", "opencv Navier-Stokes",
                "kriging (Bayes optimum)"} <= set(rows)
        assert all("psnr" in r for r in rows.values()), "every baseline really ran"
        bayes = rows["kriging (Bayes optimum)"]["mse_missing"]
        assert bayes <= rows["mean-fill"]["mse_missing"] and bayes <= rows["linear (griddata)"]["mse_missing"]
        lm = rows["LMMSE (fitted covariance)"]  # fitted on the 288 training rows of the same Gaussian fields
        assert bayes <= lm["mse_missing"] <= 1.6 * bayes and lm["mse_missing"] < rows["mean-fill"]["mse_missing"]
        assert lm["known_error"] == 0.0 and 0 < lm["coverage_2std"] <= 1
        assert rows["cfgdiff"]["known_error"] == 0.0 and rows["cfgdiff"]["mse_over_bayes"] > 0
        c = rows["cfgdiff"]
        lo, hi = c["posterior_mean_mse_over_bayes_ci95"]
        assert lo <= c["posterior_mean_mse_over_bayes"] <= hi and lo < hi
        assert 0 < rows["cfgdiff"]["std_over_exact_std"] and 0 <= rows["cfgdiff"]["coverage_2std"] <= 1
        assert c["coverage_2std_of_exact_samples"] == pytest.approx(0.6502, abs=1e-4)  # K = 2: (2/pi) atan(2/sqrt(1.5))
        assert c["std_over_exact_std_of_exact_samples"] == pytest.approx(0.7979, abs=1e-4)  # c4(2) = sqrt(2/pi)
    assert doc["lmmse"]["rows"] == 288 and 0 <= doc["lmmse"]["shrinkage"] <= 1
    assert doc["mean_of_k_psnr_loss_db"] == pytest.approx(1.761, abs=1e-3)  # 10 log10(1 + 1/2)
    calls = [r["model_calls"] for r in doc["quality_vs_cost"]]
    assert calls == [4, 8, 8 + 2 * 2 * 1], calls  # CFG doubles; RePaint j=2, r=2 on 4 steps adds one 2-step pass
    assert (tmp_path / "ev" / "evaluate.png").exists() and (tmp_path / "ev" / "evaluate.json").exists()


def test_evaluate_cli_table_and_errors(tiny_checkpoint, tiny_data, tmp_path, capsys):
    code, out, _ = run(["evaluate", tiny_checkpoint, "--data", str(tiny_data), "--degrade", "half", "--limit", "4",
                        "--steps", "2", "--num-samples", "2"], capsys)
    assert code == 0 and "half" in out and "mean-fill" in out and "cfgdiff" in out and "biharmonic" in out
    assert "coverage 2 std" in out and "exact samples score 0.650 at K=2" in out
    assert "LMMSE (fitted covariance)" in out and "fitted on 288 training rows" in out
    assert "K for a loss of 0.5 / 0.25 / 0.1 dB: 9 / 17 / 43" in out
    code, _, err = run(["evaluate", tiny_checkpoint, "--data", str(tiny_data), "--degrade", "smear:1"], capsys)
    assert code == 2 and "unknown kind 'smear'" in err
    code, out, _ = run(["evaluate", tiny_checkpoint, "--data", str(tiny_data), "--degrade", "half", "--limit", "2",
                        "--steps", "2", "--method", "ddpm", "--no-baselines", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0 and "DDPM 2 steps" in out
    assert json.loads((tmp_path / "ev" / "evaluate.json").read_text())["method"] == "ddpm"
    code, _, err = run(["evaluate", tiny_checkpoint, "--data", str(tiny_data), "--eta", "1.5"], capsys)
    assert code == 2 and "--eta" in err
