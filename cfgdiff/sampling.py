"""Samplers: DDPM, DDIM, DPM-Solver++(2M) and its SDE form, with classifier-free guidance, inpainting
projection, RePaint resampling and a DDNM-style consistency step for linear operators.

One contract: ``sample(model, cond, mask, *, schedule, ...) -> SampleResult``, where ``model`` is
any callable ``model(x_t, t, cond, mask) -> eps or v``.

Guidance follows this project's spec: ``eps = eps_u + w (eps_c - eps_u)``; w=0 unconditional,
w=1 conditional (Ho & Salimans 2207.12598 write the same with w' = w - 1).

Timesteps: the ``steps``-long sub-sequence uses *trailing* spacing,
``tau_i = round(T - i T / steps) - 1`` for i = 0..steps-1 (Lin et al. 2305.08891, table 2), so the
first step always starts at t = T-1 and ``steps == T`` gives T-1, ..., 0. Level "-1" below is the
clean sample (alpha_bar = 1).

Randomness: by default sample i draws all its noise from its own generator keyed by the pair
(seed, sample_index[i]) through ``numpy.random.SeedSequence``, so results do not depend on batch size
or worker count, and the streams of seed s and seed s+1 share no row (``seed + index`` made seed 1's
row i the same noise as seed 0's row i+1). Passing ``generator`` instead draws batch-wise noise from it
(faster for huge Monte-Carlo batches).

Parametrisation: a network that declares what it predicts (``ConditionalUNet.prediction``, from its
checkpoint) is sampled that way; a ``prediction`` argument that disagrees is an error, and a bare
callable must say ``prediction="eps"`` or ``"v"``: a v-model read as eps gave wrong samples silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import METHODS
from .schedule import NoiseSchedule


def stream_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of run ``seed``: a hash of the pair, not a sum."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(index) % 2**63]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def declared_prediction(model) -> str | None:
    """What a network predicts, if it says so: looked up through wrappers (DDP, torch.compile, the API's
    autocast and fixed-batch wrappers) that keep the network as ``module``, ``_orig_mod`` or ``model``."""
    for _ in range(8):
        p = getattr(model, "prediction", None)
        if isinstance(p, str):
            return p
        inner = next((getattr(model, a) for a in ("module", "_orig_mod", "model") if hasattr(model, a)), None)
        if inner is None or inner is model:
            return None
        model = inner
    return None


def resolve_prediction(model, prediction: str | None) -> str:
    declared = declared_prediction(model)
    if declared is not None and prediction is not None and prediction != declared:
        raise ValueError(f"prediction={prediction!r} but the model predicts {declared!r} (its checkpoint says so)")
    found = declared or prediction
    if found not in ("eps", "v"):
        raise ValueError("pass prediction='eps' or 'v': this model does not declare what it predicts"
                         if found is None else f"prediction must be 'eps' or 'v', got {found!r}")
    return found


@dataclass
class SampleResult:
    x0: torch.Tensor  # (B, C, H, W) final sample
    num_model_calls: int  # network evaluations per image (a CFG step counts 2)
    num_steps: int  # denoising moves taken (resampling included)


class NoiseSource:
    """Standard normal draws of shape (B, *shape), per sample or batch-wise."""

    def __init__(self, shape: Sequence[int], device: torch.device, *, seed: int | Sequence[int] = 0,
                 sample_index: Sequence[int] | None = None, generator: torch.Generator | None = None):
        """``seed``: one base seed, or one per sample (rows of several requests batched together)."""
        self.shape, self.device = tuple(shape), device
        self.generator = generator
        if generator is None:
            idx = range(self.shape[0]) if sample_index is None else [int(i) for i in sample_index]
            seeds = [int(seed)] * len(idx) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
            if len(idx) != self.shape[0] or len(seeds) != self.shape[0]:
                raise ValueError(f"sample_index and per-sample seeds must have {self.shape[0]} entries, got "
                                 f"{len(idx)} and {len(seeds)}")
            self.generators = [torch.Generator(device=device).manual_seed(stream_seed(s, i)) for s, i in zip(seeds, idx)]

    def __call__(self) -> torch.Tensor:
        if self.generator is not None:
            return torch.randn(self.shape, generator=self.generator, device=self.device)
        return torch.stack([torch.randn(self.shape[1:], generator=g, device=self.device)
                            for g in self.generators])


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


def guided_output(model: Callable, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                  mask: torch.Tensor, w: float) -> torch.Tensor:
    """CFG combination ``out_u + w (out_c - out_u)`` in one batched 2B forward (CFG Alg. 2).

    w == 1 skips the null half and w == 0 skips the conditional half. ``w`` is a Python float, so
    these branches never read a tensor.
    """
    if w == 1.0:
        return model(x_t, t, cond, mask)
    if w == 0.0:
        return model(x_t, t, torch.zeros_like(cond), torch.zeros_like(mask))
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                torch.cat([cond, torch.zeros_like(cond)]), torch.cat([mask, torch.zeros_like(mask)]))
    out_c, out_u = out.float().chunk(2)
    return out_u + w * (out_c - out_u)


def _validate(cond, mask, known, shape, schedule, method, steps, eta, w, resample):
    if cond.ndim != 4:
        raise ValueError(f"cond must be (B, C_c, H, W), got shape {tuple(cond.shape)}")
    B, _, H, W = cond.shape
    C = shape[1] if shape is not None else known.shape[1] if known is not None else cond.shape[1]
    if mask.ndim != 4 or tuple(mask.shape[2:]) != (H, W) or mask.shape[0] != B or mask.shape[1] not in (1, C):
        raise ValueError(f"mask must have shape {(B, 1, H, W)} (per pixel) or {(B, C, H, W)} (per channel) to "
                         f"match cond, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be binary (1 = known, 0 = missing), found other values")
    if known is not None and (known.ndim != 4 or known.shape[0] != B or known.shape[2:] != (H, W)):
        raise ValueError(f"known must be (B={B}, C, {H}, {W}), got {tuple(known.shape)}")
    if shape is not None and (len(shape) != 4 or shape[0] != B or tuple(shape[2:]) != (H, W)):
        raise ValueError(f"shape must be (B={B}, C, {H}, {W}), got {tuple(shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be in [1, {schedule.T}], got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not math.isfinite(w):
        raise ValueError(f"w must be finite, got {w}")
    if resample is not None and (len(resample) != 2 or min(resample) < 1):
        raise ValueError(f"resample must be (jump j >= 1, resamplings r >= 1), got {resample}")


def _move_coefficients(ab: torch.Tensor, moves, method: str, eta: float) -> list[tuple[float, ...]]:
    """Per-move coefficients (a, b, c, sigma) with x_s = a x0_hat + b eps_hat + c x_t + sigma z.

    Computed once in float64 on the host, before the loop. For re-noising moves (a, b, c) hold
    (sqrt(ab_s/ab_t), 0, 0) and sigma = sqrt(1 - ab_s/ab_t) (forward process from level t to s).
    """
    coefs = []
    for k, k2 in moves:
        ab_t, ab_s = float(ab[k]), float(ab[k2])
        if k2 < k:  # re-noise: q(x_s | x_t) for s noisier than t
            ratio = ab_s / ab_t
            coefs.append((math.sqrt(ratio), 0.0, 0.0, math.sqrt(max(1.0 - ratio, 0.0))))
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


@torch.no_grad()
def sample(model: Callable, cond: torch.Tensor, mask: torch.Tensor, *, schedule: NoiseSchedule,
           shape: Sequence[int] | None = None, known: torch.Tensor | None = None, operator=None,
           method: str = "ddim", steps: int = 50, eta: float = 0.0, w: float = 1.0,
           resample: tuple[int, int] | None = None, seed: int | Sequence[int] = 0,
           sample_index: Sequence[int] | None = None, generator: torch.Generator | None = None, clip_x0: bool = True,
           clip_range: tuple[torch.Tensor | float, torch.Tensor | float] = (-1.0, 1.0), prediction: str | None = None,
           project: bool = True, progress: Callable[[int, int], None] | None = None) -> SampleResult:
    """Draw x0 ~ p_theta(x0 | cond) with CFG, projecting ``known`` pixels where mask = 1.

    Shapes: cond (B, C_c, H, W), mask (B, 1, H, W) or per channel (B, C, H, W) with 1 = known (the network
    gets it as it is; the projection broadcasts it over the channels), known (B, C, H, W) target-space
    observations (defaults to ``cond``), shape = (B, C, H, W) of the sample (defaults to known's).
    ``operator`` (optional) exposes ``A(x)``, ``A_pinv(y)`` and ``y``; each x0 prediction is then
    made consistent, ``x0 <- x0 + A^+(y - A x0)`` (DDNM 2212.00490, eq. 13). With ``clip_x0`` the x0
    predictions are clamped to ``clip_range`` (floats or (1, C, 1, 1) tensors: the data range).
    ``prediction`` comes from the model when it declares one (``resolve_prediction``).
    """
    prediction = resolve_prediction(model, prediction)
    if known is None and project:
        known = cond
    _validate(cond, mask, known if project else None, shape, schedule, method, steps, eta, w, resample)
    shape = tuple(shape) if shape is not None else tuple(known.shape if known is not None else cond.shape)
    if project and known.shape[1] != shape[1]:
        raise ValueError(f"known has {known.shape[1]} channels but the sample has {shape[1]}; pass "
                         "known= in target space or project=False")
    dev = cond.device
    sched = schedule if schedule.device == dev else schedule.to(dev)
    taus = timestep_sequence(sched.T, steps)
    # level k in 0..n has alpha_bar ab[k]; level n is the clean sample (alpha_bar = 1)
    ab = torch.cat([sched.alpha_bar.double().cpu()[taus], torch.ones(1, dtype=torch.float64)])
    moves = plan_moves(len(taus), resample)
    coefs = _move_coefficients(ab, moves, method, eta)
    t_seq = torch.tensor(taus, device=dev, dtype=torch.long)
    sqrt_ab = ab.sqrt().tolist()
    sqrt_1m_ab = (1 - ab).clamp(min=0).sqrt().tolist()
    noise = NoiseSource(shape, dev, seed=seed, sample_index=sample_index, generator=generator)
    keep = mask.bool() if project else None  # (B, 1 or C, H, W)
    B = shape[0]
    lo, hi = (c.to(dev) if torch.is_tensor(c) else torch.tensor(c, device=dev) for c in clip_range)

    def project_known(x: torch.Tensor, k: int) -> torch.Tensor:
        # RePaint eq. (8a)/(8b): known pixels at the level of the sample being produced, fresh noise.
        if keep is None:
            return x
        x_known = known if k == len(taus) else sqrt_ab[k] * known + sqrt_1m_ab[k] * noise()
        return torch.where(keep, x_known, x)

    x = project_known(noise(), 0)
    calls_per_eval = 1 if w in (0.0, 1.0) else 2
    num_evals = 0
    history = None  # DPM-Solver++(2M): (lambda, x0) of the previous step; a re-noising jump clears it
    for i, ((k, k2), (a, b, c, sigma)) in enumerate(zip(moves, coefs)):
        if k2 < k:  # RePaint re-noising jump, forward process from level k to k2
            x = a * x + sigma * noise()
            history = None
        else:
            t = t_seq[k].expand(B)
            out = guided_output(model, x, t, cond, mask, w).float()
            num_evals += 1
            if prediction == "eps":
                x0_hat = sched.predict_x0(x, t, out)
            else:
                x0_hat = sched.x0_from_v(x, t, out)
            if clip_x0:
                x0_hat = torch.clamp(x0_hat, lo, hi)
            if operator is not None:  # DDNM range/null-space consistency
                x0_hat = x0_hat + operator.A_pinv(operator.y - operator.A(x0_hat))
            if method == "dpm2m":
                x_new, history = dpm_solver_2m_step(x, x0_hat, float(ab[k]), float(ab[k2]), history)
            elif method == "dpm2m-sde":
                x_new, history = dpm_solver_2m_sde_step(x, x0_hat, float(ab[k]), float(ab[k2]), history, noise)
            else:
                eps_hat = sched.predict_eps(x, t, x0_hat)  # re-derive eps from the final x0 (DDIM eq. 12)
                x_new = a * x0_hat + b * eps_hat + c * x
                if sigma > 0.0:
                    x_new = x_new + sigma * noise()
            x = project_known(x_new, k2)
        if progress is not None:
            progress(i + 1, len(moves))
    return SampleResult(x0=x, num_model_calls=num_evals * calls_per_eval, num_steps=num_evals)
