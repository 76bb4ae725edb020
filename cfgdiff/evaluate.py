"""Scoring reconstructions against targets, with the mean-fill baseline and, for Gaussian random
field demo data, the Bayes optimum (the exact kriging posterior).

All metrics are computed in normalised target units (data range 2 for min/max normalisation),
the same units the training loop's validation uses.
"""

from __future__ import annotations

import numpy as np
import torch

from .demo import grf_covariance, kriging
from .metrics import coverage, known_error, mae_missing, mean_fill, psnr, rmse_missing, ssim
from .normalize import Normalization


def score(recon_raw: np.ndarray, target_raw: np.ndarray, mask: np.ndarray, norm: Normalization,
          std_raw: np.ndarray | None = None) -> dict[str, float]:
    """Mean metrics of (N, C, H, W) reconstructions in user units against targets."""
    rec = norm.target.normalize(torch.from_numpy(np.ascontiguousarray(recon_raw, dtype=np.float32)))
    tgt = norm.target.normalize(torch.from_numpy(np.ascontiguousarray(target_raw, dtype=np.float32)))
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    out = {"psnr": psnr(rec, tgt, 2.0), "ssim": ssim(rec, tgt, 2.0), "mae_missing": mae_missing(rec, tgt, m),
           "mse_missing": rmse_missing(rec, tgt, m).pow(2),
           "known_error": known_error(torch.from_numpy(np.ascontiguousarray(recon_raw, dtype=np.float32)),
                                      torch.from_numpy(np.ascontiguousarray(target_raw, dtype=np.float32)), m)}
    if std_raw is not None:
        std_n = torch.from_numpy(np.ascontiguousarray(std_raw, dtype=np.float32)) / torch.tensor(
            norm.target.scale, dtype=torch.float32).view(1, -1, 1, 1)
        out["coverage_2std"] = coverage(rec, std_n, tgt, m)
    return {k: float(torch.nanmean(v.float())) for k, v in out.items()}


def mean_fill_raw(cond_raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-fill baseline in user units (NaN-free condition where known)."""
    c = torch.from_numpy(np.nan_to_num(np.asarray(cond_raw, dtype=np.float32)))
    return mean_fill(c, torch.from_numpy(np.asarray(mask, dtype=np.float32))).numpy()


def kriging_raw(cond_raw: np.ndarray, mask: np.ndarray, demo: dict) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and std (user units) for single-channel GRF demo data."""
    size = demo["size"]
    cov = grf_covariance(size, size, demo["alpha"], demo["k0"])
    means, stds = np.zeros(cond_raw.shape, np.float64), np.zeros(cond_raw.shape, np.float64)
    for i in range(cond_raw.shape[0]):
        mu, sd = kriging(np.nan_to_num(cond_raw[i, 0]), mask[i, 0], cov, demo.get("mean", 0.0))
        means[i, 0], stds[i, 0] = mu, sd
    return means.astype(np.float32), stds.astype(np.float32)
