import json
from pathlib import Path

import pytest

from cfgdiff.config import ExperimentConfig, ModelConfig, SamplerConfig, TrainConfig, apply_overrides
from cfgdiff.errors import InputError


def test_json_round_trip():
    cfg = ExperimentConfig(model=ModelConfig(dim=32, dim_mults=(1, 2)), sampler=SamplerConfig(resample=(2, 3)),
                           train=TrainConfig(min_snr_gamma=5.0))
    again = ExperimentConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.model.dim_mults, tuple) and again.sampler.resample == (2, 3)


def test_unknown_keys_are_errors():
    d = ExperimentConfig().to_dict()
    d["model"]["dimm"] = 3
    with pytest.raises(ValueError, match="unknown key.*model: dimm"):
        ExperimentConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown key"):
        ExperimentConfig.from_dict({"optim": {}})


def test_validation_names_dotted_field():
    with pytest.raises(ValueError, match=r"sampler\.eta must be in \[0, 1\], got 1.5"):
        SamplerConfig(eta=1.5)
    with pytest.raises(ValueError, match=r"train\.p_uncond"):
        TrainConfig(p_uncond=1.0)
    with pytest.raises(ValueError, match=r"model\.dim must be an integer"):
        ExperimentConfig.from_dict({"model": {"dim": "big"}})
    with pytest.raises(ValueError, match=r"model\.prediction must be one of"):
        ExperimentConfig.from_dict({"model": {"prediction": "x0"}})


def test_overrides_parse_json_never_eval():
    cfg = apply_overrides(ExperimentConfig(), ["model.dim=64", "model.dim_mults=[1,2]", "train.min_snr_gamma=5",
                                               "sampler.method=ddpm", "train.compile=true"])
    assert cfg.model.dim == 64 and cfg.model.dim_mults == (1, 2) and cfg.train.min_snr_gamma == 5.0
    assert cfg.sampler.method == "ddpm" and cfg.train.compile is True
    with pytest.raises(InputError, match="unknown key 'dimm'"):
        apply_overrides(ExperimentConfig(), ["model.dimm=3"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        apply_overrides(ExperimentConfig(), ["model.dim"])
    with pytest.raises(InputError, match="must be an integer"):
        apply_overrides(ExperimentConfig(), ["model.dim=__import__('os')"])
    json.dumps(ExperimentConfig().to_dict())


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_strictly(path):
    cfg = ExperimentConfig.from_dict(json.loads(path.read_text()))
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg


def test_resume_conflicts_name_settings_a_resume_cannot_apply():
    from cfgdiff.config import apply_overrides, resume_conflicts

    saved = ExperimentConfig()
    ok = apply_overrides(saved, ["train.max_steps=9000", "train.ema_decay=0.99", "sampler.w=2.0", "train.log_every=7"])
    assert resume_conflicts(saved, ok) == []
    bad = apply_overrides(saved, ["train.lr=0.1", "model.dim=64"])
    c = resume_conflicts(saved, bad)
    assert len(c) == 2 and c[0].startswith("model.dim: run has 48, got 64") and c[1].startswith("train.lr")
