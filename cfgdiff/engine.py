"""Framework-free training pieces: optimizer and LR schedule, EMA, ``train_step`` and validation.

The local path and the Ray Train worker (cluster/train.py) both call these, so the per-step math
exists once.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import torch
from torch import nn

from .config import ExperimentConfig, SamplerConfig, TrainConfig
from .metrics import reconstruction_metrics
from .objective import diffusion_loss, draw_noise
from .sampling import sample
from .schedule import NoiseSchedule


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))


def make_lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to 1% of it at ``max_steps``."""
    warm = min(cfg.warmup_steps, cfg.max_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.max_steps - warm, 1),
                                                         eta_min=cfg.lr * 0.01)
    if warm <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (warm + 1), end_factor=1.0,
                                               total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])


def _horizon(state: dict) -> int | None:
    """T_max of the cosine in a saved ``make_lr_scheduler`` state (SequentialLR or plain cosine)."""
    inner = state.get("_schedulers") or [state]
    return inner[-1].get("T_max")


def resume_lr_scheduler(sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, cfg: TrainConfig,
                        saved: dict, step: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule of a run resumed at ``step``: ``sched`` was made by ``make_lr_scheduler``
    before ``opt`` got its saved state back, and ``saved`` is the saved scheduler state.

    Same horizon: the saved state, exactly. A new ``max_steps`` (``--resume RUN --steps N``): the
    warm-up + cosine of the new horizon, advanced to ``step`` with the same float operations as an
    uninterrupted run of N steps. Loading the old state instead would run its cosine past its end,
    where CosineAnnealingLR is periodic and the LR climbs back towards ``lr``.
    """
    if _horizon(saved) == _horizon(sched.state_dict()):
        sched.load_state_dict(saved)
        return sched
    for g in opt.param_groups:  # the chainable schedulers scale the current LR: start from the base
        g["lr"] = g["initial_lr"]
    sched = make_lr_scheduler(opt, cfg)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            sched.step()
    return sched


class EMA:
    """Exponential moving average of the weights: s <- d s + (1 - d) w, with d warmed up as
    min(decay, (1 + n) / (10 + n)) after n updates (as in many DDPM codebases)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in unwrap(model).state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore the shadow weights and update count; the configured ``decay`` stays (a resumed run
        with a new ``train.ema_decay`` applies it from the resumed step)."""
        self.num_updates = state["num_updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (an AVX2-only CPU) bf16 is emulated, and a training step ran 11x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where it is native (``native_bf16``) and fp32 elsewhere; fp32/bf16 are kept."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class StepTimer:
    """Accumulates wall time per phase of the training step. Timing syncs the device, so it is
    only used when asked for (benchmarks, the end-of-run step-time split)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self._t = None

    def start(self, device: torch.device | None = None) -> None:
        self._sync(device)
        self._t = time.perf_counter()

    def mark(self, phase: str, device: torch.device | None = None) -> None:
        self._sync(device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self._t
        self._t = now

    @staticmethod
    def _sync(device) -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, lr_sched, schedule: NoiseSchedule,
               x0: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor, cfg: ExperimentConfig,
               generator: torch.Generator | None = None, micro_batch_size: int = 0,
               timer: StepTimer | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step on a (per-worker) batch, with gradient accumulation over micro-batches.

    Returns tensors (loss, grad_norm, drop_rate) and ``finite``: False when the gradient norm was NaN or
    inf, in which case the optimizer step was skipped (the LR schedule still advances).
    With ``timer``, adds the time of forward+backward (DDP's all-reduce overlaps the backward) and
    of the optimizer (clipping, step, LR schedule) to it.
    """
    tcfg = cfg.train
    model.train()
    opt.zero_grad(set_to_none=True)
    B = x0.shape[0]
    mb = micro_batch_size if 0 < micro_batch_size < B else B
    starts = list(range(0, B, mb))
    t, eps, u = draw_noise(x0, schedule.T, generator)
    total, drop = torch.zeros((), device=x0.device), torch.zeros((), device=x0.device)
    for i, s in enumerate(starts):
        sl = slice(s, s + mb)
        last = i == len(starts) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync, autocast(x0.device, tcfg.precision):
            loss, diag = diffusion_loss(model, schedule, x0[sl], cond[sl], mask[sl], p_uncond=tcfg.p_uncond,
                                        prediction=cfg.model.prediction, min_snr_gamma=tcfg.min_snr_gamma,
                                        noise=(t[sl], eps[sl], u[sl]))
            n = x0[sl].shape[0]
            (loss * (n / B)).backward()
        total += diag["loss"] * (n / B)
        drop += diag["drop_rate"] * (n / B)
    if timer is not None:
        timer.mark("forward_backward", x0.device)
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    finite = bool(torch.isfinite(grad_norm))  # one host sync; under DDP every rank sees the same all-reduced norm
    if finite:  # a non-finite step leaves weights and optimizer moments untouched (the caller counts these)
        opt.step()
    lr_sched.step()
    if timer is not None:
        timer.mark("optimizer", x0.device)
    return {"loss": total, "grad_norm": grad_norm.detach(), "drop_rate": drop, "finite": finite}


@torch.no_grad()
def eval_loss(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, cond: torch.Tensor,
              mask: torch.Tensor, cfg: ExperimentConfig, seed: int = 1234) -> torch.Tensor:
    """Conditional eps/v loss on a batch with a fixed generator (no condition dropout)."""
    model.eval()
    g = torch.Generator(device=x0.device).manual_seed(seed)
    loss, _ = diffusion_loss(model, schedule, x0, cond, mask, p_uncond=0.0, prediction=cfg.model.prediction,
                             generator=g)
    return loss


@torch.no_grad()
def reconstruct_and_score(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, cond: torch.Tensor,
                          mask: torch.Tensor, cfg: ExperimentConfig, sampler: SamplerConfig,
                          seed: int = 0, clip_range=(-1.0, 1.0), norm=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample reconstructions of a fixed validation batch and return (samples, mean metrics).

    ``norm`` (the target's ``ChannelAffine``) puts PSNR/SSIM in user units with the stored data range;
    without it they use range 2 in normalised units (the range of min/max-normalised data)."""
    model.eval()
    # the target equals the observation wherever mask = 1, so it serves as the projected values
    res = sample(model, cond, mask, schedule=schedule, known=x0, method=sampler.method, steps=sampler.steps,
                 eta=sampler.eta, w=sampler.w, resample=sampler.resample, seed=seed,
                 clip_x0=sampler.clip_x0, clip_range=clip_range, prediction=cfg.model.prediction)
    if norm is None:
        m = reconstruction_metrics(res.x0, x0, mask, 2.0)
    else:
        m = reconstruction_metrics(norm.denormalize(res.x0), norm.denormalize(x0), mask,
                                   norm.data_range_tensor().to(x0.device))
    return res.x0, {k: float(torch.nanmean(v)) for k, v in m.items()}
