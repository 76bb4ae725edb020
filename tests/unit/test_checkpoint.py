import json
import pickle

import pytest
import torch

import cfgdiff
from cfgdiff.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from cfgdiff.config import ExperimentConfig, ModelConfig
from cfgdiff.errors import CheckpointError
from cfgdiff.normalize import ChannelAffine, Normalization
from cfgdiff.unet import ConditionalUNet

TINY = ModelConfig(image_size=(8, 8), dim=8, dim_mults=(1, 2), num_res_blocks=1, heads=1, dim_head=4, groups=4)


def _ckpt(tmp_path, state=None):
    cfg = ExperimentConfig(model=TINY)
    torch.manual_seed(0)
    m = ConditionalUNet(cfg.model).eval()
    norm = Normalization("minmax", ChannelAffine((0.5,), (2.0,)), ChannelAffine((0.5,), (2.0,)))
    path = save_checkpoint(tmp_path / "ck", m.state_dict(), cfg, norm, training_state=state)
    return m, path


def test_round_trip_is_bit_exact(tmp_path):
    m, path = _ckpt(tmp_path, state={"step": 7, "rng": torch.get_rng_state()})
    ck = load_checkpoint(path)
    m2 = ck.build_model(channels_last=False)  # same memory format as the saved model: same kernels
    x, c, mk = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(m(x, t, c, mk), m2(x, t, c, mk))
        # the default channels_last model is a different kernel choice, equal up to float rounding
        torch.testing.assert_close(load_checkpoint(path).build_model()(x, t, c, mk), m(x, t, c, mk))
    assert ck.normalization.target.offset == (0.5,)
    assert load_training_state(path)["step"] == 7
    assert not list(tmp_path.glob(".ck.tmp-*")), "no temp directory left behind"


def test_tampered_weights_refused(tmp_path):
    _, path = _ckpt(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256.*truncated or was modified"):
        load_checkpoint(path)


def test_truncated_and_pickled_weights_refused(tmp_path):
    _, path = _ckpt(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)
    # a pickle in place of the weights, with a matching checksum: still refused, never unpickled
    f.write_bytes(pickle.dumps({"w": 1}))
    doc = json.loads((path / "config.json").read_text())
    import hashlib

    doc["weights_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (exec, ("open('/tmp/cfgdiff_pwned', 'w').write('x')",))


def test_pickle_bearing_training_state_refused(tmp_path):
    _, path = _ckpt(tmp_path)
    (path / "training_state.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_training_state(path)
    import os

    assert not os.path.exists("/tmp/cfgdiff_pwned")


def test_bad_config_and_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not a cfgdiff checkpoint"):
        load_checkpoint(tmp_path)
    _, path = _ckpt(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    doc["format_version"] = 99
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path)


def test_python_api_reconstruct_returns_user_units(tmp_path):
    _, path = _ckpt(tmp_path)
    rec = cfgdiff.load(str(path))
    import numpy as np

    cond = np.random.default_rng(0).uniform(-1.5, 2.5, (3, 8, 8)).astype(np.float32)
    cond[:, 2:5, 2:5] = np.nan
    out = rec.reconstruct(cond, steps=3, w=1.5, num_samples=2, seed=1)
    assert out.samples.shape == (3, 2, 1, 8, 8) and out.mean.shape == (3, 1, 8, 8)
    known = ~np.isnan(cond)
    assert np.array_equal(out.mean[:, 0][known], cond[known]), "known pixels returned exactly, in user units"
    assert np.all(out.std[:, 0][known] == 0) and np.mean(out.std[:, 0][~known] > 0) > 0.5
    again = rec.reconstruct(cond, steps=3, w=1.5, num_samples=2, seed=1, batch_size=2)
    assert np.array_equal(again.samples, out.samples), "batch size does not change the result"


def test_bf16_sampling_runs_the_network_in_bf16_and_stays_close_to_fp32(tmp_path):
    import numpy as np

    from cfgdiff.api import Autocast

    m, path = _ckpt(tmp_path)
    seen = []
    net = Autocast(lambda x, t, c, mk: seen.append(torch.get_autocast_dtype("cpu")) or m(x, t, c, mk), "cpu")
    with torch.no_grad():
        y16 = net(torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
    assert seen == [torch.bfloat16] and torch.is_autocast_enabled("cpu") is False and y16.shape == (2, 1, 8, 8)
    rec = cfgdiff.load(str(path))
    cond = np.random.default_rng(0).uniform(-1.5, 2.5, (3, 8, 8)).astype(np.float32)
    cond[:, 2:5, 2:5] = np.nan
    a = rec.reconstruct(cond, steps=4, w=1.5, seed=1)
    b = rec.reconstruct(cond, steps=4, w=1.5, seed=1, precision="bf16")
    assert not np.array_equal(a.mean, b.mean), "bf16 really ran"
    assert np.abs(a.mean - b.mean).max() < 0.1 * (np.nanmax(cond) - np.nanmin(cond))
    known = ~np.isnan(cond)
    assert np.array_equal(b.mean[:, 0][known], cond[known])
    with pytest.raises(ValueError, match="sampler.precision"):
        ExperimentConfig.from_dict({"sampler": {"precision": "fp8"}})
