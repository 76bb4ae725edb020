"""Size-aware architecture presets (``cfgdiff train --preset tiny|small|base|large``).

A preset fixes the width (``dim``) and depth per level (``num_res_blocks``); the field size fixes the
rest, so that the same preset serves 32x32 and 512x512 fields:

* levels: as many as keep the bottleneck's shorter side at 8 or more (at most 6), so a 32x32 field
  has 3 levels (bottleneck 8x8), 128x128 has 5 (8x8) and 512x512 has 6 (16x16);
* widths: ``dim * (1, 2, 4, 4, 8, 8)[:levels]``;
* softmax attention (SDPA, quadratic in tokens) only at the bottleneck, and only when it holds at most
  256 tokens; linear attention at the levels between the first and the bottleneck whose token count
  is at most 1024 (it is linear in tokens, but at full resolution it costs more than it gives);
* cross-attention to the control tokens at levels of side <= 16 (``model.cross_attn_max_res``).

``small`` at 32x32 is exactly the model the defaults of ``ModelConfig`` describe. With no ``--preset``
and no architecture field set, training picks ``small`` for the data's (or the crop's) size.
"""

from __future__ import annotations

import dataclasses

from .config import ModelConfig

PRESETS = {"tiny": {"dim": 32, "num_res_blocks": 1}, "small": {"dim": 48, "num_res_blocks": 2},
           "base": {"dim": 64, "num_res_blocks": 2}, "large": {"dim": 96, "num_res_blocks": 2}}
DEFAULT_PRESET = "small"
ARCHITECTURE = ("dim", "dim_mults", "num_res_blocks", "linear_attn_levels", "mid_attention", "cross_attn_max_res")
_MULTS = (1, 2, 4, 4, 8, 8)
MAX_LEVELS = len(_MULTS)
MIN_BOTTLENECK = 8
MAX_SOFTMAX_TOKENS = 256
MAX_LINEAR_TOKENS = 1024


def num_levels(H: int, W: int) -> int:
    """The most levels (<= 6) whose bottleneck keeps a shorter side of at least 8 pixels."""
    levels = 1
    while levels < MAX_LEVELS and min(H, W) // 2 ** levels >= MIN_BOTTLENECK:
        levels += 1
    return levels


def level_sides(H: int, W: int, levels: int) -> list[tuple[int, int]]:
    """(h, w) at each level of the network, after its padding to a multiple of 2**(levels-1)."""
    m = 2 ** (levels - 1)
    Hp, Wp = -(-H // m) * m, -(-W // m) * m
    return [(Hp // 2 ** i, Wp // 2 ** i) for i in range(levels)]


def preset_fields(name: str, H: int, W: int, levels: int | None = None) -> dict:
    """The ModelConfig architecture fields of preset ``name`` for H x W fields; ``levels`` (the depth of
    a user's own ``dim_mults``) places the attention for that depth instead of the preset's."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    levels = levels or num_levels(H, W)
    sides = level_sides(H, W, levels)
    tokens = [h * w for h, w in sides]
    return {**PRESETS[name], "dim_mults": _MULTS[:levels],
            "linear_attn_levels": tuple(i for i in range(1, levels - 1) if tokens[i] <= MAX_LINEAR_TOKENS),
            "mid_attention": tokens[-1] <= MAX_SOFTMAX_TOKENS, "cross_attn_max_res": 16, "preset": name}


def is_custom(cfg: ModelConfig) -> bool:
    """True when any architecture field differs from ModelConfig's defaults (the user designed it)."""
    default = ModelConfig()
    return any(getattr(cfg, k) != getattr(default, k) for k in ARCHITECTURE)


def apply_preset(cfg: ModelConfig, name: str | None, size: tuple[int, int], levels: int | None = None) -> ModelConfig:
    """``cfg`` with preset ``name`` sized for ``size``; None = the default preset, unless ``cfg``'s
    architecture was customised, which is then kept as it is (``preset`` stays None)."""
    if name is None:
        if is_custom(cfg):
            return cfg
        name = DEFAULT_PRESET
    return dataclasses.replace(cfg, **preset_fields(name, *size, levels=levels))


def describe(cfg: ModelConfig) -> list[str]:
    """One line per level: side, channels, blocks and the attention there."""
    levels = len(cfg.dim_mults)
    sides = level_sides(*cfg.image_size, levels)
    lines, cross = [], cfg.cross_attn_at()  # as the U-Net decides
    for i, ((h, w), m) in enumerate(zip(sides, cfg.dim_mults)):
        attn = ["linear attention"] if i in cfg.linear_attn_levels else []
        if cross[i]:
            attn.append("cross-attention")
        if i == levels - 1 and cfg.mid_attention:
            attn.append("softmax attention (bottleneck)")
        lines.append(f"level {i}: {h}x{w}, {cfg.dim * m} channels, {cfg.num_res_blocks} res blocks"
                     + (f", {', '.join(attn)}" if attn else ""))
    return lines
