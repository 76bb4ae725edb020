"""Converting a NetCDF file keeps peak memory flat as the file grows (#22): the variable is read in
``--chunk-rows`` slices through xarray's lazy indexing. The same fields as .npy are the reference."""

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


def _write_nc(path: Path, n: int, side: int, block: int = 4096) -> None:
    """A (time, y, x) float32 NetCDF-4 file written a block at a time (h5netcdf), with coordinates."""
    import h5netcdf

    rng = np.random.default_rng(0)
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"time": n, "y": side, "x": side}
        t = f.create_variable("time", ("time",), "f8")
        t[:] = np.arange(n, dtype=np.float64)
        t.attrs["units"] = "hours since 2000-01-01"
        v = f.create_variable("field", ("time", "y", "x"), "f4", chunks=(64, side, side))
        v.attrs["units"] = "K"
        for a in range(0, n, block):
            v[a:a + block] = rng.normal(size=(min(block, n - a), side, side)).astype(np.float32)


def _convert(spec: str, out: Path, chunk: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _CONVERT, spec, str(out), str(chunk)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(sizes=(4096, 16384, 65536), side: int = 64, chunk: int = 1024) -> str:
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as d:
        d = Path(d)
        for n in sizes:
            t0 = time.perf_counter()
            _write_nc(d / "f.nc", n, side)
            mb = n * side * side * 4 / 2**20
            r = _convert(f"{d}/f.nc:field", d / "nc", chunk)
            import xarray as xr
            np.save(d / "f.npy", xr.open_dataset(d / "f.nc").field.values[:, None])  # the same fields as .npy
            q = _convert(str(d / "f.npy"), d / "npy", chunk)
            rows.append({"rows": n, "field MB": mb, "chunk rows": chunk, "chunk MB": chunk * side * side * 4 / 2**20,
                         "NetCDF s": r["s"], "NetCDF MB/s": mb / r["s"], "NetCDF peak RSS MB": r["rss_mb"],
                         ".npy s": q["s"], ".npy peak RSS MB": q["rss_mb"], "setup s": time.perf_counter() - t0})
            for p in d.iterdir():
                subprocess.run(["rm", "-rf", str(p)], check=True)
    out = table(rows, ["rows", "field MB", "chunk rows", "chunk MB", "NetCDF s", "NetCDF MB/s", "NetCDF peak RSS MB",
                       ".npy s", ".npy peak RSS MB"])
    return out + ("\n\nPeak RSS is VmHWM of the converting process (Python, torch, pyarrow and xarray loaded: ~300 MB), "
                  "the chunk, and up to one 64 MB row group pending per split. Both passes (validate and statistics, "
                  "then write) read the file slice by slice.")
