"""`make gpu-check` (#21.5): one prepared script for the first time a GPU is at hand, under 8 minutes.

Stages, each timed and recorded as passed, failed (with its last lines) or skipped (with why):
  1. the `gpu`-marked tests;
  2. `bench model` (training step, bf16, MFU) and `bench sampler` at 32x32 and 64x64, against the peers
     that are installed;
  3. with Ray installed: `cfgdiff train --gpu --workers 1` on demo data, 300 steps in bf16, then `--resume`
     to 350; `cfgdiff infer --gpus-per-worker 0.5 --workers 2` with the result.
The report goes to bench/RESULTS.md (and to $OUT/gpu-check.md when $OUT is set, as on the device machine).
Without CUDA it exits 2 with one line. Run it with the Python that has torch with CUDA (`make gpu-check PY=python3`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stage(name: str, argv: list[str], results: list[dict], timeout: float, cwd: Path = ROOT) -> bool:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out = r.returncode == 0, (r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout:.0f} s\n{(e.stdout or b'')[-3000:]!r}"
    s = time.perf_counter() - t0
    print(f"[gpu-check] {name}: {'passed' if ok else 'FAILED'} in {s:.0f} s", flush=True)
    results.append({"stage": name, "status": "passed" if ok else "failed", "seconds": s, "output": out,
                    "command": " ".join(argv)})
    return ok


def _skip(name: str, why: str, results: list[dict]) -> None:
    print(f"[gpu-check] {name}: skipped ({why})", flush=True)
    results.append({"stage": name, "status": f"skipped: {why}", "seconds": 0.0, "output": "", "command": ""})


def _tables(output: str) -> str:
    """The markdown tables and notes a bench printed (its '## ' sections)."""
    i = output.find("\n## ")
    return output[i + 1:].strip() if i >= 0 else ""


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch (torch.cuda.is_available() is False); run it on a GPU "
              "machine", file=sys.stderr)
        return 2
    py, results = sys.executable, []
    _stage("gpu tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/unit"], results, 240)
    for size in (32, 64):
        _stage(f"bench model {size}x{size} bf16", [py, "-m", "bench", "model", "--device", "cuda", "--precision", "bf16",
                                                   "--size", str(size), "--batch", "64"], results, 240)
    _stage("bench sampler bf16", [py, "-m", "bench", "sampler", "--device", "cuda", "--precision", "bf16"], results, 120)
    try:
        import ray  # noqa: F401
    except ImportError:
        for name in ("train --gpu 300 steps bf16, resume", "infer --gpus-per-worker 0.5 --workers 2"):
            _skip(name, "Ray is not installed on this machine", results)
    else:
        with tempfile.TemporaryDirectory() as d:
            cli = [py, "-m", "cli.main"]
            ok = _stage("demo data and convert", cli + ["demo-data", "--out", f"{d}/raw", "--n", "2048"], results, 120) \
                and _stage("convert", cli + ["convert", f"{d}/raw/target.npy", "--out", f"{d}/ds"], results, 120)
            common = ["--data", f"{d}/ds", "--gpu", "--workers", "1", "--precision", "bf16", "--out", f"{d}/runs",
                      "--name", "gpu"]
            ok = ok and _stage("train --gpu 300 steps bf16", cli + ["train", *common, "--steps", "300"], results, 300) \
                and _stage("train --resume to 350", cli + ["train", *common, "--resume", "--steps", "350"], results, 200)
            if ok:
                _stage("infer --gpus-per-worker 0.5 --workers 2",
                       cli + ["infer", f"{d}/runs/gpu/export", "--input", f"{d}/ds", "--out", f"{d}/r.npy", "--workers",
                              "2", "--gpus-per-worker", "0.5", "--limit", "64"], results, 200)
    report = _report(results, f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    from .common import record

    record("make gpu-check", report, cmd="make gpu-check")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-check.md").write_text(report)
    print(report)
    return 0 if all(r["status"] != "failed" for r in results) else 1


def _report(results: list[dict], gpu: str) -> str:
    lines = [f"GPU: {gpu}", "",
             "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} |" for r in results]
    for r in results:
        if r["status"] == "failed":
            lines += ["", f"### {r['stage']} failed: `{r['command']}`", "", "```", r["output"][-3000:].strip(), "```"]
        elif r["stage"].startswith("bench") and _tables(r["output"]):
            lines += ["", f"### {r['stage']}", "", _tables(r["output"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
