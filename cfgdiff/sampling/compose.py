"""``sample()``: the one public entry, composed from the parts (k-diffusion's shape).

    network -> CFG(network, w) -> Denoiser(..., x0 hooks: ClipX0, Consistency) -> solver(..., hooks: ProjectKnown)

``model`` is any callable ``model(x_t, t, cond, mask) -> eps or v``; what it predicts comes from the network
itself (its checkpoint), never from a default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import DEFAULT_METHOD, DEFAULT_STEPS, METHODS
from ..schedule import NoiseSchedule
from .denoiser import CFG, Denoiser
from .hooks import ClipX0, Consistency, ProjectKnown
from .noise import NoiseSource
from .solvers import SOLVERS, Points


@dataclass
class SampleResult:
    x0: torch.Tensor  # (B, C, H, W) final sample
    num_model_calls: int  # network evaluations per image (a CFG step counts 2)
    num_steps: int  # denoising moves taken (resampling included)


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


@torch.no_grad()
def sample(model: Callable, cond: torch.Tensor, mask: torch.Tensor, *, schedule: NoiseSchedule,
           shape: Sequence[int] | None = None, known: torch.Tensor | None = None, operator=None,
           method: str = DEFAULT_METHOD, steps: int = DEFAULT_STEPS, eta: float = 0.0, w: float = 1.0,
           resample: tuple[int, int] | None = None, seed: int | Sequence[int] = 0,
           sample_index: Sequence[int] | None = None, generator: torch.Generator | None = None, clip_x0: bool = True,
           clip_range: tuple[torch.Tensor | float, torch.Tensor | float] = (-1.0, 1.0), prediction: str | None = None,
           project: bool = True, progress: Callable[[int, int], None] | None = None,
           antithetic: bool = False) -> SampleResult:
    """Draw x0 ~ p_theta(x0 | cond) with CFG, projecting ``known`` pixels where mask = 1.

    Shapes: cond (B, C_c, H, W), mask (B, 1, H, W) or per channel (B, C, H, W) with 1 = known (the network
    gets it as it is; the projection broadcasts it over the channels), known (B, C, H, W) target-space
    observations (defaults to ``cond``), shape = (B, C, H, W) of the sample (defaults to known's).
    ``operator`` (optional) exposes ``A(x)``, ``A_pinv(y)`` and ``y``; each x0 prediction is then
    made consistent (``Consistency``). With ``clip_x0`` the x0 predictions are clamped to ``clip_range``
    (floats or (1, C, 1, 1) tensors: the data range). ``eta`` is DDIM's. ``method`` names a solver in
    ``SOLVERS``; ``resample=(j, r)`` adds RePaint's jumps to its moves. Noise: sample i draws from the
    stream of (seed, sample_index[i]) (``NoiseSource``), or batch-wise from ``generator``; with ``antithetic``
    the samples of indices 2j and 2j+1 are an antithetic pair (the second draws the first's noise negated).
    """
    if known is None and project:
        known = cond
    _validate(cond, mask, known if project else None, shape, schedule, method, steps, eta, w, resample)
    shape = tuple(shape) if shape is not None else tuple(known.shape if known is not None else cond.shape)
    if project and known.shape[1] != shape[1]:
        raise ValueError(f"known has {known.shape[1]} channels but the sample has {shape[1]}; pass "
                         "known= in target space or project=False")
    dev = cond.device
    sched = schedule if schedule.device == dev else schedule.to(dev)
    x0_hooks = ([ClipX0(*clip_range, dev)] if clip_x0 else []) + ([Consistency(operator)] if operator is not None else [])
    denoiser = Denoiser(CFG(model, w), sched, cond, mask, prediction=prediction, x0_hooks=x0_hooks)
    points = Points.make(sched, steps, resample, dev)
    noise = NoiseSource(shape, dev, seed=seed, sample_index=sample_index, generator=generator, antithetic=antithetic)
    hooks = []
    if project:
        sqrt_ab = points.ab.sqrt().tolist()
        sqrt_1m_ab = (1 - points.ab).clamp(min=0).sqrt().tolist()
        hooks.append(ProjectKnown(known, mask.bool(), noise, sqrt_ab, sqrt_1m_ab))
    x = hooks[0](noise(), 0) if project else noise()
    options = {"eta": eta} if method == "ddim" else {}
    x = SOLVERS[method](denoiser, x, points, noise, hooks, progress, **options)
    return SampleResult(x0=x, num_model_calls=denoiser.calls, num_steps=denoiser.evals)
