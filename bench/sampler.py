"""Sampler overhead (sampling time minus model time) and the cost of batched CFG (issue #3)."""

from __future__ import annotations

import torch

from cfgdiff.config import ModelConfig, ScheduleConfig
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet

from .common import table, timeit


def run(device: str = "cpu", precision: str = "fp32", batch: int = 16, steps: int = 50) -> str:
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    ac = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device, enabled=False)
    cheap = torch.nn.Conv2d(3, 1, 1).to(device)
    models = {"cheap 1x1 conv": lambda x, t, c, m: cheap(torch.cat([x, c, m], 1)),
              "reference U-Net (dim 48, 1-2-4)": ConditionalUNet(ModelConfig()).to(device).eval()}
    cond = torch.randn(batch, 1, 32, 32, device=device)
    mask = (torch.rand(batch, 1, 32, 32, device=device) > 0.8).float()
    rows = []
    for name, model in models.items():
        for w in (1.0, 2.0):
            n = 2 * batch if w not in (0.0, 1.0) else batch
            x, t = torch.randn(n, 1, 32, 32, device=device), torch.full((n,), 500, device=device)
            c, m = cond.repeat(n // batch, 1, 1, 1), mask.repeat(n // batch, 1, 1, 1)
            with torch.no_grad(), ac:
                t_fwd = timeit(lambda: model(x, t, c, m), repeat=5, sync=sync)
                t_all = timeit(lambda: sample(model, cond, mask, schedule=sched, method="ddim", steps=steps, w=w, seed=0,
                                                         prediction="eps"),
                               repeat=3 if "U-Net" in name else 5, sync=sync)
            overhead = t_all - steps * t_fwd
            rows.append({"model": name, "w": w, "batch": batch, "steps": steps, "sample s": t_all,
                         "model s": steps * t_fwd, "overhead s": overhead,
                         "overhead % of model": 100 * overhead / (steps * t_fwd)})
    out = table(rows, ["model", "w", "batch", "steps", "sample s", "model s", "overhead s", "overhead % of model"])
    # CFG: one 2B forward against two B forwards, side by side
    unet = models["reference U-Net (dim 48, 1-2-4)"]
    x, t = torch.randn(batch, 1, 32, 32, device=device), torch.full((batch,), 500, device=device)
    z = torch.zeros_like(cond)
    with torch.no_grad(), ac:
        two = timeit(lambda: (unet(x, t, cond, mask), unet(x, t, z, z)), repeat=7, sync=sync)
        one = timeit(lambda: unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, z]), torch.cat([mask, z])),
                     repeat=7, sync=sync)
    out += "\n\n" + table([{"CFG evaluation": "two B forwards", "ms": two * 1e3, "ratio": 1.0},
                           {"CFG evaluation": "one 2B forward (cfgdiff)", "ms": one * 1e3, "ratio": two / one}],
                          ["CFG evaluation", "ms", "ratio"])
    return out
