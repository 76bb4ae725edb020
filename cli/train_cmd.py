"""``cfgdiff train``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cfgdiff.config import PRECISIONS, ExperimentConfig, resume_conflicts
from cfgdiff.data import DatasetMeta
from cfgdiff.errors import InputError

from .common import command_line, fmt_metrics, preset_option, ray_options, renamed, resume_option, storage_endpoint_option


def load_base_config(config_file: str | None) -> ExperimentConfig:
    if not config_file:
        return ExperimentConfig()
    try:
        return ExperimentConfig.from_dict(json.loads(Path(config_file).read_text()))
    except FileNotFoundError:
        raise InputError(f"--config {config_file}: no such file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--config {config_file}: invalid JSON ({e})") from None
    except ValueError as e:
        raise InputError(f"--config {config_file}: {e}") from None


@click.command("train")
@click.option("--data", required=True, type=click.Path(),
              help="Dataset directory from `cfgdiff convert` (a path or an s3:// / gs:// URI).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--gpu", is_flag=True, help="One GPU per worker (NCCL); CPU workers use gloo.")
@ray_options
@click.option("--out", "storage", default="runs", show_default=True,
              help="Where runs go: a local path, an NFS mount, or an s3:// / gs:// URI (shared storage for multi-node).")
@renamed("--storage", "storage")
@storage_endpoint_option
@click.option("--name", default="cfgdiff-run", show_default=True, help="Run name (a directory under --out).")
@click.option("--config", "config_file", type=click.Path(), help="Experiment config JSON (strict keys).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override, e.g. --set model.dim=64 (repeatable).")
@preset_option
@click.option("--epochs", type=int, default=None, help="Train for N passes over the data (overrides train.max_steps).")
@click.option("--steps", type=int, default=None, help="Optimizer steps (train.max_steps).")
@resume_option("Continue the run called --name (or NAME) from its last checkpoint, exactly (same data order and "
                   "noise). --steps and --set train.ema_decay/log_every/checkpoint_every/keep_checkpoints/val_*/precision/"
                   "compile/max_nonfinite and sampler.* apply from the resumed step; any other changed setting "
                   "is refused (exit 2).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="bf16 autocast, or auto: bf16 on GPUs and CPUs with AVX512-BF16/AMX, fp32 elsewhere "
                   "(emulated bf16 on an AVX2-only CPU trained 11x slower than fp32).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--threads-per-worker", type=int, default=1, show_default=True, help="torch threads per worker.")
@click.option("--max-failures", type=int, default=2, show_default=True, help="Automatic restarts from the last checkpoint.")
@click.option("--spread", is_flag=True, help="Place workers on different nodes where possible (default: pack).")
@click.pass_context
def train_cmd(ctx, data, workers, gpu, ray_address, num_cpus, dashboard, storage, name, config_file, sets,
              preset, epochs, steps, resume, precision, compile_, cpus_per_worker, threads_per_worker, max_failures, spread):
    """Train the conditional diffusion model with Ray Train (TorchTrainer, DDP).

    Without --ray-address an embedded local Ray starts in-process. Checkpoints are reported every
    train.checkpoint_every steps and at every epoch end; the final EMA model is exported to
    OUT/NAME/export, the best-by-validation model to OUT/NAME/best; progress is drawn here, and the
    workers' own log lines go to OUT/NAME/train.log.
    """
    from cluster import storage as storage_io
    from cluster.runtime import start_ray, stop_ray
    from cluster.train import TrainJob, config_for_data, latest_checkpoint, load_run_config, run_exists, run_paths, run_training

    storage_io.check_storage(data, "--data")
    meta = DatasetMeta.load(data)
    storage_io.check_storage(storage)
    if epochs is not None and steps is not None:
        raise InputError("pass --epochs or --steps, not both")
    extra = list(sets)
    extra += [f"train.max_steps={steps}"] if steps is not None else []
    extra += [f"train.precision={precision}"] if precision else []
    extra += ["train.compile=true"] if compile_ else []
    if resume is not None:
        if preset is not None:
            raise InputError("--preset: a resumed run keeps its architecture; drop --preset")
        name = resume or name
        base = load_run_config(storage, name)
    else:
        base = load_base_config(config_file)
        if run_exists(storage, name):
            raise InputError(f"--name {name}: a run already exists under {storage}; use --resume {name} or a new --name")
    cfg = config_for_data(meta, base, extra, preset=preset, auto_preset=resume is None)
    if resume is not None and (conflicts := resume_conflicts(base, cfg)):
        raise InputError(f"--resume {name}: cannot change {conflicts[0]} (start a new --name instead)")
    info = start_ray(ray_address, num_cpus, dashboard=dashboard,
                     quiet=click.get_current_context().obj.get("verbose") is not True)
    try:
        job = TrainJob(data_dir=data, config=cfg, run_name=name, storage=storage, workers=workers, use_gpu=gpu,
                       cpus_per_worker=cpus_per_worker, threads_per_worker=threads_per_worker,
                       max_failures=max_failures, epochs=epochs, placement="SPREAD" if spread else "PACK",
                       command=command_line(ctx))
        paths = run_paths(job)
        click.echo(f"Ray: {'embedded local' if info.embedded else 'cluster ' + info.address} "
                   f"({info.num_cpus:g} CPUs, {info.num_gpus:g} GPUs); {workers} worker(s)")
        click.echo(f"monitor: tensorboard --logdir {paths['tb']}")
        try:
            s = run_training(job)
        except KeyboardInterrupt:
            latest = latest_checkpoint(paths["run"])
            if latest is None:
                click.echo("interrupted before the first checkpoint; nothing was kept", err=True)
            else:
                at = int(latest.rsplit("step_", 1)[1].split("_")[0])
                click.echo(f"interrupted at step {at} (the last checkpoint); continue with "
                           f"`cfgdiff train --data {data} --out {storage} --resume {name} --steps "
                           f"{cfg.train.max_steps}`", err=True)
            sys.exit(130)
    finally:
        stop_ray(info)
    click.echo(f"done: {s.get('step')} steps in {s.get('seconds', 0):.0f} s; {fmt_metrics(s['metrics'])}")
    click.echo(f"export: {s.get('export_dir')}  (cfgdiff infer {s.get('export_dir')} --input ... --out ...)")


COMMANDS = [train_cmd]
