"""Training-step throughput and MFU: cfgdiff against peer U-Nets at matched size (issues #4, #9).

Peers come from the `bench` extra (denoising-diffusion-pytorch, diffusers); missing ones are
reported as such, not faked. Both peers import torchvision at module import, which this CPU torch
cannot load; the bench installs a minimal stand-in module for that import only (peers use it for
image saving and data loading, which the benchmark never calls).
"""

from __future__ import annotations

import dataclasses
import sys
import types

import torch

from cfgdiff.config import ModelConfig
from cfgdiff.presets import apply_preset, num_levels
from cfgdiff.unet import ConditionalUNet, num_parameters

from .common import matmul_peak_gflops, table, timeit


def _stub_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - broken wheel beside this torch
        for k in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[k]
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.transforms.Compose = tv.transforms.ToTensor = tv.transforms.Resize = object
    tv.transforms.RandomHorizontalFlip = tv.transforms.CenterCrop = tv.transforms.Lambda = object
    tv.utils.save_image = lambda *a, **k: None
    tv.__version__ = "0.0-stub"
    import importlib.machinery

    for m in (tv, tv.transforms, tv.utils):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils})


def _peer(name: str, size: int, dim: int, out_dim: int | None = None) -> torch.nn.Module:
    """A peer U-Net of width ``dim`` for size x size fields. At 32x32: the reference layout (1-2-4, the sizes
    of issues #4/#9); above it: cfgdiff's own depth for that size (``presets.num_levels``) and channel
    multipliers, diffusers' attention at the levels of side <= 16 (lucidrains keeps its own: linear attention
    everywhere, full attention at the bottleneck)."""
    levels = 3 if size == 32 else num_levels(size, size)
    mults = (1, 2, 4, 4, 8, 8)[:levels]
    if name.startswith("lucidrains"):
        from denoising_diffusion_pytorch import Unet

        return Unet(dim=dim, dim_mults=mults, channels=2, out_dim=out_dim)  # x + cond, concatenated
    from diffusers import UNet2DModel

    attn = [size // 2 ** i <= 16 for i in range(levels)] if size > 32 else [False, True, True]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=1, block_out_channels=tuple(dim * m for m in mults),
                       layers_per_block=2, norm_num_groups=8, down_block_types=down, up_block_types=up)


REFERENCE_DIMS = {"lucidrains Unet": 48, "diffusers UNet2DModel": 40}  # ~1.75 GFLOP/img at 32x32, as in #4/#9


def forward_flops(name: str, model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one size x size image."""
    x = torch.randn(1, 1, size, size)
    return _flops(name, model, x, torch.zeros(1, dtype=torch.long), x, torch.ones_like(x), backward=False)[0]


def _matched_dim(name: str, size: int, target: float) -> int:
    """The width (a multiple of 8) whose forward GFLOP/img is closest to ``target`` FLOPs."""

    def flops(d: int) -> float:
        return forward_flops(name, _peer(name, size, d), size)

    lo, hi = 1, 40  # dim = 8k
    while lo < hi:  # FLOPs grow with the width: the smallest k whose FLOPs reach the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if flops(8 * mid) < target else (lo, mid)
    return min((8 * k for k in (max(lo - 1, 1), lo)), key=lambda d: abs(flops(d) - target))


def peer_dims(size: int = 32, target: float | None = None) -> dict[str, int]:
    """Each available peer's width for size x size fields: at 32x32 the reference one; otherwise the width whose
    forward FLOPs per image match ``target`` (cfgdiff's model at that size). Missing peers are reported."""
    out = {}
    _stub_torchvision()
    for name, package in (("lucidrains Unet", "denoising-diffusion-pytorch"), ("diffusers UNet2DModel", "diffusers")):
        try:
            out[name] = REFERENCE_DIMS[name] if size == 32 or target is None else _matched_dim(name, size, target)
        except Exception as e:  # noqa: BLE001
            print(f"[bench] {package} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def peers(size: int = 32, target: float | None = None) -> dict[str, torch.nn.Module]:
    return {f"{name} (dim {dim})": _peer(name, size, dim) for name, dim in peer_dims(size, target).items()}


FULL = "cfgdiff full (control add + cross-attn)"  # the model the peers are matched to


def cfgdiff_models(size: int) -> dict[str, torch.nn.Module]:
    """cfgdiff's model for the size (the ``small`` preset, which training picks by default; at 32x32 it is
    ModelConfig's default) with the product's conditioning (control add + cross-attention) and concat-only."""
    hw = (size, size)
    full = apply_preset(ModelConfig(image_size=hw), "small", hw)
    concat = dataclasses.replace(full, use_control_add=False, use_cross_attn=False)
    return {"cfgdiff concat-only (small preset)": ConditionalUNet(concat), FULL: ConditionalUNet(full)}



def _call(name: str, model, x, t, c, m):
    if name.startswith("lucidrains"):
        return model(torch.cat([x, c], 1), t)[:, :1]
    if name.startswith("diffusers"):
        return model(torch.cat([x, c, m], 1), t).sample
    return model(x, t, c, m)


def _flops(name, model, x, t, c, m, backward: bool = True) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, counted by torch.utils.flop_counter on the first
    (up to) 2 rows."""
    from torch.utils.flop_counter import FlopCounterMode

    n = min(2, len(x))
    x, t, c, m = x[:n], t[:n], c[:n], m[:n]
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        _call(name, model, x, t, c, m)
    fwd = fc.get_total_flops() / n
    if not backward:
        return fwd, float("nan")
    fc = FlopCounterMode(display=False)
    with fc:
        _call(name, model, x, t, c, m).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return fwd, fc.get_total_flops() / n


def run(device: str = "cpu", batches=(32,), precisions=("fp32", "bf16"), with_peers: bool = True,
        channels_last: bool = True, size: int = 32) -> str:
    models = cfgdiff_models(size)
    if with_peers:
        models.update(peers(size, forward_flops(FULL, models[FULL], size)))
    peak = {"fp32": matmul_peak_gflops(torch.float32, device)}
    if "bf16" in precisions:
        peak["bf16"] = matmul_peak_gflops(torch.bfloat16, device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows = []
    for name, model in models.items():
        model = model.to(device).train()
        if channels_last and name.startswith("cfgdiff"):  # cfgdiff's default; peers run as users run them
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for B in batches:
            x = torch.randn(B, 1, size, size, device=device)
            c, m = torch.randn_like(x), torch.ones_like(x)
            t = torch.randint(0, 1000, (B,), device=device)
            fl, fl_train = _flops(name, model, x, t, c, m)
            for prec in precisions:
                ac = torch.autocast(device, dtype=torch.bfloat16, enabled=prec == "bf16")

                def step():
                    opt.zero_grad(set_to_none=True)
                    with ac:
                        loss = _call(name, model, x, t, c, m).float().pow(2).mean()
                    loss.backward()
                    opt.step()

                s = timeit(step, repeat=5, warmup=2, sync=sync)
                ips = B / s
                rows.append({"model": name, "params M": num_parameters(model) / 1e6, "GFLOP/img fwd": fl / 1e9,
                             "batch": B, "precision": prec, "img/s": ips,
                             "GFLOP/s": fl_train * ips / 1e9, "MFU": fl_train * ips / 1e9 / peak[prec]})
    note = (f"fp32 matmul peak {peak['fp32']:.0f} GFLOP/s" + (f", bf16 {peak['bf16']:.0f} GFLOP/s" if "bf16" in peak else "")
            + " (best of torch.matmul and a 1x1-conv GEMM; MKL matmul is slow on this AMD CPU, oneDNN is not)"
            + "; MFU = counted forward+backward FLOPs x img/s / that peak.")
    return table(rows, ["model", "params M", "GFLOP/img fwd", "batch", "precision", "img/s", "GFLOP/s", "MFU"]) + \
        f"\n\n{size}x{size} fields; cfgdiff's `small` preset for that size" + \
        ("" if size == 32 else ", each peer at the width (a multiple of 8) whose forward FLOPs per image are closest to "
         "cfgdiff full's, with cfgdiff's depth for the size") + ". " + note
