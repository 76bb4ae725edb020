"""`make gpu-check` (#21.5): without CUDA it refuses in one line and records nothing; its report keeps every
stage's status, a failure's output and the benches' tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_check import _report

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: make gpu-check would run")
def test_without_cuda_it_exits_2_with_one_line_and_records_nothing():
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("gpu-check: no CUDA device") and r.stderr.count("\n") == 1, r.stderr
    made = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode != 0 and "gpu-check: no CUDA device" in made.stderr, made.stderr  # make reaches it
    assert results.read_bytes() == before


def test_report_lists_every_stage_with_failures_and_bench_tables():
    results = [
        {"stage": "gpu tests", "status": "passed", "seconds": 12.0, "output": "3 passed", "command": "pytest -m gpu"},
        {"stage": "bench model 64x64 bf16", "status": "passed", "seconds": 40.0, "command": "python -m bench model",
         "output": "x86_64 ...\n\n## Training step: cfgdiff vs peers\n\n| model | img/s |\n|---|---|\n| cfgdiff | 900 |\n"},
        {"stage": "train --gpu 300 steps bf16", "status": "failed", "seconds": 30.0, "command": "cfgdiff train --gpu",
         "output": "... NCCL error: unhandled system error\n"},
        {"stage": "infer --gpus-per-worker 0.5 --workers 2", "status": "skipped: Ray is not installed",
         "seconds": 0.0, "output": "", "command": ""},
    ]
    text = _report(results, "NVIDIA H200, torch 2.11.0, CUDA 13.0")
    assert text.startswith("GPU: NVIDIA H200")
    assert "| gpu tests | passed | 12 |" in text and "| infer --gpus-per-worker 0.5 --workers 2 | skipped" in text
    assert "NCCL error: unhandled system error" in text and "`cfgdiff train --gpu`" in text
    assert "## Training step: cfgdiff vs peers" in text and "| cfgdiff | 900 |" in text
