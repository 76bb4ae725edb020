"""The end-to-end demo job behind `make run` (``cfgdiff demo``).

Every stage is the real one a user would run: demo data -> convert -> Ray Train -> Ray Tune ->
Ray Data actor inference -> scoring against mean-fill and the Bayes optimum -> PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfgdiff.config import DEFAULT_METHOD, DEFAULT_STEPS, ExperimentConfig, SamplerConfig
from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import DatasetMeta, read_split
from cfgdiff.degrade import row_kinds
from cfgdiff.demo import write_demo
from cfgdiff.evaluate import LMMSE_NAME, fit_lmmse, kriging_raw, mean_fill_raw, mean_rows, score_rows
from cfgdiff.metrics import exact_sample_coverage, ratio_of_means_ci

from .infer import InferJob, run_inference
from .plots import panel_grid
from .runtime import start_ray, stop_ray
from .train import TrainJob, config_for_data, run_training
from .tune import TuneJob, run_tune


@dataclass(frozen=True)
class DemoPlan:
    out: str
    n: int = 2048  # demo fields
    val_fraction: float = 1 / 16  # 128 validation rows
    degrade: str = "mix:drop:0.9,box:0.4:random,strokes:5,half"  # four mask kinds
    # v-prediction: the eps-trained model of the same budget sampled 2-4x too wide (see ModelConfig.prediction)
    model: tuple[str, ...] = ("model.dim=32", "model.dim_mults=[1,2,2]", "model.num_res_blocks=1",
                              "model.cross_attn_max_res=8", 'model.prediction="v"')
    # 2000 steps, bf16 where native ("auto"): make run took ~11 min on an AVX512-BF16 CPU (1200 fp32 steps left the
    # posterior mean at 1.57x Bayes); an AVX2-only CPU runs fp32, as emulated bf16 there was 11x slower
    train: tuple[str, ...] = ("train.max_steps=2000", 'train.precision="auto"', "train.batch_size=32", "train.lr=1e-3",
                              "train.warmup_steps=50", "train.ema_decay=0.995", "train.checkpoint_every=0",
                              "train.log_every=100", "train.val_samples=16", "train.val_steps=10")
    eval_ws: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    tune_p: tuple[float, ...] = (0.1, 0.3)
    tune_epochs: int = 2
    infer_method: str = DEFAULT_METHOD  # the infer/evaluate default (#20)
    infer_steps: int = DEFAULT_STEPS
    infer_samples: int = 3
    threads: int = 2

    @classmethod
    def default(cls, out: str) -> DemoPlan:
        return cls(out)

    @classmethod
    def quick(cls, out: str) -> DemoPlan:
        return cls(out, n=384, val_fraction=1 / 12,
                   train=("train.max_steps=40", "train.batch_size=16", "train.lr=5e-4", "train.warmup_steps=5",
                          "train.ema_decay=0.9", "train.checkpoint_every=0", "train.log_every=20",
                          "train.val_samples=8", "train.val_steps=3"),
                   eval_ws=(0.0, 1.0, 2.0), tune_p=(0.1, 0.5), tune_epochs=1, infer_steps=4, infer_samples=2, threads=1)


def _stage(echo, title: str) -> float:
    echo(f"\n=== {title} ===")
    return time.time()


def run_demo(plan: DemoPlan, address: str | None = None, num_cpus: int | None = None, skip_tune: bool = False,
             echo=None, quiet: bool = True, dashboard: bool = True) -> dict:
    echo = echo or logging.getLogger("cfgdiff.demo").info
    out = Path(plan.out)
    if out.exists():
        shutil.rmtree(out)  # the demo directory is ours: a rerun starts clean
    out.mkdir(parents=True)
    t_all = time.time()
    t = _stage(echo, "1/6 demo data (offline Gaussian random fields, exact covariance)")
    demo = write_demo(out / "raw", kind="grf", n=plan.n, size=32, seed=0)
    echo(f"{plan.n} fields 32x32 -> {demo['target']}  ({time.time() - t:.1f} s)")

    t = _stage(echo, f"2/6 convert to Parquet (degradations {plan.degrade})")
    meta_doc = convert(demo["target"], out / "data", ConvertOptions(degrade=plan.degrade, val_fraction=plan.val_fraction))
    echo(f"train {meta_doc['counts']['train']} / val {meta_doc['counts']['val']} rows -> {out / 'data'}  "
         f"({time.time() - t:.1f} s)")
    meta = DatasetMeta.load(out / "data")
    cfg = config_for_data(meta, ExperimentConfig(), list(plan.model + plan.train))

    info = start_ray(address, num_cpus, quiet=quiet, dashboard=dashboard)
    try:
        t = _stage(echo, "3/6 train (Ray Train TorchTrainer, 1 worker)")
        echo(f"Ray {'embedded local' if info.embedded else info.address}: {info.num_cpus:g} logical CPUs")
        echo(f"monitor training and the tune trials together: tensorboard --logdir {out}")
        tr = run_training(TrainJob(data_dir=str(out / "data"), config=cfg, run_name="train", storage=str(out),
                                   workers=1, threads_per_worker=plan.threads, eval_ws=plan.eval_ws))
        os.replace(tr["export_dir"], out / "export")  # the model a user takes away: runs/demo/export
        tr["export_dir"] = str(out / "export")
        m = tr["metrics"]
        best_w = float(m.get("best_w", 1.0))
        echo(f"{tr['step']} steps in {time.time() - t:.0f} s; val PSNR by w: " +
             ", ".join(f"w={w:g}: {m.get(f'psnr_w{w:g}', float('nan')):.2f}" for w in plan.eval_ws) +
             f" -> w={best_w:g}")
        tune_best = None
        if skip_tune:
            echo("\n=== 4/6 tune: skipped (--skip-tune) ===")
        else:
            t = _stage(echo, f"4/6 tune p over {plan.tune_p} with ASHA, w over {plan.eval_ws} (no retrain per w)")
            ts = run_tune(TuneJob(data_dir=str(out / "data"), config=cfg, out_dir=str(out / "tune"),
                                  p_grid=plan.tune_p, w_grid=plan.eval_ws, epochs=plan.tune_epochs))
            tune_best = ts["best"]
            for r in ts["rows"]:
                shown = f"best w={r['best_w']}, PSNR {r['psnr']:.2f} dB after {r['steps']} steps" \
                    if r["psnr"] is not None else "no results"
                echo(f"  p={r['p']:.2f}: {shown} ({r['status']})")
            echo(f"best p={tune_best['p']:.2f}, w={tune_best['w']} ({time.time() - t:.0f} s); "
                 f"plot {out / 'tune' / 'metric_vs_w.png'}")
            best_w = float(tune_best["w"])  # the search over trials beats one run's 16-row validation

        t = _stage(echo, f"5/6 infer on Ray actors (2 actors, {plan.infer_method} {plan.infer_steps} steps, w={best_w:g}, "
                         f"K={plan.infer_samples} samples)")
        sampler = SamplerConfig(method=plan.infer_method, steps=plan.infer_steps, w=best_w)
        ir = run_inference(InferJob(checkpoint=tr["export_dir"], input=str(out / "data"), out=str(out / "infer" / "recon.npy"),
                                    actors=2, batch_size=16, sampler=sampler, num_samples=plan.infer_samples, seed=0))
        echo(f"{ir['rows']} rows, {ir['images_per_s']:.2f} images/s, {ir['model_calls_per_image']} model calls "
             f"per sample  ({time.time() - t:.0f} s)")
    finally:
        stop_ray(info)

    t = _stage(echo, "6/6 score against mean-fill, LMMSE and the Bayes optimum (exact kriging posterior)")
    report = _score(out, meta, demo, plan.infer_samples)
    echo(f"{'method':<26} {'PSNR dB':>8} {'SSIM':>6} {'MAE miss':>9} {'MSE/Bayes':>10}")
    for name, r in report["table"].items():
        echo(f"{name:<26} {r['psnr']:>8.2f} {r['ssim']:>6.3f} {r['mae_missing']:>9.4f} {r['mse_ratio']:>10.2f}")
    model = report["table"]["cfgdiff (mean of K)"]
    pm = model.get("posterior_mean_mse_ratio")
    if pm is not None:
        lo, hi = model["posterior_mean_mse_ratio_ci95"]
        echo(f"cfgdiff posterior mean (K-sample noise removed): MSE/Bayes {pm:.2f}, 95% interval over the "
             f"{report['rows']} fields [{lo:.2f}, {hi:.2f}]  (a perfect sampler's plain mean of K={plan.infer_samples} "
             f"scores {1 + 1 / plan.infer_samples:.2f})")
    ideal = f" (exact samples score {exact_sample_coverage(plan.infer_samples):.3f} at K={plan.infer_samples})" \
        if plan.infer_samples > 1 else ""
    echo(f"model coverage of mean +- 2 std: {model.get('coverage_2std', float('nan')):.3f}{ideal}"
         f"; known-pixel error {model['known_error']:.1e}")
    for base in ("mean-fill", LMMSE_NAME):
        verdict = "beats" if model["psnr"] > report["table"][base]["psnr"] else "does NOT beat"
        echo(f"cfgdiff {verdict} {base} on this run.")
    (out / "report.json").write_text(json.dumps({**report, "tune_best": tune_best, "train_steps": tr["step"],
                                                 "seconds": time.time() - t_all}, indent=2, default=str))
    echo(f"\nDone in {(time.time() - t_all) / 60:.1f} min. Outputs under {out}/:")
    echo("  comparison.png          condition | mean-fill | kriging (Bayes) | cfgdiff mean | cfgdiff std | target")
    echo("  infer/recon.grid.png    condition | mask | reconstruction | std | target")
    if tune_best:
        echo("  tune/metric_vs_w.png    validation PSNR against w per trial; tune/best.json, tune/trials.csv")
    echo(f"  export/                 the trained model (cfgdiff infer {out / 'export'} / "
         f"cfgdiff.load({str(out / 'export')!r}))")
    echo("  train/                  the training run: checkpoints, best/, tensorboard/")
    echo("  report.json             all figures above")
    echo(f"Training curves, sample grids and the tune trials: tensorboard --logdir {out}")
    return report


def _score(out: Path, meta: DatasetMeta, demo: dict, num_samples: int) -> dict:
    raw = read_split(meta.split_dir("val"))
    order = np.argsort(raw["index"])
    raw = {k: v[order] for k, v in raw.items()}
    target, cond, mask = raw["target"].astype(np.float32), raw["condition"].astype(np.float32), raw["mask"]
    norm = meta.normalization
    recon = np.load(out / "infer" / "recon.npy")
    std_f = out / "infer" / "recon.std.npy"
    std = np.load(std_f) if std_f.exists() else None
    mf = mean_fill_raw(cond, mask)
    kr, kr_std = kriging_raw(cond, mask, demo)
    lmmse, _ = fit_lmmse(str(out / "data"))  # fitted on the train split (32x32 single-channel: always fits)
    lm, _ = lmmse.predict(cond, mask)
    per_row = {"mean-fill": score_rows(mf, target, mask, norm), LMMSE_NAME: score_rows(lm, target, mask, norm),
               "kriging (Bayes optimum)": score_rows(kr, target, mask, norm, kr_std),
               "cfgdiff (mean of K)": score_rows(recon, target, mask, norm, std, num_samples)}
    rows = {name: mean_rows(r) for name, r in per_row.items()}
    bayes = rows["kriging (Bayes optimum)"]["mse_missing"]
    for name, r in rows.items():
        r["mse_ratio"] = r["mse_missing"] / bayes
        if "mse_posterior_mean" in r:  # the model's posterior mean, K-sample noise removed, with a 95% interval
            r["posterior_mean_mse_ratio"] = r["mse_posterior_mean"] / bayes
            r["posterior_mean_mse_ratio_ci95"] = list(ratio_of_means_ci(
                per_row[name]["mse_posterior_mean"], per_row["kriging (Bayes optimum)"]["mse_missing"]))
    n = min(8, len(target))
    kinds = row_kinds(meta.doc["degrade"], meta.doc.get("seed", 0), raw["index"][:n])
    panels = [[np.where(mask[i] > 0, cond[i], np.nan), mf[i], kr[i], recon[i], std[i] if std is not None else None,
               target[i]] for i in range(n)]
    panel_grid(out / "comparison.png", panels, ["observed", "mean-fill", "kriging (Bayes)", "cfgdiff mean",
                                                "cfgdiff std", "target"],
               [f"row {int(raw['index'][i])}\n{kinds[i]}" for i in range(n)],
               ["value"] * 4 + ["std", "value"], title="validation fields: grey = not observed")
    return {"table": rows, "rows": int(len(target))}
