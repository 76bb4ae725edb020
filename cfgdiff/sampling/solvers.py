"""Solvers: small functions with one signature, ``solver(denoiser, x, points, noise, hooks) -> x0``.

``points`` (``Points``) says where to go: levels 0..n of alpha_bar (n is the clean sample, alpha_bar = 1),
their timesteps, and the moves between them. A move (k, k+1) denoises; a move (k, k-j) re-noises j levels
back (RePaint's resampling as a schedule of moves). Every solver takes re-noising moves the same way
(the forward process from level k to k-j) and differs only in its denoising update; after each denoising
move the sample hooks run (``ProjectKnown``). ``progress(i, n)`` is told of each move.

Timesteps: the ``steps``-long sub-sequence uses *trailing* spacing, ``tau_i = round(T - i T / steps) - 1``
for i = 0..steps-1 (Lin et al. 2305.08891, table 2), so the first step always starts at t = T-1 and
``steps == T`` gives T-1, ..., 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..schedule import NoiseSchedule
from .denoiser import Denoiser

Hook = Callable[[torch.Tensor, int], torch.Tensor]


def timestep_sequence(T: int, steps: int) -> list[int]:
    """Trailing-spaced descending timesteps tau_0 > ... > tau_{steps-1} (see module docstring)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}] (the schedule's T), got {steps}")
    taus = [int(round(T - i * T / steps)) - 1 for i in range(steps)]
    assert all(a > b for a, b in zip(taus, taus[1:])) and taus[-1] >= 0
    return taus


def plan_moves(n: int, resample: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Moves between level indices 0..n (n = clean) with RePaint's jump schedule (Alg. 1).

    A move (k, k+1) denoises; a move (k, k-j) re-noises j levels back. After reaching level index
    k (a multiple of j, k < n), jump back j levels, r-1 times, so each segment is denoised r times.
    """
    moves, k, jumps = [], 0, {}
    while k < n:
        moves.append((k, k + 1))
        k += 1
        if resample is not None:
            j, r = resample
            if k < n and k % j == 0 and k - j >= 0 and jumps.get(k, 0) < r - 1:
                jumps[k] = jumps.get(k, 0) + 1
                moves.append((k, k - j))
                k -= j
    return moves


@dataclass
class Points:
    """Levels 0..n: timesteps ``t`` (n,) of the noisy ones and ``ab`` (n+1,) float64 with ab[n] = 1; ``moves``."""

    t: torch.Tensor
    ab: torch.Tensor
    moves: list[tuple[int, int]]

    @classmethod
    def make(cls, schedule: NoiseSchedule, steps: int, resample: tuple[int, int] | None, device) -> Points:
        taus = timestep_sequence(schedule.T, steps)
        ab = torch.cat([schedule.alpha_bar.double().cpu()[taus], torch.ones(1, dtype=torch.float64)])
        return cls(torch.tensor(taus, device=device, dtype=torch.long), ab, plan_moves(len(taus), resample))

    @property
    def clean(self) -> int:
        return len(self.ab) - 1


def renoise(ab_t: float, ab_s: float) -> tuple[float, float]:
    """q(x_s | x_t) for a noisier level s: x_s = sqrt(ab_s / ab_t) x_t + sqrt(1 - ab_s / ab_t) z (RePaint's jump)."""
    ratio = ab_s / ab_t
    return math.sqrt(ratio), math.sqrt(max(1.0 - ratio, 0.0))


def move_coefficients(ab: torch.Tensor, moves, method: str, eta: float) -> list[tuple[float, ...]]:
    """Per-move coefficients (a, b, c, sigma) with x_s = a x0_hat + b eps_hat + c x_t + sigma z.

    Computed once in float64 on the host, before the loop. For re-noising moves (a, b, c) hold
    (sqrt(ab_s/ab_t), 0, 0) and sigma = sqrt(1 - ab_s/ab_t) (forward process from level t to s).
    """
    coefs = []
    for k, k2 in moves:
        ab_t, ab_s = float(ab[k]), float(ab[k2])
        if k2 < k:  # re-noise: q(x_s | x_t) for s noisier than t
            scale, sigma = renoise(ab_t, ab_s)
            coefs.append((scale, 0.0, 0.0, sigma))
        elif method in ("dpm2m", "dpm2m-sde"):
            coefs.append((0.0, 0.0, 0.0, 0.0))  # unused: the update is dpm_solver_2m_step or its SDE form
        elif method == "ddim":
            # DDIM eq. (16): sigma = eta sqrt((1-ab_s)/(1-ab_t)) sqrt(1 - ab_t/ab_s); eq. (12) update
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            coefs.append((math.sqrt(ab_s), math.sqrt(max(1 - ab_s - sigma**2, 0.0)), 0.0, sigma))
        else:
            # DDPM posterior q(x_s | x_t, x0) for any s < t (eqs. 6-7 with alpha_{t|s} = ab_t / ab_s)
            a_ts = ab_t / ab_s
            var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
            coefs.append((math.sqrt(ab_s) * (1 - a_ts) / (1 - ab_t), 0.0,
                          math.sqrt(a_ts) * (1 - ab_s) / (1 - ab_t), math.sqrt(max(var, 0.0))))
    return coefs


def _lambda_step(ab_t: float, ab_s: float) -> tuple[float, tuple[float, float, float, float] | None]:
    """lambda_t = log(alpha_t / sigma_t) and, unless s is the clean level, (alpha_s, sigma_s, sigma_t, h)."""
    a_t, s_t = math.sqrt(ab_t), math.sqrt(max(1.0 - ab_t, 0.0))
    lam_t = math.log(a_t / s_t)
    if ab_s >= 1.0:
        return lam_t, None
    a_s, s_s = math.sqrt(ab_s), math.sqrt(1.0 - ab_s)
    return lam_t, (a_s, s_s, s_t, math.log(a_s / s_s) - lam_t)


def dpm_solver_2m_step(x: torch.Tensor, x0: torch.Tensor, ab_t: float, ab_s: float,
                       prev: tuple[float, torch.Tensor] | None) -> tuple[torch.Tensor, tuple[float, torch.Tensor]]:
    """One DPM-Solver++(2M) step from level t to the less noisy level s (Lu et al. 2211.01095, Alg. 2).

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) and h = lambda_s - lambda_t:
    ``x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D``, where D = x0 on the first step (this is DDIM),
    and afterwards ``D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev`` with r = h_prev / h. The step to the clean
    level (sigma_s = 0, h infinite) is first order: x_s = x0_t. ``prev`` is (lambda, x0) of the last step.
    """
    lam_t, step = _lambda_step(ab_t, ab_s)
    if step is None:
        return x0, (lam_t, x0)
    a_s, s_s, s_t, h = step
    d = x0
    if prev is not None:
        half_inv_r = h / (2.0 * (lam_t - prev[0]))  # 1 / (2 r)
        d = (1.0 + half_inv_r) * x0 - half_inv_r * prev[1]
    return (s_s / s_t) * x - a_s * math.expm1(-h) * d, (lam_t, x0)


def dpm_solver_2m_sde_step(x: torch.Tensor, x0: torch.Tensor, ab_t: float, ab_s: float,
                           prev: tuple[float, torch.Tensor] | None, noise: Callable[[], torch.Tensor]
                           ) -> tuple[torch.Tensor, tuple[float, torch.Tensor]]:
    """One SDE-DPM-Solver++(2M) step from level t to the less noisy level s (Lu et al. 2211.01095, sec. 5 and
    App. B; the midpoint form of k-diffusion's ``sample_dpmpp_2m_sde`` with eta = 1):

        x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D + sigma_s sqrt(1 - e^{-2h}) z,

    D = x0_t on the first step, where the update is exactly DDPM's posterior q(x_s | x_t, x0) (tested), and
    afterwards D = x0_t + (x0_t - x0_prev) / (2 r), r = h_prev / h. The step to the clean level returns x0_t.
    """
    lam_t, step = _lambda_step(ab_t, ab_s)
    if step is None:
        return x0, (lam_t, x0)
    a_s, s_s, s_t, h = step
    one_m = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    d = x0
    if prev is not None:
        d = x0 + (h / (2.0 * (lam_t - prev[0]))) * (x0 - prev[1])
    x_s = (s_s / s_t) * math.exp(-h) * x + a_s * one_m * d + s_s * math.sqrt(one_m) * noise()
    return x_s, (lam_t, x0)


# An update takes (x_t, x0_hat, t, level k, level k2, solver state) to (x at k2, new state).
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, object], tuple[torch.Tensor, object]]


def _solve(update: Update, denoiser: Denoiser, x: torch.Tensor, points: Points, noise: Callable[[], torch.Tensor],
           hooks: Sequence[Hook], progress: Callable[[int, int], None] | None) -> torch.Tensor:
    """The loop every solver shares: re-noising moves through the forward process, denoising moves through
    ``update`` and then the sample hooks. A re-noising jump clears the solver's state (its history)."""
    state, B, ab = None, x.shape[0], points.ab
    for i, (k, k2) in enumerate(points.moves):
        if k2 < k:  # RePaint re-noising jump, forward process from level k to k2
            scale, sigma = renoise(float(ab[k]), float(ab[k2]))
            x = scale * x + sigma * noise()
            state = None
        else:
            t = points.t[k].expand(B)
            x, state = update(x, denoiser(x, t), t, k, k2, state)
            for hook in hooks:
                x = hook(x, k2)
        if progress is not None:
            progress(i + 1, len(points.moves))
    return x


def ddpm(denoiser: Denoiser, x, points: Points, noise, hooks: Sequence[Hook] = (), progress=None):
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0_hat) (Ho et al. 2006.11239, eqs. 6-7)."""
    coefs = move_coefficients(points.ab, points.moves, "ddpm", 1.0)
    lookup = {m: c for m, c in zip(points.moves, coefs)}

    def update(x, x0, t, k, k2, state):
        a, _, c, sigma = lookup[(k, k2)]
        x_new = a * x0 + c * x
        return (x_new + sigma * noise() if sigma > 0.0 else x_new), None

    return _solve(update, denoiser, x, points, noise, hooks, progress)


def ddim(denoiser: Denoiser, x, points: Points, noise, hooks: Sequence[Hook] = (), progress=None, *, eta: float = 0.0):
    """DDIM (Song et al. 2010.02502, eq. 12) with stochasticity ``eta`` (eq. 16): eta = 1 is DDPM's variance."""
    lookup = {m: c for m, c in zip(points.moves, move_coefficients(points.ab, points.moves, "ddim", eta))}

    def update(x, x0, t, k, k2, state):
        a, b, _, sigma = lookup[(k, k2)]
        x_new = a * x0 + b * denoiser.eps(x, t, x0)
        return (x_new + sigma * noise() if sigma > 0.0 else x_new), None

    return _solve(update, denoiser, x, points, noise, hooks, progress)


def dpm2m(denoiser: Denoiser, x, points: Points, noise, hooks: Sequence[Hook] = (), progress=None):
    """DPM-Solver++(2M), deterministic (``dpm_solver_2m_step``)."""
    ab = points.ab
    return _solve(lambda x, x0, t, k, k2, prev: dpm_solver_2m_step(x, x0, float(ab[k]), float(ab[k2]), prev),
                  denoiser, x, points, noise, hooks, progress)


def dpm2m_sde(denoiser: Denoiser, x, points: Points, noise, hooks: Sequence[Hook] = (), progress=None):
    """SDE-DPM-Solver++(2M) (``dpm_solver_2m_sde_step``): keeps the posterior spread at low NFE."""
    ab = points.ab
    return _solve(lambda x, x0, t, k, k2, prev: dpm_solver_2m_sde_step(x, x0, float(ab[k]), float(ab[k2]), prev,
                                                                       noise),
                  denoiser, x, points, noise, hooks, progress)


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpm2m": dpm2m, "dpm2m-sde": dpm2m_sde}
