"""ConditionalUNet: (x_t, t, cond, mask) -> eps or v prediction.

The condition reaches the network in up to three ways, each switchable in ``ModelConfig``:
(a) ``use_concat``: [cond, mask] concatenated to x_t at the input (pixel-aligned);
(b) ``use_control_add``: ControlEncoder features added at every level through zero-initialised 1x1
    convs (ControlNet, Zhang et al. 2302.05543);
(c) ``use_cross_attn``: U-Net tokens attend to control tokens at levels of side <= cross_attn_max_res.
Zero-initialised (b) and (c) make the network at initialisation equal its concat-only variant.

``checkpointing`` (set by training from ``train.activation_checkpointing``) recomputes each residual and
attention block's activations in the backward pass instead of keeping them (Chen et al. 1604.06174): the
same gradients (tested bit for bit) for about a third more compute and a fraction of the activation memory.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .control import ControlEncoder
from .nn import (
    Attention,
    CrossAttention,
    Downsample,
    GroupNorm32,
    LinearAttention,
    ResBlock,
    SinusoidalEmbedding,
    Upsample,
    zero_module,
)


class _Level(nn.Module):
    """One resolution level: residual blocks, optional linear attention and cross-attention."""

    def __init__(self, c_ins: list[int], ch: int, emb_dim: int, cfg: ModelConfig, linear_attn: bool,
                 cross_attn: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, ch, emb_dim, cfg.groups, cfg.dropout) for c in c_ins)
        self.attn = LinearAttention(ch, cfg.heads, cfg.dim_head) if linear_attn else None
        self.cross = CrossAttention(ch, ch, cfg.heads, cfg.dim_head) if cross_attn else None


class ConditionalUNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.prediction = cfg.prediction  # what the output is (eps or v): the samplers read it from here
        self.checkpointing = False  # recompute block activations in backward (training memory)
        C, Cc, Cm, dim = cfg.in_channels, cfg.cond_channels, cfg.mask_channels, cfg.dim
        chs = [dim * m for m in cfg.dim_mults]
        L = len(chs)
        emb_dim = 4 * dim
        self.time = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, emb_dim), nn.SiLU(),
                                  nn.Linear(emb_dim, emb_dim))
        self.init_conv = nn.Conv2d(C + (Cc + Cm if cfg.use_concat else 0), dim, 3, padding=1)
        use_control = cfg.use_control_add or cfg.use_cross_attn
        self.control = ControlEncoder(Cc + Cm, tuple(chs), cfg.groups) if use_control else None
        cross = cfg.cross_attn_at()
        lin = [i in cfg.linear_attn_levels for i in range(L)]
        n = cfg.num_res_blocks
        self.down = nn.ModuleList()
        self.down_samplers = nn.ModuleList()
        prev = dim
        for i, ch in enumerate(chs):
            self.down.append(_Level([prev] + [ch] * (n - 1), ch, emb_dim, cfg, lin[i], cross[i]))
            self.down_samplers.append(Downsample(ch, ch) if i < L - 1 else nn.Identity())
            prev = ch
        self.inject = (nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in chs)
                       if cfg.use_control_add else None)
        self.inject_mid = zero_module(nn.Conv2d(chs[-1], chs[-1], 1)) if cfg.use_control_add else None
        self.mid1 = ResBlock(chs[-1], chs[-1], emb_dim, cfg.groups, cfg.dropout)
        self.mid_attn = Attention(chs[-1], cfg.heads, cfg.dim_head) if cfg.mid_attention else None
        self.mid_cross = CrossAttention(chs[-1], chs[-1], cfg.heads, cfg.dim_head) if cross[-1] else None
        self.mid2 = ResBlock(chs[-1], chs[-1], emb_dim, cfg.groups, cfg.dropout)
        self.up = nn.ModuleList()
        self.up_samplers = nn.ModuleList()
        for i in reversed(range(L)):
            self.up.append(_Level([2 * chs[i]] * n, chs[i], emb_dim, cfg, lin[i], cross[i]))
            self.up_samplers.append(Upsample(chs[i], chs[i - 1]) if i > 0 else nn.Identity())
        self.out_norm = GroupNorm32(cfg.groups, chs[0])  # the last up level leaves dim * dim_mults[0] channels
        self.out_conv = nn.Conv2d(chs[0], C, 3, padding=1)

    def check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> None:
        cfg = self.cfg
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels:
            raise ValueError(f"x_t must be (B, {cfg.in_channels}, H, W), got {tuple(x_t.shape)}")
        B, _, H, W = x_t.shape
        if tuple(cond.shape) != (B, cfg.cond_channels, H, W):
            raise ValueError(f"cond must be {(B, cfg.cond_channels, H, W)}, got {tuple(cond.shape)}")
        if tuple(mask.shape) != (B, cfg.mask_channels, H, W):
            raise ValueError(f"mask must be {(B, cfg.mask_channels, H, W)}, got {tuple(mask.shape)}")
        if tuple(t.shape) != (B,):
            raise ValueError(f"t must be ({B},), got {tuple(t.shape)}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, H, W), t (B,) int, cond (B, C_c, H, W), mask (B, M, H, W) -> (B, C, H, W), for any H, W;
        M = model.mask_channels: 1 (one mask per pixel) or C (one per target channel).

        Sides that are not multiples of 2**(levels-1) are padded (``pad_to_multiple``: reflected x_t and cond,
        mask 0 on the padding, so the network sees padded pixels as unobserved) and the output is cropped back.
        """
        self.check_inputs(x_t, t, cond, mask)
        H, W = x_t.shape[-2:]
        pads = padding_for(H, W, 2 ** (len(self.cfg.dim_mults) - 1))
        if any(pads):
            x_t, cond, mask = pad_to_multiple(x_t, pads), pad_to_multiple(cond, pads), pad_to_multiple(mask, pads, 0.0)
        out = self._forward(x_t, t, cond, mask)
        return out[..., pads[2]:pads[2] + H, pads[0]:pads[0] + W] if any(pads) else out

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
        h = self.init_conv(torch.cat([x_t, cond, mask], 1) if self.cfg.use_concat else x_t)
        ctrl = self.control(cond, mask) if self.control is not None else None
        skips = []
        run = self._run
        for i, (level, down) in enumerate(zip(self.down, self.down_samplers)):
            for b, block in enumerate(level.blocks):
                h = run(block, h, emb)
                if b == 0 and self.inject is not None:  # (b) ControlNet-style add at this resolution
                    h = h + self.inject[i](ctrl[i])
                skips.append(h)
            h = run(self._attend, level, h, ctrl[i] if ctrl is not None else None)
            h = down(h)
        if self.inject_mid is not None:
            h = h + self.inject_mid(ctrl[-1])
        h = run(self.mid1, h, emb)
        if self.mid_attn is not None:
            h = run(self.mid_attn, h)
        if self.mid_cross is not None:
            h = run(self.mid_cross, h, ctrl[-1])
        h = run(self.mid2, h, emb)
        L = len(self.up)
        for j, (level, up) in enumerate(zip(self.up, self.up_samplers)):
            for block in level.blocks:
                h = run(block, torch.cat([h, skips.pop()], 1), emb)
            h = run(self._attend, level, h, ctrl[L - 1 - j] if ctrl is not None else None)
            h = up(h)
        return self.out_conv(torch.nn.functional.silu(self.out_norm(h)))

    def _run(self, fn, *args):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @staticmethod
    def _attend(level: _Level, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        if level.attn is not None:
            h = level.attn(h)
        if level.cross is not None:
            h = level.cross(h, ctx)
        return h


def padding_for(H: int, W: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that makes H and W multiples of ``multiple``, split evenly."""
    ph, pw = -H % multiple, -W % multiple
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def pad_to_multiple(x: torch.Tensor, pads: tuple[int, int, int, int], value: float | None = None) -> torch.Tensor:
    """Reflect-pad x (replicate where a side is too short to reflect), or pad with a constant ``value``."""
    if value is not None:
        return torch.nn.functional.pad(x, pads, value=value)
    H, W = x.shape[-2:]
    mode = "reflect" if max(pads[:2]) < W and max(pads[2:]) < H else "replicate"
    return torch.nn.functional.pad(x, pads, mode=mode)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
