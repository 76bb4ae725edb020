import json
import pickle

import numpy as np
import pytest
import torch

import cfgdiff
from cfgdiff.checkpoint import _doc_sha256, load_checkpoint, load_training_state, save_checkpoint
from cfgdiff.config import ExperimentConfig, ModelConfig
from cfgdiff.errors import CheckpointError, InputError
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
    doc["config_sha256"] = _doc_sha256(doc)  # a deliberate forger recomputes the config digest too
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_edited_config_refused_and_shape_mismatch_named(tmp_path):
    _, path = _ckpt(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    doc["config"]["model"]["dim"] = 16  # a hand edit
    (path / "config.json").write_text(json.dumps(doc))
    for load in (load_checkpoint, cfgdiff.load):
        with pytest.raises(CheckpointError, match="config.json: its content does not match its config_sha256"):
            load(path)
    doc["config_sha256"] = _doc_sha256(doc)  # digest recomputed: the weights still disagree, named clearly
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"tensor \S+ is \(8,?.*makes it \(16,"):
        load_checkpoint(path).build_model()


def test_non_finite_weights_are_never_written(tmp_path):
    cfg = ExperimentConfig(model=TINY)
    sd = ConditionalUNet(cfg.model).state_dict()
    sd["out_conv.bias"] = torch.full_like(sd["out_conv.bias"], float("nan"))
    norm = Normalization.identity(1, 1)
    with pytest.raises(CheckpointError, match="non-finite weights.*out_conv.bias"):
        save_checkpoint(tmp_path / "nan", sd, cfg, norm)
    assert not (tmp_path / "nan").exists() and not list(tmp_path.glob(".nan.tmp-*"))


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
    doc["config_sha256"] = _doc_sha256(doc)
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


def test_antithetic_pairs_keep_the_even_samples_and_need_an_even_k(tmp_path):
    """Samples 0 and 2 of a row draw the streams they draw without pairing (bit for bit); 1 and 3 their negation."""
    _, path = _ckpt(tmp_path)
    rec = cfgdiff.load(str(path))
    cond = torch.full((2, 1, 8, 8), float("nan"))
    cond[:, :, ::2, ::2] = 0.7
    plain = rec.reconstruct(cond.numpy(), steps=3, num_samples=4, seed=1, method="dpm2m-sde")
    anti = rec.reconstruct(cond.numpy(), steps=3, num_samples=4, seed=1, method="dpm2m-sde", antithetic=True)
    assert (anti.samples[:, 0::2] == plain.samples[:, 0::2]).all() and not (anti.samples[:, 1::2] == plain.samples[:, 1::2]).all()
    assert (anti.mean[:, :, ::2, ::2] == 0.7).all() and (anti.std[:, :, ::2, ::2] == 0).all()
    with pytest.raises(InputError, match="--num-samples must be even, got 3"):
        rec.reconstruct(cond.numpy(), steps=3, num_samples=3, antithetic=True)


def test_infer_antithetic_with_an_odd_k_is_one_line_before_ray(tmp_path, capsys):
    from tests.helpers import run_cli

    _, path = _ckpt(tmp_path)
    code, _, err = run_cli(["infer", str(path), "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.npy"),
                            "--num-samples", "3", "--antithetic"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --antithetic: samples come in pairs; --num-samples must be even, got 3"], err
    assert not (tmp_path / "o.npy").exists()


def test_evaluate_antithetic_scores_the_posterior_mean_from_the_pairs(tmp_path, capsys):
    """evaluate --antithetic: the posterior-mean MSE removes the mean's Monte-Carlo variance estimated from the pair
    means (api.mean_variance), and no closed form for independent samples is printed as its reference."""
    from cfgdiff.api import mean_variance
    from cfgdiff.demo import gaussian_random_fields
    from cfgdiff.evaluate import _degrade_raw
    from tests.helpers import run_cli

    _, path = _ckpt(tmp_path)
    np.save(tmp_path / "x.npy", gaussian_random_fields(6, 8, 8, seed=3))
    (tmp_path / "demo.json").write_text(json.dumps({"kind": "grf", "size": 8, "alpha": 4.0, "k0": 1.0, "mean": 0.0}))
    args = ["evaluate", str(path), "--data", str(tmp_path / "x.npy"), "--degrade", "half", "--limit", "6", "--steps",
            "3", "--method", "dpm2m-sde", "--no-baselines", "--num-samples"]
    code, out, err = run_cli([*args, "4", "--antithetic", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    assert "K=4 in antithetic pairs" in out and "estimated from the pair means" in out and "exact samples score" not in out
    doc = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    c = doc["results"]["half"]["cfgdiff"]
    assert doc["antithetic"] is True and doc["mean_of_k_psnr_loss_db"] is None
    assert "coverage_2std_of_exact_samples" not in c and "std_over_exact_std_of_exact_samples" not in c
    rec = cfgdiff.load(str(path))  # the same draw, scored by hand
    target = np.load(tmp_path / "x.npy")
    cond, mask = _degrade_raw(target, "half", rec.ckpt.normalization, 0)
    r = rec.reconstruct(cond, mask, steps=3, num_samples=4, method="dpm2m-sde", antithetic=True)
    scale = rec.ckpt.normalization.target.scale[0]
    miss = np.broadcast_to(mask == 0, target.shape)
    mv = mean_variance(torch.from_numpy(r.samples), antithetic=True).numpy() / scale ** 2
    per_row = [(((r.mean[i] - target[i]) / scale) ** 2)[miss[i]].mean() - mv[i][miss[i]].mean() for i in range(6)]
    assert c["mse_posterior_mean"] == pytest.approx(float(np.mean(per_row)), rel=1e-4)
    assert c["mse_posterior_mean"] < c["mse_missing"]
    code, _, err = run_cli([*args, "3", "--antithetic", "--out", str(tmp_path / "odd")], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --antithetic: samples come in pairs; --num-samples must be even, got 3"], err
    assert not (tmp_path / "odd").exists()


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


@pytest.mark.parametrize("case,kwargs,match", [
    ("inf at a known pixel", {}, "inf in the condition at row 1"),
    ("1e30 at a known pixel", {}, "1e\\+30 at row 1 is more than 1000 times"),
    ("NaN where known", {}, "NaN in the condition at row 1 where the mask says known"),
    ("mask rows differ", {}, r"mask is \(2, 1, 8, 8\) but cond is \(3, 1, 8, 8\)"),
    ("zero rows", {}, "cond holds 0 rows"),
    ("batch_size 0", {"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ("steps 0", {"steps": 0}, "steps must be an integer >= 1, or None"),
    ("model_batch -1", {"model_batch": -1}, "model_batch must be an integer >= 0"),
])
def test_api_refuses_bad_observations_and_arguments(tmp_path, case, kwargs, match):
    """#16.12/#16.17: every bad call gets an InputError naming the row or argument, before any sampling."""
    _, path = _ckpt(tmp_path)
    rec = cfgdiff.load(str(path))
    cond, mask = torch.zeros(3, 1, 8, 8).numpy(), torch.ones(3, 1, 8, 8).numpy()
    if case == "inf at a known pixel":
        cond[1, 0, 2, 2] = float("inf")
    elif case == "1e30 at a known pixel":
        cond[1, 0, 2, 2] = 1e30
    elif case == "NaN where known":
        cond[1, 0, 2, 2] = float("nan")
    elif case == "mask rows differ":
        mask = mask[:2]
    elif case == "zero rows":
        cond, mask = cond[:0], mask[:0]
    from cfgdiff.errors import InputError

    with pytest.raises(InputError, match=match):
        rec.reconstruct(cond, mask, steps=kwargs.pop("steps", 2), **kwargs)
