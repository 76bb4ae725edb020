"""Exports that can be shared (#21.3): config, weights and a model card, no training state, umask permissions;
`cfgdiff export` re-exports any checkpoint of a run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from cfgdiff.checkpoint import load_checkpoint, save_checkpoint
from cfgdiff.config import ExperimentConfig, ModelConfig
from cfgdiff.errors import CheckpointError
from cfgdiff.export import export_checkpoint, find_checkpoint
from cfgdiff.normalize import ChannelAffine, Normalization
from cfgdiff.unet import ConditionalUNet
from tests.helpers import run_cli

TINY = ModelConfig(image_size=(8, 12), dim=8, dim_mults=(1, 2), num_res_blocks=1, heads=1, dim_head=4, groups=4)


def _run(tmp_path):
    """A run folder as `cfgdiff train` leaves it: step checkpoints with training state, and best/."""
    cfg = ExperimentConfig(model=TINY)
    norm = Normalization("minmax", ChannelAffine((0.5,), (2.0,)), ChannelAffine((0.25,), (4.0,)))
    run = tmp_path / "run"
    weights = {}
    for step in (10, 20):
        torch.manual_seed(step)
        weights[step] = ConditionalUNet(cfg.model).state_dict()
        save_checkpoint(run / f"step_{step:07d}", weights[step], cfg, norm,
                        meta={"step": step, "dataset": "data/ds", "command": "cfgdiff train --data data/ds",
                              "validation": {"psnr": 20.0 + step, "ssim": 0.5}},
                        training_state={"step": step, "optimizer": {}})
    save_checkpoint(run / "best", weights[10], cfg, norm, meta={"step": 10}, training_state={"step": 10})
    (run / "config.json").write_text("{}")  # a run folder holds the run's own config.json (not a checkpoint)
    return run, weights


def _modes(d):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [d, *d.iterdir()]}


def test_export_holds_config_weights_and_card_with_umask_permissions(tmp_path):
    run, weights = _run(tmp_path)
    old = os.umask(0o022)
    try:
        out = Path(export_checkpoint(find_checkpoint(run), tmp_path / "shared" / "model"))
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"], "no training state"
    assert _modes(out) == {"model": 0o755, "README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}
    ck = load_checkpoint(out)
    assert all(torch.equal(ck.state_dict[k], weights[20][k]) for k in weights[20]), "the latest step's weights"
    card = (out / "README.md").read_text()
    for text in ("8x12", "1 target channel", "offset 0.5, scale 2", "steps: 20", "cfgdiff train --data data/ds",
                 "| psnr | 40 |"):
        assert text in card, (text, card)
    assert not list((tmp_path / "shared").glob(".*tmp-*")), "no temp folder left behind"


def test_a_strict_umask_is_respected(tmp_path):
    run, _ = _run(tmp_path)
    old = os.umask(0o077)
    try:
        out = Path(export_checkpoint(run / "best", tmp_path / "private"))
    finally:
        os.umask(old)
    assert set(_modes(out).values()) == {0o700, 0o600}


def test_save_checkpoint_is_not_left_0700(tmp_path):
    run, _ = _run(tmp_path)
    assert stat.S_IMODE((run / "best").stat().st_mode) == 0o777 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_find_checkpoint_names_what_exists(tmp_path):
    run, _ = _run(tmp_path)
    assert find_checkpoint(run) == str(run / "step_0000020") and find_checkpoint(run, "best") == str(run / "best")
    assert find_checkpoint(run / "step_0000010", "best") == str(run / "step_0000010"), "a checkpoint folder is itself"
    with pytest.raises(CheckpointError, match="--checkpoint export: not in .*; expected one of latest, best, "
                                              "step_0000010, step_0000020"):
        find_checkpoint(run, "export")
    with pytest.raises(CheckpointError, match="no such run"):
        find_checkpoint(tmp_path / "nope")


def test_cli_export_and_its_errors(tmp_path, capsys):
    run, _ = _run(tmp_path)
    code, out, err = run_cli(["export", str(run), "--checkpoint", "best", "--out", str(tmp_path / "m")], capsys)
    assert code == 0 and "README.md, config.json, model.safetensors" in out, err
    code, _, err = run_cli(["export", str(run), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    code, _, err = run_cli(["export", str(run), "--checkpoint", "step_9", "--out", str(tmp_path / "n")], capsys)
    assert code == 2 and "--checkpoint step_9: not in" in err and not (tmp_path / "n").exists()
