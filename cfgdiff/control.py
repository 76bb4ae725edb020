"""ControlEncoder: a conv pyramid over [cond, mask] with one feature map per U-Net resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nn import Downsample, GroupNorm32


class _ConvBlock(nn.Module):
    """conv-GroupNorm-SiLU-conv with a residual; no time embedding (the condition is time-free)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm = GroupNorm32(groups, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm(self.conv1(F.silu(x)))))


class ControlEncoder(nn.Module):
    """Maps [cond, mask] (B, C_c + 1, H, W) to features [(B, ch_i, H / 2^i, W / 2^i) for each level i]."""

    def __init__(self, c_in: int, channels: tuple[int, ...], groups: int):
        super().__init__()
        self.stem = nn.Conv2d(c_in, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(_ConvBlock(c, groups) for c in channels)
        self.downs = nn.ModuleList(Downsample(a, b) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, cond: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(torch.cat([cond, mask], dim=1))
        feats = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            feats.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return feats
