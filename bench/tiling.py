"""Tiled reconstruction's overhead: one 256x256 field in 64x64 windows against the same pixels as 64x64 rows."""

from __future__ import annotations

import torch

from cfgdiff.api import FixedBatch
from cfgdiff.config import ModelConfig, ScheduleConfig
from cfgdiff.presets import apply_preset
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.tiling import TiledDenoiser, windows
from cfgdiff.unet import ConditionalUNet

from .common import table, timeit


def run(device: str = "cpu", side: int = 256, tile: int = 64, steps: int = 4, model_batches=(0, 8)) -> str:
    """DDIM ``steps`` at w=1, the small preset for ``tile`` fields. ``model_batch`` 0 calls the network once on
    all rows or windows; 8 calls it on chunks of 8 (``FixedBatch``, as infer does), padding the last chunk."""
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000)).to(device)
    cfg = apply_preset(ModelConfig(image_size=(tile, tile)), "small", (tile, tile))
    unet = ConditionalUNet(cfg).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else None
    n_rows = (side // tile) ** 2
    g = torch.Generator().manual_seed(0)
    small = torch.randn(n_rows, 1, tile, tile, generator=g).to(device)
    small_m = (torch.rand(n_rows, 1, tile, tile, generator=g) < 0.2).float().to(device)
    big = torch.randn(1, 1, side, side, generator=g).to(device)
    big_m = (torch.rand(1, 1, side, side, generator=g) < 0.2).float().to(device)
    rows = []
    for mb in model_batches:
        net = FixedBatch(unet, mb) if mb else unet
        with torch.no_grad():
            s_rows = timeit(lambda: sample(net, small, small_m, schedule=sched, method="ddim", steps=steps, seed=0), repeat=2,
                            sync=sync)
            rows.append({"model batch": mb or "all", "what": f"{n_rows} rows of {tile}x{tile}", "windows": n_rows,
                         "s": s_rows, "ratio": 1.0})
            for overlap in (0, 16, 32):
                tiled = TiledDenoiser(net, tile, overlap)
                n_win = len(windows(side, side, tile, overlap))
                s = timeit(lambda: sample(tiled, big, big_m, schedule=sched, method="ddim", steps=steps, seed=0),
                           repeat=2, sync=sync)
                rows.append({"model batch": mb or "all", "what": f"1 field {side}x{side}, tile {tile}, overlap {overlap}",
                             "windows": n_win, "s": s, "ratio": s / s_rows, "window ratio": n_win / n_rows})
    return (table(rows, ["model batch", "what", "windows", "s", "ratio", "window ratio"])
            + f"\n\nDDIM {steps} steps, w=1, small preset at {tile}x{tile} ({len(cfg.dim_mults)} levels), {device}. "
              "ratio = time / the untiled rows' time at the same model batch; window ratio = the network's rows' ratio.")
