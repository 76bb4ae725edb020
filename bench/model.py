"""Training-step throughput and MFU: cfgdiff against peer U-Nets at matched size (issues #4, #9).

Peers come from the `bench` extra (denoising-diffusion-pytorch, diffusers); missing ones are
reported as such, not faked. Both peers import torchvision at module import, which this CPU torch
cannot load; the bench installs a minimal stand-in module for that import only (peers use it for
image saving and data loading, which the benchmark never calls).
"""

from __future__ import annotations

import sys
import types

import torch

from cfgdiff.config import ModelConfig
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


def peers(size: int = 32) -> dict[str, torch.nn.Module]:
    """Peer U-Nets at cfgdiff's reference size (dim 48, mults 1-2-4), for size x size fields."""
    out = {}
    _stub_torchvision()
    try:
        from denoising_diffusion_pytorch import Unet

        out["lucidrains Unet"] = Unet(dim=48, dim_mults=(1, 2, 4), channels=2)  # x + cond, concatenated
    except Exception as e:  # noqa: BLE001
        print(f"[bench] denoising-diffusion-pytorch unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    try:
        from diffusers import UNet2DModel

        out["diffusers UNet2DModel"] = UNet2DModel(
            sample_size=size, in_channels=3, out_channels=1, block_out_channels=(40, 80, 160), layers_per_block=2,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    except Exception as e:  # noqa: BLE001
        print(f"[bench] diffusers unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def _call(name: str, model, x, t, c, m):
    if name.startswith("lucidrains"):
        return model(torch.cat([x, c], 1), t)[:, :1]
    if name.startswith("diffusers"):
        return model(torch.cat([x, c, m], 1), t).sample
    return model(x, t, c, m)


def _flops(name, model, x, t, c, m) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        _call(name, model, x[:2], t[:2], c[:2], m[:2])
    fwd = fc.get_total_flops() / 2
    fc = FlopCounterMode(display=False)
    with fc:
        _call(name, model, x[:2], t[:2], c[:2], m[:2]).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return fwd, fc.get_total_flops() / 2


def run(device: str = "cpu", batches=(32,), precisions=("fp32", "bf16"), with_peers: bool = True,
        channels_last: bool = True, size: int = 32) -> str:
    hw = (size, size)
    models = {"cfgdiff concat-only (dim 48, 1-2-4)":
              ConditionalUNet(ModelConfig(image_size=hw, use_control_add=False, use_cross_attn=False)),
              "cfgdiff full (control add + cross-attn)": ConditionalUNet(ModelConfig(image_size=hw))}
    if with_peers:
        models.update(peers(size))
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
        f"\n\n{size}x{size} fields. " + note
