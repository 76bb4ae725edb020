"""``cfgdiff evaluate``."""

from __future__ import annotations

import click

from cfgdiff.config import DEFAULT_METHOD, DEFAULT_STEPS, METHODS, PRECISIONS
from cfgdiff.errors import InputError
from cfgdiff.evaluate import EvalOptions, run_evaluation
from cfgdiff.metrics import samples_for_psnr_loss

from .common import storage_endpoint_option


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, help="cfgdiff dataset dir (its --split) or a .npy of clean targets.")
@click.option("--degrade", "specs", multiple=True, metavar="SPEC",
              help="Degradation to score (repeatable; default: drop:0.9, box:0.4:random, strokes:5, half).")
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option("--limit", type=int, default=32, show_default=True, help="Rows to score.")
@click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True, help="Sampler steps.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="Sampler. More steps (or ddpm) widen the samples towards the true posterior spread.")
@click.option("--eta", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="DDIM stochasticity (0 = deterministic ODE).")
@click.option("--w", type=float, default=None, help="Guidance weight (default: the checkpoint's).")
@click.option("--num-samples", type=int, default=4, show_default=True, help="K samples: posterior mean, std, calibration.")
@click.option("--antithetic", is_flag=True, help="Draw the K samples in pairs with opposite noise (K even), as "
              "infer --antithetic: a posterior mean with less Monte-Carlo noise for the same K.")
@click.option("--sweep", multiple=True, metavar="METHOD:STEPS[:rJ,R]",
              help="Quality against cost on the first degradation, e.g. --sweep ddim:10 --sweep ddpm:1000 --sweep ddim:25:r5,3.")
@click.option("--no-baselines", is_flag=True, help="Skip the classical baselines and LMMSE.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write evaluate.json and evaluate.png here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT/evaluate.json.")
@storage_endpoint_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--gpu", is_flag=True, help="Run the model on the first CUDA GPU.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision (default: the checkpoint's sampler.precision).")
@click.option("--tile", type=int, default=None,
              help="Fields larger than the training size: denoise overlapping TILE x TILE windows (as infer --tile); "
                   "adds the seam check and seams.png.")
@click.option("--overlap", type=int, default=None, help="Window overlap with --tile (default: tile // 4).")
def evaluate_cmd(checkpoint, data, specs, split, limit, steps, method, eta, w, num_samples, antithetic, sweep, no_baselines, out,
                 overwrite, seed, gpu, precision, tile, overlap):
    """Score reconstructions per degradation against classical baselines (mean-fill, linear
    interpolation, biharmonic, OpenCV Telea/Navier-Stokes), the best linear estimator (LMMSE with
    the covariance fitted on the training rows) and, for Gaussian-random-field demo data, the Bayes
    optimum (exact kriging posterior).

    Runs in this process, not on Ray: it scores one small held-out set many times
    over, which is latency-bound. To reconstruct and score a large set in parallel, run
    `cfgdiff infer --workers N` on a dataset with targets (it writes OUT.metrics.json)."""
    if gpu:
        import torch

        if not torch.cuda.is_available():
            raise InputError("--gpu: no CUDA GPU is visible to this process")
    if limit < 1 or steps < 1 or num_samples < 1:
        raise InputError("--limit, --steps and --num-samples must be >= 1")
    opts = EvalOptions(degrade=tuple(specs) or EvalOptions().degrade, steps=steps, method=method, eta=eta, w=w,
                       num_samples=num_samples, antithetic=antithetic, limit=limit, split=split, seed=seed, sweep=tuple(sweep),
                       baselines=not no_baselines, device="cuda" if gpu else "cpu", precision=precision,
                       tile=tile, overlap=overlap)
    from cluster.plots import panel_grid, seam_plot

    doc = run_evaluation(checkpoint, data, opts, out, progress=lambda s: click.echo(f"scored {s}", err=True),
                         draw_panels=panel_grid, draw_seams=seam_plot, overwrite=overwrite)
    sampler = f"{method.upper()} {steps} steps" + (f", eta {eta:g}" if method == "ddim" and eta else "")
    field = "x".join(map(str, doc["field"])) + (f" in {doc['tile']} px windows, overlap {doc['overlap']}"
                                                if doc["tile"] else "")
    pairs = " in antithetic pairs" if antithetic else ""
    click.echo(f"{doc['rows']} rows of {field}, {sampler}, w={doc['w']:g}, K={num_samples}{pairs}; "
               f"metrics in {doc['units']}")
    head = f"{'degradation':<16} {'method':<26} {'PSNR':>7} {'SSIM':>6} {'MAE miss':>9} {'MSE/Bayes':>9} {'cover2s':>7}"
    click.echo(head)
    for spec, rows in doc["results"].items():
        bayes = rows.get("kriging (Bayes optimum)", {}).get("mse_missing")
        for name, r in rows.items():
            if "skipped" in r:
                click.echo(f"{spec:<16} {name:<26} skipped: {r['skipped']}")
                continue
            ratio = f"{r['mse_missing'] / bayes:9.2f}" if bayes else f"{'-':>9}"
            cov = f"{r['coverage_2std']:7.3f}" if "coverage_2std" in r else f"{'-':>7}"
            click.echo(f"{spec:<16} {name:<26} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['mae_missing']:9.4f} {ratio} {cov}")
        c = rows.get("cfgdiff", {})
        if "posterior_mean_mse_over_bayes" in c:
            ci = c.get("posterior_mean_mse_over_bayes_ci95")
            ci = f"  95% CI over fields [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            click.echo(f"{spec:<16} {'posterior mean MSE/Bayes':<26} {c['posterior_mean_mse_over_bayes']:7.3f}{ci}"
                       + ("  (K-sample noise removed, estimated from the pair means)" if antithetic else
                          "  (K-sample noise removed; the plain mean of K carries +1/K)"))
        if "std_over_exact_std" in c:
            ref = c.get("std_over_exact_std_of_exact_samples")
            click.echo(f"{spec:<16} {'sample std / exact std':<26} {c['std_over_exact_std']:7.3f}  "
                       + (f"(exact samples score {ref:.3f} at K={doc['num_samples']})" if ref is not None else
                          "(std estimated from the pairs)"))
        if "coverage_2std_of_exact_samples" in c:
            click.echo(f"{spec:<16} {'coverage 2 std':<26} {c['coverage_2std']:7.3f}  "
                       f"(exact samples score {c['coverage_2std_of_exact_samples']:.3f} at K={doc['num_samples']})")
    for spec, sm in (doc["seams"] or {}).items():
        ref = sm.get("reference", {}).get("edge_over_rest")
        ratio = sm["model"]["edge_over_rest"]
        click.echo(f"{spec:<16} {'seams: edge/rest MSE':<26} " + (f"{ratio:7.3f}" if ratio is not None else "      -")
                   + (f"  (Bayes optimum, no windows: {ref:.3f})" if ref is not None else "")
                   + "  (1 px either side of the window edges against the other missing pixels)")
    if (lm := doc["lmmse"]):
        where = (f"{lm['rows']} windows of {lm['window'][0]}x{lm['window'][1]} (overlap {lm['overlap']}, fused per pixel; "
                 "one covariance of whole fields would be too large or have fewer rows than values)"
                 if "window" in lm else f"{lm['rows']} training rows")
        click.echo(f"LMMSE: mean and covariance fitted on {where}, shrinkage {lm['shrinkage']:g} towards the diagonal "
                   "(chosen on held-out training rows)")
    K = num_samples
    if doc["mean_of_k_psnr_loss_db"] is None:
        click.echo(f"mean of K={K} samples in antithetic pairs: no closed form for its loss (independent samples lose "
                   "10 log10(1 + 1/K) dB); scored against the posterior mean above")
    else:
        click.echo(f"mean of K={K} samples: at best {doc['mean_of_k_psnr_loss_db']:.2f} dB below the posterior mean "
               f"(MSE x (1 + 1/K)); K for a loss of 0.5 / 0.25 / 0.1 dB: "
               + " / ".join(str(samples_for_psnr_loss(d)) for d in (0.5, 0.25, 0.1)))
    for r in doc["quality_vs_cost"]:
        click.echo(f"sweep {r['sampler']:<16} {r['model_calls']:>5} model calls/image  PSNR {r['psnr']:.2f}  "
                   f"({r['seconds']:.1f} s)")
    if out:
        click.echo(f"wrote {out}/evaluate.json and {out}/evaluate.png" + (f" and {out}/seams.png" if doc["seams"] else ""))


COMMANDS = [evaluate_cmd]
