"""Batch inpainting on Ray Data actors: order, determinism, uncertainty maps, exactly-once under failure."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cfgdiff.config import SamplerConfig
from cfgdiff.errors import InputError
from cluster.infer import InferJob, run_inference

pytestmark = [pytest.mark.ray, pytest.mark.slow]
S = SamplerConfig(steps=3, w=1.5)


def test_one_and_two_actors_identical_in_input_order(ray_session, tiny_data, tiny_checkpoint, tmp_path):
    a = run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "a.npy"), actors=1, batch_size=8,
                               sampler=S, seed=3))
    b = run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "b.parquet"), actors=2, batch_size=5,
                               sampler=S, seed=3))
    assert a["rows"] == b["rows"] == 32
    for r in (a, b):  # the steady window (actors' own batch timestamps) lies inside the whole run
        assert r["steady_images_per_s"] >= r["images_per_s"] > 0 and 0 <= r["startup_s"] < r["seconds"]
    ra = np.load(tmp_path / "a.npy")
    t = pq.read_table(tmp_path / "b.parquet")
    idx = t.column("index").to_numpy()
    assert np.all(np.diff(idx) > 0), "input order"
    rb = t.column("reconstruction").combine_chunks().to_numpy_ndarray()
    assert np.array_equal(ra, rb), "bit-identical across actor counts and batch sizes"
    m = json.loads((tmp_path / "a.metrics.json").read_text())["metrics"]
    assert m["known_error"] == 0.0 and np.isfinite(m["psnr"])
    assert (tmp_path / "a.grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_k_samples_mean_and_std_maps(ray_session, tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    cond = rng.uniform(-2, 2, (6, 16, 16)).astype(np.float32)
    mask = (rng.uniform(size=(6, 16, 16)) > 0.5).astype(np.uint8)
    mask[0] = 1  # analytic case: everything known, so every sample equals the observation
    np.save(tmp_path / "c.npy", cond)
    np.save(tmp_path / "m.npy", mask)
    r = run_inference(InferJob(tiny_checkpoint, str(tmp_path / "c.npy"), str(tmp_path / "o.npy"),
                               mask=str(tmp_path / "m.npy"), actors=2, batch_size=2, sampler=S,
                               num_samples=4))
    mean, std = np.load(tmp_path / "o.npy"), np.load(tmp_path / "o.std.npy")
    samples = np.load(tmp_path / "o.samples.npy")
    assert samples.shape == (6, 4, 1, 16, 16) and r["rows"] == 6
    np.testing.assert_allclose(mean, samples.mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, samples.std(1, ddof=1), rtol=1e-4, atol=1e-5)
    assert np.array_equal(mean[0, 0], cond[0]) and np.all(std[0] == 0)
    known = mask.astype(bool)
    assert np.array_equal(mean[:, 0][known], cond[known]) and np.all(std[:, 0][known] == 0)
    assert np.mean(std[1:, 0][~known[1:]] > 0) > 0.9, "missing pixels vary across samples"


def test_actor_killed_mid_batch_still_exactly_once(ray_session, tiny_data, tiny_checkpoint, tmp_path):
    marker = tmp_path / "died"
    r = run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "o.npy"), actors=2, batch_size=4,
                               sampler=S, fail_once_marker=str(marker)))
    assert marker.exists(), "an actor really died"
    ref = run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "ref.npy"), actors=1, batch_size=8,
                                 sampler=S))
    assert r["rows"] == ref["rows"] == 32
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.load(tmp_path / "ref.npy"))


def test_bad_input_fails_before_any_actor(ray_session, tiny_data, tiny_checkpoint, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((4, 32, 32), np.float32))
    np.save(tmp_path / "m32.npy", np.ones((4, 32, 32), np.uint8))
    with pytest.raises(InputError, match="fields are 32x32 but the model was trained on 16x16: pass --tile 16"):
        run_inference(InferJob(tiny_checkpoint, str(tmp_path / "big.npy"), str(tmp_path / "o.npy"),
                               mask=str(tmp_path / "m32.npy")))
    np.save(tmp_path / "dense.npy", np.zeros((4, 16, 16), np.float32))
    with pytest.raises(InputError, match="no mask"):
        run_inference(InferJob(tiny_checkpoint, str(tmp_path / "dense.npy"), str(tmp_path / "o.npy")))
    with pytest.raises(InputError, match="--actors 1000 x 1 CPU per actor needs 1000 CPUs"):
        run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "o.npy"), actors=1000))
    with pytest.raises(InputError, match="needs 1000 GPUs; the Ray cluster has"):
        run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "o.npy"), gpus_per_actor=1000.0))
    (tmp_path / "taken.npy").write_bytes(b"x")
    with pytest.raises(InputError, match="pass --overwrite"):
        run_inference(InferJob(tiny_checkpoint, str(tiny_data), str(tmp_path / "taken.npy")))
    assert not (tmp_path / "o.npy").exists()
