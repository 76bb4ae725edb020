"""Timing helpers and the RESULTS.md recorder shared by the benchmarks."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(dtype=torch.float32, device="cpu", sizes=(1024, 2048), repeat: int = 7) -> float:
    """Measured dense matmul throughput (best of sizes and runs), the denominator of MFU."""
    sync = torch.cuda.synchronize if device == "cuda" else None
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        for _ in range(repeat):
            if sync:
                sync()
            t0 = time.perf_counter()
            a @ b
            if sync:
                sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    # torch.matmul goes through MKL, which runs slow paths on AMD CPUs, while convolutions go through
    # oneDNN; a 1x1 convolution is a plain GEMM on the oneDNN path, so it counts as a peak too.
    conv = torch.nn.Conv2d(1024, 1024, 1, bias=False).to(device=device, dtype=dtype)
    x = torch.randn(1, 1024, 64, 64, device=device, dtype=dtype)
    with torch.no_grad():
        for _ in range(2):
            conv(x)
        for _ in range(repeat):
            if sync:
                sync()
            t0 = time.perf_counter()
            conv(x)
            if sync:
                sync()
            best = max(best, 2 * 1024 * 1024 * 64 * 64 / (time.perf_counter() - t0) / 1e9)
    return best


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {dev}, Python {platform.python_version()}")


def table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    line = lambda vals: "| " + " | ".join(v.ljust(widths[c]) for c, v in zip(cols, vals)) + " |"
    out = [line(cols), "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"]
    out += [line([_fmt(r.get(c)) for c in cols]) for r in rows]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def record(title: str, body: str, cmd: str | None = None) -> None:
    """Append a section with the machine, the command and the table to bench/RESULTS.md."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = cmd or "python -m bench " + " ".join(sys.argv[1:])
    with open(RESULTS, "a") as f:
        f.write(f"\n## {title} ({stamp})\n\n`{cmd}`  \n{machine()}\n\n{body}\n")
