"""Ray Train end to end on a real local Ray: DDP, checkpoints, fault tolerance, resume, TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cfgdiff
from cfgdiff.engine import make_lr_scheduler
from cluster.train import TrainJob, run_training

from .conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _scalars(tb_dir: str, tag: str) -> dict[int, float]:
    out = {}
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def test_two_workers_train_with_a_worker_killed_midway(ray_session, tiny_data, tmp_path):
    """DDP over 2 CPU workers; the last worker dies at step 25, Ray restarts from the step-20
    checkpoint, and the run still ends at step 40 with its checkpoints and a loadable export, bit-identical
    to the same run uninterrupted and to the run killed at step 25 and resumed."""
    cfg = tiny_config(tiny_data, "train.max_steps=40", "train.checkpoint_every=10", "train.keep_checkpoints=3")
    job = TrainJob(data_dir=str(tiny_data), config=cfg, run_name="ddp", storage=str(tmp_path), workers=2,
                   max_failures=1, fail_at_step=25)
    s = run_training(job)
    run = tmp_path / "ddp"
    assert (run / ".fault_injected").read_text() == "25", "the fault really fired"
    assert s["step"] == 40 and s["metrics"]["step"] == 40
    ckpts = sorted(p.name for p in run.glob("step_*"))
    assert len(ckpts) == 3 and ckpts[-1] == "step_0000040"
    loss = _scalars(s["tensorboard"], "train/loss")
    assert set(loss) >= {5, 10, 20, 30, 40}
    assert np.mean([loss[35], loss[40]]) < np.mean([loss[5], loss[10]]), loss
    assert _scalars(s["tensorboard"], "val/psnr"), "validation metrics reach TensorBoard"
    rec = cfgdiff.load(s["export_dir"])
    cond = np.full((2, 1, 16, 16), np.nan, np.float32)
    cond[:, :, ::3, ::3] = 0.5
    out = rec.reconstruct(cond, steps=3)
    assert out.mean.shape == (2, 1, 16, 16) and np.isfinite(out.mean).all()
    assert np.all(out.mean[:, :, ::3, ::3] == 0.5)
    # exact resume (#16.1): the same run uninterrupted, and killed at step 25 then resumed with --resume,
    # end with bit-identical weights. The step-20 checkpoint is mid-epoch (18 steps per epoch per rank).
    from ray.train.v2.api.exceptions import TrainingFailedError
    from safetensors.torch import load_file

    from cfgdiff.checkpoint import load_training_state

    plain = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="plain", storage=str(tmp_path),
                                  workers=2))
    killed = TrainJob(data_dir=str(tiny_data), config=cfg, run_name="killed", storage=str(tmp_path), workers=2,
                      max_failures=0, fail_at_step=25)
    with pytest.raises(TrainingFailedError):
        run_training(killed)
    assert load_training_state(tmp_path / "killed" / "step_0000020")["epoch_step"] == 2, "a mid-epoch checkpoint"
    resumed = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="killed", storage=str(tmp_path),
                                    workers=2))
    ref = load_file(str(Path(plain["export_dir"]) / "model.safetensors"))
    ref_raw = load_training_state(tmp_path / "plain" / "step_0000040")["model"]  # exports hold no training state
    for name, other in (("restarted after a worker death", s), ("killed and resumed", resumed)):
        got = load_file(str(Path(other["export_dir"]) / "model.safetensors"))
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"{name}: EMA weights differ from the uninterrupted run"
        raw = load_training_state(Path(other["export_dir"]).parent / "step_0000040")["model"]
        assert all(torch.equal(ref_raw[k], raw[k]) for k in ref_raw), f"{name}: weights differ"


def test_resume_continues_step_count_and_lr_schedule_exactly(ray_session, tiny_data, tmp_path):
    from ray.train.v2.api.exceptions import TrainingFailedError

    # 18 steps per epoch: the periodic checkpoint at step 18 falls on an epoch's end, whose validated
    # checkpoint takes its place (two reports into one folder made Ray's retention delete the live one)
    cfg = tiny_config(tiny_data, "train.max_steps=30", "train.checkpoint_every=9", "train.keep_checkpoints=1",
                      "train.warmup_steps=8")
    job = TrainJob(data_dir=str(tiny_data), config=cfg, run_name="res", storage=str(tmp_path), workers=1,
                   max_failures=0, fail_at_step=15)
    with pytest.raises(TrainingFailedError):
        run_training(job)
    assert (tmp_path / "res" / "step_0000009").is_dir()
    # resume: same run name and storage; the fault marker exists, so no second failure
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="res", storage=str(tmp_path), workers=1))
    assert s["step"] == 30
    lr = _scalars(s["tensorboard"], "train/lr")
    # the closed-form schedule, stepped without interruption
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    sched = make_lr_scheduler(opt, cfg.train)
    expected = {}
    for step in range(1, 31):
        opt.step()
        sched.step()
        expected[step] = opt.param_groups[0]["lr"]
    for step in (20, 25, 30):
        assert math.isclose(lr[step], expected[step], rel_tol=1e-6), (step, lr[step], expected[step])
    # --resume res --steps 40: the cosine continues over the 40-step horizon (no climb past step 30)
    assert [p.name for p in (tmp_path / "res").glob("step_*")] == ["step_0000030"]
    longer = tiny_config(tiny_data, "train.max_steps=40", "train.checkpoint_every=9", "train.keep_checkpoints=1",
                         "train.warmup_steps=8")
    s = run_training(TrainJob(data_dir=str(tiny_data), config=longer, run_name="res", storage=str(tmp_path), workers=1))
    assert s["step"] == 40
    lr = _scalars(s["tensorboard"], "train/lr")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    sched = make_lr_scheduler(opt, longer.train)
    for step in range(1, 41):
        opt.step()
        sched.step()
        if step in (35, 40):
            assert math.isclose(lr[step], opt.param_groups[0]["lr"], rel_tol=1e-6), (step, lr[step])


def test_uri_storage_gets_checkpoints_and_export(ray_session, tiny_data, tmp_path):
    """--storage accepts pyarrow-filesystem URIs; rank 0 uploads the export and TensorBoard logs. (This run
    also trains with train.augment=d4, so the augmentation runs inside a real Train worker.)"""
    cfg = tiny_config(tiny_data, "train.max_steps=6", "train.checkpoint_every=0", "train.augment=d4")
    uri = f"file://{tmp_path}/remote"
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="u", storage=uri, workers=1))
    assert s["export_dir"] == f"{uri}/u/export" and s["step"] == 6
    run = tmp_path / "remote" / "u"
    assert (run / "export" / "model.safetensors").exists() and list((run / "tensorboard").glob("events.*"))
    assert list(run.glob("step_*/model.safetensors")), "Ray Train persisted the checkpoint to the URI"
    assert cfgdiff.load(str(run / "export")).config.train.max_steps == 6
    assert cfgdiff.load(str(run / "export")).config.train.augment == "d4"
    # #21: the run's config.json goes through the same filesystem (resume on a URI: tests/e2e/test_s3.py)
    from cluster.train import latest_checkpoint, load_run_config

    assert load_run_config(uri, "u").train.max_steps == 6 and latest_checkpoint(f"{uri}/u").startswith(f"{uri}/u/step_")


def test_rotations_need_square_fields(tmp_path):
    from cfgdiff.config import ExperimentConfig
    from cfgdiff.convert import ConvertOptions, convert
    from cfgdiff.data import DatasetMeta
    from cfgdiff.errors import InputError
    from cluster.train import config_for_data

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((20, 8, 12)).astype(np.float32))
    convert(str(tmp_path / "x.npy"), tmp_path / "ds", ConvertOptions(val_fraction=0.0))
    meta = DatasetMeta.load(tmp_path / "ds")
    base = ExperimentConfig()
    with pytest.raises(InputError, match="rotations need square fields, the data are 8x12"):
        config_for_data(meta, base, ["train.augment=rot90"])
    assert config_for_data(meta, base, ["train.augment=flips"]).train.augment == "flips"


def test_relative_storage_paths_resolve_on_the_driver(ray_session, tiny_data, tmp_path, monkeypatch):
    """Workers chdir into Ray's session directory; a relative --storage must still land under the driver's cwd."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tiny_data, "train.max_steps=4", "train.checkpoint_every=0")
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="rel", storage="runs/rel", workers=1))
    assert s["export_dir"] == str(tmp_path / "runs" / "rel" / "rel" / "export")
    assert (tmp_path / "runs" / "rel" / "rel" / "export" / "model.safetensors").exists()


def test_diverging_loss_stops_with_a_clear_error(ray_session, tiny_data, tmp_path):
    """#16.11: a loss that turns non-finite stops the run after train.max_nonfinite steps, naming the step, as
    one InputError from inside the worker; no model is exported and no folder is left (#16.19). Rows that turned
    non-finite since convert are refused where they are decoded: tests/unit/test_convert.py."""
    from cfgdiff.errors import InputError

    cfg = tiny_config(tiny_data, "train.max_steps=40", "train.checkpoint_every=0", "train.lr=1e30",
                      "train.warmup_steps=0", "train.grad_clip=0", "train.max_nonfinite=2")
    with pytest.raises(InputError, match=r"training stopped at step \d+: the loss was NaN or inf for 2 consecutive"):
        run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="div", storage=str(tmp_path), workers=1,
                              max_failures=0))
    assert not (tmp_path / "div").exists()


def test_damaged_shard_is_named_before_training(ray_session, tiny_data, tmp_path):
    """#16.18: a truncated Parquet shard is refused on the driver, naming the shard, before any worker starts."""
    import shutil

    from cfgdiff.errors import InputError

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    shard = sorted((bad / "train").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    cfg = tiny_config(bad, "train.max_steps=4", "train.checkpoint_every=0")
    with pytest.raises(InputError, match=rf"{shard}: unreadable Parquet shard"):
        run_training(TrainJob(data_dir=str(bad), config=cfg, run_name="dmg", storage=str(tmp_path), workers=1))
    assert not (tmp_path / "dmg").exists()
