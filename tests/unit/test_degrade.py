import pytest
import torch

from cfgdiff.degrade import MaskOperator, PoolOperator, degrade, parse_spec
from cfgdiff.errors import InputError


def _x(n=64, H=32, W=32):
    return torch.rand(n, 1, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_drop_fraction_statistics():
    cond, mask = degrade(_x(200), "drop:0.8", seed=1)
    assert abs(1 - mask.mean().item() - 0.8) < 0.01
    assert torch.all(cond[mask.expand_as(cond) == 0] == 0)


def test_box_area_and_sensors_count():
    _, mask = degrade(_x(8), "box:0.25", seed=0)
    assert torch.all((1 - mask).flatten(1).sum(1) == 16 * 16)
    _, mask = degrade(_x(8), "box:0.25:random", seed=0)
    assert torch.all((1 - mask).flatten(1).sum(1) == 256)
    _, mask = degrade(_x(8), "sensors:64", seed=0)
    assert torch.all(mask.flatten(1).sum(1) == 64)
    _, mask = degrade(_x(4), "lines:2", seed=0)
    assert torch.all(mask[:, :, ::2] == 1) and torch.all(mask[:, :, 1::2] == 0)
    _, mask = degrade(_x(4), "half", seed=0)
    assert torch.all(mask.flatten(1).mean(1) == 0.5)
    _, mask = degrade(_x(4), "strokes:3", seed=0)
    assert torch.all(mask.flatten(1).mean(1) < 1) and torch.all(mask.flatten(1).mean(1) > 0.2)


def test_sr_and_noise():
    x = _x(4)
    cond, mask = degrade(x, "sr:4", seed=0)
    assert torch.all(mask == 0)
    op = PoolOperator(4)
    torch.testing.assert_close(op.A(cond), op.A(x))  # the condition carries exactly the low-res data
    cond, _ = degrade(_x(256), "noise:0.1", seed=0)
    assert abs((cond - _x(256)).std().item() - 0.1) < 0.005


@pytest.mark.parametrize("op", [PoolOperator(2), PoolOperator(4), MaskOperator((_x(2) > 0).float())])
def test_pseudo_inverse_identity(op):
    x = _x(2)
    torch.testing.assert_close(op.A(op.A_pinv(op.A(x))), op.A(x))


def test_reproducible_and_batch_independent():
    x = _x(10)
    a = degrade(x, "mix:drop:0.5,box:0.25,sr:2,strokes:2", seed=3)
    b = degrade(x, "mix:drop:0.5,box:0.25,sr:2,strokes:2", seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    part = degrade(x[4:], "mix:drop:0.5,box:0.25,sr:2,strokes:2", seed=3, index=range(4, 10))
    assert torch.equal(part[1], a[1][4:])
    c = degrade(x, "mix:drop:0.5,box:0.25,sr:2,strokes:2", seed=4)
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("spec,match", [("", "empty"), ("blur:2", "unknown kind"), ("drop", "needs a value"),
                                        ("drop:x", "must be a number"), ("drop:1.5", "out of range"),
                                        ("sr:3.5", "out of range"), ("mix:", "empty"), ("box:0.2:left", "extra")])
def test_bad_specs(spec, match):
    with pytest.raises(InputError, match=match):
        parse_spec(spec)


def test_row_kinds_names_the_degradation_each_row_received():
    """Figure row labels (#17.4): the mask kind a mix gave each row, from the same seeded draw as degrade()."""
    from cfgdiff.degrade import row_kinds

    spec = "mix:drop:0.9,half,box:0.4:random"
    x = torch.randn(40, 1, 16, 16)
    _, mask = degrade(x, spec, seed=3, index=range(100, 140))
    kinds = row_kinds(spec, 3, range(100, 140))
    assert set(kinds) == {"drop:0.9", "half:1", "box:0.4:random"}
    for k, m in zip(kinds, mask[:, 0]):
        known = float(m.mean())
        if k == "half:1":
            assert known == 0.5 and (m[:, :8].all() != m[:, 8:].all() or m[:8].all() != m[8:].all())
        elif k == "drop:0.9":
            assert known < 0.3
        else:
            assert abs((1 - known) - 0.4) < 0.1  # a box of 40% of the area is missing
    assert row_kinds("drop:0.5", 0, [0, 1]) == ["drop:0.5", "drop:0.5"]
