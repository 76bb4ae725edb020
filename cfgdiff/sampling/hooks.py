"""Constraints as hooks: on each x0 prediction (clipping, DDNM consistency) or on each new sample (projection)."""

from __future__ import annotations

from collections.abc import Callable

import torch


class ClipX0:
    """Clamp x0 predictions to the data range (floats or (1, C, 1, 1) tensors)."""

    def __init__(self, lo, hi, device: torch.device):
        self.lo, self.hi = (c.to(device) if torch.is_tensor(c) else torch.tensor(c, device=device) for c in (lo, hi))

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x0, self.lo, self.hi)


class Consistency:
    """DDNM range/null-space consistency for a linear operator: ``x0 <- x0 + A^+(y - A x0)`` (2212.00490, eq. 13).
    ``operator`` exposes ``A(x)``, ``A_pinv(y)`` and ``y``."""

    def __init__(self, operator):
        self.operator = operator

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        op = self.operator
        return x0 + op.A_pinv(op.y - op.A(x0))


class ProjectKnown:
    """Known pixels merged into each new sample at the level of the sample being produced, with fresh noise
    (RePaint 2201.09865, eqs. 8a/8b), and exactly at the clean level. ``keep`` is (B, 1 or C, H, W), 1 = known."""

    def __init__(self, known: torch.Tensor, keep: torch.Tensor, noise: Callable[[], torch.Tensor],
                 sqrt_ab: list[float], sqrt_1m_ab: list[float]):
        self.known, self.keep, self.noise = known, keep, noise
        self.sqrt_ab, self.sqrt_1m_ab, self.clean = sqrt_ab, sqrt_1m_ab, len(sqrt_ab) - 1

    def __call__(self, x: torch.Tensor, level: int) -> torch.Tensor:
        if level == self.clean:
            x_known = self.known
        else:
            x_known = self.sqrt_ab[level] * self.known + self.sqrt_1m_ab[level] * self.noise()
        return torch.where(self.keep, x_known, x)
