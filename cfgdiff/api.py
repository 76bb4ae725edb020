"""Python API for notebooks and the one reconstruction routine that inference actors also call.

    rec = cfgdiff.load("runs/demo/export")
    out = rec.reconstruct(cond, mask, steps=50, w=1.5, num_samples=8, seed=0)
    out.mean, out.std, out.samples   # numpy, in the user's original units
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .config import SamplerConfig, check_antithetic
from .degrade import operator_for
from .engine import autocast, resolve_precision
from .errors import InputError
from .normalize import Normalization
from .sampling import sample
from .schedule import NoiseSchedule
from .tiling import TiledDenoiser, plan_tiling
from .validate import check_observations

logger = logging.getLogger(__name__)


@dataclass
class Reconstruction:
    samples: np.ndarray  # (N, K, C, H, W) in the user's units
    mean: np.ndarray  # (N, C, H, W)
    std: np.ndarray  # (N, C, H, W); zeros when K == 1
    num_model_calls: int  # network evaluations per sample


def as_nchw(a: np.ndarray, channels: int | None, what: str) -> np.ndarray:
    """Accept (N, H, W) or (N, C, H, W) arrays; return float32 (N, C, H, W)."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise InputError(f"{what} must be (N, H, W) or (N, C, H, W), got shape {a.shape}")
    if channels is not None and a.shape[1] != channels:
        raise InputError(f"{what} has {a.shape[1]} channels, the model expects {channels}")
    return a.astype(np.float32, copy=False)


def check_mask_channels(mask_channels: int, model_mask_channels: int, in_channels: int, what: str) -> None:
    """A per-pixel model takes 1-channel masks; a per-channel one takes C channels, or 1 (the same mask for all)."""
    if mask_channels not in (1, model_mask_channels):
        raise InputError(f"{what} has {mask_channels} channels; the model takes " + (
            f"1 (per pixel) or {in_channels} (per channel)" if model_mask_channels > 1 else
            "1 (it was trained on per-pixel masks; train on per-channel masks to use them)"))


def prepare_inputs(cond_raw: np.ndarray, mask: np.ndarray | None, norm: Normalization, in_channels: int,
                   mask_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """User-unit condition (NaN = unknown) and mask -> normalised cond, mask and target-space known values.
    A per-pixel mask given to a model with ``mask_channels`` = C per-channel masks is repeated over the channels."""
    cond_t = torch.tensor(np.asarray(cond_raw, dtype=np.float32))
    if mask is None:
        mask_t = (~torch.isnan(cond_t).any(1, keepdim=True)).float()
        if bool(mask_t.all()):
            mask_t = torch.zeros_like(mask_t)  # a dense condition: nothing is known exactly
    else:
        mask_t = torch.tensor(np.asarray(mask, dtype=np.float32))
        if not bool(((mask_t == 0) | (mask_t == 1)).all()):
            raise InputError("mask must be binary (1 = known, 0 = missing)")
    check_observations(np.asarray(cond_raw, dtype=np.float32), mask_t.numpy(), "cond",
                       offset=norm.condition.offset, scale=norm.condition.scale)
    if mask_t.shape[1] != mask_channels:
        mask_t = mask_t.expand(-1, mask_channels, -1, -1).contiguous()
    cond_n = torch.nan_to_num(norm.condition.normalize(cond_t), nan=0.0)
    known = None
    if cond_t.shape[1] == in_channels:
        known = torch.nan_to_num(norm.target.normalize(cond_t), nan=0.0)
    return cond_n, mask_t, known


class FixedBatch:
    """Call ``model`` on chunks of exactly ``n`` rows, padding the last chunk.

    CPU convolution and matmul kernels choose their blocking by batch size, so a row's output can
    differ in the last bits between batch sizes (measured: ~1e-6), but not with its position or
    neighbours at a fixed size. Fixed-size chunks make each row's result independent of batching.
    """

    def __init__(self, model, n: int):
        self.model, self.n = model, n

    def __call__(self, x_t, t, cond, mask):
        B, n = x_t.shape[0], self.n
        pad = (-B) % n
        if pad:
            x_t, t, cond, mask = (torch.cat([a, a[:1].expand(pad, *a.shape[1:])]) for a in (x_t, t, cond, mask))
        out = [self.model(x_t[i:i + n], t[i:i + n], cond[i:i + n], mask[i:i + n]) for i in range(0, B + pad, n)]
        return torch.cat(out)[:B]


class Autocast:
    """The network under bf16 autocast; the sampler's own arithmetic stays fp32 (``guided_output``
    casts the network's output to float)."""

    def __init__(self, model, device_type: str):
        self.model, self.device_type = model, device_type

    def __call__(self, *args):
        with autocast(torch.device(self.device_type), "bf16"):
            return self.model(*args)


def reconstruct_normalized(model, schedule: NoiseSchedule, cond: torch.Tensor, mask: torch.Tensor,
                           known: torch.Tensor | None, index: Sequence[int], sampler: SamplerConfig, *,
                           in_channels: int, prediction: str, num_samples: int = 1, seed: int | Sequence[int] = 0,
                           degrade_spec: str | None = None, progress: Callable | None = None,
                           model_batch: int = 0, clip_range=(-1.0, 1.0), tile: int | None = None,
                           overlap: int = 0) -> tuple[torch.Tensor, int]:
    """K samples per row in normalised units, shape (N, K, C, H, W).

    Sample k of global row i draws from the stream keyed by (seed, i * K + k) (``seed`` may be one per row: rows
    of several requests in one call keep their own streams); with ``model_batch > 0`` the network
    runs on fixed-size chunks (``FixedBatch``), so on CPU the output is bit-identical for any batch
    size or worker count. With ``tile`` the network sees overlapping tile x tile windows (``TiledDenoiser``),
    batched ``model_batch`` windows per call.
    """
    if resolve_precision(sampler.precision, cond.device) == "bf16":
        model = Autocast(model, cond.device.type)
    if model_batch > 0:
        model = FixedBatch(model, model_batch)
    if tile is not None:
        model = TiledDenoiser(model, tile, overlap)
    N, _, H, W = cond.shape
    K = num_samples
    check_antithetic(sampler.antithetic, K)
    rep = lambda t: t.repeat_interleave(K, dim=0) if t is not None else None
    idx = [int(i) * K + k for i in index for k in range(K)]
    if not isinstance(seed, (int, np.integer)):
        seed = [int(s) for s in seed for _ in range(K)]
    c, m, kn = rep(cond), rep(mask), rep(known)
    op = operator_for(degrade_spec, kn if kn is not None else c, m) if degrade_spec else None
    res = sample(model, c, m, schedule=schedule, shape=(N * K, in_channels, H, W), known=kn,
                 operator=op, method=sampler.method, steps=sampler.steps, eta=sampler.eta, w=sampler.w,
                 resample=sampler.resample, seed=seed, sample_index=idx, clip_x0=sampler.clip_x0, clip_range=clip_range,
                 prediction=prediction, project=kn is not None, progress=progress, antithetic=sampler.antithetic)
    return res.x0.view(N, K, in_channels, H, W), res.num_model_calls


def mean_variance(x: torch.Tensor, antithetic: bool = False) -> torch.Tensor | None:
    """Unbiased per-pixel estimate of Var(mean of the K samples) from K samples (N, K, ...) along dim 1: the
    Monte-Carlo noise the plain mean carries above the model's posterior mean. None where it cannot be estimated.

    Independent samples: the ddof=1 variance over K. Antithetic pairs (samples 2j, 2j+1): the K/2 pair means are
    independent and the mean of K is their mean, so it is their ddof=1 variance over K/2 (K >= 4; with one pair
    there is no estimate)."""
    K = x.shape[1]
    if K < 2 or (antithetic and K < 4):
        return None
    if not antithetic:
        return x.var(1, unbiased=True) / K
    return ((x[:, 0::2] + x[:, 1::2]) / 2).var(1, unbiased=True) / (K // 2)


def sample_std(x: torch.Tensor, antithetic: bool = False) -> torch.Tensor:
    """Per-pixel posterior std from K samples (N, K, ...) along dim 1.

    Independent samples: the unbiased (ddof=1) estimate. Antithetic pairs (samples 2j, 2j+1): the samples are
    not independent, so with m the mean, E[(1/K) sum (x_k - m)^2] = sigma^2 - Var(m), and Var(m) is estimated
    without bias from the K/2 pair means (``mean_variance``); with one pair it cannot be, and the estimate is low
    by Var(m), which the pairing makes small."""
    K = x.shape[1]
    if K < 2:
        return torch.zeros_like(x[:, 0])
    if not antithetic:
        return x.std(1, unbiased=True)
    var = (x - x.mean(1, keepdim=True)).pow(2).mean(1)
    if (mv := mean_variance(x, antithetic=True)) is not None:
        var = var + mv
    return var.sqrt()


def finalize(samples_n: torch.Tensor, norm: Normalization, cond_raw: np.ndarray, mask: torch.Tensor,
             antithetic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised (N, K, C, H, W) -> user units; known pixels set to the observation exactly."""
    N, K, C, H, W = samples_n.shape
    x = norm.target.denormalize(samples_n.reshape(N * K, C, H, W)).view(N, K, C, H, W)
    if cond_raw.shape[1] == C:
        keep = mask.bool().unsqueeze(1).expand(N, K, C, H, W)
        obs = torch.tensor(np.asarray(cond_raw, dtype=np.float32)).unsqueeze(1).expand_as(x)
        x = torch.where(keep, obs, x)
    mean = x.mean(1)
    std = sample_std(x, antithetic)
    if cond_raw.shape[1] == C:  # a mean of K equal floats is not always that float: restore exactly
        mean = torch.where(keep[:, 0], obs[:, 0], mean)
        std = torch.where(keep[:, 0], torch.zeros_like(std), std)
    return x.numpy(), mean.numpy(), std.numpy()


class Reconstructor:
    """A loaded checkpoint ready to reconstruct numpy arrays in the user's units."""

    def __init__(self, ckpt: Checkpoint, device: str = "cpu"):
        self.ckpt = ckpt
        self.device = torch.device(device)
        self.model = ckpt.build_model(self.device)
        self.schedule = NoiseSchedule.from_config(ckpt.config.schedule).to(self.device)

    @property
    def config(self):
        return self.ckpt.config

    def reconstruct(self, cond: np.ndarray, mask: np.ndarray | None = None, *, steps: int | None = None,
                    w: float | None = None, num_samples: int = 1, seed: int = 0, method: str | None = None,
                    eta: float | None = None, resample: tuple[int, int] | None = None,
                    degrade_spec: str | None = None, batch_size: int = 64, model_batch: int = 8,
                    precision: str | None = None, tile: int | None = None,
                    overlap: int | None = None, antithetic: bool | None = None) -> Reconstruction:
        """Reconstruct from ``cond`` (N[, C_c], H, W), NaN = unknown, and optional ``mask`` (1 = known), (N, H, W)
        or (N, 1, H, W) per pixel, or (N, C, H, W) per channel for a model trained on per-channel masks.

        Fields of another size than the training size need ``tile``: the network then denoises overlapping
        tile x tile windows (``overlap`` pixels, default tile // 4) fused at every step (``cfgdiff.tiling``).
        ``antithetic``: the K samples of a row come in pairs drawn with opposite noise (K even); the mean of K
        is then closer to the model's posterior mean than K independent samples' (bench/RESULTS.md, "Antithetic").
        """
        mc = self.ckpt.config.model
        cond_raw = as_nchw(cond, mc.cond_channels, "cond")
        tile, overlap, warnings = plan_tiling(cond_raw.shape[2:], mc.image_size, tile, overlap)
        for msg in warnings:
            logger.warning(msg)
        mask_a = as_nchw(mask, None, "mask") if mask is not None else None
        if mask_a is not None:
            check_mask_channels(mask_a.shape[1], mc.mask_channels, mc.in_channels, "mask")
        if len(cond_raw) == 0:
            raise InputError("cond holds 0 rows; pass at least one")
        if mask_a is not None and (len(mask_a) != len(cond_raw) or mask_a.shape[2:] != cond_raw.shape[2:]):
            raise InputError(f"mask is {mask_a.shape} but cond is {cond_raw.shape}: they must have the same N, H, W")
        for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(model_batch, int) or model_batch < 0:
            raise InputError(f"model_batch must be an integer >= 0 (0 = whole batch), got {model_batch!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise InputError(f"steps must be an integer >= 1, or None for the checkpoint's default; got {steps!r}")
        s = self.sampler_config(steps=steps, w=w, method=method, eta=eta, resample=resample, precision=precision,
                                antithetic=antithetic)
        return self.run_rows(cond_raw, mask_a, s, num_samples=num_samples, seeds=[seed] * len(cond_raw),
                             index=range(len(cond_raw)), degrade_spec=degrade_spec, batch_size=batch_size,
                             model_batch=model_batch, tile=tile, overlap=overlap)

    def sampler_config(self, **overrides) -> SamplerConfig:
        """The checkpoint's sampler with the given (non-None) fields replaced."""
        return replace(self.ckpt.config.sampler, **{k: v for k, v in overrides.items() if v is not None})

    def run_rows(self, cond_raw: np.ndarray, mask_a: np.ndarray | None, s: SamplerConfig, *, num_samples: int,
                 seeds: Sequence[int], index: Sequence[int], degrade_spec: str | None = None, batch_size: int = 64,
                 model_batch: int = 8, tile: int | None = None, overlap: int | None = None) -> Reconstruction:
        """Validated (N, C_c, H, W) rows -> their reconstruction; row i draws from the streams of (seeds[i],
        index[i]), so rows of several requests run together give each request what it would get alone."""
        mc = self.ckpt.config.model
        cond_n, mask_t, known = prepare_inputs(cond_raw, mask_a, self.ckpt.normalization, mc.in_channels,
                                               mc.mask_channels)
        outs, calls, index, seeds = [], 0, list(index), list(seeds)
        for a in range(0, len(cond_raw), batch_size):
            sl = slice(a, a + batch_size)
            to = lambda t: t[sl].to(self.device) if t is not None else None
            x, calls = reconstruct_normalized(self.model, self.schedule, to(cond_n), to(mask_t), to(known),
                                              index[sl], s, in_channels=mc.in_channels,
                                              prediction=mc.prediction, num_samples=num_samples, seed=seeds[sl],
                                              degrade_spec=degrade_spec, model_batch=model_batch, tile=tile,
                                              overlap=overlap, clip_range=self.ckpt.normalization.target.clip_bounds())
            outs.append(x.cpu())
        samples, mean, std = finalize(torch.cat(outs), self.ckpt.normalization, cond_raw, mask_t, s.antithetic)
        return Reconstruction(samples, mean, std, calls)


def load(path: str, device: str = "cpu") -> Reconstructor:
    """Load a checkpoint directory (config.json + model.safetensors) for reconstruction."""
    return Reconstructor(load_checkpoint(path), device)
