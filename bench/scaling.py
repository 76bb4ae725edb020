"""Ray layers: training images/s per worker (1 vs 2) and inference images/s (1 vs 2 actors vs in-process)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import table

TRAIN_SETS = ["model.dim=32", "model.dim_mults=[1,2,2]", "model.num_res_blocks=1", "model.cross_attn_max_res=8",
              "train.batch_size=32", "train.checkpoint_every=0", "train.log_every=20", "train.val_samples=4",
              "train.val_steps=2", "train.val_batches=1"]


def _data(d: Path, n: int = 4096, val_rows: int = 128) -> Path:
    from cfgdiff.convert import ConvertOptions, convert
    from cfgdiff.demo import gaussian_random_fields

    np.save(d / "x.npy", gaussian_random_fields(n, 32, 32))
    convert(str(d / "x.npy"), d / "ds", ConvertOptions(degrade="drop:0.8", val_fraction=val_rows / n))
    return d / "ds"


def startup(repeats: int = 3) -> str:
    """Embedded Ray start-up as ``cfgdiff`` commands start it: lean (the default since #16.9) against the
    dashboard on (the old default; still what ``tune`` and ``--dashboard`` use), alternating in one run."""
    import ray

    from cluster.runtime import start_ray, stop_ray

    rows = []
    for rep in range(repeats):
        for dash in (True, False):
            t0 = time.perf_counter()
            info = start_ray(None, 6, dashboard=dash)
            t1 = time.perf_counter()
            ray.get(ray.remote(lambda: 1).remote())
            t2 = time.perf_counter()
            stop_ray(info)
            rows.append({"embedded Ray": "dashboard on (before)" if dash else "lean, no dashboard (after)",
                         "run": rep + 1, "start_ray s": t1 - t0, "first task s": t2 - t1,
                         "shutdown s": time.perf_counter() - t2})
    med = {d: float(np.median([r["start_ray s"] for r in rows if r["embedded Ray"].startswith(d)]))
           for d in ("dashboard", "lean")}
    return (table(rows, ["embedded Ray", "run", "start_ray s", "first task s", "shutdown s"])
            + f"\n\nMedian start_ray: dashboard on {med['dashboard']:.2f} s, lean {med['lean']:.2f} s "
            f"({med['dashboard'] - med['lean']:.2f} s saved per command).\n")


def run(steps: int = 60, repeats: int = 3) -> str:
    from cfgdiff.config import ExperimentConfig, SamplerConfig
    from cfgdiff.data import DatasetMeta
    from cluster.infer import InferJob, run_inference
    from cluster.runtime import start_ray, stop_ray
    from cluster.train import TrainJob, config_for_data, run_training

    rows, irows = [], []
    start = startup()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ds = _data(d)
        info = start_ray("local", 6)
        try:
            cfg = config_for_data(DatasetMeta.load(ds), ExperimentConfig(), TRAIN_SETS + [f"train.max_steps={steps}"])
            for workers in (1, 2):
                t0 = time.perf_counter()
                s = run_training(TrainJob(data_dir=str(ds), config=cfg, run_name=f"w{workers}", storage=str(d / "runs"),
                                          workers=workers, threads_per_worker=2 // workers))
                wall = time.perf_counter() - t0
                ips = s["final"]["images_per_s"]
                split = s.get("step_time_split_s") or {}
                rows.append({"workers": workers, "threads/worker": 2 // workers, "global batch": 32,
                             "steady img/s (all workers)": ips, "img/s per worker": ips / workers,
                             "fit() wall s (incl. start-up)": wall,
                             **{f"{k} ms/step": 1e3 * v for k, v in split.items()}})
            export = str(d / "runs" / "w1" / "export")
            sampler = SamplerConfig(steps=50, w=2.0)  # DDIM-50 with CFG (issue #8)
            for rep in range(repeats):  # alternate 1 and 2 actors: both see the same machine noise
                for actors in (1, 2):
                    r = run_inference(InferJob(export, str(ds), str(d / f"o{actors}.npy"), actors=actors,
                                               batch_size=16, sampler=sampler, threads_per_actor=1, overwrite=True))
                    irows.append({"setup": f"Ray actor pool, {actors} actor(s), 1 thread each", "run": rep + 1,
                                  "rows": r["rows"], "img/s": r["images_per_s"], "steady img/s": r["steady_images_per_s"],
                                  "start-up s": r["startup_s"]})
        finally:
            stop_ray(info)
        irows.append(_in_process(export, ds, sampler))
    ray_rows = [r for r in irows if "run" in r]
    for r in irows:  # each run against the 1-actor run of the same repeat (in-process: against the first)
        one = next(o for o in ray_rows if o["run"] == r.get("run", 1) and o["setup"].startswith("Ray actor pool, 1 "))
        r["ratio to 1 actor"] = r["img/s"] / one["img/s"]
        if r.get("steady img/s"):
            r["steady ratio"] = r["steady img/s"] / one["steady img/s"]
    two = [r for r in ray_rows if r["setup"].startswith("Ray actor pool, 2 ")]
    best = lambda k, a: max(r[k] for r in ray_rows if r["setup"].startswith(f"Ray actor pool, {a} "))
    summary = (f"\n\n1 -> 2 actors over {repeats} alternating repeats: steady ratio per repeat "
               + ", ".join(f"{r['steady ratio']:.2f}" for r in two)
               + f" (median {float(np.median([r['steady ratio'] for r in two])):.2f}); best steady "
               f"{best('steady img/s', 2) / best('steady img/s', 1):.2f}x; whole run (start-up included) per repeat "
               + ", ".join(f"{r['ratio to 1 actor']:.2f}" for r in two) + ".\n")
    cols = ["workers", "threads/worker", "global batch", "steady img/s (all workers)", "img/s per worker",
            "fit() wall s (incl. start-up)"]
    cols += [c for c in ("data_wait ms/step", "forward_backward ms/step", "optimizer ms/step", "ema ms/step",
                         "allreduce_probe ms/step") if any(c in r for r in rows)]
    note = ("\n\nStep-time split (rank 0): forward_backward includes DDP's all-reduce, which overlaps the backward; "
            "allreduce_probe times one separate all-reduce of all gradients (gloo, 2 processes on 2 cores).\n\n")
    return (start + "\n\n" + table(rows, cols) + note +
            table(irows, ["setup", "run", "rows", "img/s", "ratio to 1 actor", "start-up s", "steady img/s",
                          "steady ratio"]) + summary +
            "\n\nimg/s: rows / wall time of the whole run, actor start-up (process, torch import, model load) "
            "included. start-up s: until the first actor starts its first batch. steady: rows / time from the first "
            "batch any actor started to the last one finished (what a long run converges to).\n")


def _in_process(export: str, ds: Path, sampler) -> dict:
    import cfgdiff
    from cfgdiff.data import read_split

    torch.set_num_threads(1)
    raw = read_split(ds / "val")
    rec = cfgdiff.load(export)
    t0 = time.perf_counter()
    rec.reconstruct(raw["condition"], raw["mask"], steps=sampler.steps, w=sampler.w, batch_size=16)
    t = time.perf_counter() - t0
    return {"setup": "in-process cfgdiff.load().reconstruct, 1 thread, no Ray", "rows": len(raw["index"]),
            "img/s": len(raw["index"]) / t}
