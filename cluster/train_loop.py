"""The per-worker training loop that Ray Train runs. Ray appears only at the marked points
(context, device, model preparation, dataset shards, checkpoints and reports); every step is
``cfgdiff.engine.train_step``, the same function a single-process run calls.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from cfgdiff.augment import augment_rows, crop_rows
from cfgdiff.checkpoint import load_training_state, share, write_atomically, write_checkpoint_files
from cfgdiff.config import ExperimentConfig, SamplerConfig
from cfgdiff.data import decode_batch
from cfgdiff.degrade import degrade
from cfgdiff.engine import (
    EMA,
    StepTimer,
    eval_loss,
    make_lr_scheduler,
    make_optimizer,
    reconstruct_and_score,
    resume_lr_scheduler,
    unwrap,
)
from cfgdiff.engine import train_step as core_train_step
from cfgdiff.errors import NonFiniteError
from cfgdiff.export import validation_numbers, write_model
from cfgdiff.normalize import Normalization
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet

from . import storage as storage_io
from .data import iter_block_batches
from .progress import BoardClient
from .runtime import quiet_ray_logs
from .tb import TBWriter

logger = logging.getLogger("cfgdiff.train")


def _worker_logging(log_file: str | None) -> None:
    """In a worker, cfgdiff's INFO lines (steps, validation, step-time split) go to the run's own ``train.log``
    (rank 0, local storage); only warnings reach the console, where the driver draws progress."""
    log = logging.getLogger("cfgdiff")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if log_file:
        f = logging.FileHandler(log_file)
        f.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(f)
    log.handlers[:] = handlers
    log.setLevel(logging.INFO)
    log.propagate = False


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7919 + step) % 2**63


def _step_generator(device: torch.device, seed: int, rank: int, step: int) -> torch.Generator:
    """Noise for step s on rank r comes from seed (seed, r, s): resume replays it exactly. The global RNG
    (dropout inside the network) is reseeded from the same key at every step, so each rank has its own
    stream and a resumed or restarted rank needs no saved RNG state."""
    torch.manual_seed(_step_seed(seed, rank, step) ^ 0x5DEECE66D)
    return torch.Generator(device=device).manual_seed(_step_seed(seed, rank, step))


def _with_condition(b: dict, spec: str, seed: int, epoch: int) -> dict:
    """Targets-only data: a fresh degradation every epoch (seeded by seed, epoch and row index)."""
    if "cond" not in b:
        cond, mask = degrade(b["x0"], spec, seed=seed + 7 * epoch + 1, index=b["index"].tolist())
        b["cond"], b["mask"] = cond.to(b["x0"].device), mask.to(b["x0"].device)
    return b


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1 and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= world
    return x


class _Saver:
    """Rank 0 writes full checkpoint directories (config, EMA safetensors, training state)."""

    def __init__(self, cfg: ExperimentConfig, norm: Normalization, meta: dict):
        self.cfg, self.norm, self.meta = cfg, norm, meta

    def write(self, directory: str, model, ema: EMA, opt, sched, step: int, epoch: int, extra: dict,
              epoch_step: int = 0, metrics: dict | None = None) -> None:
        """``epoch_step``: batches of ``epoch`` already consumed (a mid-epoch checkpoint resumes after them);
        ``metrics``: the report's numbers (a later ``cfgdiff export`` puts them on the model card)."""
        state = {"model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                 "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "step": step, "epoch": epoch, "epoch_step": epoch_step, "extra": extra}
        numbers = validation_numbers(metrics)
        meta = {**self.meta, "step": step, **({"validation": numbers} if numbers else {})}
        write_checkpoint_files(directory, ema.shadow, self.cfg, self.norm, meta, state)

    def write_model(self, directory: str, ema: EMA, step: int, metrics: dict) -> None:
        """An export: config, EMA weights and the model card; the training state stays in the checkpoints."""
        write_model(directory, ema.shadow, self.cfg, self.norm, {**self.meta, "step": step}, metrics)


def train_loop_per_worker(lc: dict) -> dict:
    quiet_ray_logs()
    cfg = ExperimentConfig.from_dict(lc["config"])
    tc = cfg.train
    norm = Normalization.from_dict(lc["normalization"])
    ctx = ray.train.get_context()  # --- Ray: who am I
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _worker_logging(lc.get("log_file") if rank == 0 else None)
    device = ray.train.torch.get_device()
    torch.set_num_threads(lc.get("threads", 1))
    if lc.get("workers_dir"):  # where each rank ran: node, host, pid, device (placement checks, debugging)
        os.makedirs(lc["workers_dir"], exist_ok=True)
        Path(lc["workers_dir"], f"rank-{rank}.json").write_text(json.dumps({
            "rank": rank, "world": world, "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(), "pid": os.getpid(), "device": str(device)}))

    torch.manual_seed(tc.seed)  # the initial weights (DDP then broadcasts rank 0's to every rank)
    model = ConditionalUNet(cfg.model).to(device)
    model.checkpointing = tc.activation_checkpointing
    ema = EMA(model, tc.ema_decay)
    opt = make_optimizer(model, tc)
    sched = make_lr_scheduler(opt, tc)
    step, epoch, epoch_step, best = 0, 0, 0, {"score": -float("inf")}
    ckpt = ray.train.get_checkpoint()  # --- Ray: set after a failure or on --resume
    if ckpt is not None:
        with ckpt.as_directory() as d:
            st = load_training_state(d)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        step, epoch, epoch_step = int(st["step"]), int(st["epoch"]), int(st.get("epoch_step", 0))
        sched = resume_lr_scheduler(sched, opt, tc, st["scheduler"], step)  # --steps N may set a new horizon
        best = st["extra"].get("best", best)
    elif rank == 0 and lc.get("fit_log"):
        with open(lc["fit_log"], "a") as f:  # one line per from-scratch fit (tests count them)
            f.write(f"{time.time()}\n")
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)  # --- Ray: device + DDP when world > 1
    if tc.compile:
        model = torch.compile(model)
    schedule = NoiseSchedule.from_config(cfg.schedule).to(device)
    saver = _Saver(cfg, norm, lc.get("meta", {}))
    staging = None
    if lc.get("remote_run") and rank == 0:  # URI storage: rank 0 writes locally, uploads at the end
        staging = tempfile.mkdtemp(prefix="cfgdiff-run-")
        lc = {**lc, "tb_dir": f"{staging}/tensorboard", "export_dir": f"{staging}/export", "best_dir": f"{staging}/best"}
    tb = TBWriter(lc["tb_dir"] if rank == 0 else None, purge_step=step or None)
    vis = {k: torch.tensor(np.array(v)).to(device) for k, v in lc["vis"].items()}
    # --- Ray: this rank's shard; a fixed per-rank split (materialized data) keeps the row order exact on resume
    train_shard = ray.train.get_dataset_shard(f"train_{rank}" if lc.get("per_rank_train") else "train")
    val_shard = ray.train.get_dataset_shard("val")
    per_worker = tc.batch_size // world
    eval_ws = lc.get("eval_ws") or [cfg.sampler.w]
    t_start, img_seen, t_last, last_metrics, step0 = time.time(), 0, time.time(), {}, step
    max_steps = tc.max_steps
    reported = False
    board = BoardClient(lc.get("progress") if rank == 0 else None)  # the driver's progress bar (cluster.progress)
    board.send({"kind": "start", "step": step, "max_steps": max_steps})

    def report(metrics: dict, tag: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if rank == 0:
                saver.write(tmp, model, ema, opt, sched, step, epoch, {"best": best}, epoch_step, metrics)
                share(tmp)  # mkdtemp's 0700 must not reach shared storage
                ck = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ck, checkpoint_dir_name=tag)  # --- Ray: all ranks

    def finish(metrics: dict) -> None:
        """Export, close TensorBoard and upload, all before the last report: Tune stops a trial as soon as it
        reports its last epoch (ASHA's max_t), and whatever comes after that report may never run."""
        if rank == 0 and lc.get("export_dir"):
            _export(lc["export_dir"], saver, ema, step, metrics)
        tb.hparams(*_hparams(cfg, metrics, last_metrics))
        tb.close()
        if staging is not None:
            _upload(staging, lc["remote_run"])

    timer = StepTimer()
    nonfinite = 0
    pending = None  # a periodic checkpoint's (metrics, folder name), reported once the next batch arrives
    while step < max_steps:
        timer.start(device)
        skip, epoch_step = epoch_step, 0
        for raw in iter_block_batches(train_shard, per_worker, drop_last=True,
                                      shuffle_seed=tc.seed + 7919 * rank + epoch):
            if epoch_step < skip:  # resumed mid-epoch: these batches were trained on before the checkpoint
                epoch_step += 1
                continue
            if pending is not None:  # the step was not the epoch's last: its periodic checkpoint stands alone
                report(*pending)
                pending = None
                timer.start(device)
            epoch_step += 1
            b = decode_batch(raw, norm, device, where=lc.get("data_name", "dataset"))
            if tc.crop:  # before the degradation, so that targets-only data gets its masks drawn on the crop
                b = crop_rows(b, tc.crop, torch.Generator().manual_seed(_step_seed(tc.seed, rank, step) ^ 0xC409))
            b = _with_condition(b, tc.degrade, tc.seed, epoch)
            b = augment_rows(b, tc.augment, torch.Generator().manual_seed(_step_seed(tc.seed, rank, step) ^ 0xA116))
            timer.mark("data_wait", device)
            out = core_train_step(model, opt, sched, schedule, b["x0"], b["cond"], b["mask"], cfg,
                                  generator=_step_generator(device, tc.seed, rank, step),
                                  micro_batch_size=tc.micro_batch_size, timer=timer)
            ema.update(model)
            timer.mark("ema", device)
            step += 1
            nonfinite = 0 if out["finite"] else nonfinite + 1
            if nonfinite >= tc.max_nonfinite:  # every rank sees the same all-reduced gradient norm: all stop here
                raise NonFiniteError(f"training stopped at step {step}: the loss was NaN or inf for {nonfinite} "
                                     f"consecutive steps (train.max_nonfinite={tc.max_nonfinite}); those steps did "
                                     "not change the weights. Check the data, or lower train.lr")
            img_seen += b["x0"].shape[0] * world
            board.step(step, b["x0"].shape[0] * world, out["loss"], last=step == max_steps)
            if lc.get("fail_at_step") == step and rank == world - 1 and not storage_io.exists(lc["fail_marker"]):
                storage_io.write_text(lc["fail_marker"], str(step))
                os._exit(1)  # fault injection for tests: this worker dies once
            if step % tc.log_every == 0 or step == max_steps:
                loss = float(_all_mean(out["loss"], world))
                now = time.time()
                ips = img_seen / max(now - t_last, 1e-9)
                t_last, img_seen = now, 0
                last_metrics = {"loss": loss, "lr": opt.param_groups[0]["lr"],
                                "grad_norm": float(out["grad_norm"]), "images_per_s": ips}
                if rank == 0:
                    eta = (max_steps - step) * (now - t_start) / max(step - step0, 1)
                    logger.info("step %d/%d  loss %.4f  %.1f img/s  lr %.2e  ETA %.1f min (average rate)", step,
                                max_steps, loss, ips, last_metrics["lr"], eta / 60)
                    tb.scalars(last_metrics, step, "train/")
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < max_steps \
                    and not lc.get("report_epochs_only"):
                # deferred to the next batch: when the epoch ends here instead, its validated checkpoint takes
                # this step's name, and two reports of one folder make Ray's retention delete the live one
                pending = ({"step": step, "epoch": epoch, **last_metrics}, f"step_{step:07d}")
            if step >= max_steps:
                break
            timer.start(device)
        epoch, epoch_step, pending = epoch + 1, 0, None  # the epoch's validated checkpoint replaces a pending one
        metrics = _validate(model, ema, cfg, schedule, norm, val_shard, vis, eval_ws, per_worker, world, rank,
                            device, tb, step, epoch)
        if board.board is not None:  # rank 0, which holds the reconstruction metrics
            board.send({"kind": "val", "epoch": epoch, "step": step, "w": cfg.sampler.w,
                        **{k: metrics.get(k, float("nan")) for k in ("val_loss", "psnr", "ssim")}})
        score = metrics.get("psnr", -float("inf"))
        if score > best["score"]:
            best = {"score": score, "step": step}
            if rank == 0 and lc.get("best_dir"):
                _export(lc["best_dir"], saver, ema, step, metrics)
        if step >= max_steps:
            finish(metrics)
        report({"step": step, "epoch": epoch, **last_metrics, **metrics}, f"step_{step:07d}")
        reported = True
    if not reported:  # resumed a finished run (e.g. a restored Tune trial): report its final state once
        metrics = _validate(model, ema, cfg, schedule, norm, val_shard, vis, eval_ws, per_worker, world, rank,
                            device, tb, step, epoch)
        finish(metrics)
        report({"step": step, "epoch": epoch, **metrics}, f"step_{step:07d}_final")
    split = _step_split(timer, model, world, device, step - step0)
    if rank == 0 and split:
        logger.info("step-time split per step: %s", ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in split.items()))
    export = f"{lc['remote_run']}/export" if lc.get("remote_run") else lc.get("export_dir")
    return {"step": step, "epoch": epoch, "seconds": time.time() - t_start, "best": best,
            "export_dir": export, "final": last_metrics, "step_time_split_s": split}


def _hparams(cfg: ExperimentConfig, val: dict, last: dict) -> tuple[dict, dict]:
    """The hparams tab: the run's settings against its final validation scores, at the tuned w when the run
    swept w (a Tune trial: best_*), else at the sampler's w; and the final training loss."""
    tc = cfg.train
    swept = "best_w" in val
    w = val["best_w"] if swept else cfg.sampler.w
    scores = {k: val.get(f"best_{k}" if swept else k) for k in ("psnr", "ssim", "mae_missing")}
    return ({"p_uncond": tc.p_uncond, "w": w, "lr": tc.lr, "batch_size": tc.batch_size, "dim": cfg.model.dim},
            {**{f"val_{k}": v for k, v in scores.items()}, "loss": last.get("loss")})


def _upload(staging: str, remote: str) -> None:
    """Copy the export, best model and TensorBoard logs to URI storage (pyarrow filesystems)."""
    import pyarrow.fs as pafs

    fs, root = storage_io.location(remote)
    for sub in ("export", "best", "tensorboard"):
        if os.path.isdir(os.path.join(staging, sub)):
            fs.create_dir(f"{root}/{sub}", recursive=True)
            pafs.copy_files(os.path.join(staging, sub), f"{root}/{sub}", destination_filesystem=fs)
    shutil.rmtree(staging, ignore_errors=True)


def _step_split(timer: StepTimer, model, world: int, device, steps: int) -> dict[str, float]:
    """Mean seconds per step by phase, plus a separate probe of one all-reduce of all gradients
    (under DDP that all-reduce runs inside the backward, overlapped, so it is measured apart)."""
    if steps <= 0:
        return {}
    split = {k: v / steps for k, v in timer.totals.items()}
    if world > 1 and dist.is_initialized():
        n = sum(p.numel() for p in model.parameters())
        buf = torch.zeros(n, device=device)
        dist.all_reduce(buf)  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(buf)
        StepTimer._sync(device)
        split["allreduce_probe"] = (time.perf_counter() - t0) / 5
    return split


def _export(path: str, saver: _Saver, ema, step: int, metrics: dict) -> None:
    write_atomically(path, lambda tmp: saver.write_model(tmp, ema, step, metrics), overwrite=True, hint="")


@torch.no_grad()
def _validate(model, ema: EMA, cfg, schedule, norm, val_shard, vis, eval_ws, per_worker, world, rank, device, tb,
              step, epoch) -> dict:
    """Held-out eps loss (all ranks, all-reduced), and on rank 0 the reconstruction metrics of the EMA
    model on the fixed validation batch for every w in ``eval_ws`` (only rank 0's report is kept)."""
    tc = cfg.train
    losses = []
    for i, raw in enumerate(iter_block_batches(val_shard, per_worker)):
        if i >= tc.val_batches:
            continue  # drain the shard: all ranks must consume it together (RAY_NOTES §0.4)
        b = decode_batch(raw, norm, device, where="validation split")
        b = _with_condition(crop_rows(b, tc.crop) if tc.crop else b, tc.degrade, tc.seed, 0)
        losses.append(eval_loss(model, schedule, b["x0"], b["cond"], b["mask"], cfg))
    val_loss = torch.stack(losses).mean() if losses else torch.tensor(float("nan"), device=device)
    metrics = {"val_loss": float(_all_mean(val_loss.to(device), world))}
    if rank != 0:
        return metrics
    ema_model = ConditionalUNet(cfg.model).to(device)
    ema_model.load_state_dict(ema.shadow)
    base = SamplerConfig(method="ddim", steps=tc.val_steps, eta=0.0, w=cfg.sampler.w, clip_x0=cfg.sampler.clip_x0)
    curve = {}
    for w in eval_ws:
        s = SamplerConfig(**{**base.__dict__, "w": float(w)})
        x, m = reconstruct_and_score(ema_model, schedule, vis["x0"], vis["cond"], vis["mask"], cfg, s, seed=0,
                                     clip_range=norm.target.clip_bounds(), norm=norm.target)
        curve[float(w)] = m
        if float(w) == float(cfg.sampler.w) or len(eval_ws) == 1:
            tb.grid("val/cond|mask|sample|target|error", vis["cond"], vis["mask"], x, vis["x0"], step)
    best_w = max(curve, key=lambda w: curve[w]["psnr"])
    sel = curve[float(cfg.sampler.w)] if float(cfg.sampler.w) in curve else curve[best_w]
    metrics.update({k: sel[k] for k in ("psnr", "ssim", "mae_missing", "known_error")})
    if len(eval_ws) > 1:
        metrics.update({f"psnr_w{w:g}": v["psnr"] for w, v in curve.items()})
        metrics.update({f"ssim_w{w:g}": v["ssim"] for w, v in curve.items()})
        metrics.update({f"mae_missing_w{w:g}": v["mae_missing"] for w, v in curve.items()})
        metrics.update({"best_w": best_w, "best_psnr": curve[best_w]["psnr"], "best_ssim": curve[best_w]["ssim"],
                        "best_mae_missing": curve[best_w]["mae_missing"]})
    tb.scalars(metrics, step, "val/")
    logger.info("epoch %d step %d  val_loss %.4f  psnr %.2f dB  ssim %.3f  (w=%g)", epoch, step, metrics["val_loss"],
                metrics["psnr"], metrics["ssim"], cfg.sampler.w)
    return metrics
