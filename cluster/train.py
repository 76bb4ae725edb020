"""Driver side of ``cfgdiff train``: validate, build a TorchTrainer (Ray Train V2) and run it.

Everything that can be checked is checked here, before any worker starts: the data directory,
shapes and channels against the model config, the batch split, and GPUs in the cluster.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
from ray.data.dataset import MaterializedDataset
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cfgdiff.augment import crop_rows, needs_square
from cfgdiff.checkpoint import load_checkpoint, load_training_state
from cfgdiff.config import ExperimentConfig, apply_overrides
from cfgdiff.data import DatasetMeta, decode_batch, read_split
from cfgdiff.degrade import degrade, parse_spec
from cfgdiff.engine import native_bf16
from cfgdiff.errors import InputError
from cfgdiff.export import step_checkpoints
from cfgdiff.presets import apply_preset, is_custom

from . import storage as storage_io
from .data import parquet_dataset
from .progress import TrainProgress
from .runtime import cluster_gpus, console_is_quiet
from .train_loop import train_loop_per_worker

logger = logging.getLogger("cfgdiff.train")


@dataclass
class TrainJob:
    data_dir: str  # cfgdiff convert output
    config: ExperimentConfig  # full experiment config (model shapes already matched to the data)
    run_name: str = "cfgdiff-run"  # Ray Train run name; reuse it to resume
    storage: str = "runs"  # local path or pyarrow-filesystem URI (shared storage for multi-node)
    workers: int = 1  # Ray Train workers
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # logical CPUs per worker
    threads_per_worker: int = 1  # torch intra-op threads per worker
    max_failures: int = 2  # automatic restarts from the latest checkpoint
    placement: str = "PACK"  # worker placement: PACK (fill nodes) or SPREAD (one per node where possible)
    epochs: int | None = None  # overrides train.max_steps when set
    eval_ws: tuple[float, ...] | None = None  # guidance weights scored at every validation (tune)
    callbacks: list = field(default_factory=list)  # ray.train.UserCallback (tune: trial_reports.ForwardReports)
    report_epochs_only: bool = False  # report (and checkpoint) only at epoch ends (tune)
    fail_at_step: int | None = None  # test hook: the last worker dies once at this step
    fit_log: str | None = None  # test hook: file that counts from-scratch fits
    progress: bool = True  # draw the run's progress on this driver (off inside Tune trials)
    command: str | None = None  # the command that made the run (for the export's model card)


def config_for_data(meta: DatasetMeta, base: ExperimentConfig, overrides: list[str], preset: str | None = None,
                    auto_preset: bool = True) -> ExperimentConfig:
    """Fill the model's shapes from the dataset, size the architecture (``preset``, or with none the
    default preset when the architecture is not customised and ``auto_preset``; cfgdiff.presets) for
    the data's or the crop's H x W, apply ``--set`` overrides (they win over the preset), and check
    that they agree with the data."""
    C, H, W = meta.target_shape
    d = base.to_dict()
    d["model"].update(in_channels=C, cond_channels=meta.cond_channels, mask_channels=meta.mask_channels,
                      image_size=[H, W])
    try:
        shaped = ExperimentConfig.from_dict(d)
    except ValueError as e:
        raise InputError(f"--data {meta.root}: {e}") from None
    cfg = apply_overrides(shaped, overrides)
    if preset is not None or (auto_preset and not is_custom(cfg.model)):
        size = tuple(cfg.train.crop) if cfg.train.crop else (H, W)
        own_depth = any(o.split("=", 1)[0].strip() == "model.dim_mults" for o in overrides)
        try:  # a --set model.dim_mults of the user's own: the preset's attention is placed for that depth
            model = apply_preset(shaped.model, preset, size, levels=len(cfg.model.dim_mults) if own_depth else None)
        except ValueError as e:
            raise InputError(f"--preset: {e}") from None
        cfg = apply_overrides(replace(shaped, model=model), overrides)
    if cfg.train.crop is not None:  # the network is built for, and its FLOPs counted at, the crop size
        cfg = replace(cfg, model=replace(cfg.model, image_size=tuple(cfg.train.crop)))
    check_data_matches(meta, cfg)
    h, w = cfg.model.image_size
    if needs_square(cfg.train.augment) and h != w:
        raise InputError(f"--set train.augment={cfg.train.augment}: rotations need square fields, the "
                         f"{'crops' if cfg.train.crop else 'data'} are {h}x{w}; use flips")
    if not meta.has_condition:
        parse_spec(cfg.train.degrade)  # targets-only data is degraded on the fly
    return cfg


def check_data_matches(meta: DatasetMeta, cfg: ExperimentConfig) -> None:
    C, H, W = meta.target_shape
    mc = cfg.model
    if mc.in_channels != C:
        raise InputError(f"--data {meta.root}: targets have {C} channels but model.in_channels={mc.in_channels}")
    if mc.cond_channels != meta.cond_channels:
        raise InputError(f"--data {meta.root}: conditions have {meta.cond_channels} channels but "
                         f"model.cond_channels={mc.cond_channels}")
    if mc.mask_channels != meta.mask_channels:
        raise InputError(f"--data {meta.root}: masks have {meta.mask_channels} channel(s) but "
                         f"model.mask_channels={mc.mask_channels}")
    crop = cfg.train.crop
    if crop is not None and (crop[0] > H or crop[1] > W):
        raise InputError(f"--set train.crop={crop[0]},{crop[1]}: crops must fit the data's {H}x{W} fields")
    if tuple(mc.image_size) != (tuple(crop) if crop else (H, W)):
        raise InputError(f"--data {meta.root}: images are {H}x{W}{f' cropped to {crop[0]}x{crop[1]}' if crop else ''}"
                         f" but model.image_size={tuple(mc.image_size)}")


def run_paths(job: TrainJob) -> dict[str, str]:
    """Run directories; local storage is made absolute because Ray Train workers chdir elsewhere."""
    base = job.storage.rstrip("/") if "://" in job.storage else os.path.abspath(job.storage)
    root = base + "/" + job.run_name
    return {"run": root, "tb": root + "/tensorboard", "export": root + "/export", "best": root + "/best"}


def validate_job(job: TrainJob, meta: DatasetMeta) -> ExperimentConfig:
    cfg = job.config
    check_data_matches(meta, cfg)
    if job.placement not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise InputError(f"placement must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {job.placement!r}")
    if job.workers < 1:
        raise InputError(f"--workers must be >= 1, got {job.workers}")
    if cfg.train.batch_size % job.workers:
        raise InputError(f"train.batch_size={cfg.train.batch_size} must be divisible by --workers={job.workers}")
    n_train = meta.count("train")
    per_worker = cfg.train.batch_size // job.workers
    if n_train < cfg.train.batch_size:
        raise InputError(f"--data {meta.root}: {n_train} training rows, fewer than train.batch_size="
                         f"{cfg.train.batch_size}")
    if meta.count("val") < 1:
        raise InputError(f"--data {meta.root}: the validation split is empty; convert with --val-fraction > 0")
    if job.max_failures < 0:
        raise InputError(f"--max-failures must be >= 0, got {job.max_failures}")
    have = ray.cluster_resources().get("CPU", 0)
    if job.workers * job.cpus_per_worker > have + 1e-9:
        raise InputError(f"--workers {job.workers} x {job.cpus_per_worker:g} CPU per worker needs "
                         f"{job.workers * job.cpus_per_worker:g} CPUs; the Ray cluster has {have:g} "
                         "(lower --workers or --cpus-per-worker, or add nodes)")
    if job.use_gpu and cluster_gpus() < job.workers:
        raise InputError(f"--gpu asks for {job.workers} GPU worker(s) but the Ray cluster has "
                         f"{cluster_gpus():g} GPU(s)")
    if cfg.train.precision == "bf16" and not job.use_gpu and not native_bf16(torch.device("cpu")):
        logger.warning("train.precision=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there (a step "
                       "ran 11x slower than fp32); use --precision auto or fp32")
    if job.epochs is not None:
        if job.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {job.epochs}")
        steps = job.epochs * (n_train // job.workers // per_worker)
        cfg = replace(cfg, train=replace(cfg.train, max_steps=max(steps, 1)))
    return cfg


def _vis_batch(meta: DatasetMeta, cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """A fixed validation batch for reconstruction metrics and TensorBoard grids."""
    raw = read_split(meta.split_dir("val"), limit=cfg.train.val_samples)
    b = decode_batch(raw, meta.normalization)
    if cfg.train.crop:
        b = crop_rows(b, cfg.train.crop)
    if "cond" not in b:
        b["cond"], b["mask"] = degrade(b["x0"], cfg.train.degrade, seed=cfg.train.seed + 99,
                                       index=b["index"].tolist())
    return {k: b[k].numpy() for k in ("x0", "cond", "mask")}


def train_datasets(meta: DatasetMeta, workers: int) -> tuple[dict, list[str]]:
    """Ray datasets and the names Ray Train splits. A training split that fits the object store is
    materialized and cut once into fixed per-rank parts (``Dataset.split``, equal rows): rank r always
    reads the same blocks in the same order, which makes a resumed or restarted run replay the row order
    exactly. Larger data streams through ``streaming_split``, which hands blocks to whichever rank asks
    first: still one epoch per epoch and the right step count, but the row order after a restart may differ."""
    train = parquet_dataset(meta.split_dir("train"))
    val = parquet_dataset(meta.split_dir("val"))
    if isinstance(train, MaterializedDataset):
        parts = train.split(workers, equal=True)
        return {**{f"train_{r}": part for r, part in enumerate(parts)}, "val": val}, ["val"]
    return {"train": train, "val": val}, ["train", "val"]


def build_trainer(job: TrainJob, cfg: ExperimentConfig, meta: DatasetMeta, board=None) -> TorchTrainer:
    paths = run_paths(job)
    local = "://" not in job.storage
    if local:
        Path(paths["run"]).mkdir(parents=True, exist_ok=True)
    lc = {"config": cfg.to_dict(), "normalization": meta.doc["normalization"], "vis": _vis_batch(meta, cfg),
          "tb_dir": paths["tb"], "export_dir": paths["export"], "best_dir": paths["best"],
          "remote_run": None if local else paths["run"], "threads": job.threads_per_worker,
          "eval_ws": list(job.eval_ws) if job.eval_ws else None, "report_epochs_only": job.report_epochs_only,
          "meta": {"dataset": str(meta.root), "run": paths["run"], **({"command": job.command} if job.command else {})},
          "data_name": f"--data {meta.root}",
          "fail_at_step": job.fail_at_step, "fail_marker": paths["run"] + "/.fault_injected",
          "fit_log": job.fit_log, "workers_dir": paths["run"] + "/workers" if local else None, "progress": board,
          "log_file": paths["run"] + "/train.log" if local else None}
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.use_gpu else {})}
    datasets, split = train_datasets(meta, job.workers)
    lc["per_rank_train"] = "train" not in datasets
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=lc,
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.use_gpu, resources_per_worker=resources,
                                     placement_strategy=job.placement),
        run_config=RunConfig(name=job.run_name, **storage_io.ray_storage(job.storage),
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             callbacks=job.callbacks or None,
                             # Train's controller warns on the console about its placement-group cleaner on
                             # a lean local cluster; quiet runs keep Train's warnings in Ray's log files
                             logging_config=ray.train.LoggingConfig(
                                 log_level="ERROR" if console_is_quiet() else "WARNING")),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=split),
    )


def load_run_config(storage: str, name: str) -> ExperimentConfig:
    """The resolved config a run started with (``RUN/config.json``, local or on URI storage), for ``--resume``."""
    f = storage_io.join(storage, name, storage_io.CONFIG)
    if not storage_io.exists(f):
        raise InputError(f"--resume {name}: no run at {storage_io.join(storage, name)} (expected config.json); "
                         "check --out")
    return ExperimentConfig.from_json(storage_io.read_text(f))


def run_exists(storage: str, name: str) -> bool:
    return storage_io.exists(storage_io.join(storage, name, storage_io.CONFIG))


def user_error(e: BaseException) -> str | None:
    """The message line of a cfgdiff ``InputError`` raised inside a worker (bad data, a non-finite loss),
    found in a Ray Train failure; None when the failure is something else (a crash, a lost node)."""
    todo = list(getattr(e, "worker_failures", {}).values()) + [getattr(e, "controller_failure", None)]
    seen = set()
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, InputError):
            return str(x).strip().splitlines()[-1]  # a wrapped error ends with the message line
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def fit_interruptibly(trainer: TorchTrainer, poll=None):
    """``trainer.fit()``, with Ctrl-C raising ``KeyboardInterrupt`` here.

    In the main thread Ray Train installs its own SIGINT handler, which aborts the run and then calls
    ``sys.exit`` inside the handler (the process ended with status 1 and no message). Run from another
    thread, fit() leaves SIGINT alone, so the caller can say where the run stopped and exit 130; the
    checkpoints already written stay as they are, and the run's actors end with the driver. ``poll`` is
    called about once a second while the run goes on (the driver's progress display)."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # a Tune trial: Tune handles signals
    box: dict = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="cfgdiff-fit", daemon=True)
    t.start()
    last = time.monotonic()
    while t.is_alive():
        t.join(0.2)
        if poll is not None and time.monotonic() - last >= 1.0:
            poll()
            last = time.monotonic()
    if "error" in box:
        raise box["error"]
    return box["result"]


def latest_checkpoint(run: str | Path) -> str | None:
    """The newest ``step_*`` checkpoint of a run (a local folder or a URI), if any."""
    found = step_checkpoints(str(run))
    return found[-1] if found else None


def run_training(job: TrainJob) -> dict:
    """Validate, train, and return a summary (steps, seconds, final metrics, export path).

    A run that fails before its first checkpoint leaves nothing behind; one that fails later keeps its
    checkpoints (``--resume`` continues it). A resumed run's saved state is loaded here first, so a bad
    one is refused in one line before any worker starts, and its ``config.json`` is rewritten only after
    the resumed run succeeds.
    """
    meta = DatasetMeta.load(job.data_dir)
    cfg = validate_job(job, meta)
    run = run_paths(job)["run"]
    resuming = storage_io.exists(run)
    if resuming and (latest := latest_checkpoint(run)) is not None:
        with tempfile.TemporaryDirectory(prefix="cfgdiff-resume-") as d:  # a URI's checkpoint is fetched to check it
            local = storage_io.fetch(latest, d)
            load_checkpoint(local).build_model()
            load_training_state(local)
    progress = TrainProgress(cfg.train.max_steps) if job.progress else None
    try:
        trainer = build_trainer(job, cfg, meta, board=progress.board if progress else None)
        if not resuming:
            storage_io.write_text(storage_io.join(run, storage_io.CONFIG), cfg.to_json())
        result = fit_interruptibly(trainer, poll=progress.poll if progress else None)
    except BaseException as e:
        if not resuming and latest_checkpoint(run) is None:
            storage_io.delete_dir(run)  # nothing to resume: leave nothing behind
        if isinstance(e, ray.train.TrainingFailedError) and (cause := user_error(e)) is not None:
            raise InputError(cause) from None
        raise
    finally:
        if progress is not None:
            progress.close()
    if resuming:
        storage_io.write_text(storage_io.join(run, storage_io.CONFIG), cfg.to_json())
    summary = dict(result.return_value or {})
    summary["run_dir"] = run_paths(job)["run"]
    summary["tensorboard"] = run_paths(job)["tb"]
    summary["metrics"] = dict(result.metrics or {})
    summary["checkpoint"] = storage_io.as_uri(job.storage, result.checkpoint.path) if result.checkpoint else None
    summary["config"] = cfg
    return summary
