"""``cfgdiff tune``."""

from __future__ import annotations

import sys

import click

from cfgdiff.config import PRECISIONS
from cfgdiff.data import DatasetMeta
from cfgdiff.errors import InputError

from .common import preset_option, ray_options, renamed, resume_option, storage_endpoint_option
from .train_cmd import load_base_config


def _floats(value: str | None, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip() != "")
    except ValueError:
        raise InputError(f"{name} {value!r}: expected comma-separated numbers such as 0,1,2") from None


@click.command("tune")
@click.option("--data", required=True, type=click.Path(), help="Dataset directory from `cfgdiff convert`.")
@click.option("--out", default="runs/tune", show_default=True, help="Tune directory (table, best.json, plot, trials).")
@storage_endpoint_option
@click.option("--name", default="cfgdiff-tune", show_default=True, help="Search name (resume uses it).")
@click.option("--trials", type=int, default=3, show_default=True, help="Trials drawn from --p-range.")
@renamed("--num-samples", "trials", type=int)
@click.option("--p-range", default="0.05,0.3", show_default=True, help="LO,HI for the condition-dropout p.")
@click.option("--p-grid", default=None, help="Explicit p values instead of a range, e.g. 0.05,0.1,0.2.")
@click.option("--w-grid", default="0,0.5,1,1.5,2,3,5", show_default=True, help="Guidance weights scored per trial.")
@click.option("--metric", default="psnr", show_default=True, help="psnr, ssim or mae_missing.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Epochs per trial (ASHA max_t).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers per trial.")
@renamed("--workers-per-trial", "workers", type=int)
@click.option("--gpu", is_flag=True, help="One GPU per worker.")
@click.option("--threads-per-worker", type=int, default=1, show_default=True, help="torch threads per worker.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Training precision of every trial (as for train).")
@click.option("--max-concurrent", type=int, default=1, show_default=True, help="Trials at once.")
@ray_options
@click.option("--config", "config_file", type=click.Path(), help="Base experiment config JSON.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override the base config (repeatable).")
@preset_option
@resume_option("Continue the interrupted search OUT/NAME (or OUT/NAME given here) without rerunning finished trials.")
def tune_cmd(data, out, name, trials, p_range, p_grid, w_grid, metric, epochs, workers, gpu, threads_per_worker,
             precision, max_concurrent, ray_address, num_cpus, dashboard, config_file, sets, preset, resume):
    """Search the condition-dropout probability p with Ray Tune (ASHA); every trial trains once
    and scores all guidance weights w of --w-grid, so w never costs a retrain.

    \b
    Scaling up: --trials 16 --epochs 20 --workers 8 --gpu --max-concurrent 1
    on a GPU cluster (--ray-address auto), with --set train.batch_size=256.
    """
    from cluster.runtime import start_ray, stop_ray
    from cluster.train import config_for_data
    from cluster.tune import TuneJob, run_tune, validate_tune

    pr = _floats(p_range, "--p-range")
    if pr is None or len(pr) != 2:
        raise InputError(f"--p-range {p_range!r}: expected LO,HI")
    name = resume or name
    extra = list(sets) + ([f"train.precision={precision}"] if precision else [])
    cfg = config_for_data(DatasetMeta.load(data), load_base_config(config_file), extra, preset=preset)
    job = TuneJob(data_dir=data, config=cfg,
                  out_dir=out, name=name, num_samples=trials, p_range=(pr[0], pr[1]),
                  p_grid=_floats(p_grid, "--p-grid"), w_grid=_floats(w_grid, "--w-grid") or (), metric=metric,
                  epochs=epochs, workers_per_trial=workers, threads_per_worker=threads_per_worker, use_gpu=gpu,
                  max_concurrent=max_concurrent, resume=resume is not None)
    validate_tune(job)
    # the dashboard is always on here: Train V2's placement-group cleaner needs it for ASHA-stopped trials
    info = start_ray(ray_address, num_cpus, dashboard=True,
                     quiet=click.get_current_context().obj.get("verbose") is not True)
    try:
        s = run_tune(job)
    except KeyboardInterrupt as e:
        where = f"{str(e)}; " if str(e) else ""
        click.echo(f"{where}interrupted; continue with `cfgdiff tune --data {data} --out {out} --name {name} "
                   "--resume` (the same options)", err=True)
        sys.exit(130)
    finally:
        stop_ray(info)
    click.echo(f"{'trial':<28} {'status':<12} {'p':>6} {'best w':>7} {'PSNR':>7} {'SSIM':>6} {'MAE_miss':>9} "
               f"{'val_loss':>9} {'steps':>6}")
    for r in s["rows"]:
        f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"
        click.echo(f"{r['trial'][:28]:<28} {r['status'].replace('stopped by ASHA', 'ASHA')[:12]:<12} {r['p']:>6.3f} "
                   f"{f(r['best_w'], '>7.2f')} {f(r['psnr'], '>7.2f')} {f(r['ssim'], '>6.3f')} "
                   f"{f(r['mae_missing'], '>9.4f')} {f(r['val_loss'], '>9.4f')} {f(r['steps'], '>6')}")
    b = s["best"]
    click.echo(f"best: p={b['p']:.3f} w={b['w']} {b['metric']}={b['value']:.4g}  checkpoint {b['checkpoint']}")
    click.echo(f"wrote {s['dir']}/trials.csv, best.json, metric_vs_w.png; "
               f"use it: cfgdiff infer --from-tune {s['dir']} --input ... --out ...")
    click.echo("scale up: --trials 16 --epochs 20 --workers 8 --gpu --max-concurrent 1 "
               "--ray-address auto --set train.batch_size=256 (one 8-GPU trial at a time)")


COMMANDS = [tune_cmd]
