"""Antithetic noise pairs for the posterior mean (#18.3): is a pair of opposite-noise samples worth more than two
independent ones? Measured on a trained model of Gaussian-random-field data, where the exact posterior mean is
known (kriging), so the Monte-Carlo error of the mean of K samples is read against it directly.

``python -m bench antithetic --checkpoint runs/demo/export --data runs/demo/data`` (the ``make run`` model by
default). For each mask: K samples per field drawn twice, independently and in antithetic pairs
(``SamplerConfig.antithetic``), with the checkpoint's sampler. Reported for the first k = 2, 4, ..., K samples:
the plain mean's MSE over the Bayes MSE (what a user gets; exact independent samples score 1 + 1/k), and the
squared distance of that mean from the mean of all K samples of the other draw (its Monte-Carlo error, up to
the other draw's own small error).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch


def run(checkpoint: str, data: str, masks: tuple[str, ...] = ("drop:0.9", "box:0.4:random", "half"), limit: int = 32,
        num_samples: int = 16, seed: int = 0) -> str:
    from cfgdiff.api import load
    from cfgdiff.evaluate import _degrade_raw, _targets, kriging_raw

    rec = load(checkpoint)
    norm = rec.ckpt.normalization
    target, demo = _targets(data, "val", limit)
    if demo is None or demo.get("kind") != "grf":
        raise SystemExit(f"{data}: needs GRF demo data (demo.json), for the exact posterior mean")
    base = rec.sampler_config()
    ks = [k for k in (2, 4, 8, 16, 32, 64) if k <= num_samples]
    rows = []
    for spec in masks:
        cond, mask = _degrade_raw(target, spec, norm, seed)
        miss = mask.astype(bool).repeat(target.shape[1], 1) == 0
        bayes_mean, _ = kriging_raw(cond, mask, demo)
        z = lambda a: norm.target.normalize(torch.from_numpy(np.ascontiguousarray(a, np.float32))).numpy()  # evaluate's units
        bayes_mse = float(((z(bayes_mean) - z(target))[miss] ** 2).mean())
        draws = {}
        for anti in (False, True):
            t0 = time.time()
            r = rec.run_rows(cond, mask, replace(base, antithetic=anti),
                             num_samples=num_samples, seeds=[seed] * len(cond), index=range(len(cond)))
            draws[anti] = (z(r.samples.reshape(-1, *r.samples.shape[2:])).reshape(r.samples.shape), time.time() - t0)
        for anti in (False, True):
            s, secs = draws[anti]
            other_mean = draws[not anti][0].mean(1)
            for k in ks:
                m = s[:, :k].mean(1)
                rows.append({"mask": spec, "pairs": "antithetic" if anti else "independent", "k": k,
                             "mse_over_bayes": float(((m - z(target))[miss] ** 2).mean()) / bayes_mse,
                             "mc_error": float(((m - other_mean)[miss] ** 2).mean()) / bayes_mse,
                             "exact_law": 1 + 1 / k if not anti else None, "seconds": secs})
            print(f"{spec} antithetic={anti}: {secs:.0f} s", flush=True)
    f = lambda v: "-" if v is None else f"{v:.3f}"
    head = (f"`python -m bench antithetic --checkpoint {checkpoint} --data {data} --limit {limit} --num-samples "
            f"{num_samples}`: {limit} validation fields, sampler {base.method} {base.steps} steps, w={base.w}. "
            "MSE over the Bayes MSE of the plain mean of the first k samples; 'MC error' is the squared distance of "
            "that mean from the other draw's mean of all samples, over the Bayes MSE.\n\n"
            "| mask | pairs | k | plain mean MSE / Bayes | exact samples would score | MC error / Bayes MSE |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['mask']} | {r['pairs']} | {r['k']} | {f(r['mse_over_bayes'])} | {f(r['exact_law'])} | "
                          f"{f(r['mc_error'])} |\n" for r in rows)
