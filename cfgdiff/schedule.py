"""Noise schedules and the closed forms of the forward process.

Notation (DDPM arXiv 2006.11239, DDIM 2010.02502):

| code                 | paper                         | meaning                                  |
|----------------------|-------------------------------|------------------------------------------|
| ``T``                | T                             | number of diffusion steps                |
| ``t``                | t (0-based here: 0 .. T-1)    | timestep index; t=0 is the least noisy   |
| ``beta``             | beta_t                        | per-step noise variance                  |
| ``alpha``            | alpha_t = 1 - beta_t          |                                          |
| ``alpha_bar``        | bar(alpha)_t = prod alpha_s   | signal fraction of x_t                   |
| ``alpha_bar_prev``   | bar(alpha)_{t-1}, 1 at t=0    |                                          |
| ``x0``, ``x_t``      | x_0, x_t                      | clean sample, noisy sample               |
| ``eps``              | epsilon                       | standard normal noise                    |
| ``v``                | v = sqrt(ab) eps - sqrt(1-ab) x0 | v-parametrisation (Salimans & Ho 2022) |

Tables are computed in float64 and stored as float32 (issue #3). ``NoiseSchedule.to(device)``
moves every table at once so that samplers never copy them inside a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import ScheduleConfig


def make_betas(kind: str, T: int) -> np.ndarray:
    """Return beta_1..beta_T as float64 for the named schedule."""
    if T < 1:
        raise ValueError(f"schedule.num_timesteps must be >= 1, got {T}")
    if kind == "linear":
        # NOTE(deviation): DDPM uses 1e-4..0.02 for T=1000; for other T we scale by 1000/T as
        # improved-diffusion does, so that alpha_bar_T stays near zero for short schedules.
        scale = 1000.0 / T
        return np.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=np.float64)
    if kind == "cosine":
        # Improved DDPM (2102.09672) eq. 17, s = 0.008, beta clipped at 0.999.
        s = 0.008
        steps = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)
    if kind == "sigmoid":
        # Sigmoid schedule of Chen 2023 ("On the importance of noise scheduling"), start=-3,
        # end=3, tau=1, with the same 0.999 clip.
        start, end, tau = -3.0, 3.0, 1.0
        sig = lambda z: 1.0 / (1.0 + np.exp(-z))
        steps = np.arange(T + 1, dtype=np.float64) / T
        v_start, v_end = sig(start / tau), sig(end / tau)
        alpha_bar = (-sig((steps * (end - start) + start) / tau) + v_end) / (v_end - v_start)
        alpha_bar = alpha_bar / alpha_bar[0]
        return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)
    raise ValueError(f"schedule.kind must be one of linear, cosine, sigmoid, got {kind!r}")


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[t] reshaped to (B, 1, ..., 1) for broadcasting against a (B, ...) tensor."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


@dataclass
class NoiseSchedule:
    """The tables of one schedule and the closed forms of q (DDPM eqs. 4, 6, 7, 15)."""

    beta: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> NoiseSchedule:
        beta = make_betas(cfg.kind, cfg.num_timesteps)
        alpha = 1.0 - beta
        alpha_bar = np.cumprod(alpha)
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        # DDPM eq. 7: beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t) * beta_t
        post_var = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        # log variance clipped at t=0 where it is 0 (improved-diffusion does the same)
        post_logvar = np.log(np.append(post_var[1:2], post_var[1:])) if len(beta) > 1 else np.log(beta)
        coef1 = beta * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
        coef2 = (1.0 - alpha_bar_prev) * np.sqrt(alpha) / (1.0 - alpha_bar)
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)
        return cls(f32(beta), f32(alpha_bar), f32(alpha_bar_prev), f32(post_var), f32(post_logvar),
                   f32(coef1), f32(coef2))

    @property
    def T(self) -> int:
        return int(self.beta.shape[0])

    @property
    def device(self) -> torch.device:
        return self.beta.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        return NoiseSchedule(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    # --- forward process -------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x0) = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps. DDPM eq. (4)."""
        ab = _gather(self.alpha_bar, t, x0.ndim)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ab_t / (1 - ab_t), shape (B,)."""
        ab = self.alpha_bar[t]
        return ab / (1.0 - ab)

    # --- conversions between parametrisations ------------------------------------------------
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t). DDPM eq. (15)."""
        ab = _gather(self.alpha_bar, t, x_t.ndim)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), the inverse of eq. (15)."""
        ab = _gather(self.alpha_bar, t, x_t.ndim)
        return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0 (Salimans & Ho 2202.00512, sec. 4)."""
        ab = _gather(self.alpha_bar, t, x0.ndim)
        return ab.sqrt() * eps - (1.0 - ab).sqrt() * x0

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v."""
        ab = _gather(self.alpha_bar, t, x_t.ndim)
        return (1.0 - ab).sqrt() * x_t + ab.sqrt() * v

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v."""
        ab = _gather(self.alpha_bar, t, x_t.ndim)
        return ab.sqrt() * x_t - (1.0 - ab).sqrt() * v

    # --- posterior ---------------------------------------------------------------------------
    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0). DDPM eqs. (6)-(7)."""
        mean = (_gather(self.posterior_mean_coef1, t, x_t.ndim) * x0
                + _gather(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return mean, _gather(self.posterior_variance, t, x_t.ndim)
