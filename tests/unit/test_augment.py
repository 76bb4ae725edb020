"""train.augment: one symmetry per row, applied alike to target, condition and mask."""

import pytest
import torch

from cfgdiff.augment import AUGMENTS, apply_element, augment_rows
from cfgdiff.config import ExperimentConfig
from cfgdiff.degrade import degrade


def _orbit(x):
    return {k: apply_element(x, k) for k in range(8)}


def test_elements_are_the_eight_symmetries_of_the_square_and_flips_keep_any_shape():
    x = torch.arange(12.0).reshape(1, 3, 4)
    flips = {tuple(apply_element(x, k).flatten().tolist()) for k in (0, 2, 5, 7)}
    assert flips == {tuple(t.flatten().tolist()) for t in (x, x.flip(-1), x.flip(-2), x.flip(-1, -2))}
    assert all(apply_element(x, k).shape == x.shape for k in (0, 2, 5, 7))
    sq = torch.arange(16.0).reshape(1, 4, 4)
    assert len({tuple(v.flatten().tolist()) for v in _orbit(sq).values()}) == 8


@pytest.mark.parametrize("kind", ["flips", "rot90", "d4"])
def test_augmentation_keeps_each_rows_target_condition_and_mask_paired(kind):
    x0 = torch.randn(64, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, mask = degrade(x0, "mix:drop:0.7,half,box:0.3:random", seed=3)
    cond = cond[:, :1]  # a condition with fewer channels than the target
    out = augment_rows({"x0": x0, "cond": cond, "mask": mask, "index": torch.arange(64)}, kind,
                       torch.Generator().manual_seed(1))
    assert torch.equal(out["index"], torch.arange(64)), "other keys pass through"
    used = set()
    for i in range(64):
        # the row's target, condition and mask all went through the same group element
        ks = [k for k in range(8) if torch.equal(apply_element(x0[i], k), out["x0"][i])]
        assert len(ks) == 1
        k = ks[0]
        used.add(k)
        assert torch.equal(apply_element(cond[i], k), out["cond"][i])
        assert torch.equal(apply_element(mask[i], k), out["mask"][i])
        assert torch.equal(out["cond"][i], out["x0"][i, :1] * out["mask"][i])  # still cond = x * mask
    assert used == {"flips": {0, 2, 5, 7}, "rot90": {0, 1, 2, 3}, "d4": set(range(8))}[kind]


def test_config_validates_the_kind():
    assert ExperimentConfig().train.augment == "none" and "rot90" in AUGMENTS
    with pytest.raises(ValueError, match="train.augment"):
        ExperimentConfig.from_dict({"train": {"augment": "mirror"}})
