"""GPU checks (marker `gpu`; skipped where CUDA is absent): bf16 training step and CUDA sampling."""

from __future__ import annotations

import pytest
import torch

from cfgdiff.config import ExperimentConfig, ModelConfig, ScheduleConfig, TrainConfig
from cfgdiff.engine import make_lr_scheduler, make_optimizer, train_step
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet

pytestmark = pytest.mark.gpu


def _cfg(precision: str) -> ExperimentConfig:
    return ExperimentConfig(model=ModelConfig(image_size=(32, 32), dim=32, dim_mults=(1, 2, 2), num_res_blocks=1),
                            schedule=ScheduleConfig("cosine", 1000),
                            train=TrainConfig(precision=precision, lr=1e-3, warmup_steps=5, max_steps=60))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_training_step_lowers_loss(precision):
    cfg = _cfg(precision)
    dev = torch.device("cuda")
    model = ConditionalUNet(cfg.model).to(dev).to(memory_format=torch.channels_last)
    opt, sch = make_optimizer(model, cfg.train), None
    sch = make_lr_scheduler(opt, cfg.train)
    sched = NoiseSchedule.from_config(cfg.schedule).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.rand(64, 1, 32, 32, device=dev, generator=g) * 2 - 1
    x0 = torch.nn.functional.avg_pool2d(x0, 5, 1, 2)  # smooth images
    losses = [float(train_step(model, opt, sch, sched, x0, x0, torch.ones_like(x0), cfg, generator=g)["loss"])
              for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_cuda_sampling_is_seeded_per_sample_and_projects_exactly():
    dev = torch.device("cuda")
    cfg = _cfg("fp32")
    model = ConditionalUNet(cfg.model).to(dev).eval()
    sched = NoiseSchedule.from_config(cfg.schedule).to(dev)
    cond = torch.rand(4, 1, 32, 32, device=dev)
    mask = (torch.rand(4, 1, 32, 32, device=dev) > 0.5).float()
    a = sample(model, cond, mask, schedule=sched, steps=5, w=2.0, seed=1, sample_index=range(4)).x0
    b = sample(model, cond, mask, schedule=sched, steps=5, w=2.0, seed=1, sample_index=range(4)).x0
    assert torch.equal(a, b)
    assert torch.equal(a[mask.bool().expand_as(a)], cond[mask.bool().expand_as(cond)])
