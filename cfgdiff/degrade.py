"""Degradation operators: a clean normalised batch (B, C, H, W) -> condition and mask.

Specs are strings: ``drop:0.8`` (fraction of pixels dropped), ``sensors:64`` (k known pixels),
``box:0.25`` or ``box:0.25:random`` (missing box of that area fraction), ``strokes:4`` (free-form
brush strokes), ``half`` (one random half missing), ``lines:2`` (every 2nd row known), ``sr:2``
(average-pool by 2, condition on the full grid), ``noise:0.1`` (additive Gaussian noise, sigma in
normalised units), and ``mix:drop:0.4,box:0.25,sr:2`` (one component drawn per sample).

Sample i is degraded with its own generator seeded ``seed * 1_000_003 + index[i]``, so the result does not
depend on batch composition. Mask-type degradations give cond = x * mask (zero where unknown);
``sr`` and ``noise`` give a dense condition and an all-zero mask (no pixel is known exactly).
The linear ones expose A and A^+ for the samplers' consistency step (``operator_for``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

KINDS = ("drop", "sensors", "box", "strokes", "half", "lines", "sr", "noise")


@dataclass(frozen=True)
class Component:
    kind: str
    value: float
    random_position: bool = False

    @property
    def label(self) -> str:
        """The spec text of this component, e.g. drop:0.9 or box:0.4:random (figure labels)."""
        return f"{self.kind}:{self.value:g}" + (":random" if self.random_position else "")


def parse_spec(spec: str) -> list[Component]:
    """Parse a degradation spec; raises InputError naming the spec and what was expected."""
    s = spec.strip()
    parts = s[4:].split(",") if s.startswith("mix:") else [s]
    if not s or not all(parts):
        raise InputError(f"--degrade {spec!r}: empty spec; expected e.g. drop:0.8 or mix:drop:0.4,box:0.25")
    return [_parse_one(p.strip(), spec) for p in parts]


def _parse_one(p: str, spec: str) -> Component:
    name, _, rest = p.partition(":")
    args = rest.split(":") if rest else []
    defaults = {"half": 1.0, "lines": 2.0, "strokes": 4.0}
    if name not in KINDS:
        raise InputError(f"--degrade {spec!r}: unknown kind {name!r}; expected one of {', '.join(KINDS)} or mix:")
    if not args:
        if name not in defaults:
            raise InputError(f"--degrade {spec!r}: {name} needs a value, e.g. {name}:{_example(name)}")
        args = [str(defaults[name])]
    try:
        value = float(args[0])
    except ValueError:
        raise InputError(f"--degrade {spec!r}: {name} value must be a number, got {args[0]!r}") from None
    rand = len(args) > 1 and args[1] == "random"
    if len(args) > 2 or (len(args) == 2 and not (name == "box" and args[1] in ("random", "center"))):
        raise InputError(f"--degrade {spec!r}: unexpected extra field in {p!r}")
    ok = {"drop": 0 <= value < 1, "box": 0 < value < 1, "sensors": value >= 1 and value == int(value),
          "strokes": value >= 1, "half": True, "lines": value >= 2 and value == int(value),
          "sr": value >= 2 and value == int(value), "noise": value > 0 and math.isfinite(value)}[name]
    if not ok:
        raise InputError(f"--degrade {spec!r}: {name} value {value} is out of range ({_range(name)})")
    return Component(name, value, rand)


def _example(name: str) -> str:
    return {"drop": "0.8", "sensors": "64", "box": "0.25", "sr": "2", "noise": "0.1"}.get(name, "1")


def _range(name: str) -> str:
    return {"drop": "fraction in [0, 1)", "box": "area fraction in (0, 1)", "sensors": "integer >= 1",
            "strokes": ">= 1", "lines": "integer >= 2", "sr": "integer factor >= 2", "noise": "sigma > 0"}.get(name, "")


# --- per-sample mask makers: (generator, H, W) -> (H, W) float {0, 1}, 1 = known --------------------
def _mask_drop(g, H, W, frac):
    return (torch.rand(H, W, generator=g) >= frac).float()


def _mask_sensors(g, H, W, k):
    m = torch.zeros(H * W)
    m[torch.randperm(H * W, generator=g)[: min(int(k), H * W)]] = 1.0
    return m.view(H, W)


def _mask_box(g, H, W, area, rand):
    bh, bw = max(1, round(H * math.sqrt(area))), max(1, round(W * math.sqrt(area)))
    if rand:
        y0 = int(torch.randint(0, H - bh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, W - bw + 1, (1,), generator=g))
    else:
        y0, x0 = (H - bh) // 2, (W - bw) // 2
    m = torch.ones(H, W)
    m[y0:y0 + bh, x0:x0 + bw] = 0.0
    return m


def _mask_strokes(g, H, W, n):
    m = torch.ones(H, W)
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    for _ in range(int(n)):
        y, x = float(torch.rand(1, generator=g)) * H, float(torch.rand(1, generator=g)) * W
        r = 1.0 + float(torch.rand(1, generator=g)) * max(H, W) / 16
        angle = float(torch.rand(1, generator=g)) * 2 * math.pi
        for _ in range(8):  # a random walk of round brush dabs
            m[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 0.0
            angle += float(torch.randn(1, generator=g)) * 0.6
            y = min(max(y + math.sin(angle) * r, 0), H - 1)
            x = min(max(x + math.cos(angle) * r, 0), W - 1)
    return m


def _mask_half(g, H, W):
    side = int(torch.randint(0, 4, (1,), generator=g))
    m = torch.ones(H, W)
    [lambda: m[:, W // 2:].zero_(), lambda: m[:, : W // 2].zero_(),
     lambda: m[H // 2:, :].zero_(), lambda: m[: H // 2, :].zero_()][side]()
    return m


def _mask_lines(g, H, W, every):
    m = torch.zeros(H, W)
    m[:: int(every), :] = 1.0
    return m


def make_mask(c: Component, g: torch.Generator, H: int, W: int) -> torch.Tensor:
    if c.kind == "drop":
        return _mask_drop(g, H, W, c.value)
    if c.kind == "sensors":
        return _mask_sensors(g, H, W, c.value)
    if c.kind == "box":
        return _mask_box(g, H, W, c.value, c.random_position)
    if c.kind == "strokes":
        return _mask_strokes(g, H, W, c.value)
    if c.kind == "half":
        return _mask_half(g, H, W)
    if c.kind == "lines":
        return _mask_lines(g, H, W, c.value)
    raise AssertionError(c.kind)


# --- linear operators ---------------------------------------------------------------------------
class MaskOperator:
    """A x = mask * x; A^+ y = mask * y (an orthogonal projection is its own pseudo-inverse)."""

    def __init__(self, mask: torch.Tensor, y: torch.Tensor | None = None):
        self.mask, self.y = mask, y

    def A(self, x):
        return self.mask * x

    def A_pinv(self, y):
        return self.mask * y


class PoolOperator:
    """A = s x s average pooling; A^+ = nearest upsampling (A A^T = I / s^2, so A^+ = s^2 A^T)."""

    def __init__(self, factor: int, y: torch.Tensor | None = None):
        self.factor, self.y = int(factor), y

    def A(self, x):
        return F.avg_pool2d(x, self.factor)

    def A_pinv(self, y):
        return F.interpolate(y, scale_factor=float(self.factor), mode="nearest")


def operator_for(spec: str, cond: torch.Tensor, mask: torch.Tensor):
    """The linear operator whose consistency step applies to a condition made by ``spec``, or None.

    Only pure ``sr:s`` specs get one (``y`` is recovered as A(cond), exact since A A^+ = I);
    mask-type degradations are handled by the samplers' projection instead.
    """
    comps = parse_spec(spec)
    if len(comps) == 1 and comps[0].kind == "sr":
        op = PoolOperator(int(comps[0].value))
        op.y = op.A(cond)
        return op
    return None


def _row_component(comps: list[Component], seed: int, i: int) -> tuple[torch.Generator, Component]:
    """Row i's generator and, for a mix, the component it draws (seeded by (seed, i) alone)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
    return g, comps[int(torch.randint(0, len(comps), (1,), generator=g))] if len(comps) > 1 else comps[0]


def row_kinds(spec: str, seed: int, index: Sequence[int]) -> list[str]:
    """The degradation each row of ``degrade(x, spec, seed, index)`` received, as spec text."""
    comps = parse_spec(spec)
    return [_row_component(comps, seed, int(i))[1].label for i in index]


def degrade(x: torch.Tensor, spec: str | Sequence[Component], seed: int = 0,
            index: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade a clean batch x (B, C, H, W) -> (cond (B, C, H, W), mask (B, 1, H, W))."""
    comps = parse_spec(spec) if isinstance(spec, str) else list(spec)
    B, C, H, W = x.shape
    idx = range(B) if index is None else [int(i) for i in index]
    conds, masks = [], []
    for b, i in enumerate(idx):
        g, c = _row_component(comps, seed, i)
        xb = x[b:b + 1].float().cpu()
        if c.kind == "sr":
            s = int(c.value)
            if H % s or W % s:
                raise InputError(f"--degrade sr:{s}: image size {H}x{W} is not divisible by {s}")
            op = PoolOperator(s)
            conds.append(op.A_pinv(op.A(xb)))
            masks.append(torch.zeros(1, 1, H, W))
        elif c.kind == "noise":
            conds.append(xb + c.value * torch.randn(xb.shape, generator=g))
            masks.append(torch.zeros(1, 1, H, W))
        else:
            m = make_mask(c, g, H, W).view(1, 1, H, W)
            conds.append(xb * m)
            masks.append(m)
    return torch.cat(conds).to(x.device), torch.cat(masks).to(x.device)


def degrade_raw(x_raw: torch.Tensor, spec: str | Sequence[Component], affine, seed: int = 0,
                index: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade clean targets given in user units; ``affine`` is the target's ChannelAffine.

    Degradation happens in normalised units (noise sigma is relative to [-1, 1]). The condition comes
    back in user units: known pixels are the exact input values and unknown ones NaN for mask-type
    degradations; dense conditions (sr, noise: mask all zero) are denormalised.
    """
    x_raw = x_raw.float()
    cond_n, mask = degrade(affine.normalize(x_raw), spec, seed=seed, index=index)
    dense = (mask.flatten(1).amax(1) == 0).view(-1, 1, 1, 1)  # sr/noise: no pixel known exactly
    cond = torch.where(dense, affine.denormalize(cond_n),
                       torch.where(mask.bool(), x_raw, torch.full_like(x_raw, float("nan"))))
    return cond, mask
