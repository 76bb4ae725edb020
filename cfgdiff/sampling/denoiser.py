"""The network as a denoiser: guidance around it, then its parametrisation turned into x0 (and eps).

``CFG(network, w)`` is the guided network output, ``out_u + w (out_c - out_u)`` (this project's spec: w=0
unconditional, w=1 conditional; Ho & Salimans 2207.12598 write the same with w' = w - 1). ``Denoiser``
turns that output into the x0 prediction at (x_t, t), in the parametrisation the network declares
(``ConditionalUNet.prediction``, from its checkpoint), and applies the x0 hooks (clipping, DDNM
consistency). A ``prediction`` argument that disagrees with the network is an error, and a bare callable
must say ``"eps"`` or ``"v"``: a v-model read as eps gave wrong samples silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..schedule import NoiseSchedule


def declared_prediction(model) -> str | None:
    """What a network predicts, if it says so: looked up through wrappers (DDP, torch.compile, the API's
    autocast and fixed-batch wrappers, ``CFG``) that keep the network as ``module``, ``_orig_mod`` or ``model``."""
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


class CFG:
    """A network under classifier-free guidance with weight ``w``: ``cfg(x_t, t, cond, mask)`` -> guided output."""

    def __init__(self, model: Callable, w: float):
        self.model, self.w = model, float(w)
        self.calls_per_eval = 1 if self.w in (0.0, 1.0) else 2  # network evaluations per call

    def __call__(self, x_t, t, cond, mask) -> torch.Tensor:
        return guided_output(self.model, x_t, t, cond, mask, self.w).float()


class Denoiser:
    """x0 predictions at (x_t, t) for one condition: ``denoiser(x_t, t)`` -> x0 after the x0 hooks.

    eps models: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (DDPM eq. 15); v models: x0 = sqrt(ab) x_t -
    sqrt(1 - ab) v (Salimans & Ho 2202.00512, sec. 4). ``eps(x_t, t, x0)`` re-derives the noise from the
    final x0 (DDIM eq. 12), so that a clipped or projected x0 and its eps agree.
    """

    def __init__(self, guided: CFG, schedule: NoiseSchedule, cond: torch.Tensor, mask: torch.Tensor, *,
                 prediction: str | None = None, x0_hooks: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()):
        self.guided, self.schedule, self.cond, self.mask = guided, schedule, cond, mask
        self.prediction = resolve_prediction(guided, prediction)
        self.x0_hooks = list(x0_hooks)
        self.evals = 0  # guided evaluations so far

    @property
    def calls(self) -> int:
        """Network evaluations so far (a guided evaluation with 0 < w != 1 counts 2)."""
        return self.evals * self.guided.calls_per_eval

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.guided(x_t, t, self.cond, self.mask)
        self.evals += 1
        x0 = self.schedule.predict_x0(x_t, t, out) if self.prediction == "eps" else self.schedule.x0_from_v(x_t, t, out)
        for hook in self.x0_hooks:
            x0 = hook(x0)
        return x0

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.schedule.predict_eps(x_t, t, x0)
