"""`cfgdiff serve` under load (#23): an asyncio HTTP load generator (aiohttp) at concurrency 1, 4, 16 and 64
against 1 and 2 replicas of the product's default model (small preset, 32x32) at DDIM 20, against offline
`cfgdiff infer` on the same number of actors, and against one direct `reconstruct()` call."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import table
from .scaling import _data


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], float]:
    import aiohttp

    queue = list(bodies)
    lat: list[float] = []

    async def worker(session):
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
    return lat, time.perf_counter() - t0


def run(concurrencies=(1, 4, 16, 64), steps: int = 20, train_steps: int = 10) -> str:
    import cfgdiff
    from cfgdiff.config import ExperimentConfig, SamplerConfig
    from cfgdiff.data import DatasetMeta, read_split
    from cluster.infer import InferJob, run_inference
    from cluster.runtime import start_ray, stop_ray
    from cluster.serve import build, deploy, undeploy
    from cluster.train import TrainJob, config_for_data, run_training

    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ds = _data(d, n=1024, val_rows=128)
        info = start_ray("local", 6)
        try:
            cfg = config_for_data(DatasetMeta.load(ds), ExperimentConfig(),  # the default (make run) model
                                  [f"train.max_steps={train_steps}", "train.checkpoint_every=0", "train.val_batches=1",
                                   "train.val_samples=4", "train.val_steps=2"])
            export = run_training(TrainJob(data_dir=str(ds), config=cfg, run_name="m", storage=str(d / "runs"),
                                           workers=1, threads_per_worker=2))["export_dir"]
            raw = read_split(ds / "val")
            bodies = [json.dumps({"condition": raw["condition"][i:i + 1].astype(np.float32).tolist(),
                                  "mask": raw["mask"][i:i + 1].astype(np.float32).tolist(), "steps": steps, "w": 1.0,
                                  "seed": i}).encode() for i in range(len(raw["index"]))]
            offline = {}
            for replicas in (1, 2):
                r = run_inference(InferJob(export, str(ds), str(d / f"o{replicas}.npy"), actors=replicas, batch_size=16,
                                           sampler=SamplerConfig(method="ddim", steps=steps, w=1.0), threads_per_actor=1,
                                           overwrite=True))
                offline[replicas] = r["steady_images_per_s"]
                url = deploy(build(export, replicas=replicas, max_batch_size=16, batch_wait_timeout_s=0.01),
                             port=_port()) + "/reconstruct"
                asyncio.run(_load(url, bodies[:2], 1))  # warm-up: replicas loaded
                for c in concurrencies:
                    n = min(len(bodies), max(8, 4 * c))
                    lat, wall = asyncio.run(_load(url, bodies[:n], c))
                    rows.append({"replicas": replicas, "concurrency": c, "requests": n, "p50 s": np.median(lat),
                                 "p99 s": np.percentile(lat, 99), "rows/s": n / wall,
                                 "ratio to offline infer": n / wall / offline[replicas]})
                undeploy(shutdown=True)
        finally:
            stop_ray(info)
        torch.set_num_threads(1)
        rec = cfgdiff.load(export)
        direct = []
        for i in range(5):
            t0 = time.perf_counter()
            rec.reconstruct(raw["condition"][i:i + 1], raw["mask"][i:i + 1], steps=steps, w=1.0, seed=i)
            direct.append(time.perf_counter() - t0)
    one = next(r for r in rows if r["replicas"] == 1 and r["concurrency"] == 1)
    d50 = float(np.median(direct))
    return (table(rows, ["replicas", "concurrency", "requests", "p50 s", "p99 s", "rows/s", "ratio to offline infer"])
            + f"\n\nOffline `cfgdiff infer` steady rows/s: 1 actor {offline[1]:.2f}, 2 actors {offline[2]:.2f} "
              f"(batch 16, 1 thread each). One direct reconstruct() of one row (1 thread): median {d50:.3f} s; served at "
              f"concurrency 1: p50 {one['p50 s']:.3f} s, overhead {100 * (one['p50 s'] / d50 - 1):.0f}%.\n\n"
              f"Model: the default (small preset, 32x32, {train_steps} training steps: speed does not depend on the "
              f"weights), DDIM {steps}, w = 1, one row per request, max_batch_size 16, batch wait 10 ms, batches merged "
              "by cfgdiff.batcher while the replica is busy, 1 CPU and 1 torch thread per replica; the load generator "
              "shares the 2 cores; at least 4 requests per client.\n")
