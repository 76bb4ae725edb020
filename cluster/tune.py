"""``cfgdiff tune``: Ray Tune over the condition-dropout probability p, with the guidance weight w
swept inside each trial.

p is a training-time parameter and w a sampling-time one, so each trial trains once with its p
(the same TorchTrainer loop as ``cfgdiff train``, driven from a Tune function trainable; its reports reach
Tune through ``trial_reports.fit_reporting``, which replaces Ray's ``TuneReportCallback`` and its race) and
scores every w of the grid on the fixed validation batch at each epoch. The trial's metric is the best over w;
the whole metric(w) curve is reported too. ASHA stops weak trials after their first epochs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from cfgdiff import fsio
from cfgdiff.config import ExperimentConfig
from cfgdiff.errors import InputError
from cfgdiff.progress import Progress

from . import storage as storage_io
from .plots import line_chart
from .runtime import quiet_ray_logs
from .train import TrainJob, run_training
from .trial_reports import fit_reporting

logger = logging.getLogger("cfgdiff.tune")
METRICS = {"psnr": "max", "ssim": "max", "mae_missing": "min"}


@dataclass
class TuneJob:
    data_dir: str  # cfgdiff dataset
    config: ExperimentConfig  # base config matched to the data (p is overwritten per trial)
    out_dir: str = "runs/tune"  # tune directory (table, best.json, plot, trial runs)
    name: str = "cfgdiff-tune"  # Tune experiment name
    num_samples: int = 3  # trials drawn from p_range (ignored with p_grid: one trial per value)
    p_range: tuple[float, float] = (0.05, 0.3)  # uniform search range for p
    p_grid: tuple[float, ...] | None = None  # explicit p values instead of a range
    w_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)  # guidance weights scored per trial
    metric: str = "psnr"  # psnr, ssim or mae_missing
    epochs: int = 2  # epochs per trial (ASHA max_t)
    workers_per_trial: int = 1  # Train workers per trial
    threads_per_worker: int = 1  # torch threads per Train worker
    use_gpu: bool = False  # one GPU per worker
    max_concurrent: int = 1  # trials at once
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    resume: bool = False  # continue an interrupted search in out_dir/name
    seed: int = 0  # search seed
    stopper: object | None = None  # optional ray.tune.Stopper (e.g. a time budget; tests interrupt with it)
    fail_p: float | None = None  # test hook: the trial with this p fails before it reports anything


def validate_tune(job: TuneJob) -> None:
    if job.metric not in METRICS:
        raise InputError(f"--metric {job.metric!r}: expected one of {', '.join(METRICS)}")
    if not job.w_grid:
        raise InputError("--w-grid is empty; give guidance weights such as 0,1,2,3")
    if any(not (w == w and abs(w) < 1e6) for w in job.w_grid):
        raise InputError(f"--w-grid values must be finite, got {job.w_grid}")
    ps = job.p_grid if job.p_grid is not None else job.p_range
    if job.p_grid is not None and not job.p_grid:
        raise InputError("--p-grid is empty")
    if any(not 0.0 <= p < 1.0 for p in ps):
        raise InputError(f"p values must be in [0, 1), got {tuple(ps)}")
    if job.p_grid is None and not job.p_range[0] < job.p_range[1]:
        raise InputError(f"--p-range must be LO,HI with LO < HI, got {job.p_range}")
    if job.num_samples < 1 or job.epochs < 1 or job.max_concurrent < 1 or job.workers_per_trial < 1:
        raise InputError("--trials, --epochs, --max-concurrent and --workers must be >= 1")


def _trainable(config: dict) -> None:
    """One trial: train once with this p, scoring every w at each epoch (runs in the trial actor)."""
    quiet_ray_logs()
    if config.get("fail_p") is not None and float(config["p"]) == config["fail_p"]:
        raise RuntimeError(f"injected failure for p={config['p']} (TuneJob.fail_p)")
    base = ExperimentConfig.from_dict(config["base"])
    cfg = replace(base, train=replace(base.train, p_uncond=float(config["p"])))
    trial = tune.get_context().get_trial_name()
    storage = config["train_storage"]
    local = not fsio.is_uri(storage)
    if local:
        Path(storage, trial).mkdir(parents=True, exist_ok=True)
    job = TrainJob(data_dir=config["data_dir"], config=cfg, run_name=trial, storage=storage,
                   workers=config["workers"], use_gpu=config["use_gpu"], epochs=config["epochs"],
                   threads_per_worker=config.get("threads", 1),
                   eval_ws=tuple(config["w_grid"]), report_epochs_only=True,
                   fit_log=os.path.join(storage, trial, "fits.log") if local else None, progress=False)
    fit_reporting(lambda callbacks: run_training(replace(job, callbacks=callbacks)))


def run_tune(job: TuneJob) -> dict:
    """Run (or resume) the search. ``out_dir`` may be a URI (s3://, gs://): Tune keeps the search there
    (``RunConfig(storage_path=URI)``, shared by trials on every node), the trials' Train runs go under it, and the
    table, best.json and plot are uploaded at the end."""
    validate_tune(job)
    fsio.check_storage(job.data_dir, "--data")
    fsio.check_storage(job.out_dir, "--out")
    remote = fsio.is_uri(job.out_dir)
    out = job.out_dir.rstrip("/") if remote else str(Path(job.out_dir).absolute())
    exp_path = fsio.join(out, job.name)
    ray_fs = {k: v for k, v in storage_io.ray_storage(exp_path).items() if k == "storage_filesystem"}
    if job.resume and not tune.Tuner.can_restore(exp_path, **ray_fs):  # checked before --out is created (#16.19)
        raise InputError(f"--resume: no interrupted search at {exp_path}")
    made_out = not remote and not os.path.exists(out)
    if not remote:
        os.makedirs(out, exist_ok=True)
    mode = METRICS[job.metric]
    target = f"best_{job.metric}"
    p_space = tune.grid_search(list(job.p_grid)) if job.p_grid is not None else tune.uniform(*job.p_range)
    data_dir = job.data_dir if fsio.is_uri(job.data_dir) else str(Path(job.data_dir).absolute())
    param_space = {"p": p_space, "base": job.config.to_dict(), "data_dir": data_dir,
                   "train_storage": fsio.join(out, "trials"), "workers": job.workers_per_trial, "use_gpu": job.use_gpu,
                   "threads": job.threads_per_worker,
                   "epochs": job.epochs, "w_grid": list(job.w_grid), "fail_p": job.fail_p}
    resources = tune.with_resources(_trainable, {"CPU": 0.01})  # the trial only drives its TorchTrainer
    total = len(job.p_grid) if job.p_grid is not None else job.num_samples
    progress = TuneProgress(total, job.metric, job.epochs)
    if job.resume:
        tuner = tune.Tuner.restore(storage_io.ray_storage(exp_path)["storage_path"] if ray_fs else exp_path,
                                   trainable=resources, **ray_fs, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space)
    else:
        if fsio.exists(exp_path):
            raise InputError(f"{exp_path} exists; pass --resume to continue it or choose another --out/--name")
        tuner = tune.Tuner(
            resources, param_space=param_space,
            tune_config=tune.TuneConfig(metric=target, mode=mode, num_samples=1 if job.p_grid else job.num_samples,
                                        max_concurrent_trials=job.max_concurrent,
                                        scheduler=ASHAScheduler(time_attr="training_iteration", max_t=job.epochs,
                                                                grace_period=job.grace_period, reduction_factor=2)),
            run_config=tune.RunConfig(name=job.name, **storage_io.ray_storage(out), verbose=0, stop=job.stopper,
                                      callbacks=[progress]))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt_marker) if main else None
    try:
        results = tuner.fit()
    except BaseException:
        if made_out and not any(Path(out).rglob("*.json")):
            shutil.rmtree(out, ignore_errors=True)  # nothing to resume: leave nothing behind
        raise
    finally:
        progress.close()
        # Tune's own SIGINT handler saves the search and ends fit() early; it puts back the handler it found
        # (ours) only when a signal came, and otherwise stays installed
        interrupted = main and signal.getsignal(signal.SIGINT) is _interrupt_marker
        if main:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise SearchInterrupted(f"{results.num_terminated} of {len(results)} trials finished")
    return summarize(results, job, out, target, mode)


class TuneProgress(tune.Callback):
    """Trials done out of the total on the driver (a bar on a terminal, lines otherwise), with one line per
    trial epoch (its best w and metric) and per finished trial (its status)."""

    def __init__(self, total: int, metric: str, epochs: int):
        self.progress = Progress("tune", total, unit="trial")
        self.total, self.metric, self.epochs, self.done = total, metric, epochs, 0

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the search; the bar itself stays here
        return {"total": self.total, "metric": self.metric, "epochs": self.epochs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(f"best_{self.metric}")
        shown = f"{self.metric} {value:.4g} at best w={result.get('best_w')}" if value is not None else "no metric"
        self.progress.note(f"trial {trial.trial_id} p={trial.config['p']:.3f} epoch {result.get('training_iteration')}"
                           f"/{self.epochs}: {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial, "errored")

    def _finished(self, trial, how: str) -> None:
        self.done += 1
        if how == "completed":
            how = _status(False, (trial.last_result or {}).get("training_iteration"), self.epochs)
        self.progress.note(f"trial {trial.trial_id} p={trial.config['p']:.3f} {how}")
        self.progress.update(self.done)

    def close(self) -> None:
        self.progress.close()


def _interrupt_marker(signum, frame):
    """Python's default Ctrl-C behaviour, under a name ``run_tune`` can recognise."""
    signal.default_int_handler(signum, frame)


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by Ctrl-C; its state is saved and ``--resume`` continues it."""


def _status(errored: bool, epochs_done: int | None, epochs: int) -> str:
    """completed, stopped by ASHA (fewer epochs than asked), errored, or no results."""
    if errored:
        return "errored"
    if epochs_done is None:
        return "no results"
    return "completed" if epochs_done >= epochs else f"stopped by ASHA after {epochs_done} epoch(s)"


def trial_status(result, epochs: int) -> str:
    return _status(result.error is not None, (result.metrics or {}).get("training_iteration"), epochs)


def summarize(results, job: TuneJob, out: str, target: str, mode: str) -> dict:
    """The trial table (``ResultGrid.get_dataframe()``: every trial's last report, plus its status), best.json
    and the metric(w) plot. Every trial appears; one without results is listed, and warned about."""
    with fsio.staged(out, last="best.json") as local:  # for a URI: written locally, then uploaded
        return {**_summarize(results, job, local, target, mode, out), "dir": out}


def _summarize(results, job: TuneJob, local: Path, target: str, mode: str, out: str) -> dict:
    df = results.get_dataframe()
    last = {row["logdir"]: row for row in df.to_dict("records")} if "logdir" in df else {}
    rows, curves = [], {}
    for r in results:
        trial = Path(r.path).name
        m = {**(r.metrics or {}), **{k: v for k, v in last.get(r.path, {}).items() if v == v}}  # NaN: not reported
        status = trial_status(r, job.epochs)
        if status in ("errored", "no results"):
            why = str(r.error).strip().splitlines()[-1] if r.error is not None else "it reported no epoch"
            logger.warning("trial %s (p=%.3f) %s: %s; see %s", trial, r.config["p"], status, why, r.path)
        curve = [(w, m.get(f"{job.metric}_w{w:g}")) for w in job.w_grid]
        if target in m:
            curves[f"p={r.config['p']:.3f} ({status.split(' after')[0]})"] = [(w, v) for w, v in curve if v is not None]
        export = fsio.join(out, "trials", _train_run(r), "export")
        rows.append({"trial": trial, "status": status, "p": r.config["p"], "best_w": m.get("best_w"),
                     "psnr": m.get("best_psnr"), "ssim": m.get("best_ssim"), "mae_missing": m.get("best_mae_missing"),
                     "val_loss": m.get("val_loss"), "steps": m.get("step"), "epochs": m.get("training_iteration"),
                     "checkpoint": export if fsio.is_dir(export) else storage_io.as_uri(out, m.get("checkpoint_path")),
                     **{f"{job.metric}_w{w:g}": v for w, v in curve}})
    scored = [row for row in rows if row[job.metric] is not None]
    if not scored:
        raise RuntimeError("no trial reported a validation metric; see the trial logs under " + str(out))
    best = (max if mode == "max" else min)(scored, key=lambda row: row[job.metric])
    pd.DataFrame(rows).to_csv(local / "trials.csv", index=False)
    best_doc = {"p": best["p"], "w": best["best_w"], "metric": job.metric, "value": best[job.metric],
                "checkpoint": best["checkpoint"], "trial": best["trial"]}
    (local / "best.json").write_text(json.dumps(best_doc, indent=2))
    line_chart(curves, local / "metric_vs_w.png", x_label="guidance weight w", y_label=job.metric,
               title=f"validation {job.metric} against w, one line per trial (p)", x_ticks=list(job.w_grid))
    return {"rows": rows, "best": best_doc}


def _train_run(result) -> str:
    """The Train run of a trial is named after the trial (``tune.get_context().get_trial_name()``)."""
    cp = (result.metrics or {}).get("checkpoint_path")
    return Path(cp).parent.name if cp else f"_trainable_{result.metrics.get('trial_id', '')}"
