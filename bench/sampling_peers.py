"""DDIM-50 sampling with classifier-free guidance: cfgdiff against peers' own samplers (issue #9).

cfgdiff runs its sampler (one batched 2B forward per step). Each peer runs *its* DDIM sampler with
guidance done as two forwards per step, which is how a user would bolt CFG onto it: lucidrains'
``GaussianDiffusion.ddim_sample`` around a guided wrapper, diffusers' ``DDIMScheduler.step`` loop.
All models at matched size (~1.75 GFLOP/img forward), 32x32, w=2, random weights (speed only).
"""

from __future__ import annotations

import torch
from torch import nn

from cfgdiff.api import Autocast
from cfgdiff.config import ModelConfig, ScheduleConfig
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet

from .common import table, timeit
from .model import _stub_torchvision


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


def run(batch: int = 16, steps: int = 50, w: float = 2.0, precision: str = "fp32") -> str:
    torch.manual_seed(0)
    cond = torch.randn(batch, 1, 32, 32)
    mask = (torch.rand(batch, 1, 32, 32) > 0.8).float()
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    rows = []
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    for name, cfg in (("cfgdiff concat-only", ModelConfig(use_control_add=False, use_cross_attn=False)),
                      ("cfgdiff full", ModelConfig())):
        m = ConditionalUNet(cfg).eval().to(memory_format=torch.channels_last)
        for prec in ("fp32", "bf16"):  # cfgdiff's bf16 mode is `cfgdiff infer --precision bf16` (sampler.precision)
            net = Autocast(m, "cpu") if prec == "bf16" else m
            with torch.no_grad():
                s = timeit(lambda: sample(net, cond, mask, schedule=sched, steps=steps, w=w, seed=0), repeat=2, warmup=1)
            rows.append({"sampler": f"{name}: DDIM-{steps}, batched CFG, {prec}", "img/s": batch / s})
    n_ours = len(rows)
    _stub_torchvision()
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet

        unet = Unet(dim=48, dim_mults=(1, 2, 4), channels=2, out_dim=1).eval()
        diff = GaussianDiffusion(_GuidedLucidrains(unet, cond, w), image_size=32, timesteps=1000,
                                 sampling_timesteps=steps).eval()
        with torch.no_grad(), ac:
            s = timeit(lambda: diff.ddim_sample((batch, 1, 32, 32)), repeat=2, warmup=1)
        rows.append({"sampler": f"lucidrains GaussianDiffusion.ddim_sample-{steps}, 2 forwards", "img/s": batch / s})
    except Exception as e:  # noqa: BLE001
        rows.append({"sampler": f"lucidrains: unavailable ({type(e).__name__}: {str(e)[:60]})", "img/s": None})
    try:
        from diffusers import DDIMScheduler, UNet2DModel

        unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=1, block_out_channels=(40, 80, 160),
                           layers_per_block=2, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")).eval()
        ds = DDIMScheduler(num_train_timesteps=1000)

        def diffusers_sample():
            ds.set_timesteps(steps)
            x = torch.randn(batch, 1, 32, 32)
            z = torch.zeros_like(cond)
            for t in ds.timesteps:
                e_c = unet(torch.cat([x, cond, mask], 1), t).sample
                e_u = unet(torch.cat([x, z, z], 1), t).sample
                x = ds.step(e_u + w * (e_c - e_u), t, x).prev_sample
            return x

        with torch.no_grad(), ac:
            s = timeit(diffusers_sample, repeat=2, warmup=1)
        rows.append({"sampler": f"diffusers DDIMScheduler-{steps}, 2 forwards", "img/s": batch / s})
    except Exception as e:  # noqa: BLE001
        rows.append({"sampler": f"diffusers: unavailable ({type(e).__name__}: {str(e)[:60]})", "img/s": None})
    best_peer = max((r["img/s"] for r in rows[n_ours:] if r["img/s"]), default=None)
    for r in rows:
        r["ratio to faster peer"] = r["img/s"] / best_peer if best_peer and r["img/s"] else None
    return table(rows, ["sampler", "img/s", "ratio to faster peer"]) + \
        f"\n\nbatch {batch}, w={w}; peers in {precision} (as users run them), cfgdiff in fp32 and bf16 autocast; " \
        "throughput only (random weights)."
