"""train.augment and train.crop: one symmetry or window per row, applied alike to target, condition and mask."""

import pytest
import torch

from cfgdiff.augment import AUGMENTS, apply_element, augment_rows, crop_rows
from cfgdiff.config import ExperimentConfig, apply_overrides
from cfgdiff.degrade import degrade
from cfgdiff.errors import InputError


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


def test_random_crops_cut_the_same_window_from_target_condition_and_mask():
    """Every row's crop is a window of its own field at one offset for all three tensors; offsets vary."""
    n, H, W, h, w = 64, 13, 21, 5, 8
    x0 = torch.randn(n, 2, H, W)
    cond, mask = x0[:, :1] * 3, (x0[:, :1] > 0).float()
    out = crop_rows({"x0": x0, "cond": cond, "mask": mask, "index": torch.arange(n)}, (h, w),
                    torch.Generator().manual_seed(0))
    assert out["x0"].shape == (n, 2, h, w) and out["cond"].shape == out["mask"].shape == (n, 1, h, w)
    assert torch.equal(out["index"], torch.arange(n))
    offsets = set()
    for i in range(n):
        hits = [(t, s) for t in range(H - h + 1) for s in range(W - w + 1)
                if torch.equal(x0[i, :, t:t + h, s:s + w], out["x0"][i])]
        assert len(hits) == 1
        t, s = hits[0]
        offsets.add(hits[0])
        assert torch.equal(out["cond"][i], cond[i, :, t:t + h, s:s + w])
        assert torch.equal(out["mask"][i], mask[i, :, t:t + h, s:s + w])
    assert len(offsets) > n // 2  # drawn per row


def test_validation_crops_are_centred_and_a_full_size_crop_is_the_identity():
    x0 = torch.arange(2 * 1 * 9 * 10, dtype=torch.float32).reshape(2, 1, 9, 10)
    assert torch.equal(crop_rows({"x0": x0}, (5, 4))["x0"], x0[:, :, 2:7, 3:7])
    assert crop_rows({"x0": x0}, (9, 10), torch.Generator())["x0"] is x0


def test_crop_is_set_as_h_comma_w_and_checked():
    cfg = apply_overrides(ExperimentConfig(), ["train.crop=64,48"])
    assert cfg.train.crop == (64, 48) and ExperimentConfig().train.crop is None
    assert apply_overrides(ExperimentConfig(), ["train.crop=[8,8]"]).train.crop == (8, 8)
    with pytest.raises(InputError, match="train.crop must be a list"):
        apply_overrides(ExperimentConfig(), ["train.crop=64"])
    with pytest.raises(InputError, match="train.crop must be H,W with H, W >= 1"):
        apply_overrides(ExperimentConfig(), ["train.crop=0,8"])
