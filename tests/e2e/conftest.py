"""Tiny data and configs for end-to-end tests on a real local Ray."""

from __future__ import annotations

import numpy as np
import pytest

from cfgdiff.config import ExperimentConfig
from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.data import DatasetMeta
from cfgdiff.demo import gaussian_random_fields

TINY_MODEL = ["model.dim=16", "model.dim_mults=[1,2]", "model.num_res_blocks=1", "model.heads=2",
              "model.dim_head=8", "model.groups=4", "schedule.num_timesteps=200"]
TINY_TRAIN = ["train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=5", "train.log_every=5",
              "train.val_samples=8", "train.val_steps=3", "train.val_batches=2", "train.ema_decay=0.9"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """320 Gaussian random fields, 16x16, degraded with drop:0.7 at conversion; 32 val rows."""
    root = tmp_path_factory.mktemp("data")
    np.save(root / "x.npy", gaussian_random_fields(320, 16, 16, seed=1))
    convert(str(root / "x.npy"), root / "ds", ConvertOptions(degrade="drop:0.7", val_fraction=0.1, seed=0))
    return root / "ds"


def tiny_config(data_dir, *extra: str) -> ExperimentConfig:
    from cluster.train import config_for_data

    return config_for_data(DatasetMeta.load(data_dir), ExperimentConfig(), TINY_MODEL + TINY_TRAIN + list(extra))


@pytest.fixture(scope="session")
def tiny_checkpoint(ray_session, tiny_data, tmp_path_factory):
    """A briefly trained tiny model exported by a real 1-worker Ray Train run."""
    from cluster.train import TrainJob, run_training

    storage = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(tiny_data, "train.max_steps=20", "train.checkpoint_every=0")
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="ck", storage=str(storage), workers=1))
    return s["export_dir"]
