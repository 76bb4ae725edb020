"""What the object-storage tests (test_s3, test_gcs) share: infer and evaluate with the checkpoint, the data and
the outputs under a remote ROOT give what the same commands give on local disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cfgdiff import fsio
from tests.helpers import run_cli

INFER_FLAGS = ["--split", "val", "--limit", "6", "--steps", "3", "--num-samples", "2", "--workers", "2",
               "--batch-size", "4"]
EVAL_FLAGS = ["--limit", "4", "--steps", "3", "--num-samples", "2", "--degrade", "drop:0.8"]


def infer_and_evaluate_equal_local(root: str, data: str, checkpoint: str, local_data: Path, tmp_path: Path,
                                   capsys) -> tuple[str, Path]:
    """Upload ``checkpoint`` to ROOT/models/tiny; infer ``data`` to ROOT/out/rec.npy and evaluate it to ROOT/eval;
    assert the outputs equal the local runs' (arrays bit for bit, metrics and evaluate's numbers equal).
    Returns the remote checkpoint and the local folder the remote outputs were downloaded to."""
    ckpt = f"{root}/models/tiny"
    fsio.upload(checkpoint, ckpt)
    code, out, err = run_cli(["--quiet", "infer", ckpt, "--input", data, "--out", f"{root}/out/rec.npy", *INFER_FLAGS],
                             capsys)
    assert code == 0 and f"{root}/out/rec.std.npy" in out, err
    code, _, err = run_cli(["--quiet", "infer", str(checkpoint), "--input", str(local_data), "--out",
                            str(tmp_path / "rec.npy"), *INFER_FLAGS], capsys)
    assert code == 0, err
    got = fsio.download(f"{root}/out", tmp_path / "remote_out")
    for name in ("rec.npy", "rec.std.npy", "rec.samples.npy"):
        assert np.array_equal(np.load(got / name), np.load(tmp_path / name)), name
    assert json.loads((got / "rec.metrics.json").read_text()) == json.loads((tmp_path / "rec.metrics.json").read_text())
    assert (got / "rec.grid.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(["--quiet", "evaluate", ckpt, "--data", data, "--out", f"{root}/eval", *EVAL_FLAGS], capsys)
    assert code == 0, err
    code, _, err = run_cli(["--quiet", "evaluate", str(checkpoint), "--data", str(local_data), "--out",
                            str(tmp_path / "eval"), *EVAL_FLAGS], capsys)
    assert code == 0, err
    remote = json.loads(fsio.read_text(f"{root}/eval/evaluate.json"))
    local = json.loads((tmp_path / "eval" / "evaluate.json").read_text())
    assert fsio.is_file(f"{root}/eval/evaluate.png")
    assert _without_seconds(remote["results"]) == _without_seconds(local["results"])
    return ckpt, got


def _without_seconds(results: dict) -> dict:
    return {spec: {name: {k: v for k, v in row.items() if k != "seconds"} for name, row in rows.items()}
            for spec, rows in results.items()}
