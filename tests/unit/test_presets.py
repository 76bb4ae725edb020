"""Architecture presets (#19.1): levels to an 8-16 px bottleneck, attention placed by token count."""

import pytest

from cfgdiff.config import ModelConfig
from cfgdiff.presets import PRESETS, apply_preset, describe, is_custom, level_sides, num_levels, preset_fields


@pytest.mark.parametrize("side,levels,bottleneck,linear", [
    (32, 3, 8, (1,)),        # 16x16 = 256 tokens at level 1
    (64, 4, 8, (1, 2)),      # 32x32 = 1024 tokens: the most linear attention takes
    (128, 5, 8, (2, 3)),     # level 1 is 64x64 = 4096 tokens: none there
    (256, 6, 8, (3, 4)),
    (512, 6, 16, (4,)),      # at most 6 levels: the bottleneck grows to 16x16 = 256 tokens
])
def test_preset_choice_by_size(side, levels, bottleneck, linear):
    for name in PRESETS:
        f = preset_fields(name, side, side)
        assert len(f["dim_mults"]) == levels == num_levels(side, side)
        assert level_sides(side, side, levels)[-1] == (bottleneck, bottleneck)
        assert f["linear_attn_levels"] == linear and f["mid_attention"] and f["preset"] == name
        cfg = ModelConfig(image_size=(side, side), **f)
        cross = [line for line in describe(cfg) if "cross-attention" in line]
        assert cross and all(int(line.split(": ")[1].split("x")[0]) <= 16 for line in cross)
        assert sum("softmax attention" in line for line in describe(cfg)) == 1


def test_small_at_32_is_the_default_model_and_odd_shapes_size_by_their_shorter_side():
    assert apply_preset(ModelConfig(), None, (32, 32)) == ModelConfig(preset="small")
    assert num_levels(100, 150) == 4 and level_sides(100, 150, 4)[-1] == (13, 19)
    assert num_levels(12, 500) == 1 and not preset_fields("tiny", 12, 500)["mid_attention"]  # 6000 tokens: no softmax
    assert preset_fields("large", 64, 64)["dim"] == 96 and preset_fields("tiny", 64, 64)["num_res_blocks"] == 1


def test_a_customised_architecture_is_kept_without_a_preset():
    custom = ModelConfig(dim=16, dim_mults=(1, 2))
    assert is_custom(custom) and not is_custom(ModelConfig(image_size=(64, 64), in_channels=3))
    assert apply_preset(custom, None, (128, 128)) is custom
    assert apply_preset(custom, "base", (128, 128)).dim == 64  # an explicit preset replaces it
    with pytest.raises(ValueError, match="preset must be one of tiny, small, base, large"):
        preset_fields("huge", 32, 32)
