"""Convert throughput with bounded memory, and read throughput: local reader, Ray Data, np.load (issue #5)."""

from __future__ import annotations

import json
import shutil
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


def run(sizes=(32768, 131072, 262144, 524288), chunk: int = 1024, with_ray: bool = True, read_rows: int = 262144) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for n in sizes:
            x = np.random.default_rng(0).normal(size=(n, 1, 32, 32)).astype(np.float32)
            np.save(d / f"x{n}.npy", x)
            mb = x.nbytes / 2**20
            r = _convert(d / f"x{n}.npy", d / f"ds{n}", chunk)
            rows.append({"rows": n, "input MB": mb, "chunk rows": chunk, "chunk MB": chunk * 4096 / 2**20,
                         "seconds": r["s"], "MB/s": mb / r["s"], "peak RSS MB": r["rss_mb"]})
            if n != read_rows:
                (d / f"x{n}.npy").unlink()
                shutil.rmtree(d / f"ds{n}")
        reads = _reads(d, read_rows, with_ray)
    out = table(rows, ["rows", "input MB", "chunk rows", "chunk MB", "seconds", "MB/s", "peak RSS MB"])
    out += ("\n\nPeak RSS (VmHWM of the converting process) includes the Python, torch and pyarrow runtime "
            "(~250 MB after imports), the chunk, and up to one 64 MB row group pending per writer (train and val); "
            "it levels off once both writers have filled a row group.\n\n"
            "Reads: every reader is timed as the best of 3 runs after a warm-up run (page cache warm; the first "
            "np.load of a 1 GB array pays ~10x for the kernel's huge-page faults).\n\n")
    out += ("Raw: numpy views of the stored cells in 256-row batches. Decoded: normalised float32 tensors, what "
            "training consumes. 'ratio (same output)' compares each reader with np.load producing the same output. "
            "Ray Data 'whole blocks' is cluster.data.iter_block_batches (what training uses): blocks handed over "
            "without a copy and cut by cfgdiff.data.rebatch. Streaming includes Ray Data's start-up (read tasks, "
            "executor: ~2 s per pass here); materialized is what every epoch after the first reads when the split "
            "fits in half the object store.\n\n")
    return out + table(reads, ["reader", "samples/s", "ratio (same output)", "ratio to raw np.load"])


def _best(fn, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` runs after one warm-up run (page cache, huge pages, allocator)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _reads(d: Path, n: int, with_ray: bool) -> list[dict]:
    from cfgdiff.convert import ConvertOptions, convert
    from cfgdiff.data import DatasetMeta, decode_batch, iter_parquet_batches

    src = d / f"x{n}.npy"
    convert(str(src), d / "zstd", ConvertOptions(val_fraction=0.1, compression="zstd"))
    meta = DatasetMeta.load(d / f"ds{n}")
    norm = meta.normalization

    def np_load(decode: bool) -> int:
        a = np.load(src)
        for i in range(0, len(a), 256):
            b = a[i:i + 256]  # raw: a view, as the readers' raw batches are
            if decode:  # the same work the readers' decode does: a normalised float32 tensor per batch
                norm.target.normalize_numpy(b)
        return len(a)

    t_raw, t_dec = _best(lambda: np_load(False)), _best(lambda: np_load(True))
    rows = [{"reader": "np.load (page cache), raw 256-row slices", "samples/s": n / t_raw, "ratio (same output)": 1.0,
             "ratio to raw np.load": 1.0},
            {"reader": "np.load + decode (normalised tensors)", "samples/s": n / t_dec, "ratio (same output)": 1.0,
             "ratio to raw np.load": t_raw / t_dec}]

    def local(root: Path, decode: bool) -> int:
        m = DatasetMeta.load(root)
        return sum(len(decode_batch(b, norm)["x0"]) if decode else len(b["index"]) for split in ("train", "val")
                   for b in iter_parquet_batches(m.split_dir(split), 256))

    for label, root, decode in (("default codec, raw", d / f"ds{n}", False),
                                ("default codec, decoded", d / f"ds{n}", True), ("zstd, decoded", d / "zstd", True)):
        t = _best(lambda: local(root, decode))
        rows.append({"reader": f"cfgdiff local reader ({label})", "samples/s": n / t,
                     "ratio (same output)": (t_dec if decode else t_raw) / t, "ratio to raw np.load": t_raw / t})
    if with_ray:
        import ray

        from cluster.data import iter_block_batches
        from cluster.runtime import start_ray, stop_ray

        def ray_read(dset, decode: bool, whole_blocks: bool = True) -> int:
            if not whole_blocks:  # Ray Data's own batcher, for comparison
                return sum(len(decode_batch(b, norm)["x0"]) for b in dset.iter_batches(batch_size=256, batch_format="pyarrow"))
            return sum(len(decode_batch(b, norm)["x0"]) if decode else len(b["index"])
                       for b in iter_block_batches(dset, 256))

        info = start_ray("local", 4, object_store_mb=3 * (n * 4096) // 2**20)  # holds the materialized data
        try:
            ds = ray.data.read_parquet([str(meta.split_dir("train")), str(meta.split_dir("val"))])
            mat = ds.materialize()
            cases = [("streaming read_parquet, whole blocks, raw", ds, False, True),
                     ("streaming read_parquet, whole blocks, decoded", ds, True, True),
                     ("materialized, whole blocks, raw", mat, False, True),
                     ("materialized, whole blocks, decoded", mat, True, True),
                     ("materialized, Ray's 256-row batches, decoded", mat, True, False)]
            for label, dset, decode, whole in cases:
                t = _best(lambda: ray_read(dset, decode, whole), repeats=2 if dset is ds else 3)
                rows.append({"reader": f"Ray Data {label}", "samples/s": n / t,
                             "ratio (same output)": (t_dec if decode else t_raw) / t, "ratio to raw np.load": t_raw / t})
        finally:
            stop_ray(info)
    return rows
