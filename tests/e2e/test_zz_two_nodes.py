"""Two raylets on one machine (ray.cluster_utils.Cluster): workers placed on both nodes.

Runs last (file name) because it replaces the session's single-node Ray with its own cluster.
"""

from __future__ import annotations

import json

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.runtime import start_ray, stop_ray
from cluster.train import TrainJob, run_training

from .conftest import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def two_nodes(ray_session):
    stop_ray(ray_session)  # one Ray at a time: the session cluster goes, this one comes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    c.add_node(num_cpus=3)
    c.wait_for_nodes()
    info = start_ray(c.address)
    yield c
    stop_ray(info)
    c.shutdown()


def test_workers_on_both_nodes(two_nodes, tiny_data, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    cfg = tiny_config(tiny_data, "train.max_steps=12", "train.checkpoint_every=0")
    s = run_training(TrainJob(data_dir=str(tiny_data), config=cfg, run_name="2n", storage=str(tmp_path), workers=2,
                              placement="STRICT_SPREAD"))
    assert s["step"] == 12
    ranks = [json.loads((tmp_path / "2n" / "workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"], ranks
    assert {r["node_id"] for r in ranks} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
