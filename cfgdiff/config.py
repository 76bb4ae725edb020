"""Typed, frozen configuration that travels inside every checkpoint.

Every dataclass validates in ``__post_init__`` and raises ``ValueError`` naming the dotted field.
``to_dict``/``from_dict`` are strict (unknown keys are an error); ``apply_overrides`` implements the
CLI's ``--set model.dim=64`` with values parsed as JSON, never evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .augment import AUGMENTS
from .errors import InputError

FORMAT_VERSION = 1


PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where it is native (engine.native_bf16), fp32 elsewhere
METHODS = ("ddim", "ddpm", "dpm2m", "dpm2m-sde")  # samplers (cfgdiff.sampling); dpm2m = DPM-Solver++(2M)
# The default sampler of infer, evaluate, serve and Python (#20): on the make-run model at <= 25 network calls,
# DPM-Solver++(2M) 25 gives the widest samples and the best coverage at a posterior-mean MSE no worse than DDIM's
# (bench/RESULTS.md, "The default sampler: DPM-Solver++(2M) at 25 calls")
DEFAULT_METHOD, DEFAULT_STEPS = "dpm2m", 25


def check_antithetic(antithetic: bool, num_samples: int) -> None:
    """Antithetic samples come in pairs (2j, 2j+1), so K must be even; infer, evaluate and the API check it here
    before any work."""
    if antithetic and num_samples % 2:
        raise InputError(f"--antithetic: samples come in pairs; --num-samples must be even, got {num_samples}")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 1  # target channels C
    cond_channels: int = 1  # condition channels C_c (may differ from C)
    mask_channels: int = 1  # 1: one mask per pixel; C (= in_channels): one per target channel (per-channel masks)
    image_size: tuple[int, int] = (32, 32)  # (H, W), any sizes: the network pads to a multiple of 2**(levels-1)
    dim: int = 48  # base channel width
    dim_mults: tuple[int, ...] = (1, 2, 4)  # width multiplier per resolution level
    num_res_blocks: int = 2  # residual blocks per level
    linear_attn_levels: tuple[int, ...] = (1,)  # levels (0 = full resolution) with linear attention
    mid_attention: bool = True  # softmax attention (SDPA) at the bottleneck
    heads: int = 4  # attention heads
    dim_head: int = 32  # channels per attention head
    dropout: float = 0.0  # dropout inside residual blocks
    groups: int = 8  # GroupNorm groups
    use_concat: bool = True  # (a) [cond, mask] concatenated at the input
    use_control_add: bool = True  # (b) control features added at every level (zero-init 1x1)
    use_cross_attn: bool = True  # (c) cross-attention to control tokens
    cross_attn_max_res: int = 16  # cross-attention at levels whose max(H, W) <= this
    # what the network outputs. eps is the spec's loss; v (Salimans & Ho 2202.00512, sec. 4) is
    # recommended for short budgets: sampling starts at alpha_bar ~ 0 (trailing timesteps), where an
    # eps-network's x0 = (x_t - sigma eps) / alpha multiplies eps errors by sigma/alpha. On the demo
    # data after 900 steps: x0 errors 145x the exact denoiser's at t = 950 and samples with 2-4x the
    # true posterior spread (eps), against ~1.1x the spread (v). The v loss is the eps loss weighted
    # by 1/alpha_t^2, since eps - eps_hat = alpha_t (v - v_hat).
    prediction: Literal["eps", "v"] = "eps"
    preset: str | None = None  # the architecture preset it was built from (cfgdiff.presets); None = custom

    def __post_init__(self):
        _check(self.in_channels >= 1, f"model.in_channels must be >= 1, got {self.in_channels}")
        _check(self.cond_channels >= 1, f"model.cond_channels must be >= 1, got {self.cond_channels}")
        _check(self.mask_channels in (1, self.in_channels),
               f"model.mask_channels must be 1 or in_channels={self.in_channels}, got {self.mask_channels}")
        _check(len(self.image_size) == 2 and min(self.image_size) >= 1,
               f"model.image_size must be (H, W) with H, W >= 1, got {self.image_size}")
        _check(self.dim >= 1 and len(self.dim_mults) >= 1 and min(self.dim_mults) >= 1,
               f"model.dim and model.dim_mults must be positive, got {self.dim}, {self.dim_mults}")
        _check(self.num_res_blocks >= 1, f"model.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for lvl in self.linear_attn_levels:
            _check(0 <= lvl < len(self.dim_mults),
                   f"model.linear_attn_levels entries must be in [0, {len(self.dim_mults)}), got {lvl}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        for m in self.dim_mults:
            _check((self.dim * m) % self.groups == 0,
                   f"model.groups={self.groups} must divide every level width dim*mult, got {self.dim * m}")
        _check(self.prediction in ("eps", "v"), f"model.prediction must be eps or v, got {self.prediction!r}")

    def cross_attn_at(self) -> list[bool]:
        """Whether each U-Net level attends to the control tokens: at levels of side <= cross_attn_max_res."""
        side = max(self.image_size)
        return [self.use_cross_attn and side // 2**i <= self.cross_attn_max_res for i in range(len(self.dim_mults))]


@dataclass(frozen=True)
class ScheduleConfig:
    kind: Literal["linear", "cosine", "sigmoid"] = "cosine"  # beta schedule
    num_timesteps: int = 1000  # T

    def __post_init__(self):
        _check(self.kind in ("linear", "cosine", "sigmoid"),
               f"schedule.kind must be linear, cosine or sigmoid, got {self.kind!r}")
        _check(1 <= self.num_timesteps <= 100_000,
               f"schedule.num_timesteps must be in [1, 100000], got {self.num_timesteps}")


@dataclass(frozen=True)
class SamplerConfig:
    method: Literal["ddim", "ddpm", "dpm2m", "dpm2m-sde"] = DEFAULT_METHOD  # reverse process (dpm2m:
    # DPM-Solver++(2M), deterministic; dpm2m-sde: its stochastic form)
    steps: int = DEFAULT_STEPS  # number of denoising steps (DDPM: T unless respaced)
    eta: float = 0.0  # DDIM stochasticity, eq. 16; 1 = DDPM variance
    w: float = 1.0  # guidance: eps_u + w (eps_c - eps_u); 0 uncond, 1 cond
    resample: tuple[int, int] | None = None  # RePaint (jump length j, resamplings r)
    clip_x0: bool = True  # clamp x0 predictions to [-1, 1] (min/max-normalised data)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # network under bf16 autocast; auto: bf16 where native; sampler math fp32
    antithetic: bool = False  # samples 2j, 2j+1 of a row draw opposite noise (K even; std from the pairs at K >= 4)

    def __post_init__(self):
        import math

        _check(self.precision in PRECISIONS, f"sampler.precision must be fp32, bf16 or auto, got {self.precision!r}")
        _check(self.method in METHODS, f"sampler.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check(self.steps >= 1, f"sampler.steps must be >= 1, got {self.steps}")
        _check(0.0 <= self.eta <= 1.0, f"sampler.eta must be in [0, 1], got {self.eta}")
        _check(math.isfinite(self.w), f"sampler.w must be finite, got {self.w}")
        if self.resample is not None:
            _check(len(self.resample) == 2 and self.resample[0] >= 1 and self.resample[1] >= 1,
                   f"sampler.resample must be (jump j >= 1, resamplings r >= 1), got {self.resample}")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # global batch (split across workers)
    micro_batch_size: int = 0  # per-worker micro-batch for gradient accumulation; 0 = no accumulation
    lr: float = 2e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up steps
    max_steps: int = 2000  # total optimizer steps
    grad_clip: float = 1.0  # gradient-norm clip; 0 disables
    ema_decay: float = 0.999  # EMA of the weights
    p_uncond: float = 0.1  # condition-dropout probability p
    min_snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None = plain MSE
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # bf16 autocast; auto: bf16 on GPUs and AVX512-BF16/AMX CPUs
    compile: bool = False  # torch.compile the model
    channels_last: bool = True  # channels_last memory format (faster convolutions on CPU and GPU)
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    seed: int = 0  # base seed (rank r uses seed + 1000 r)
    degrade: str = "mix:drop:0.8,box:0.4,sensors:64,half:1"  # used when data holds only targets
    augment: str = "none"  # symmetry augmentation per row: none, flips, rot90 or d4 (cfgdiff.augment)
    crop: tuple[int, int] | None = None  # (h, w): train on random h x w windows of larger fields; None = whole
    log_every: int = 50  # console/TensorBoard cadence in steps
    checkpoint_every: int = 500  # report a checkpoint every N steps (0 = at epoch ends only)
    keep_checkpoints: int = 2  # checkpoints kept by Ray Train
    val_batches: int = 4  # validation batches for the eps loss
    val_samples: int = 16  # fixed validation batch for reconstruction metrics
    val_steps: int = 10  # DDIM steps for validation sampling
    max_nonfinite: int = 3  # stop the run after this many consecutive steps with a non-finite loss

    def __post_init__(self):
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.micro_batch_size >= 0, f"train.micro_batch_size must be >= 0, got {self.micro_batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        _check(0.0 <= self.p_uncond < 1.0, f"train.p_uncond must be in [0, 1), got {self.p_uncond}")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0,
               f"train.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")
        _check(self.precision in PRECISIONS, f"train.precision must be fp32, bf16 or auto, got {self.precision!r}")
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        _check(self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.val_samples >= 1 and self.val_steps >= 1 and self.val_batches >= 1,
               "train.val_samples, train.val_steps and train.val_batches must be >= 1")
        _check(self.max_nonfinite >= 1, f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        _check(self.augment in AUGMENTS, f"train.augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        _check(self.crop is None or (len(self.crop) == 2 and min(self.crop) >= 1),
               f"train.crop must be H,W with H, W >= 1 (or null), got {self.crop}")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> ExperimentConfig:
        return cls.from_dict(json.loads(s))


# Settings that a resumed run (``cfgdiff train --resume RUN --set ...``) applies from the resumed step.
# Every other field is fixed by the saved weights, optimizer and data order: a change is refused.
RESUME_MAY_CHANGE = ("train.max_steps", "train.ema_decay", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.val_batches", "train.val_samples", "train.val_steps",
                     "train.precision", "train.compile", "train.channels_last", "train.max_nonfinite", "sampler.")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resume_conflicts(saved: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Dotted keys whose new value differs from the saved run's and that a resume cannot apply."""
    a, b = _flatten(saved.to_dict()), _flatten(new.to_dict())
    return [f"{k}: run has {a.get(k)!r}, got {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == m or (m.endswith(".") and k.startswith(m))
                                                for m in RESUME_MAY_CHANGE)]


# --- strict (de)serialisation --------------------------------------------------------------------
def to_dict(obj) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def _scalar(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _coerce(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be an object, got {type(value).__name__}")
        return from_dict(tp, value, path + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is tuple:
        if isinstance(value, str) and "," in value:  # --set train.crop=64,64
            value = [_scalar(v.strip()) for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, path) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{path} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{path} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls, d: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from ``d``; unknown keys raise ``ValueError`` naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        where = prefix.rstrip(".") or "config"
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in d.items()}
    return cls(**kwargs)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` strings. Values are JSON (``64``, ``[1,2]``, ``true``) or bare strings."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE such as model.dim=64")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise InputError(f"--set {key}: unknown key {p!r}; sections: {', '.join(sorted(d))}")
            node = node[p]
        if parts[-1] not in node:
            raise InputError(f"--set {key}: unknown key {parts[-1]!r}; valid: {', '.join(sorted(node))}")
        node[parts[-1]] = _scalar(raw)
    try:
        return ExperimentConfig.from_dict(d)
    except ValueError as e:
        raise InputError(str(e)) from None
