"""The training objective shared by every training path (local and Ray).

Loss: ``||eps - eps_theta(x_t, t, c)||^2`` (DDPM Alg. 1) or the v-target, with the condition (and
its mask) dropped to zero per sample with probability ``p_uncond`` (CFG 2207.12598, Alg. 1).
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule


def draw_noise(x0: torch.Tensor, T: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-sample randomness of one loss evaluation: t ~ U{0..T-1}, eps ~ N(0, I), u ~ U(0, 1).

    Drawn once per batch, so gradient accumulation over micro-batches sees the same draws.
    """
    B, dev = x0.shape[0], x0.device
    t = torch.randint(0, T, (B,), generator=generator, device=dev)
    eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
    u = torch.rand(B, generator=generator, device=dev)
    return t, eps, u


def drop_condition(cond: torch.Tensor, mask: torch.Tensor, p_uncond: float,
                   generator: torch.Generator | None = None, u: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero ``cond`` and ``mask`` per sample with probability p. Returns (cond, mask, dropped (B,))."""
    B = cond.shape[0]
    if u is None:
        u = torch.rand(B, generator=generator, device=cond.device)
    dropped = u < p_uncond  # (B,) bool
    keep = (~dropped).to(cond.dtype).view(B, 1, 1, 1)
    return cond * keep, mask * keep, dropped


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2303.09556, eq. 8 and its v form)."""
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1.0)


def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                   *, p_uncond: float, prediction: str = "eps", min_snr_gamma: float | None = None,
                   generator: torch.Generator | None = None,
                   noise: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Monte-Carlo estimate of the denoising loss for one batch.

    Shapes: x0 (B, C, H, W), cond (B, C_c, H, W), mask (B, 1 or C, H, W). Returns the scalar loss and
    diagnostics as tensors (no host sync here; the caller decides when to read them).
    """
    if not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
    if prediction not in ("eps", "v"):
        raise ValueError(f"prediction must be eps or v, got {prediction!r}")
    # 1. t ~ U{0..T-1}, eps ~ N(0, I)  (DDPM Alg. 1, lines 3-4); u for the dropout
    t, eps, u = noise if noise is not None else draw_noise(x0, schedule.T, generator)
    # 2. forward process, eq. (4)
    x_t = schedule.q_sample(x0, t, eps)
    # 3. condition dropout with probability p (CFG Alg. 1, line 3)
    cond_in, mask_in, dropped = drop_condition(cond, mask, p_uncond, u=u)
    # 4. regress the target
    out = model(x_t, t, cond_in, mask_in).float()
    target = eps if prediction == "eps" else schedule.v_target(x0, t, eps)
    per_sample = (out - target).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(schedule.snr(t), min_snr_gamma, prediction)
    loss = per_sample.mean()
    return loss, {"loss": loss.detach(), "drop_rate": dropped.float().mean()}
