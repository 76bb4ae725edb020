"""Architecture presets at a field size: parameters, GFLOP/image and training img/s (fp32, AdamW step)."""

from __future__ import annotations

import resource

import torch

from cfgdiff.config import ModelConfig
from cfgdiff.flops import forward_flops
from cfgdiff.presets import PRESETS, apply_preset, describe
from cfgdiff.unet import ConditionalUNet, num_parameters

from .common import table, timeit


def run(device: str = "cpu", size: int = 64, batch: int = 8, channels_last: bool = True) -> str:
    rows = []
    sync = torch.cuda.synchronize if device == "cuda" else None
    for name in PRESETS:
        cfg = apply_preset(ModelConfig(image_size=(size, size)), name, (size, size))
        model = ConditionalUNet(cfg).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 1, size, size, device=device)
        c, m = torch.randn_like(x), torch.ones_like(x)
        t = torch.randint(0, 1000, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x, t, c, m).pow(2).mean().backward()
            opt.step()

        s = timeit(step, repeat=3, warmup=1, sync=sync)
        rows.append({"preset": name, "levels": len(cfg.dim_mults), "params M": num_parameters(model) / 1e6,
                     "GFLOP/img fwd": forward_flops(model, cfg, batch=1) / 1e9, "train img/s": batch / s,
                     "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    layout = "\n".join(f"    {line}" for line in describe(apply_preset(ModelConfig(image_size=(size, size)), "small",
                                                                       (size, size))))
    return (table(rows, ["preset", "levels", "params M", "GFLOP/img fwd", "train img/s", "peak RSS GB"])
            + f"\n\n{size}x{size}, batch {batch}, fp32, {device}; peak RSS is the process's high-water mark so far "
              f"(it only grows down the table). The small preset's layout at this size:\n\n{layout}")


def _memory_row(device: str, size: int, preset: str, batch: int, micro: int, checkpointing: bool, threads: int) -> dict:
    """One training step in this (fresh) process: its peak memory and time."""
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.set_num_threads(threads)
    cfg = apply_preset(ModelConfig(image_size=(size, size)), preset, (size, size))
    model = ConditionalUNet(cfg).to(device).train().to(memory_format=torch.channels_last)
    model.checkpointing = checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=device)
    c, m = torch.randn_like(x), torch.ones_like(x)
    t = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    for a in range(0, batch, micro):  # gradient accumulation over micro-batches, as train.micro_batch_size
        sl = slice(a, a + micro)
        (model(x[sl], t[sl], c[sl], m[sl]).pow(2).mean() * (min(micro, batch - a) / batch)).backward()
    opt.step()
    step_s = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"preset": preset, "size": f"{size}x{size}", "batch": batch, "micro-batch": micro,
            "activation checkpointing": "yes" if checkpointing else "no", "params M": num_parameters(model) / 1e6,
            "step s": step_s, "peak GB": peak, "GB before the model": before}


def memory(device: str = "cpu", size: int = 256, preset: str = "base", batch: int = 8) -> str:
    """Peak memory of one fp32 AdamW training step at ``size`` with ``preset``, plain, as micro-batches
    (``train.micro_batch_size``) and with ``train.activation_checkpointing``: each in a fresh process (peak RSS
    is a process's high-water mark), ``torch.cuda.max_memory_allocated`` on GPU."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    for micro, ckpt in ((batch, False), (batch // 4, False), (batch, True)):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(_memory_row, device, size, preset, batch, micro, ckpt,
                                    torch.get_num_threads()).result())
    return table(rows, ["preset", "size", "batch", "micro-batch", "activation checkpointing", "params M", "step s",
                        "peak GB", "GB before the model"]) + (
        f"\n\nfp32, channels_last, AdamW, {device}, {torch.get_num_threads()} threads; one step each (the first: "
        "it allocates the optimizer state), each in a fresh process; peak = "
        + ("torch.cuda.max_memory_allocated" if device == "cuda" else "the process's peak RSS (ru_maxrss)") + ".")
