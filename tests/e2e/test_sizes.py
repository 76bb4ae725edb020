"""#19 at the CLI on a real local Ray: per-channel masks; train on random crops of larger fields, reconstruct a larger,
non-square field in overlapping tiles on 2 actors, and the tiling options' errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfgdiff.demo import gaussian_random_fields
from tests.helpers import run_cli as run

from .conftest import TINY_MODEL, TINY_TRAIN

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _sets(*kv):
    return [a for s in kv for a in ("--set", s)]


def test_train_on_crops_then_infer_a_larger_field_in_tiles(ray_session, tmp_path, capsys):
    """Targets-only 96x96 fields (masks drawn on each 64x64 crop), a few steps; then 3 rows of a 96x128
    field reconstructed at --tile 64 --overlap 16 on 2 actors: rows in order, known pixels exact."""
    np.save(tmp_path / "x.npy", gaussian_random_fields(24, 96, 96, seed=3))
    code, _, err = run(["convert", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ds"), "--val-fraction", "0.2"],
                       capsys)
    assert code == 0, err
    train = ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path), "--name", "crops", "--steps", "3",
             *_sets(*TINY_MODEL, *TINY_TRAIN, "train.batch_size=4", "train.val_samples=2", "train.val_batches=1",
                    "train.checkpoint_every=0", "train.crop=64,64")]
    code, out, err = run(train, capsys)
    assert code == 0, err
    export = tmp_path / "crops" / "export"
    code, out, _ = run(["info", str(export)], capsys)
    doc, _ = json.JSONDecoder().raw_decode(out)
    assert code == 0 and doc["config"]["train"]["crop"] == [64, 64] and doc["config"]["model"]["image_size"] == [64, 64]
    assert "64x64 fields" in out and "level 1: 32x32, 32 channels" in out, out

    rng = np.random.default_rng(0)
    field = gaussian_random_fields(3, 96, 128, seed=5)[:, 0]
    mask = (rng.uniform(size=field.shape) < 0.3).astype(np.uint8)
    field[1] += 0.5  # rows differ in level as well as in pattern
    np.save(tmp_path / "obs.npy", (field * mask).astype(np.float32))
    np.save(tmp_path / "mask.npy", mask)
    common = ["infer", str(export), "--input", str(tmp_path / "obs.npy"), "--mask", str(tmp_path / "mask.npy"),
              "--steps", "2"]
    code, out, err = run(["--quiet", *common, "--out", str(tmp_path / "rec.npy"), "--tile", "64", "--overlap", "16",
                          "--workers", "2", "--batch-size", "1"], capsys)
    assert code == 0, err
    rec = np.load(tmp_path / "rec.npy")
    assert rec.shape == (3, 1, 96, 128) and np.isfinite(rec).all()
    for i in range(3):  # each row's own known pixels, in its own place
        assert np.array_equal(rec[i, 0][mask[i] == 1], field[i][mask[i] == 1]), i

    # the tiling options' errors: exit 2, one line naming the option, nothing written
    for args, match in [([], "fields are 96x128 but the model was trained on 64x64: pass --tile 64"),
                        (["--tile", "100"], "--tile 100: fields are 96x128, smaller than the tile; use --tile <= 96"),
                        (["--tile", "64", "--overlap", "64"], "--overlap must be an integer in [0, --tile=64), got 64"),
                        (["--overlap", "8"], "--overlap needs --tile"),
                        (["--tile", "0"], "--tile must be an integer >= 1")]:
        code, _, err = run([*common, "--out", str(tmp_path / "bad.npy"), *args], capsys)
        assert code == 2 and err.count("\n") == 1 and match in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "bad.npy").exists()
    # a larger tile than the training crop is allowed, with a warning
    code, out, err = run([*common, "--out", str(tmp_path / "big.npy"), "--tile", "96", "--overlap", "16"], capsys)
    assert code == 0 and "larger than the model's training size 64x64" in out + err, err
    np.save(tmp_path / "obs3.npy", np.repeat(field[:, None] * mask[:, None], 3, axis=1).astype(np.float32))
    code, _, err = run(["infer", str(export), "--input", str(tmp_path / "obs3.npy"), "--mask",
                        str(tmp_path / "mask.npy"), "--out", str(tmp_path / "bad.npy"), "--tile", "64"], capsys)
    assert code == 2 and "channel" in err and "Traceback" not in err, err

    # #19.6: evaluate the 96x96 validation fields tiled, against the exact Bayes optimum on their 96x96 torus
    (tmp_path / "demo.json").write_text(json.dumps({"kind": "grf", "size": 96, "alpha": 4.0, "k0": 1.0}))
    ev = ["evaluate", str(export), "--data", str(tmp_path / "ds"), "--limit", "3", "--steps", "2", "--num-samples", "2",
          "--degrade", "drop:0.9", "--degrade", "half"]
    code, _, err = run(ev, capsys)
    assert code == 2 and err.count("\n") == 1 and "fields are 96x96 but the model was trained on 64x64: pass --tile 64" in err
    code, out, err = run([*ev, "--tile", "64", "--overlap", "16", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert doc["field"] == [96, 96] and (doc["tile"], doc["overlap"]) == (64, 16) and doc["bayes_reference"]
    for spec in ("drop:0.9", "half"):
        rows = doc["results"][spec]
        assert rows["cfgdiff"]["known_error"] == 0.0 and rows["cfgdiff"]["posterior_mean_mse_over_bayes"] > 0
        assert rows["kriging (Bayes optimum)"]["mse_missing"] < rows["cfgdiff"]["mse_missing"]  # 3 training steps
        seams = doc["seams"][spec]
        assert seams["row_edges"] == seams["col_edges"] == [32, 64] and len(seams["model"]["row_mean_mse"]) == 96
        assert seams["model"]["edge_over_rest"] > 0 and seams["reference"]["edge_over_rest"] > 0
        lm = rows["LMMSE (fitted covariance)"]  # 9216 values, ~19 training fields: fitted and solved in windows
        assert lm["known_error"] == 0.0 and rows["kriging (Bayes optimum)"]["mse_missing"] <= lm["mse_missing"] < 1.0
    assert doc["lmmse"]["window"] == [16, 16] and doc["lmmse"]["rows"] % 64 == 0 < doc["lmmse"]["rows"]  # 8x8 windows a field
    assert "96x96 in 64 px windows, overlap 16" in out and "seams: edge/rest MSE" in out
    assert "windows of 16x16 (overlap 4" in out
    assert (tmp_path / "ev" / "seams.png").stat().st_size > 0


@pytest.mark.parametrize("sets,match", [
    (["train.crop=40,8"], "--set train.crop=40,8: crops must fit the data's 16x16 fields"),
    (["train.crop=8"], "train.crop must be a list"),
])
def test_bad_crops_are_refused_before_workers(ray_session, tiny_data, tmp_path, capsys, sets, match):
    code, _, err = run(["train", "--data", str(tiny_data), "--out", str(tmp_path), "--name", "bad",
                        *_sets(*TINY_MODEL, *TINY_TRAIN, *sets)], capsys)
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()


def test_preset_sizes_the_network_to_the_crop(tiny_data):
    """--preset and the automatic choice follow the crop's size, and --set still wins."""
    from cfgdiff.config import ExperimentConfig
    from cfgdiff.data import DatasetMeta
    from cluster.train import config_for_data

    meta = DatasetMeta.load(tiny_data)
    auto = config_for_data(meta, ExperimentConfig(), []).model
    assert auto.preset == "small" and auto.dim_mults == (1, 2) and auto.image_size == (16, 16)
    cropped = config_for_data(meta, ExperimentConfig(), ["train.crop=8,8"], preset="base").model
    assert cropped.dim == 64 and cropped.dim_mults == (1,) and cropped.image_size == (8, 8)
    assert config_for_data(meta, ExperimentConfig(), ["model.dim=32"], preset="large").model.dim == 32
    assert config_for_data(meta, ExperimentConfig(), TINY_MODEL).model.preset is None  # custom: kept
    # a preset with a depth of the user's own: the attention is placed for that depth
    own = config_for_data(meta, ExperimentConfig(), ["model.dim_mults=[1,2,2]"], preset="small").model
    assert own.dim_mults == (1, 2, 2) and own.linear_attn_levels == (1,) and own.dim == 48  # the preset alone: 2 levels


def test_per_channel_masks_through_convert_train_and_infer(ray_session, tmp_path, capsys):
    """#19.3: a 2-channel velocity-like target whose components are observed at different pixels. convert keeps
    the (N, 2, H, W) mask, training builds a network with a mask per channel, and infer returns each channel's
    known values exactly, from a per-channel or a per-pixel mask. A model trained on per-pixel masks refuses
    per-channel ones with exit 2."""
    a, b = gaussian_random_fields(48, 16, 16, seed=7), gaussian_random_fields(48, 16, 16, seed=8)
    x = np.concatenate([a, 0.6 * a + 0.8 * b], axis=1).astype(np.float32)  # correlated components
    rng = np.random.default_rng(1)
    m = (rng.uniform(size=x.shape) < 0.3).astype(np.uint8)
    arrays = {"x": x, "c": np.where(m == 1, x, np.nan), "m": m, "m1": m[:, :1], "c1": np.where(m[:, :1] == 1, x, np.nan)}
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr.astype(np.uint8 if name.startswith("m") else np.float32))
    code, _, err = run(["convert", str(tmp_path / "x.npy"), "--condition", str(tmp_path / "c.npy"), "--mask",
                        str(tmp_path / "m.npy"), "--out", str(tmp_path / "ds"), "--val-fraction", "0.25"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path), "--name", "pc", "--steps",
                        "3", *_sets(*TINY_MODEL, *TINY_TRAIN, "train.batch_size=8", "train.checkpoint_every=0")],
                       capsys)
    assert code == 0, err
    export = tmp_path / "pc" / "export"
    code, out, _ = run(["info", str(export)], capsys)
    doc, _ = json.JSONDecoder().raw_decode(out)
    assert doc["config"]["model"]["mask_channels"] == 2 and doc["config"]["model"]["in_channels"] == 2
    for cond_file, mask_file in (("c.npy", "m.npy"), ("c1.npy", "m1.npy")):
        out_file = tmp_path / f"rec-{mask_file}"
        code, _, err = run(["--quiet", "infer", str(export), "--input", str(tmp_path / cond_file), "--mask",
                            str(tmp_path / mask_file), "--out", str(out_file), "--steps", "2", "--limit", "6"], capsys)
        assert code == 0, err
        rec, mm = np.load(out_file), np.broadcast_to(np.load(tmp_path / mask_file), x.shape)[:6].astype(bool)
        assert rec.shape == (6, 2, 16, 16) and np.array_equal(rec[mm], x[:6][mm]), mask_file
    # a model trained on per-pixel masks: per-channel masks are refused, naming the option
    from cfgdiff.checkpoint import save_checkpoint
    from cfgdiff.config import ExperimentConfig
    from cfgdiff.normalize import Normalization
    from cfgdiff.unet import ConditionalUNet

    cfg = ExperimentConfig.from_dict({"model": {"in_channels": 2, "cond_channels": 2, "image_size": [16, 16], "dim": 8,
                                                "groups": 4, "dim_mults": [1, 2], "num_res_blocks": 1, "heads": 1,
                                                "dim_head": 4}})
    save_checkpoint(tmp_path / "pp", ConditionalUNet(cfg.model).state_dict(), cfg, Normalization.identity(2, 2))
    code, _, err = run(["infer", str(tmp_path / "pp"), "--input", str(tmp_path / "c.npy"), "--mask",
                        str(tmp_path / "m.npy"), "--out", str(tmp_path / "bad.npy")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--mask {tmp_path / 'm.npy'} has 2 channels; the model takes 1" in err, err
    assert not (tmp_path / "bad.npy").exists()
