"""Forward FLOPs per sample, measured with torch.utils.flop_counter (matmuls and convolutions)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .unet import ConditionalUNet


def forward_flops(model: ConditionalUNet, cfg: ModelConfig, batch: int = 2) -> float:
    """FLOPs of one forward pass per sample (multiply-add = 2 FLOPs)."""
    H, W = cfg.image_size
    dev = next(model.parameters()).device
    x = torch.zeros(batch, cfg.in_channels, H, W, device=dev)
    c = torch.zeros(batch, cfg.cond_channels, H, W, device=dev)
    m = torch.ones(batch, 1, H, W, device=dev)
    t = torch.zeros(batch, dtype=torch.long, device=dev)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, c, m)
    return counter.get_total_flops() / batch
