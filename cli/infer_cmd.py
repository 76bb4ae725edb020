"""``cfgdiff infer``."""

from __future__ import annotations

import json
import sys

import click

from cfgdiff import fsio
from cfgdiff.checkpoint import load_checkpoint
from cfgdiff.config import DEFAULT_METHOD, DEFAULT_STEPS, METHODS, PRECISIONS, SamplerConfig, check_antithetic
from cfgdiff.errors import InputError

from .common import Progress, fmt_metrics, int_pair, ray_options, renamed, storage_endpoint_option


@click.command("infer")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--input", "input_", required=True, help="cfgdiff dataset dir, or conditions (NaN or _FillValue = "
              "missing) as convert reads them: .npy/.npz, an image folder, FILE.nc:VAR, STORE.zarr:VAR, FILE.h5:/DATASET; "
              "or clean targets with --degrade.")
@click.option("--out", required=True, help="OUT.npy, OUT.parquet, OUT.nc or OUT.zarr (the input's dimensions, coordinates "
              "and attributes, with NAME_std and mask), or DIR/ (one image per input image); OUT.metrics.json, "
              "OUT.grid.png (and for .npy with --num-samples > 1 OUT.std.npy, OUT.samples.npy) beside it.")
@storage_endpoint_option
@click.option("--mask", help="Mask (1 = known) for array or file conditions: as convert's --mask (incl. 'alpha').")
@click.option("--sample-dim", metavar="DIM", help="NetCDF/Zarr input: the dimension that becomes rows [default: first].")
@click.option("--degrade", metavar="SPEC", help="Degrade clean targets (benchmarking), e.g. drop:0.8 or sr:2.")
@click.option("--split", type=click.Choice(["train", "val", "all"]), default=None,
              help="Split of a dataset directory to reconstruct [default: val]; array inputs are reconstructed whole.")
@ray_options
@click.option("--workers", "actors", type=int, default=1, show_default=True, help="Parallel inference actors.")
@renamed("--actors", "actors", type=int)
@click.option("--gpu", is_flag=True, help="One GPU per worker.")
@click.option("--gpus-per-worker", "gpus_per_actor", type=float, default=0.0, show_default=True,
              help="A fraction packs several workers on one GPU (0.5: two per GPU).")
@renamed("--gpus-per-actor", "gpus_per_actor", type=float)
@click.option("--threads-per-worker", "threads_per_actor", type=int, default=1, show_default=True,
              help="torch threads per worker.")
@renamed("--threads-per-actor", "threads_per_actor", type=int)
@click.option("--limit", type=int, default=None, help="Reconstruct only the first N rows.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Rows per actor batch.")
@click.option("--model-batch", type=int, default=8, show_default=True,
              help="Rows per network call; fixed so CPU output is bit-identical for any batch size (0 = whole batch).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help=f"Sampler (default: the checkpoint's; {DEFAULT_METHOD} for models trained since #20); "
                   "dpm2m = DPM-Solver++(2M), deterministic, second order; "
                   "dpm2m-sde = its stochastic form, for spread at few steps.")
@click.option("--steps", type=int, default=None,
              help=f"Denoising steps (default: the checkpoint's; {DEFAULT_STEPS} for models trained since #20).")
@click.option("--eta", type=float, default=None, help="DDIM eta in [0, 1].")
@click.option("--w", type=float, default=None, help="Guidance weight: 0 uncond, 1 cond, >1 stronger.")
@click.option("--resample", default=None, metavar="J,R", help="RePaint jump length and resamplings.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision: bf16 autocast; auto = bf16 on GPUs and CPUs with AVX512-BF16/AMX, fp32 "
                   "elsewhere (default: the checkpoint's sampler.precision).")
@click.option("--num-samples", type=int, default=1, show_default=True, help="K samples per row (mean and std maps).")
@click.option("--antithetic", is_flag=True, help="Draw the K samples in pairs with opposite noise (K even): a "
              "closer mean for the same K.")
@click.option("--tile", type=int, default=None, help="Denoise overlapping TILE x TILE windows, fused at every step: "
              "for fields larger than the training size (any size >= TILE).")
@click.option("--overlap", type=int, default=None, help="Window overlap in pixels with --tile [default: TILE // 4].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--from-tune", type=click.Path(), help="Use best.json of a `cfgdiff tune` directory (checkpoint, w).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.pass_context
def infer_cmd(ctx, checkpoint, input_, out, mask, sample_dim, degrade, split, ray_address, num_cpus, dashboard, actors, gpu,
              gpus_per_actor, threads_per_actor, limit, batch_size, model_batch, method, steps, eta, w, resample,
              precision, num_samples, antithetic, tile, overlap, seed, from_tune, overwrite):
    """Reconstruct a batch of observations in parallel on Ray actors (CHECKPOINT or --from-tune)."""
    from cluster.infer import InferJob, run_inference
    from cluster.runtime import start_ray, stop_ray

    if from_tune:
        best_file = fsio.join(from_tune, "best.json")
        if not fsio.is_file(best_file):
            raise InputError(f"--from-tune {from_tune}: no best.json (run `cfgdiff tune` first)")
        best = json.loads(fsio.read_text(best_file))
        checkpoint = checkpoint or best["checkpoint"]
        w = best["w"] if w is None else w
    if not checkpoint:
        raise InputError("give a CHECKPOINT directory or --from-tune DIR")
    ck = load_checkpoint(checkpoint)
    s = ck.config.sampler
    try:
        sampler = SamplerConfig(method=method or s.method, steps=s.steps if steps is None else steps,
                                eta=s.eta if eta is None else eta,
                                w=s.w if w is None else w, resample=int_pair(resample, "--resample", "10,3") or s.resample,
                                clip_x0=s.clip_x0, precision=precision or s.precision, antithetic=antithetic)
    except ValueError as e:
        raise InputError(str(e).replace("sampler.", "--")) from None
    check_antithetic(antithetic, num_samples)
    if sampler.steps > ck.config.schedule.num_timesteps:
        raise InputError(f"--steps {sampler.steps} exceeds the schedule's T={ck.config.schedule.num_timesteps}")
    job = InferJob(checkpoint=checkpoint, input=input_, out=out, mask=mask, sample_dim=sample_dim, degrade=degrade,
                   split=split,                   actors=actors, gpus_per_actor=gpus_per_actor or (1.0 if gpu else 0.0),
                   threads_per_actor=threads_per_actor, limit=limit,
                   batch_size=batch_size, model_batch=model_batch, sampler=sampler, num_samples=num_samples,
                   seed=seed, overwrite=overwrite, tile=tile, overlap=overlap)
    info = start_ray(ray_address, num_cpus, dashboard=dashboard,
                     quiet=click.get_current_context().obj.get("verbose") is not True)
    bar = Progress("reconstruct", ctx.obj.get("verbose") is not False)
    try:
        r = run_inference(job, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted; nothing was written to {out} (run the same command again)", err=True)
        sys.exit(130)
    finally:
        bar.close()
        stop_ray(info)
    click.echo(f"{r['rows']} rows in {r['seconds']:.1f} s = {r['images_per_s']:.2f} images/s on "
               f"{actors} actor(s) ({'embedded Ray' if info.embedded else info.address}); "
               f"{r['model_calls_per_image']} model calls per image")
    if r["steady_images_per_s"]:
        click.echo(f"actors started sampling after {r['startup_s']:.1f} s; steady state {r['steady_images_per_s']:.2f} "
                   "images/s (first batch started to last batch finished)")
    if r["metrics"]:
        click.echo("metrics: " + fmt_metrics(r["metrics"]))
    click.echo("outputs: " + ", ".join(r["outputs"]))


COMMANDS = [infer_cmd]
