"""gs:// against a real GCS JSON API (#21.1): gcp-storage-emulator's server on 127.0.0.1, reached through the
standard STORAGE_EMULATOR_HOST. convert to gs://, infer from gs:// to gs:// (checkpoint, data and outputs there)
and evaluate on gs:// give what the same commands give on local disk, and so does Ray Train with its data and its
storage on gs:// (then resumed from its gs:// checkpoint); Ray Tune keeps its search on gs://. Ray opens a gs://
storage path with Google's default credentials, which an emulator cannot give, so under STORAGE_EMULATOR_HOST
cfgdiff hands Ray its own anonymous filesystem (``cluster.storage.ray_storage``)."""

from __future__ import annotations

import pytest

from cfgdiff import fsio
from tests.helpers import run_cli

from .remote_runs import infer_and_evaluate_equal_local

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def gcs_bucket(gcs_server):
    """The session's GCS emulator (``tests/conftest.py``), started before Ray so that Ray's processes find it."""
    return gcs_server


def test_convert_infer_and_evaluate_on_gcs_equal_the_local_runs(ray_session, tiny_checkpoint, tiny_data, gcs_bucket,
                                                                tmp_path, capsys):
    b = gcs_bucket
    x = str(tiny_data.parent / "x.npy")
    code, _, err = run_cli(["--quiet", "convert", x, "--degrade", "drop:0.7", "--val-fraction", "0.1", "--seed", "0",
                            "--out", f"{b}/data"], capsys)
    assert code == 0, err
    local = fsio.download(f"{b}/data", tmp_path / "fetched")
    names = sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert all((tiny_data / n).read_bytes() == (local / n).read_bytes() for n in names), "same bytes as on disk"
    code, _, err = run_cli(["convert", x, "--degrade", "drop:0.7", "--out", "gs://no-such-bucket/d"], capsys)
    assert code == 2 and err.count("\n") == 1 and "gs://no-such-bucket/d" in err, err

    infer_and_evaluate_equal_local(b, f"{b}/data", tiny_checkpoint, tiny_data, tmp_path, capsys)


def test_train_on_gcs_equals_the_local_run_and_resumes_from_gcs(ray_session, tiny_checkpoint, tiny_data, gcs_bucket,
                                                                 tmp_path, capsys):
    """The fixture's model (20 steps, local data and storage) trained again with the data and Train's storage on
    gs://: the same weights bit for bit; then `--resume` reads its gs:// checkpoint and goes on to 24 steps."""
    import torch
    from safetensors.torch import load_file

    from cluster.train import TrainJob, run_training

    from .conftest import tiny_config

    b = gcs_bucket
    data = f"{b}/train-data"
    code, _, err = run_cli(["--quiet", "convert", str(tiny_data.parent / "x.npy"), "--degrade", "drop:0.7",
                            "--val-fraction", "0.1", "--seed", "0", "--out", data], capsys)
    assert code == 0, err
    cfg = tiny_config(tiny_data, "train.max_steps=20", "train.checkpoint_every=0")  # the fixture's run
    s = run_training(TrainJob(data_dir=data, config=cfg, run_name="gsrun", storage=f"{b}/runs", workers=1))
    assert s["step"] == 20 and s["export_dir"] == f"{b}/runs/gsrun/export" and s["checkpoint"].startswith(f"{b}/runs/gsrun/")
    assert fsio.is_file(f"{b}/runs/gsrun/config.json") and fsio.is_dir(s["checkpoint"])
    ref = load_file(f"{tiny_checkpoint}/model.safetensors")
    got = load_file(str(fsio.download(f"{b}/runs/gsrun/export", tmp_path / "gs20") / "model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), "gs:// = local disk"
    code, out, err = run_cli(["train", "--data", data, "--out", f"{b}/runs", "--resume", "gsrun", "--steps", "24"], capsys)
    assert code == 0 and "done: 24 steps" in out, err
    again = load_file(str(fsio.download(f"{b}/runs/gsrun/export", tmp_path / "gs24") / "model.safetensors"))
    assert any(not torch.equal(again[k], got[k]) for k in got), "the resumed run trained on"


def test_tune_on_gcs_keeps_the_search_and_its_trials_there(ray_session, tiny_data, gcs_bucket, tmp_path, capsys):
    """`tune` with its data and --out on gs://: Tune's experiment state (RunConfig(storage_path=gs://...)), the
    trial's Train run, the table and best.json are all on the emulator, and the best checkpoint loads from there.
    (That a trial equals the `train` run with its p is asserted on S3, through the same code.)"""
    from cfgdiff.api import load
    from cluster.tune import TuneJob, run_tune

    from .conftest import tiny_config

    b = gcs_bucket
    data = f"{b}/tune-data"
    code, _, err = run_cli(["--quiet", "convert", str(tiny_data.parent / "x.npy"), "--degrade", "drop:0.7",
                            "--val-fraction", "0.1", "--seed", "0", "--out", data], capsys)
    assert code == 0, err
    out = f"{b}/tune"
    s = run_tune(TuneJob(data_dir=data, config=tiny_config(tiny_data, "train.max_steps=6"), out_dir=out,
                         p_grid=(0.2,), w_grid=(0.0, 1.0), epochs=1))
    assert [r["status"] for r in s["rows"]] == ["completed"], s["rows"]
    best = s["best"]["checkpoint"]
    assert best.startswith(f"{out}/trials/") and fsio.is_file(f"{out}/trials.csv") and fsio.is_file(f"{out}/best.json")
    assert fsio.is_dir(f"{out}/cfgdiff-tune"), "Tune's experiment state is kept on gs://"
    rec = load(str(fsio.download(best, tmp_path / "best")))
    assert rec.config.train.p_uncond == 0.2
