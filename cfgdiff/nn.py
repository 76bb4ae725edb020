"""Building blocks of the U-Net: time embedding, residual blocks, attention (linear, softmax, cross)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zero_module(m: nn.Module) -> nn.Module:
    """Zero-initialise every parameter (ControlNet-style injections start as the identity)."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def _slow_bf16_backward(x: torch.Tensor) -> bool:
    """True when ``x`` is a reduced-precision CPU tensor that autograd will differentiate through."""
    return x.device.type == "cpu" and x.dtype != torch.float32 and x.requires_grad and torch.is_grad_enabled()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that trains in fp32 under CPU autocast and returns the input's dtype.

    In the bf16 training step's profile, PyTorch's mixed-dtype CPU GroupNorm backward took 3.6x the
    time of the fp32 one (bench/RESULTS.md); the fp32 kernel plus two casts is cheaper. Forward-only
    (sampling) and fp32 or GPU models take the plain path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _slow_bf16_backward(x):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float()).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention``; when training on CPU in bf16, computed in fp32: the bf16
    flash-attention backward took 3.7x the fp32 one (bench/RESULTS.md)."""
    if not _slow_bf16_backward(q):
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the timestep (DDPM sec. 4 / Vaswani et al.), (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]  # (B, half)
        emb = torch.cat([args.sin(), args.cos()], dim=1)
        return F.pad(emb, (0, self.dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale/shift from the time embedding, dropout, conv; 1x1 skip if needed."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = GroupNorm32(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = GroupNorm32(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = F.silu(torch.addcmul(shift, self.norm2(h), 1.0 + scale))
        h = self.conv2(self.drop(h))
        return self.skip(x) + h


class LinearAttention(nn.Module):
    """Linear attention (Katharopoulos et al. 2006.16236; Shen et al. softmax-normalised q and k), residual."""

    def __init__(self, ch: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = GroupNorm32(1, ch)
        self.qkv = nn.Conv2d(ch, 3 * inner, 1, bias=False)
        self.out = nn.Sequential(nn.Conv2d(inner, ch, 1), GroupNorm32(1, ch))
        self.scale = dim_head**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, self.dim_head, H * W).unbind(1)
        q = q.softmax(dim=-2) * self.scale  # (B, heads, d, N): softmax over features
        k = k.softmax(dim=-1)  # softmax over tokens
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q)  # (B, heads, d, N)
        return x + self.out(out.reshape(B, -1, H, W))


class Attention(nn.Module):
    """Multi-head softmax self-attention through scaled_dot_product_attention, residual."""

    def __init__(self, ch: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = GroupNorm32(1, ch)
        self.qkv = nn.Conv2d(ch, 3 * inner, 1, bias=False)
        self.out = nn.Conv2d(inner, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, self.dim_head, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, N, d) each
        out = attention(q, k, v)  # (B, heads, N, d)
        return x + self.out(out.transpose(-1, -2).reshape(B, -1, H, W))


class CrossAttention(nn.Module):
    """U-Net tokens (queries) attend to control tokens (keys, values) via SDPA; zero-init output."""

    def __init__(self, ch: int, ctx_ch: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = GroupNorm32(1, ch)
        self.norm_ctx = GroupNorm32(1, ctx_ch)
        self.q = nn.Conv2d(ch, inner, 1, bias=False)
        self.kv = nn.Conv2d(ctx_ch, 2 * inner, 1, bias=False)
        self.out = zero_module(nn.Conv2d(inner, ch, 1))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        n_ctx = ctx.shape[-2] * ctx.shape[-1]
        q = self.q(self.norm(x)).reshape(B, self.heads, self.dim_head, H * W).transpose(-1, -2)  # (B,h,N,d)
        k, v = self.kv(self.norm_ctx(ctx)).reshape(B, 2, self.heads, self.dim_head, n_ctx).transpose(-1, -2).unbind(1)
        out = attention(q, k, v)  # (B, heads, N, d)
        return x + self.out(out.transpose(-1, -2).reshape(B, -1, H, W))


class Downsample(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
