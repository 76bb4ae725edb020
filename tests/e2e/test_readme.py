"""Every command block in the README runs as written (#17.1), on tiny sizes, in order, in a fresh folder.

Blocks are the README's fenced ``bash`` and ``python`` blocks. Sizes are substituted (steps, rows, trials,
samples) from an explicit table, every entry of which must be used: a README edit that changes a figure
fails here instead of silently running at full size. Train and tune commands also get the tiny model of the
other end-to-end tests. A block is skipped only behind a ``<!-- readme-test: skip (why) -->`` line, and only
the two known ones may be.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cfgdiff.demo import gaussian_random_fields
from tests.helpers import run_cli

from .conftest import TINY_MODEL, TINY_TRAIN

pytestmark = [pytest.mark.ray, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```",
                   re.S)
SKIPS = {"make run and make test are the bootstrap and CI's own commands", "needs a multi-node Ray cluster"}
# option -> {value in the README: tiny value}
SIZES = {
    "--steps": {"2000": "4", "4000": "6", "20": "2"},
    "--n": {"32768": "96", "4096": "64", "512": "40"},
    "--trials": {"4": "1"},
    "--epochs": {"3": "1"},
    "--w-grid": {"0,0.5,1,1.5,2,3,5": "0,1"},
    "--num-samples": {"8": "2", "4": "2"},
    "--limit": {"128": "4"},
    "--val-fraction": {"0.0078125": "0.25"},
    "--size": {"128": "96", "32": "16"},
    "--sweep": {"ddim:10": "ddim:2", "dpm2m:10": "dpm2m:3", "ddim:50": "ddim:3", "ddpm:1000": "ddpm:4",
                "ddim:25:r5,3": "ddim:2:r2,2"},
}
PY_SIZES = {"steps=50": "steps=2", "num_samples=8": "num_samples=2"}
TINY_SETS = [a for kv in TINY_MODEL + TINY_TRAIN + ["train.max_steps=4", "train.checkpoint_every=0"]
             for a in ("--set", kv)]


def readme_blocks() -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["body"], m["why"]) for m in BLOCK.finditer(README.read_text())]


def commands(body: str) -> list[list[str]]:
    return [argv for line in body.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


def tiny(argv: list[str], used: set) -> list[str]:
    out = list(argv)
    for i in range(1, len(out)):
        table = SIZES.get(out[i - 1], {})
        if out[i] in table:
            used.add((out[i - 1], out[i]))
            out[i] = table[out[i]]
    cmd = out[1]
    if cmd in ("train", "tune"):
        out += TINY_SETS
    if cmd in ("infer", "evaluate") and "--steps" not in out:
        out += ["--steps", "2"]
    if cmd == "evaluate" and "--limit" not in out:
        out += ["--limit", "4"]
    return out


def _user_files(root: Path) -> None:
    """The arrays the README's "Your data" examples start from."""
    rng = np.random.default_rng(0)
    target = gaussian_random_fields(64, 16, 16, seed=0)
    mask = (rng.uniform(size=target.shape) > 0.6).astype(np.uint8)
    np.save(root / "target.npy", target)
    np.save(root / "observed.npy", np.where(mask == 1, target, 0.0).astype(np.float32))
    np.save(root / "mask.npy", mask)
    np.save(root / "observed_with_nans.npy", np.where(mask == 1, target, np.nan).astype(np.float32))
    uv = np.concatenate([target, gaussian_random_fields(64, 16, 16, seed=1)], axis=1)  # two components
    mask_uv = (rng.uniform(size=uv.shape) > 0.6).astype(np.uint8)  # each observed at its own pixels
    np.save(root / "velocity.npy", uv)
    np.save(root / "observed_uv.npy", np.where(mask_uv == 1, uv, np.nan).astype(np.float32))
    np.save(root / "mask_uv.npy", mask_uv)


def _bucket(name: str) -> None:
    import pyarrow.fs as pafs

    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)


def _background(args: list[str]) -> subprocess.Popen:
    """A README command ending in ``&`` (``cfgdiff serve``): started as a process (it joins this session's Ray
    through the inherited RAY_ADDRESS), and waited for until its /healthz answers."""
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path.cwd(),
                            env={**os.environ, "PYTHONPATH": str(README.parent)})
    port = args[args.index("--port") + 1]
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
            return proc
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (proc.stdout.read() if proc.poll() is not None else
                                                                    "cfgdiff serve did not come up")
            time.sleep(1)


def _run_block(lang: str, body: str, used: set, used_py: set, ran: list, procs: list, capsys) -> None:
    if lang == "python":
        code = body
        for a, b in PY_SIZES.items():
            if a in code:
                used_py.add(a)
                code = code.replace(a, b)
        scope = {"cond": np.load("observed.npy")[:3], "mask": np.load("mask.npy")[:3]}
        exec(compile(code, "README.md (python block)", "exec"), scope)  # the README's own example
        assert scope["out"].mean.shape == (3, 1, 16, 16)
        ran.append("python")
        return
    for argv in commands(body):
        if argv[0] == "curl":  # against the service a previous block started
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{shlex.join(argv)}: exit {r.returncode} {r.stderr[-500:]}"
            ran.append("curl")
            continue
        assert argv[0] == "cfgdiff", f"README command not covered by this test: {argv}"
        args = tiny(argv, used)
        if args[-1] == "&":
            procs.append(_background(args[:-1]))
            ran.append(argv[1])
            continue
        code, out, err = run_cli(args[1:], capsys)
        assert code == 0, f"{shlex.join(argv)}\n-> {shlex.join(args)}\n{out[-1500:]}\n{err[-1500:]}"
        ran.append(argv[1])


def test_every_readme_block_runs(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    _user_files(tmp_path)
    _bucket("my-bucket")  # "Object storage everywhere": the user's bucket, on this session's S3 server
    blocks = readme_blocks()
    assert {why for _, _, why in blocks if why} == SKIPS and sum(why is not None for _, _, why in blocks) == 2
    used, used_py, ran, procs = set(), set(), [], []
    try:
        for lang, body, why in blocks:
            if not why:
                _run_block(lang, body, used, used_py, ran, procs, capsys)
    finally:
        for proc in procs:  # Ctrl-C, as the README says: the service removes its application and exits 0
            proc.send_signal(signal.SIGINT)
            out = proc.communicate(timeout=120)[0]
            assert proc.returncode == 0 and "stopping" in out, out[-2000:]
    assert set(PY_SIZES) == used_py, f"python size substitutions not found in the README: {set(PY_SIZES) - used_py}"
    assert json.loads(Path("answer.json").read_text())["meta"]["num_samples"] == 2, "the curl answer"
    unused = {(k, v) for k, t in SIZES.items() for v in t} - used
    assert not unused, f"size substitutions not found in the README (update SIZES): {sorted(unused)}"
    assert {"convert", "train", "export", "tune", "infer", "evaluate", "demo-data", "python", "serve", "curl"} <= set(ran), ran
    assert sorted(p.name for p in Path("models/grf-best").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert Path("runs/cfgdiff-run/export/model.safetensors").exists() and Path("out/recon.npy").exists()
    assert Path("runs/eval/evaluate.png").exists() and Path("runs/tune/best.json").exists()
    from cfgdiff import fsio  # "Object storage everywhere"

    assert all(fsio.is_file(f"s3://my-bucket/{f}") for f in ("grf/cfgdiff.json", "runs/cfgdiff-run/export/model.safetensors",
                                                             "out/recon.npy", "eval/evaluate.json"))
    # "Large and odd-sized fields": --limit rows of 96x96 (128 in the README) reconstructed in 64x64 tiles (2 x 2)
    # by a model trained on 64x64 crops
    assert np.load("out/big.npy").shape == (4, 1, 96, 96)
    big = json.loads(Path("runs/eval-big/evaluate.json").read_text())  # scored tiled against the Bayes optimum
    assert big["field"] == [96, 96] and big["tile"] == 64 and big["bayes_reference"] and Path("runs/eval-big/seams.png").exists()
    # "Your files": reconstructions back in the source's form
    import xarray as xr
    from PIL import Image

    rec, src = xr.open_dataset("out/field.nc"), xr.open_dataset("data/nc/observed.nc")
    assert rec.field.dims == src.field.dims and rec.time.equals(src.time) and rec.field.attrs["units"] == "1"
    assert "field_std" in rec and "mask" in rec and "field_std" not in xr.open_dataset("out/field-valid.nc")
    assert sorted(p.name for p in Path("out/photos").iterdir()) == sorted(p.name for p in Path("data/png/images").iterdir())
    assert np.asarray(Image.open("out/photos/00000.png")).dtype == np.uint16
