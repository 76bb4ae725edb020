"""Scoring reconstructions against targets, with the mean-fill baseline and, for Gaussian random
field demo data, the Bayes optimum (the exact kriging posterior).

PSNR and SSIM are those of the user-unit arrays with the training data's range (hi - lo per channel,
stored with the normalisation) as the peak, as in the training loop's validation; errors (MAE, MSE)
are in normalised target units, where the ratios are read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import fsio
from .config import DEFAULT_METHOD, DEFAULT_STEPS, METHODS, check_antithetic
from .degrade import degrade_raw, operator_for, parse_spec
from .demo import grf_model
from .errors import InputError
from .lmmse import LinearGaussian
from .lmmse_patch import PatchLinearGaussian, window_for
from .metrics import (
    coverage,
    exact_sample_coverage,
    exact_sample_std_ratio,
    known_error,
    mae_missing,
    mean_fill,
    mean_of_k_psnr_loss_db,
    posterior_mean_mse,
    psnr,
    ratio_of_means_ci,
    rmse_missing,
    ssim,
)
from .normalize import Normalization
from .seams import seam_report
from .tiling import plan_tiling
from .validate import check_targets

logger = logging.getLogger(__name__)


def score(recon_raw: np.ndarray, target_raw: np.ndarray, mask: np.ndarray, norm: Normalization,
          std_raw: np.ndarray | None = None, num_samples: int = 1, mean_var_raw: np.ndarray | None = None
          ) -> dict[str, float]:
    """Mean metrics of (N, C, H, W) reconstructions in user units against targets (``score_rows`` averaged)."""
    return mean_rows(score_rows(recon_raw, target_raw, mask, norm, std_raw, num_samples, mean_var_raw))


def mean_rows(rows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average per-row metrics, skipping rows without a value (no missing pixel)."""
    return {k: float(torch.nanmean(v.float())) for k, v in rows.items()}


def score_rows(recon_raw: np.ndarray, target_raw: np.ndarray, mask: np.ndarray, norm: Normalization,
               std_raw: np.ndarray | None = None, num_samples: int = 1, mean_var_raw: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
    """Per-row metrics, (N,) each: PSNR/SSIM in user units with the stored data range (hi - lo of the
    training data, per channel), errors in normalised units.

    With ``std_raw`` of ``num_samples`` > 1 independent samples, or ``mean_var_raw`` (the estimated variance of
    the mean of K samples in user units squared, ``api.mean_variance``: antithetic pairs), ``mse_posterior_mean``
    is the unbiased estimate of the missing-pixel MSE of the model's posterior mean (``metrics.posterior_mean_mse``).
    """
    rec = norm.target.normalize(torch.from_numpy(np.ascontiguousarray(recon_raw, dtype=np.float32)))
    tgt = norm.target.normalize(torch.from_numpy(np.ascontiguousarray(target_raw, dtype=np.float32)))
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    rec_u = torch.from_numpy(np.ascontiguousarray(recon_raw, dtype=np.float32))
    tgt_u = torch.from_numpy(np.ascontiguousarray(target_raw, dtype=np.float32))
    rng = norm.target.data_range_tensor()  # PSNR/SSIM in user units, peak = the data's hi - lo per channel
    out = {"psnr": psnr(rec_u, tgt_u, rng), "ssim": ssim(rec_u, tgt_u, rng), "mae_missing": mae_missing(rec, tgt, m),
           "mse_missing": rmse_missing(rec, tgt, m).pow(2),
           "known_error": known_error(torch.from_numpy(np.ascontiguousarray(recon_raw, dtype=np.float32)),
                                      torch.from_numpy(np.ascontiguousarray(target_raw, dtype=np.float32)), m)}
    scale = torch.tensor(norm.target.scale, dtype=torch.float32).view(1, -1, 1, 1)
    if std_raw is not None:
        std_n = torch.from_numpy(np.ascontiguousarray(std_raw, dtype=np.float32)) / scale
        out["coverage_2std"] = coverage(rec, std_n, tgt, m)
    if mean_var_raw is not None:
        mean_var = torch.from_numpy(np.ascontiguousarray(mean_var_raw, dtype=np.float32)) / scale.pow(2)
    else:  # the std of K independent samples
        mean_var = std_n.pow(2) / num_samples if std_raw is not None and num_samples > 1 else None
    if mean_var is not None:
        out["mse_posterior_mean"] = posterior_mean_mse(rec, mean_var, tgt, m)
    return out


def mean_fill_raw(cond_raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-fill baseline in user units (NaN-free condition where known)."""
    c = torch.from_numpy(np.nan_to_num(np.asarray(cond_raw, dtype=np.float32)))
    return mean_fill(c, torch.from_numpy(np.asarray(mask, dtype=np.float32))).numpy()


LMMSE_NAME = "LMMSE (fitted covariance)"


def fit_lmmse(data: str, scored_rows: int = 0, chunk: int = 1024
              ) -> tuple[LinearGaussian | PatchLinearGaussian | None, str | None]:
    """The LMMSE baseline fitted on training rows, or (None, why not): a dataset directory's train split,
    or a .npy's rows after the first ``scored_rows`` (which evaluate scores and the fit must not see).
    Fields above ``lmmse.MAX_DIM`` values, or with fewer training rows than values, get the patch-wise fit
    (``lmmse_patch.window_for``)."""
    from .data import DatasetMeta, iter_parquet_batches

    if str(data).endswith(".npy"):
        x = np.load(data, mmap_mode="r")
        shape = (1, *x.shape[1:]) if x.ndim == 3 else tuple(x.shape[1:])
        batches = (np.asarray(x[i:i + chunk], np.float64).reshape(-1, *shape) for i in range(scored_rows, len(x), chunk))
        source, n_rows = f"rows {scored_rows}.. of {Path(data).name}", max(len(x) - scored_rows, 0)
    else:
        meta = DatasetMeta.load(data)
        shape = tuple(meta.doc["shapes"]["target"])
        if meta.count("train") == 0:
            return None, "no training rows to fit the covariance on"
        batches = (b["target"] for b in iter_parquet_batches(meta.split_dir("train"), chunk, columns=["target"]))
        source, n_rows = "the train split", meta.count("train")
    side = window_for(shape, n_rows)
    try:
        fit = LinearGaussian.fit(batches) if side is None else PatchLinearGaussian.fit(batches, shape, patch=side)
    except ValueError as e:
        return None, f"{e} ({source})"
    return fit, None


def lmmse_reconstruct(lmmse: LinearGaussian | PatchLinearGaussian, cond: np.ndarray, mask: np.ndarray, op=None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """LMMSE mean and std: given the known pixels, or, with a linear ``op`` (``degrade.operator_for``,
    e.g. super-resolution's pooling), given y = op.A(cond)."""
    return lmmse.predict(cond, mask) if op is None else lmmse.predict_op(cond, op)


def _lmmse_doc(lmmse) -> dict | None:
    if lmmse is None:
        return None
    doc = {"rows": lmmse.rows, "shrinkage": lmmse.shrinkage}
    if isinstance(lmmse, PatchLinearGaussian):
        doc.update(window=list(lmmse.window), overlap=lmmse.overlap)
    return doc


def kriging_raw(cond_raw: np.ndarray, mask: np.ndarray, demo: dict) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and std (user units) for single-channel GRF demo data of any size: the fields'
    own H x W torus (``demo.grf_model``; the stationary structure keeps 128x128 to seconds per mask)."""
    H, W = cond_raw.shape[-2:]
    field = grf_model(H, W, demo["alpha"], demo["k0"], demo.get("mean", 0.0))
    mu, sd = field.krige(np.nan_to_num(cond_raw[:, 0]), mask[:, 0])
    return mu[:, None].astype(np.float32), sd[:, None].astype(np.float32)


# --- cfgdiff evaluate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOptions:
    degrade: tuple[str, ...] = ("drop:0.9", "box:0.4:random", "strokes:5", "half")  # one table row group each
    steps: int = DEFAULT_STEPS  # sampler steps
    w: float | None = None  # guidance (default: the checkpoint's)
    num_samples: int = 4  # K samples per row: posterior mean and std
    antithetic: bool = False  # the K samples in pairs with opposite noise (K even; api.mean_variance, sample_std)
    method: str = DEFAULT_METHOD  # a solver of config.METHODS
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic; DDPM ignores it)
    limit: int = 32  # rows of the test split
    split: str = "val"  # dataset split
    seed: int = 0
    sweep: tuple[str, ...] = ()  # quality against cost, e.g. ("ddim:10", "ddim:50", "ddpm:1000", "ddim:25:r5,3")
    baselines: bool = True
    demo_meta: str | None = None  # demo.json of Gaussian-random-field data (auto-detected)
    device: str = "cpu"  # torch device of the model ("cuda" with --gpu)
    precision: str | None = None  # network precision (default: the checkpoint's sampler.precision)
    tile: int | None = None  # fields larger than the training size: overlapping tile x tile windows (tiling.py)
    overlap: int | None = None  # window overlap (default tile // 4)
    extra: dict = field(default_factory=dict)


def _targets(data: str, split: str, limit: int) -> tuple[np.ndarray, dict | None]:
    from .data import DatasetMeta, read_split

    p = data
    if str(data).endswith(".npy"):
        x = np.load(p, mmap_mode="r")
        x = np.array(x[:limit], dtype=np.float32)  # a copy: the memory map is read-only
        x = x[:, None] if x.ndim == 3 else x
        check_targets(x, f"--data {p}")
        demo = Path(p).with_name("demo.json")
    else:
        meta = DatasetMeta.load(p)
        raw = read_split(meta.split_dir(split), limit=limit)
        if "target" not in raw:
            raise InputError(f"--data {p}: holds no targets to score against")
        order = np.argsort(raw["index"])
        check_targets(raw["target"][order], f"--data {p} ({split} split)", rows=raw["index"][order])
        x = raw["target"][order].astype(np.float32)
        src = (meta.doc.get("sources") or {}).get("target") or [{}]
        demo = Path(src[0].get("path", "/nonexistent")).with_name("demo.json")
    return x, (json.loads(demo.read_text()) if demo.is_file() else None)


def _degrade_raw(target: np.ndarray, spec: str, norm: Normalization, seed: int) -> tuple[np.ndarray, np.ndarray]:
    cond, mask = degrade_raw(torch.from_numpy(target), spec, norm.target, seed=seed)
    return cond.numpy(), mask.numpy()


def parse_sweep(item: str) -> tuple[str, int, tuple[int, int] | None]:
    """``METHOD:STEPS[:rJ,R]`` -> (method, steps, resample), e.g. ``ddim:25:r5,3``."""
    parts = item.split(":")
    try:
        method, steps = parts[0], int(parts[1])
        resample = tuple(int(v) for v in parts[2][1:].split(",")) if len(parts) > 2 else None
        ok = (method in METHODS and steps >= 1 and len(parts) <= 3
              and (resample is None or (parts[2][0] == "r" and len(resample) == 2 and min(resample) >= 1)))
    except (IndexError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"--sweep {item!r}: expected METHOD:STEPS[:rJ,R] with METHOD one of {', '.join(METHODS)}, "
                         "e.g. ddim:10 or ddim:25:r5,3")
    return method, steps, resample


def run_evaluation(ckpt_path: str, data: str, opts: EvalOptions, out_dir: str | None = None,
                   progress=None, overwrite: bool = False, draw_panels=None, draw_seams=None) -> dict:
    """Score the model and classical baselines per degradation; Bayes optimum for GRF demo data.

    ``draw_panels(path, rows, columns, row_labels, kinds)`` draws evaluate.png with labels (the CLI passes
    ``cluster.plots.panel_grid``); without it, an unlabelled grid is written with the core's own PNG writer.
    With ``opts.tile``, ``draw_seams(path, [(spec, maps)], seams)`` draws seams.png (``cluster.plots.seam_plot``).

    The checkpoint, ``data`` and ``out_dir`` may be URIs (s3://, gs://): a .npy is downloaded
    first, a dataset directory is read in place, and the outputs are written locally and uploaded when done."""
    for where, option in ((ckpt_path, "CHECKPOINT"), (data, "--data"), (out_dir, "--out")):
        if where:
            fsio.check_storage(where, option)
    if out_dir and fsio.exists(fsio.join(out_dir, "evaluate.json")) and not overwrite:
        raise InputError(f"--out {out_dir}: evaluate.json exists; pass --overwrite to replace it")
    with ExitStack() as stack:
        local_data = str(stack.enter_context(fsio.local_copy(data))) if str(data).endswith(".npy") else data
        local_out = stack.enter_context(fsio.staged(out_dir, last="evaluate.json"))
        return _evaluate(ckpt_path, local_data, opts, local_out and str(local_out), progress, draw_panels,
                         draw_seams, names=(ckpt_path, data))


def _evaluate(ckpt_path: str, data: str, opts: EvalOptions, out_dir: str | None, progress, draw_panels, draw_seams,
              names: tuple[str, str]) -> dict:
    from .api import load, mean_variance
    from .baselines import BASELINES, available
    from .viz import image_grid, write_png

    check_antithetic(opts.antithetic, opts.num_samples)
    for s in opts.degrade:
        parse_spec(s)
    for item in opts.sweep:
        parse_sweep(item)
    rec = load(ckpt_path, opts.device)
    norm, mc = rec.ckpt.normalization, rec.config.model
    target, demo = _targets(data, opts.split, opts.limit)
    if target.shape[1] != mc.in_channels:
        raise InputError(f"--data {data}: targets have {target.shape[1]} channels, the checkpoint expects "
                         f"{mc.in_channels}")
    try:
        tile, overlap, warnings = plan_tiling(target.shape[2:], mc.image_size, opts.tile, opts.overlap)
    except InputError as e:
        raise InputError(f"--data {data}: {e}") from None
    for msg in warnings:
        logger.warning(msg)
    if opts.demo_meta:
        demo = json.loads(Path(opts.demo_meta).read_text())
    H, W = target.shape[2:]
    use_bayes = (demo is not None and demo.get("kind") == "grf" and mc.in_channels == 1
                 and demo.get("size") in (None, H) and H == W)  # the demo's own torus, not a crop of it
    avail = available() if opts.baselines else {}
    lmmse, lmmse_why = fit_lmmse(data, len(target)) if opts.baselines else (None, None)
    w = rec.config.sampler.w if opts.w is None else opts.w
    results, grids, seams, seam_maps = {}, [], {}, []
    nz = lambda a: norm.target.normalize(torch.from_numpy(np.ascontiguousarray(a, np.float32))).numpy()
    for spec in opts.degrade:
        cond, mask = _degrade_raw(target, spec, norm, opts.seed)
        t0 = time.time()
        r = rec.reconstruct(cond, mask, steps=opts.steps, w=w, num_samples=opts.num_samples, seed=opts.seed,
                            precision=opts.precision, method=opts.method, eta=opts.eta, degrade_spec=spec,
                            tile=tile, overlap=overlap if tile else None, antithetic=opts.antithetic)
        K = opts.num_samples
        # the mean's Monte-Carlo variance: over K independent samples, or from the pair means (None with one pair)
        mv = mean_variance(torch.from_numpy(r.samples), opts.antithetic)
        model_rows = score_rows(r.mean, target, mask, norm, r.std if K > 1 else None,
                                mean_var_raw=None if mv is None else mv.numpy())
        rows = {"cfgdiff": {**mean_rows(model_rows),
                            "seconds": time.time() - t0, "model_calls": r.num_model_calls}}
        exact_refs = K > 1 and not opts.antithetic  # closed forms for K independent samples only
        if exact_refs:  # what exact posterior samples would score at this K (not 0.95: K is finite)
            rows["cfgdiff"]["coverage_2std_of_exact_samples"] = exact_sample_coverage(K)
        is_mask = bool(mask.any())
        for name, why in avail.items():
            if why is None and is_mask:
                rows[name] = score(BASELINES[name](cond, mask), target, mask, norm)
            elif why is not None:
                rows[name] = {"skipped": why}
        op = operator_for(spec, torch.from_numpy(cond), torch.from_numpy(mask))
        if lmmse is not None and (is_mask or op is not None):
            try:
                mu, sd = lmmse_reconstruct(lmmse, cond, mask, op)
                rows[LMMSE_NAME] = mean_rows(score_rows(mu, target, mask, norm, sd))
            except ValueError as e:  # a pooling grid the patch-wise windows do not align with
                rows[LMMSE_NAME] = {"skipped": str(e)}
        elif lmmse_why is not None:
            rows[LMMSE_NAME] = {"skipped": lmmse_why}
        if use_bayes and is_mask:
            kr, kr_std = kriging_raw(cond, mask, demo)
            bayes_rows = score_rows(kr, target, mask, norm, kr_std)
            rows["kriging (Bayes optimum)"] = mean_rows(bayes_rows)
            bayes = rows["kriging (Bayes optimum)"]["mse_missing"]
            rows["cfgdiff"]["mse_over_bayes"] = rows["cfgdiff"]["mse_missing"] / bayes  # the mean of K as shown
            if "mse_posterior_mean" in rows["cfgdiff"]:  # the model's posterior mean (K-sample noise removed)
                rows["cfgdiff"]["posterior_mean_mse_over_bayes"] = rows["cfgdiff"]["mse_posterior_mean"] / bayes
                if len(target) >= 2:  # 95% bootstrap interval over the evaluated fields
                    rows["cfgdiff"]["posterior_mean_mse_over_bayes_ci95"] = list(ratio_of_means_ci(
                        model_rows["mse_posterior_mean"], bayes_rows["mse_missing"], seed=opts.seed))
            miss = mask.astype(bool).repeat(target.shape[1], 1) == 0
            if opts.num_samples > 1:
                rows["cfgdiff"]["std_over_exact_std"] = float(r.std[miss].mean() / max(kr_std[miss].mean(), 1e-12))
                if exact_refs:
                    rows["cfgdiff"]["std_over_exact_std_of_exact_samples"] = exact_sample_std_ratio(K)
        if tile is not None:  # where the error sits relative to the window edges, beside the window-free optimum
            seams[spec], maps = seam_report(nz(r.mean), nz(target), mask, tile, overlap,
                                            nz(kr) if use_bayes and is_mask else None)
            seam_maps.append((spec, maps))
        results[spec] = rows
        grids.append((spec, cond, mask, r, target))
        if progress:
            progress(spec)
    sweep = _sweep(rec, target, opts, w, norm) if opts.sweep else []
    doc = {"checkpoint": names[0], "data": names[1], "rows": int(len(target)), "w": w, "method": opts.method,
           "eta": opts.eta, "steps": opts.steps, "num_samples": opts.num_samples, "antithetic": opts.antithetic,
           "units": "PSNR/SSIM in data units with peak " + ", ".join(f"{r:.4g}" for r in norm.target.data_range())
                    + " (hi - lo per channel); MAE/MSE in normalised units",
           "data_range": list(norm.target.data_range()),
           "results": results, "quality_vs_cost": sweep, "bayes_reference": use_bayes,
           "lmmse": _lmmse_doc(lmmse),
           "mean_of_k_psnr_loss_db": None if opts.antithetic else mean_of_k_psnr_loss_db(opts.num_samples),
           "field": [int(H), int(W)], "tile": tile, "overlap": overlap if tile else None, "seams": seams or None}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "evaluate.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, out / "evaluate.json")
        panels, labels = [], []
        for spec, cond, mask, r, tgt in grids:
            for i in range(min(3, len(tgt))):
                panels.append([np.where(mask[i] > 0, cond[i], np.nan) if mask.any() else cond[i],
                               mean_fill_raw(cond[i:i + 1], mask[i:i + 1])[0], r.mean[i],
                               r.std[i] if opts.num_samples > 1 else None, tgt[i]])
                labels.append(f"{spec}\nrow {i}")
        if seam_maps and draw_seams is not None:
            draw_seams(out / "seams.png", seam_maps, seams)
        if draw_panels is not None:
            draw_panels(out / "evaluate.png", panels, ["observed", "mean-fill", "cfgdiff mean",
                                                       f"cfgdiff std (K={opts.num_samples})", "target"],
                        labels, ["value", "value", "value", "std", "value"])
        else:
            lo, hi = float(target.min()), float(target.max())
            grid = [[np.zeros_like(p[2]) if p[3] is None and j == 3 else p[j] for j in range(5)] for p in panels]
            smax = max(float(max(np.nanmax(p[3]) for p in grid)), 1e-6)
            write_png(out / "evaluate.png", image_grid(grid, scale=4, ranges=[(lo, hi)] * 3 + [(0, smax), (lo, hi)]))
    return doc


def _sweep(rec, target, opts: EvalOptions, w: float, norm: Normalization) -> list[dict]:
    """PSNR against model calls per image for several samplers on the first degradation."""
    cond, mask = _degrade_raw(target, opts.degrade[0], norm, opts.seed)
    rows = []
    for item in opts.sweep:
        method, steps, resample = parse_sweep(item)
        t0 = time.time()
        r = rec.reconstruct(cond, mask, steps=steps, w=w, num_samples=1, seed=opts.seed, method=method,
                            precision=opts.precision,
                            eta=1.0 if method == "ddpm" else 0.0, resample=resample, degrade_spec=opts.degrade[0],
                            tile=opts.tile, overlap=opts.overlap)
        m = score(r.mean, target, mask, norm)
        rows.append({"sampler": item, "model_calls": r.num_model_calls, "psnr": m["psnr"], "ssim": m["ssim"],
                     "seconds": time.time() - t0})
    return rows
