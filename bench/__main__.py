"""`python -m bench [sampler|model|data|...|serve|calibration|all] [--device cpu|cuda] [--record]`.

Prints tables of measured figures; --record appends them to bench/RESULTS.md with the machine,
torch version and command. Nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import os

import torch

from .common import machine, record


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", default=["all"],
                   choices=["all", "sampler", "model", "data", "scaling", "startup", "gap", "peers-sampling",
                            "precision", "presets", "memory", "tiling", "formats", "serve", "calibration", "kriging", "lmmse",
                            "antithetic"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: both for model, fp32 else")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (CPU)")
    p.add_argument("--batch", type=int, nargs="*", default=[32], help="batch sizes for the model benchmark")
    p.add_argument("--no-peers", action="store_true", help="skip the peer libraries in the model benchmark")
    p.add_argument("--size", type=int, default=None,
                   help="field side: model (default 32), presets (64), memory (256)")
    p.add_argument("--checkpoint", default="runs/demo/export", help="calibration: a model of GRF data")
    p.add_argument("--data", default="runs/demo/data", help="calibration: its GRF dataset (with demo.json)")
    p.add_argument("--limit", type=int, default=64, help="calibration: validation fields")
    p.add_argument("--masks", nargs="*", default=["drop:0.9", "box:0.4:random"], help="calibration: degradations")
    p.add_argument("--steps", type=int, nargs="*", default=[5, 10, 20, 50, 100], help="calibration: step counts")
    p.add_argument("--solvers", nargs="*", default=["ddpm", "ddim", "dpm2m", "dpm2m-sde"],
                   choices=["ddpm", "ddim", "dpm2m", "dpm2m-sde"], help="calibration: solvers")
    p.add_argument("--num-samples", type=int, default=4, help="calibration: K samples per field")
    p.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    what = ["sampler", "model", "peers-sampling", "data", "scaling", "gap"] if "all" in a.what else a.what
    print(machine())
    for w in what:
        if w == "sampler":
            from . import sampler

            title, body = "Sampler overhead and batched CFG", sampler.run(a.device, a.precision or "fp32")
        elif w == "model":
            from . import model

            precs = (a.precision,) if a.precision else ("fp32", "bf16")
            size = a.size or 32
            title = f"Training step at {size}x{size}: cfgdiff vs peers"
            body = model.run(a.device, tuple(a.batch), precs, not a.no_peers, size=size)
        elif w == "data":
            from . import data

            title, body = "Convert and read throughput", data.run()
        elif w == "peers-sampling":
            from . import sampling_peers

            size = a.size or 32
            batch = a.batch[0] if a.batch != [32] else 16  # --batch N sets the sampling batch (default 16)
            title, body = (f"DDIM-50 sampling with CFG at {size}x{size}: cfgdiff vs peers",
                           sampling_peers.run(batch=batch, precision=a.precision or "fp32", size=size))
        elif w == "precision":
            from . import precision

            title, body = "bf16 autocast vs fp32: speed and loss curve", precision.run()
        elif w == "presets":
            from . import presets

            title, body = f"Architecture presets at {a.size or 64}x{a.size or 64}", presets.run(a.device, a.size or 64)
        elif w == "memory":
            from . import presets

            title, body = f"Training memory at {a.size or 256}x{a.size or 256}", presets.memory(a.device, a.size or 256)
        elif w == "tiling":
            from . import tiling

            title, body = "Tiled reconstruction overhead", tiling.run(a.device)
        elif w == "formats":
            from . import formats

            title, body = "Converting NetCDF: bounded memory", formats.run()
        elif w == "serve":
            from . import serve

            title, body = "cfgdiff serve under load", serve.run()
        elif w == "calibration":
            from . import calibration

            title, body = "Quality and calibration against network calls", calibration.run(a.checkpoint, a.data,
                                                                                          tuple(a.masks), tuple(a.steps),
                                                                                          limit=a.limit,
                                                                                          num_samples=a.num_samples,
                                                                                          solvers=tuple(a.solvers),
                                                                                          record=a.record)
        elif w == "lmmse":
            from . import lmmse

            title, body = "Patch-wise LMMSE at 64 and 128 px against full LMMSE and the Bayes optimum", lmmse.run()
        elif w == "antithetic":
            from . import antithetic

            title = "Antithetic noise pairs for the posterior mean (#18.3)"
            body = antithetic.run(a.checkpoint, a.data, tuple(a.masks), a.limit, a.num_samples)
        elif w == "kriging":
            from . import kriging

            title, body = "Exact kriging at 32 to 128 px: stationary blocks vs the dense covariance", kriging.run()
        elif w == "gap":
            from . import gap

            title, body = "Projection with an unconditional vs a conditional exact model (Gaussian data)", gap.run()
        elif w == "startup":
            from . import scaling

            title, body = "Embedded Ray start-up: lean vs dashboard", scaling.startup()
        else:
            from . import scaling

            title, body = "Ray Train workers and inference actors", scaling.run()
        print(f"\n## {title}\n\n{body}")
        if a.record:
            record(title, body)


if __name__ == "__main__":
    main()
