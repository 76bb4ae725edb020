"""The exact Bayes optimum at size: ``cfgdiff.kriging`` (circulant blocks, the smaller of C_KK and Q_UU factored)
against the dense (HW)^2 covariance of ``demo.kriging``, one field per mask kind; then a batch of fields, each
with its own mask drawn as evaluate draws them, where masks equal up to a translation (or transposition) share
one factorisation."""

from __future__ import annotations

import time

import numpy as np
import torch

from cfgdiff.degrade import degrade, make_mask, parse_spec
from cfgdiff.demo import gaussian_random_fields, grf_covariance, grf_model, kriging

from .common import table

MASKS = ("drop:0.9", "box:0.4:random", "strokes:5", "half")


def run(sizes=(32, 64, 128), dense_up_to: int = 64, batch: int = 16) -> str:
    rows = []
    for size in sizes:
        x = gaussian_random_fields(1, size, size, seed=0)[0, 0]
        t0 = time.perf_counter()
        cov = grf_covariance(size, size) if size <= dense_up_to else None
        t_cov = time.perf_counter() - t0
        field = grf_model(size, size)
        for spec in MASKS:
            mask = make_mask(parse_spec(spec)[0], torch.Generator().manual_seed(0), size, size).numpy().reshape(size, size)
            known = int(mask.sum())
            t0 = time.perf_counter()
            mu, _ = field.krige(x[None], mask[None])
            t_fast = time.perf_counter() - t0
            row = {"size": f"{size}x{size}", "mask": spec, "known": known, "unknown": size * size - known,
                   "factored": "C_KK" if known <= size * size - known else "Q_UU", "stationary s": t_fast}
            if cov is not None:
                t0 = time.perf_counter()
                mu_d, _ = kriging(x, mask, cov)
                row["dense s (+ building C)"] = time.perf_counter() - t0 + t_cov
                row["max |diff|"] = float(np.abs(mu_d - mu[0]).max())
                row["speed-up"] = row["dense s (+ building C)"] / t_fast
            xs = gaussian_random_fields(batch, size, size, seed=1)[:, 0]
            _, masks = degrade(torch.from_numpy(xs[:, None]), spec, seed=0)
            t0 = time.perf_counter()
            field.krige(xs, masks[:, 0].numpy())
            row[f"{batch} fields: s per field"] = (time.perf_counter() - t0) / batch
            rows.append(row)
    return ("Posterior mean and std of one field; torch float64 Cholesky on the host's threads. "
            "The dense form builds the (HW)^2 covariance (2.1 GB at 128x128, not run).\n\n"
            + table(rows, ["size", "mask", "known", "unknown", "factored", "stationary s", "dense s (+ building C)",
                           "speed-up", "max |diff|", f"{batch} fields: s per field"]))
