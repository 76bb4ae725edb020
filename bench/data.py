"""Convert throughput with bounded memory, and read throughput: local reader, Ray Data, np.load (issue #5)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import table

_CONVERT = """
import json, sys, time
from cfgdiff.convert import ConvertOptions, convert
t0 = time.perf_counter()
convert(sys.argv[1], sys.argv[2], ConvertOptions(chunk_rows=int(sys.argv[3]), val_fraction=0.1))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]  # peak RSS since exec, kB
print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": int(hwm) / 1024}))
"""


def _convert(src: Path, out: Path, chunk: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _CONVERT, str(src), str(out), str(chunk)], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(sizes=(32768, 131072, 262144), chunk: int = 1024, with_ray: bool = True) -> str:
    rows, read_rows = [], []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for n in sizes:
            x = np.random.default_rng(0).normal(size=(n, 1, 32, 32)).astype(np.float32)
            np.save(d / f"x{n}.npy", x)
            mb = x.nbytes / 2**20
            r = _convert(d / f"x{n}.npy", d / f"ds{n}", chunk)
            rows.append({"rows": n, "input MB": mb, "chunk rows": chunk, "chunk MB": chunk * 4096 / 2**20,
                         "seconds": r["s"], "MB/s": mb / r["s"], "peak RSS MB": r["rss_mb"]})
        n = sizes[-1]
        read_rows = _reads(d, n, with_ray)
    out = table(rows, ["rows", "input MB", "chunk rows", "chunk MB", "seconds", "MB/s", "peak RSS MB"])
    out += ("\n\nPeak RSS (VmHWM of the converting process) includes the Python, torch and pyarrow runtime "
            "(~250 MB after imports) and two 64 MB row-group buffers (train and val writers).\n\n")
    return out + table(read_rows, ["reader", "samples/s", "ratio to np.load"])


def _reads(d: Path, n: int, with_ray: bool) -> list[dict]:
    from cfgdiff.data import DatasetMeta, decode_batch, iter_parquet_batches

    meta = DatasetMeta.load(d / f"ds{n}")
    norm = meta.normalization
    x = np.load(d / f"x{n}.npy")  # warm the page cache
    t0 = time.perf_counter()
    for _ in range(3):
        a = np.load(d / f"x{n}.npy")
        for i in range(0, len(a), 256):
            a[i:i + 256].sum()
    t_np = (time.perf_counter() - t0) / 3
    rows = [{"reader": "np.load (page cache) + 256-row slices", "samples/s": n / t_np, "ratio to np.load": 1.0}]
    cnt = 0
    t0 = time.perf_counter()
    for split in ("train", "val"):
        for b in iter_parquet_batches(meta.split_dir(split), 256):
            cnt += len(decode_batch(b, norm)["x0"])
    t = time.perf_counter() - t0
    rows.append({"reader": "cfgdiff local reader (pyarrow -> torch, decoded)", "samples/s": cnt / t,
                 "ratio to np.load": (cnt / t) / (n / t_np)})
    if with_ray:
        import ray

        from cluster.runtime import start_ray, stop_ray

        info = start_ray("local", 4)
        try:
            ds = ray.data.read_parquet([str(meta.split_dir("train")), str(meta.split_dir("val"))])
            for label, dset in (("Ray Data read_parquet, streaming", ds), ("Ray Data, materialized", ds.materialize())):
                t0 = time.perf_counter()
                cnt = sum(len(decode_batch(b, norm)["x0"]) for b in dset.iter_batches(batch_size=256, batch_format="numpy"))
                t = time.perf_counter() - t0
                rows.append({"reader": label + " (decoded)", "samples/s": cnt / t, "ratio to np.load": (cnt / t) / (n / t_np)})
        finally:
            stop_ray(info)
    del x
    return rows
