"""Per-channel affine normalisation, x_n = (x - offset) / scale, stored with data and checkpoints.

min/max maps each channel to [-1, 1] (offset = (hi + lo) / 2, scale = (hi - lo) / 2); mean/std
uses offset = mean, scale = std. Statistics come from one streaming pass (``RunningStats``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ChannelAffine:
    offset: tuple[float, ...]  # per channel
    scale: tuple[float, ...]  # per channel, > 0
    lo: tuple[float, ...] | None = None  # per-channel data minimum (user units), for clipping x0
    hi: tuple[float, ...] | None = None  # per-channel data maximum

    def _t(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        o = torch.tensor(self.offset, dtype=torch.float64).view(shape).to(x.device, torch.float32)
        s = torch.tensor(self.scale, dtype=torch.float64).view(shape).to(x.device, torch.float32)
        return o, s

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        o, s = self._t(x)
        return (x.float() - o) / s

    def normalize_numpy(self, a: np.ndarray) -> torch.Tensor:
        """``normalize`` for a raw (n, C, H, W) numpy batch, into one fresh float32 tensor (the readers' hot path).

        Same float32 arithmetic as ``normalize``, but in numpy: single-threaded, so it does not fight the
        reader's prefetch thread for the cores the way torch's OpenMP element-wise kernels do.
        """
        o, s = self._np
        out = a.astype(np.float32)  # the one copy out of the read-only Arrow buffer (and the dtype cast)
        np.subtract(out, o, out=out)
        np.divide(out, s, out=out)
        return torch.from_numpy(out)

    @functools.cached_property
    def _np(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (1, -1, 1, 1)
        return (np.asarray(self.offset, np.float64).astype(np.float32).reshape(shape),
                np.asarray(self.scale, np.float64).astype(np.float32).reshape(shape))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        o, s = self._t(x)
        return x.float() * s + o

    def clip_bounds(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The data range in normalised units, (1, C, 1, 1) each; (-1, 1) when unknown."""
        if self.lo is None or self.hi is None:
            return -1.0, 1.0
        lo = (torch.tensor(self.lo, dtype=torch.float64) - torch.tensor(self.offset, dtype=torch.float64)) / \
            torch.tensor(self.scale, dtype=torch.float64)
        hi = (torch.tensor(self.hi, dtype=torch.float64) - torch.tensor(self.offset, dtype=torch.float64)) / \
            torch.tensor(self.scale, dtype=torch.float64)
        return lo.float().view(1, -1, 1, 1), hi.float().view(1, -1, 1, 1)

    def data_range(self) -> tuple[float, ...]:
        """Per-channel data range hi - lo in user units (the PSNR/SSIM peak); 2 * scale when the
        extremes were not stored (min/max: the same thing) or are equal."""
        if self.lo is None or self.hi is None:
            return tuple(2.0 * s for s in self.scale)
        return tuple(h - lo if h > lo else 2.0 * s for lo, h, s in zip(self.lo, self.hi, self.scale))

    def data_range_tensor(self) -> torch.Tensor:
        """``data_range`` as a (1, C, 1, 1) float64 tensor, for ``metrics.psnr``/``ssim`` on user-unit arrays."""
        return torch.tensor(self.data_range(), dtype=torch.float64).view(1, -1, 1, 1)

    def to_dict(self) -> dict:
        d = {"offset": list(self.offset), "scale": list(self.scale)}
        if self.lo is not None:
            d.update(lo=list(self.lo), hi=list(self.hi))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ChannelAffine:
        f = lambda k: tuple(float(v) for v in d[k]) if d.get(k) is not None else None
        return cls(f("offset"), f("scale"), f("lo"), f("hi"))


@dataclass(frozen=True)
class Normalization:
    kind: str  # "minmax" or "meanstd"
    target: ChannelAffine
    condition: ChannelAffine

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target.to_dict(), "condition": self.condition.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        if d.get("kind") not in ("minmax", "meanstd"):
            raise ValueError(f"normalization.kind must be minmax or meanstd, got {d.get('kind')!r}")
        return cls(d["kind"], ChannelAffine.from_dict(d["target"]), ChannelAffine.from_dict(d["condition"]))

    @classmethod
    def identity(cls, c_target: int, c_cond: int) -> Normalization:
        return cls("minmax", ChannelAffine((0.0,) * c_target, (1.0,) * c_target),
                   ChannelAffine((0.0,) * c_cond, (1.0,) * c_cond))


class RunningStats:
    """Streaming per-channel min, max, mean and variance (Chan et al. parallel update), NaN-ignoring."""

    def __init__(self, channels: int):
        self.n = np.zeros(channels)
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.lo = np.full(channels, np.inf)
        self.hi = np.full(channels, -np.inf)

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """x: (N, C, H, W); valid: broadcastable bool mask of values to count (NaNs are skipped)."""
        x = x.astype(np.float64, copy=False)
        for c in range(x.shape[1]):
            v = x[:, c]
            ok = np.isfinite(v) if valid is None else (np.isfinite(v) & np.broadcast_to(valid[:, 0], v.shape))
            v = v[ok]
            if v.size == 0:
                continue
            n_b, mean_b = v.size, v.mean()
            m2_b = ((v - mean_b) ** 2).sum()
            n = self.n[c] + n_b
            delta = mean_b - self.mean[c]
            self.mean[c] += delta * n_b / n
            self.m2[c] += m2_b + delta**2 * self.n[c] * n_b / n
            self.n[c] = n
            self.lo[c], self.hi[c] = min(self.lo[c], v.min()), max(self.hi[c], v.max())

    def affine(self, kind: str) -> ChannelAffine:
        ok = np.isfinite(self.lo)
        lo, hi = tuple(np.where(ok, self.lo, -1.0).tolist()), tuple(np.where(ok, self.hi, 1.0).tolist())
        if kind == "minmax":
            span = np.where(self.hi > self.lo, (self.hi - self.lo) / 2.0, 1.0)
            offset = np.where(ok, (self.hi + self.lo) / 2.0, 0.0)
            return ChannelAffine(tuple(offset.tolist()), tuple(span.tolist()), lo, hi)
        if kind == "meanstd":
            std = np.sqrt(self.m2 / np.maximum(self.n, 1))
            return ChannelAffine(tuple(self.mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist()), lo, hi)
        raise ValueError(f"normalization must be minmax or meanstd, got {kind!r}")
