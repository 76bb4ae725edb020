"""bf16 autocast against fp32: the same training run twice, loss curves side by side (issue #4).

Same data, seeds and draws; only the autocast differs. Writes bench/precision_loss.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cfgdiff.config import ExperimentConfig, apply_overrides
from cfgdiff.degrade import degrade
from cfgdiff.demo import gaussian_random_fields
from cfgdiff.engine import make_lr_scheduler, make_optimizer, train_step
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet

from .common import table

SETS = ["model.dim=48", "model.dim_mults=[1,2,4]", "model.use_control_add=false", "model.use_cross_attn=false",
        "train.batch_size=32", "train.lr=5e-4", "train.warmup_steps=20"]


def run(steps: int = 200) -> str:
    x = torch.from_numpy(gaussian_random_fields(1024, 32, 32, seed=0))
    x = x / x.abs().max()  # min/max-like range
    cond, mask = degrade(x, "mix:drop:0.9,box:0.4:random,half", seed=0)
    rows, curves = [], {}
    for prec in ("fp32", "bf16"):
        cfg = apply_overrides(ExperimentConfig(), SETS + [f"train.precision={prec}", f"train.max_steps={steps}"])
        torch.manual_seed(0)
        model = ConditionalUNet(cfg.model).to(memory_format=torch.channels_last)
        opt, sched = make_optimizer(model, cfg.train), NoiseSchedule.from_config(cfg.schedule)
        lrs = make_lr_scheduler(opt, cfg.train)
        g = torch.Generator().manual_seed(0)
        losses, t0 = [], time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,), generator=g)
            losses.append(float(train_step(model, opt, lrs, sched, x[idx], cond[idx], mask[idx], cfg, generator=g)["loss"]))
        sec = time.perf_counter() - t0
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        curves[prec] = [(i + 20, float(v)) for i, v in enumerate(smooth)][::5]
        rows.append({"precision": prec, "steps": steps, "img/s": steps * 32 / sec, "loss first 20": np.mean(losses[:20]),
                     "loss last 50": np.mean(losses[-50:])})
    try:
        from cluster.plots import line_chart

        line_chart(curves, Path(__file__).with_name("precision_loss.png"), x_label="step", y_label="loss (20-step mean)",
                   title="training loss, fp32 vs bf16 autocast (same seeds)")
        note = "Loss curves: bench/precision_loss.png."
    except Exception as e:  # noqa: BLE001
        note = f"(plot skipped: {e})"
    return table(rows, ["precision", "steps", "img/s", "loss first 20", "loss last 50"]) + "\n\n" + note
