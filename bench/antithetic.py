"""Antithetic noise pairs for the posterior mean (#18.3): is a pair of opposite-noise samples worth more than two
independent ones? On Gaussian-random-field data the exact posterior mean is known (kriging), and the plain mean's
MSE is read against that Bayes MSE; on other data (the turbulence demo) against the best linear estimator's (LMMSE
fitted on the training split), the estimator a diffusion model must beat there.

``python -m bench antithetic --checkpoint runs/demo/export --data runs/demo/data`` (the ``make run`` model by
default). For each mask: K samples per field drawn twice, independently and in antithetic pairs
(``SamplerConfig.antithetic``), with the checkpoint's sampler. Reported for the first k = 2, 4, ..., K samples:
the plain mean's MSE over the reference MSE (what a user gets; exact independent samples score 1 + 1/k on GRF
data), and the squared distance of that mean from the mean of all K samples of the other draw (its Monte-Carlo error, up to
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
    from cfgdiff.degrade import operator_for
    from cfgdiff.evaluate import _degrade_raw, _targets, fit_lmmse, kriging_raw, lmmse_reconstruct

    rec = load(checkpoint)
    norm = rec.ckpt.normalization
    target, demo = _targets(data, "val", limit)
    grf = demo is not None and demo.get("kind") == "grf"
    lmmse = None
    if not grf:
        lmmse, why = fit_lmmse(data, len(target))
        if lmmse is None:
            raise SystemExit(f"{data}: no LMMSE reference: {why}")
    ref_name = "Bayes" if grf else "LMMSE"
    base = rec.sampler_config()
    ks = [k for k in (2, 4, 8, 16, 32, 64) if k <= num_samples]
    rows = []
    for spec in masks:
        cond, mask = _degrade_raw(target, spec, norm, seed)
        miss = mask.astype(bool).repeat(target.shape[1], 1) == 0
        op = operator_for(spec, torch.from_numpy(cond), torch.from_numpy(mask))
        ref_mean = kriging_raw(cond, mask, demo)[0] if grf else lmmse_reconstruct(lmmse, cond, mask, op)[0]
        if not mask.any():  # a dense condition (sr): every pixel is scored
            miss = np.ones_like(miss)
        z = lambda a: norm.target.normalize(torch.from_numpy(np.ascontiguousarray(a, np.float32))).numpy()  # evaluate's units
        ref_mse = float(((z(ref_mean) - z(target))[miss] ** 2).mean())
        draws = {}
        for anti in (False, True):
            t0 = time.time()
            r = rec.run_rows(cond, mask, replace(base, antithetic=anti),
                             num_samples=num_samples, seeds=[seed] * len(cond), index=range(len(cond)),
                             degrade_spec=spec)
            draws[anti] = (z(r.samples.reshape(-1, *r.samples.shape[2:])).reshape(r.samples.shape), time.time() - t0)
        for anti in (False, True):
            s, secs = draws[anti]
            other_mean = draws[not anti][0].mean(1)
            for k in ks:
                m = s[:, :k].mean(1)
                rows.append({"mask": spec, "pairs": "antithetic" if anti else "independent", "k": k,
                             "mse_over_ref": float(((m - z(target))[miss] ** 2).mean()) / ref_mse,
                             "mc_error": float(((m - other_mean)[miss] ** 2).mean()) / ref_mse,
                             "exact_law": 1 + 1 / k if grf and not anti else None, "seconds": secs})
            print(f"{spec} antithetic={anti}: {secs:.0f} s", flush=True)
    f = lambda v: "-" if v is None else f"{v:.3f}"
    head = (f"`python -m bench antithetic --checkpoint {checkpoint} --data {data} --limit {limit} --num-samples "
            f"{num_samples} --masks {' '.join(masks)}`: {limit} validation fields, sampler {base.method} {base.steps} "
            f"steps, w={base.w}. MSE over the {ref_name} MSE of the plain mean of the first k samples; 'MC error' is "
            f"the squared distance of that mean from the other draw's mean of all samples, over the {ref_name} MSE."
            + (" Exact posterior samples would score 1 + 1/k." if grf else "") + "\n\n"
            f"| mask | pairs | k | plain mean MSE / {ref_name} | exact samples would score | MC error / {ref_name} MSE |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['mask']} | {r['pairs']} | {r['k']} | {f(r['mse_over_ref'])} | {f(r['exact_law'])} | "
                          f"{f(r['mc_error'])} |\n" for r in rows)
