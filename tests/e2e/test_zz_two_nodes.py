"""Other cluster shapes: two raylets on one machine (ray.cluster_utils.Cluster) with workers on both
nodes, and a `ray start --head` cluster that runs `cfgdiff train` through `ray job submit` and serves a driver
started elsewhere, which names the object store only on its own command line.

Runs last (file name) because it replaces the session's single-node Ray with its own clusters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from cfgdiff import fsio
from cluster.runtime import STORAGE_ENV, start_ray, stop_ray
from cluster.train import TrainJob, run_training

from .conftest import TINY_MODEL, TINY_TRAIN, tiny_config

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


@pytest.fixture(scope="module")
def head_node(ray_session):
    """A `ray start --head` cluster with the job server on loopback (the session Ray is stopped first). Its
    processes hold the S3 credentials (a node's own, as on a cloud instance) but not where the object store is:
    no endpoint variable reaches them but what a driver forwards."""
    stop_ray(ray_session)
    bin_dir = Path(sys.executable).parent
    env = {**{k: v for k, v in os.environ.items() if k not in STORAGE_ENV and k != "RAY_ADDRESS"},
           "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([str(bin_dir / "ray"), "start", "--head", "--num-cpus", "4", "--port", "6390",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", "8275", "--disable-usage-stats"],
                   env=env, check=True, timeout=180, capture_output=True)
    yield env, bin_dir
    subprocess.run([str(bin_dir / "ray"), "stop", "--force"], env=env, timeout=180, capture_output=True)


def test_ray_job_submit_runs_cfgdiff_train(head_node, tiny_data, tmp_path):
    env, bin_dir = head_node
    sets = [a for kv in TINY_MODEL + TINY_TRAIN + ["train.checkpoint_every=0"] for a in ("--set", kv)]
    r = subprocess.run([str(bin_dir / "ray"), "job", "submit", "--address", "http://127.0.0.1:8275", "--",
                        "cfgdiff", "train", "--data", str(tiny_data), "--ray-address", "auto", "--steps", "6",
                        "--storage", str(tmp_path), "--name", "job", *sets],
                       env=env, timeout=420, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in out, out[-2000:]
    assert "done: 6 steps" in out and (tmp_path / "job" / "export" / "model.safetensors").exists()


def test_a_driver_elsewhere_forwards_storage_endpoint_to_the_clusters_workers(head_node, s3_server, tiny_data):
    """`cfgdiff train|infer --ray-address HEAD --storage-endpoint URL` from a driver whose environment names no
    endpoint either: the URL reaches the cluster's workers (a job runtime_env), which read the s3:// data, write
    the s3:// checkpoints and export, and write the s3:// reconstructions."""
    env, _ = head_node
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=s3_server.removeprefix("http://"), scheme="http",
                      allow_bucket_creation=True).create_dir("elsewhere")
    fsio.upload(tiny_data, "s3://elsewhere/ds")
    sets = [a for kv in TINY_MODEL + TINY_TRAIN + ["train.checkpoint_every=0"] for a in ("--set", kv)]
    remote = ["--ray-address", "127.0.0.1:6390", "--storage-endpoint", s3_server]
    outs = []
    for args in (["train", "--data", "s3://elsewhere/ds", "--out", "s3://elsewhere/runs", "--name", "far", "--steps", "4",
                  *sets],
                 ["infer", "s3://elsewhere/runs/far/export", "--input", "s3://elsewhere/ds", "--limit", "4", "--steps", "2",
                  "--workers", "2", "--out", "s3://elsewhere/out/recon.npy"]):
        r = subprocess.run([sys.executable, "-m", "cli.main", *args, *remote], env=env, timeout=300, capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parents[2])
        assert r.returncode == 0, f"{args[0]}: {(r.stdout + r.stderr)[-2000:]}"
        outs.append(r.stdout)
    assert "done: 4 steps" in outs[0], outs[0][-2000:]
    assert fsio.is_file("s3://elsewhere/runs/far/export/model.safetensors") and fsio.is_file("s3://elsewhere/out/recon.npy")
