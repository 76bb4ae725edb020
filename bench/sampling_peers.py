"""DDIM-50 sampling with classifier-free guidance: cfgdiff against peers' own samplers (issue #9).

cfgdiff runs its sampler (one batched 2B forward per step). Each peer runs *its* DDIM sampler with
guidance done as two forwards per step, which is how a user would bolt CFG onto it: lucidrains'
``GaussianDiffusion.ddim_sample`` around a guided wrapper, diffusers' ``DDIMScheduler.step`` loop.
All models at matched size (at 32x32 ~1.75 GFLOP/img forward; at other sizes cfgdiff's ``small`` preset and the
peers at the width that matches its FLOPs, ``bench.model.peers``), w=2, random weights (speed only).
"""

from __future__ import annotations

import torch
from torch import nn

from cfgdiff.api import Autocast
from cfgdiff.config import ScheduleConfig
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule

from .common import table, timeit
from .model import FULL, _peer, cfgdiff_models, forward_flops, peer_dims


class _GuidedLucidrains(nn.Module):
    """Wraps a lucidrains Unet over [x, cond] so its sampler sees eps_u + w (eps_c - eps_u)."""

    def __init__(self, unet, cond, w):
        super().__init__()
        self.unet, self.cond, self.w = unet, cond, w
        self.channels, self.out_dim, self.self_condition = 1, 1, False
        self.random_or_learned_sinusoidal_cond = False

    def forward(self, x, t, x_self_cond=None):
        e_c = self.unet(torch.cat([x, self.cond], 1), t)
        e_u = self.unet(torch.cat([x, torch.zeros_like(self.cond)], 1), t)
        return e_u + self.w * (e_c - e_u)


def run(batch: int = 16, steps: int = 50, w: float = 2.0, precision: str = "fp32", size: int = 32) -> str:
    torch.manual_seed(0)
    reps = {"repeat": 2, "warmup": 1} if size <= 64 else {"repeat": 1, "warmup": 0}  # one 50-step run is ~1 min at 128
    cond = torch.randn(batch, 1, size, size)
    mask = (torch.rand(batch, 1, size, size) > 0.8).float()
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    rows = []
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    ours = cfgdiff_models(size)
    for name, m in ours.items():
        name = name.split(" (")[0]
        m = m.eval().to(memory_format=torch.channels_last)
        for prec in ("fp32", "bf16"):  # cfgdiff's bf16 mode is `cfgdiff infer --precision bf16` (sampler.precision)
            net = Autocast(m, "cpu") if prec == "bf16" else m
            with torch.no_grad():
                s = timeit(lambda: sample(net, cond, mask, schedule=sched, method="ddim", steps=steps, w=w, seed=0),
                           **reps)
            rows.append({"sampler": f"{name}: DDIM-{steps}, batched CFG, {prec}", "img/s": batch / s})
    n_ours = len(rows)
    dims = peer_dims(size, forward_flops(FULL, ours[FULL], size))
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion

        unet = _peer("lucidrains Unet", size, dims["lucidrains Unet"], out_dim=1).eval()
        diff = GaussianDiffusion(_GuidedLucidrains(unet, cond, w), image_size=size, timesteps=1000,
                                 sampling_timesteps=steps).eval()
        with torch.no_grad(), ac:
            s = timeit(lambda: diff.ddim_sample((batch, 1, size, size)), **reps)
        rows.append({"sampler": f"lucidrains GaussianDiffusion.ddim_sample-{steps} (dim {dims['lucidrains Unet']}), "
                                "2 forwards", "img/s": batch / s})
    except Exception as e:  # noqa: BLE001
        rows.append({"sampler": f"lucidrains: unavailable ({type(e).__name__}: {str(e)[:60]})", "img/s": None})
    try:
        from diffusers import DDIMScheduler

        unet = _peer("diffusers UNet2DModel", size, dims["diffusers UNet2DModel"]).eval()
        ds = DDIMScheduler(num_train_timesteps=1000)

        def diffusers_sample():
            ds.set_timesteps(steps)
            x = torch.randn(batch, 1, size, size)
            z = torch.zeros_like(cond)
            for t in ds.timesteps:
                e_c = unet(torch.cat([x, cond, mask], 1), t).sample
                e_u = unet(torch.cat([x, z, z], 1), t).sample
                x = ds.step(e_u + w * (e_c - e_u), t, x).prev_sample
            return x

        with torch.no_grad(), ac:
            s = timeit(diffusers_sample, **reps)
        rows.append({"sampler": f"diffusers DDIMScheduler-{steps} (dim {dims['diffusers UNet2DModel']}), 2 forwards",
                     "img/s": batch / s})
    except Exception as e:  # noqa: BLE001
        rows.append({"sampler": f"diffusers: unavailable ({type(e).__name__}: {str(e)[:60]})", "img/s": None})
    best_peer = max((r["img/s"] for r in rows[n_ours:] if r["img/s"]), default=None)
    for r in rows:
        r["ratio to faster peer"] = r["img/s"] / best_peer if best_peer and r["img/s"] else None
    return table(rows, ["sampler", "img/s", "ratio to faster peer"]) + \
        f"\n\n{size}x{size}, batch {batch}, w={w}; peers in {precision} (as users run them), cfgdiff in fp32 and bf16 autocast; " \
        "throughput only (random weights)."
