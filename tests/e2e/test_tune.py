"""Ray Tune over p with w swept inside each trial: ASHA, best.json, curves, one fit per trial. An interrupted
search (Ctrl-C in a `cfgdiff tune` process) and its --resume are tested with data and --out on S3, in test_s3."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from ray import tune

from cfgdiff.errors import InputError
from cluster.trial_reports import fit_reporting
from cluster.tune import TuneJob, run_tune, validate_tune

from .conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
W = (0.0, 1.0, 2.0)


def _fits(out: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in (out / "trials").glob("*/fits.log")}


class _ExportAtLastReport(tune.Stopper):
    """Looks, on the driver, when a trial reports its last epoch: is its export there, and was it written before
    the reported checkpoint (which the worker writes inside the report)? After the report may be too late."""

    def __init__(self, epochs: int):
        self.epochs, self.seen = epochs, []

    def __call__(self, trial_id, result) -> bool:
        if result.get("training_iteration") == self.epochs and result.get("checkpoint_path"):
            ck = Path(result["checkpoint_path"])
            export = ck.parent / "export" / "model.safetensors"
            self.seen.append(export.is_file() and export.stat().st_mtime_ns <= (ck / "model.safetensors").stat().st_mtime_ns)
        return False

    def stop_all(self) -> bool:
        return False


def test_search_asha_best_json_and_curves(ray_session, tiny_data, tmp_path, caplog):
    """Every trial is listed with its status: completed, stopped by ASHA, errored (#17.2); one without results
    is warned about, never dropped."""
    cfg = tiny_config(tiny_data, "train.lr=2e-3")
    last = _ExportAtLastReport(epochs=3)
    job = TuneJob(data_dir=str(tiny_data), config=cfg, out_dir=str(tmp_path), p_grid=(0.1, 0.95, 0.5), w_grid=W,
                  epochs=3, max_concurrent=1, fail_p=0.5, stopper=last)
    with caplog.at_level(logging.WARNING, logger="cfgdiff.tune"):
        s = run_tune(job)
    assert last.seen == [True], "a trial's export is written before its last report: ASHA stops the trial there"
    fits = _fits(tmp_path)
    assert len(fits) == 2 and set(fits.values()) == {1}, f"every trial trained exactly once: {fits}"
    rows = {round(r["p"], 2): r for r in s["rows"]}
    assert set(rows) == {0.1, 0.95, 0.5}
    assert rows[0.1]["status"] == "completed" and rows[0.95]["status"].startswith("stopped by ASHA after")
    assert rows[0.5]["status"] == "errored" and rows[0.5]["psnr"] is None
    warned = [r.getMessage() for r in caplog.records]
    assert any("p=0.500) errored" in m and "injected failure" in m for m in warned), warned
    del rows[0.5]
    for r in rows.values():
        assert all(r[f"psnr_w{w:g}"] is not None for w in W), "full metric(w) curve"
        assert r["psnr"] == max(r[f"psnr_w{w:g}"] for w in W) and r["best_w"] in W
    assert rows[0.95]["epochs"] < 3 <= rows[0.1]["epochs"], f"ASHA stopped the p=0.95 trial early: {rows}"
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["p"] == max(rows.values(), key=lambda r: r["psnr"])["p"]
    assert best["w"] == rows[round(best["p"], 2)]["best_w"] and Path(best["checkpoint"]).is_dir()
    with open(tmp_path / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {t["status"] for t in table} == {rows[0.1]["status"], rows[0.95]["status"], "errored"}
    assert (tmp_path / "metric_vs_w.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_of_a_missing_search_leaves_nothing(tiny_data, tmp_path):
    """#16.19: a failed `tune --resume` creates no --out."""
    with pytest.raises(InputError, match="--resume: no interrupted search"):
        run_tune(TuneJob(data_dir=str(tiny_data), config=tiny_config(tiny_data), out_dir=str(tmp_path / "nope"),
                         p_grid=(0.2,), w_grid=(1.0,), resume=True))
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("kw,match", [({"w_grid": ()}, "w-grid is empty"), ({"p_grid": (0.1, 1.0)}, r"in \[0, 1\)"),
                                      ({"metric": "lpips"}, "--metric"), ({"p_range": (0.3, 0.1)}, "LO < HI")])
def test_tune_bad_input(tiny_data, kw, match):
    with pytest.raises(InputError, match=match):
        validate_tune(TuneJob(data_dir=str(tiny_data), config=None, **kw))


def _report_then_return(config):
    """A trial whose Train run reports and returns at once: Ray's TuneReportCallback path lost or hung on such
    last reports (#17.2); fit_reporting must deliver every one, in order, and then the run's error if any."""
    def fit(callbacks):
        for k in range(3):
            callbacks[0].after_report(None, [{"score": 10 * config["i"] + k}], None)
            if config["i"] == 0 and k == 1:
                raise RuntimeError("fit failed after two reports")
        return "fitted"

    assert fit_reporting(fit) == "fitted"


def test_trial_reports_are_never_lost(ray_session, tmp_path):
    grid = tune.Tuner(tune.with_resources(_report_then_return, {"CPU": 0.01}),
                      param_space={"i": tune.grid_search(list(range(8)))},
                      tune_config=tune.TuneConfig(max_concurrent_trials=4, time_budget_s=120),  # a hang fails, late
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="reports", verbose=0)).fit()
    assert len(grid) == 8
    for r in grid:
        i = r.config["i"]
        seen = list(r.metrics_dataframe["score"]) if r.metrics_dataframe is not None else []
        if i == 0:
            assert seen == [0, 1] and "fit failed after two reports" in str(r.error)
        else:
            assert r.error is None and seen == [10 * i, 10 * i + 1, 10 * i + 2], (i, seen)
