import pytest
import torch

from cfgdiff.config import ModelConfig
from cfgdiff.unet import ConditionalUNet, num_parameters

TINY = dict(dim=16, dim_mults=(1, 2), num_res_blocks=1, heads=2, dim_head=8, groups=4)


@pytest.mark.parametrize("C,Cc,H,W,kw", [
    (1, 1, 16, 16, {}),
    (3, 3, 8, 12, {"use_cross_attn": False}),
    (2, 5, 16, 8, {"use_control_add": False, "prediction": "v"}),
    (4, 1, 8, 8, {"use_concat": False, "linear_attn_levels": (0, 1)}),
    (1, 2, 12, 16, {"dim_mults": (1, 2, 2), "mid_attention": False}),
])
def test_output_shape_equals_input_shape(C, Cc, H, W, kw):
    cfg = ModelConfig(in_channels=C, cond_channels=Cc, image_size=(H, W), **{**TINY, **kw})
    m = ConditionalUNet(cfg)
    x = torch.randn(2, C, H, W)
    out = m(x, torch.tensor([0, 999]), torch.randn(2, Cc, H, W), torch.ones(2, 1, H, W))
    assert out.shape == x.shape


def test_reference_size_is_about_6m_parameters():
    n = num_parameters(ConditionalUNet(ModelConfig(use_control_add=False, use_cross_attn=False)))
    assert 5e6 < n < 8e6, n


def test_gradients_reach_control_encoder_and_cross_attention():
    cfg = ModelConfig(image_size=(16, 16), **TINY)
    m = ConditionalUNet(cfg)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, c, mk = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.ones(4, 1, 16, 16)
    t = torch.randint(0, 1000, (4,))
    for _ in range(2):  # the zero-initialised injections open up after one step
        opt.zero_grad()
        m(x, t, c, mk).pow(2).mean().backward()
        opt.step()
    crosses = [lv.cross for lv in list(m.down) + list(m.up) if lv.cross is not None]
    assert crosses, "cross-attention present at <= 16x16"
    for name, mod in [("control", m.control)] + [(f"cross{i}", c) for i, c in enumerate(crosses)]:
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reaches {name}"
        assert all(float(g.abs().sum()) > 0 for g in [mod.parameters().__next__().grad])


def test_zero_init_injection_equals_concat_only_at_init():
    base = ConditionalUNet(ModelConfig(image_size=(16, 16), use_control_add=False, use_cross_attn=False, **TINY))
    full = ConditionalUNet(ModelConfig(image_size=(16, 16), **TINY))
    missing, unexpected = full.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("control.", "inject", "down.", "up.", "mid_cross")) for k in missing)
    x, c, mk = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16), torch.ones(3, 1, 16, 16)
    t = torch.tensor([1, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(full(x, t, c, mk), base(x, t, c, mk), atol=1e-6, rtol=1e-5)


def test_bad_shapes_give_clear_errors():
    m = ConditionalUNet(ModelConfig(image_size=(16, 16), **TINY))
    with pytest.raises(ValueError, match="x_t must be"):
        m(torch.randn(1, 2, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="cond must be"):
        m(torch.randn(1, 1, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="mask must be"):
        m(torch.randn(1, 1, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 16, 16), torch.ones(1, 2, 16, 16))


@pytest.mark.parametrize("hw", [(15, 16), (37, 64), (5, 3), (100, 150)])
def test_any_size_is_padded_and_cropped_back(hw):
    """Sides that are not multiples of 2**(levels-1) = 4: x_t and cond reflected, the mask 0 on the padding, the
    output cropped back. The result is the unpadded network run on exactly that padded input."""
    from cfgdiff.unet import pad_to_multiple, padding_for

    torch.manual_seed(0)
    H, W = hw
    m = ConditionalUNet(ModelConfig(image_size=hw, **{**TINY, "dim_mults": (1, 2, 4)}))
    x, c, mk = torch.randn(2, 1, H, W), torch.randn(2, 1, H, W), (torch.rand(2, 1, H, W) < 0.5).float()
    t = torch.tensor([3, 700])
    pads = padding_for(H, W, 4)
    assert (H + pads[2] + pads[3]) % 4 == 0 and (W + pads[0] + pads[1]) % 4 == 0 and max(pads) < 4
    with torch.no_grad():
        out = m(x, t, c, mk)
        assert out.shape == x.shape
        if any(pads):
            full = m._forward(pad_to_multiple(x, pads), t, pad_to_multiple(c, pads), pad_to_multiple(mk, pads, 0.0))
            assert torch.equal(out, full[..., pads[2]:pads[2] + H, pads[0]:pads[0] + W])
            xp = pad_to_multiple(x, pads)  # reflect (or replicate on a side too short): the copy comes from inside
            assert torch.equal(xp[..., pads[2]:pads[2] + H, pads[0]:pads[0] + W], x)
            assert set(xp.flatten().tolist()) <= set(x.flatten().tolist())


def test_bf16_training_path_groupnorm_and_attention_match_fp32():
    """Under CPU bf16 autocast with autograd, GroupNorm and attention run in fp32 and hand back bf16."""
    from cfgdiff.nn import GroupNorm32, attention

    torch.manual_seed(0)
    gn = GroupNorm32(4, 16)
    x = torch.randn(2, 16, 8, 8)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    ref_gn = torch.nn.functional.group_norm(x, 4, gn.weight, gn.bias, gn.eps)
    ref_att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    xb = x.bfloat16().requires_grad_()
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, a = gn(xb), attention(qb, kb, vb)
    assert y.dtype == a.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref_gn, atol=3e-2) and torch.allclose(a.float(), ref_att, atol=3e-2)
    (y.float().square().sum() + a.float().square().sum()).backward()
    assert xb.grad.dtype == torch.bfloat16 and gn.weight.grad is not None and torch.isfinite(qb.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # sampling: the plain path
        assert torch.allclose(gn(x.bfloat16()).float(), ref_gn, atol=3e-2)


@pytest.mark.parametrize("dim_mults", [(2, 4), (1,), (3,), (2, 2, 4), (1, 2, 4)])
def test_any_dim_mults_trains_a_step(dim_mults):
    """The output layers take dim * dim_mults[0] channels (a first entry other than 1 used to crash)."""
    kw = {**TINY, "dim_mults": dim_mults, "linear_attn_levels": (0,)}
    cfg = ModelConfig(image_size=(8, 8), **kw)
    m = ConditionalUNet(cfg)
    x, c, mk = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    out = m(x, torch.tensor([3, 700]), c, mk)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert m.out_conv.weight.shape[1] == 16 * dim_mults[0] and m.out_conv.weight.grad is not None


def _randomize_zero_inits(m: torch.nn.Module) -> None:
    """Give the zero-initialised injections (control 1x1 convs, cross-attention outputs) random weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("path", ["concat", "control_add", "cross_attn"])
def test_output_depends_on_cond_and_mask_through_each_path(path):
    """Each conditioning path alone carries the condition: with the other two switched off, changing
    cond or mask changes the output; with the path's zero-initialised weights still zero (control, cross),
    it cannot (so the dependence measured is this path's own)."""
    kw = {**TINY, "use_concat": path == "concat", "use_control_add": path == "control_add",
          "use_cross_attn": path == "cross_attn"}
    torch.manual_seed(1)
    m = ConditionalUNet(ModelConfig(image_size=(16, 16), **kw)).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 600])
    c = torch.randn(2, 1, 16, 16)
    mk = (torch.rand(2, 1, 16, 16) > 0.5).float()
    c2, mk2 = c + torch.randn_like(c), 1 - mk

    def outputs():
        with torch.no_grad():
            return m(x, t, c, mk), m(x, t, c2, mk), m(x, t, c, mk2)

    if path != "concat":
        base, by_cond, by_mask = outputs()
        assert torch.equal(base, by_cond) and torch.equal(base, by_mask), "zero-init: no effect before training"
        _randomize_zero_inits(m)
    base, by_cond, by_mask = outputs()
    assert (base - by_cond).abs().max() > 1e-3, f"{path}: output ignores cond"
    assert (base - by_mask).abs().max() > 1e-3, f"{path}: output ignores mask"


@pytest.mark.parametrize("hw", [(100, 150), (37, 64)])
def test_odd_sized_fields_train_and_reconstruct_with_known_pixels_exact(hw):
    """#19.2: fields whose sides are not multiples of 2**(levels-1) train (finite loss, weights move) and
    reconstruct at their own size, with the known pixels returned bit for bit."""
    from cfgdiff.config import ExperimentConfig, SamplerConfig, ScheduleConfig, TrainConfig
    from cfgdiff.engine import train_step
    from cfgdiff.sampling import sample
    from cfgdiff.schedule import NoiseSchedule

    H, W = hw
    torch.manual_seed(0)
    cfg = ExperimentConfig(model=ModelConfig(image_size=hw, **{**TINY, "dim_mults": (1, 2, 4)}),
                           schedule=ScheduleConfig(num_timesteps=100), train=TrainConfig(warmup_steps=0, lr=1e-3),
                           sampler=SamplerConfig(steps=3))
    model = ConditionalUNet(cfg.model)
    schedule = NoiseSchedule.from_config(cfg.schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x0 = torch.randn(2, 1, H, W).clamp(-1, 1)
    mask = (torch.rand(2, 1, H, W) < 0.3).float()
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        out = train_step(model, opt, lr, schedule, x0, x0 * mask, mask, cfg, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        res = sample(model, x0 * mask, mask, schedule=schedule, steps=3, seed=0)
    assert res.x0.shape == (2, 1, H, W)
    assert torch.equal(res.x0[mask.bool()], x0[mask.bool()])


def test_per_channel_masks_widen_the_mask_input():
    """#19.3: mask_channels = C gives the network one mask per target channel (concat and control encoder)."""
    cfg = ModelConfig(in_channels=2, cond_channels=2, mask_channels=2, image_size=(8, 12), **TINY)
    m = ConditionalUNet(cfg)
    assert m.init_conv.in_channels == 2 + 2 + 2 and m.control.stem.in_channels == 2 + 2
    x = torch.randn(2, 2, 8, 12)
    assert m(x, torch.tensor([0, 5]), torch.randn_like(x), torch.ones(2, 2, 8, 12)).shape == x.shape
    with pytest.raises(ValueError, match=r"mask must be \(2, 2, 8, 12\)"):
        m(x, torch.tensor([0, 5]), torch.randn_like(x), torch.ones(2, 1, 8, 12))
    with pytest.raises(ValueError, match="model.mask_channels must be 1 or in_channels=2, got 3"):
        ModelConfig(in_channels=2, mask_channels=3)


def test_activation_checkpointing_gives_the_same_gradients_bit_for_bit():
    """train.activation_checkpointing recomputes block activations in backward: same loss, same gradients,
    with every path (concat, control add, cross- and linear attention, mid attention) and dropout on."""
    cfg = ModelConfig(image_size=(16, 16), **{**TINY, "dropout": 0.1, "linear_attn_levels": (0, 1)})
    torch.manual_seed(0)
    m = ConditionalUNet(cfg).train()
    with torch.no_grad():  # open the zero-initialised injections so that every path carries gradient
        for p in m.parameters():
            if p.ndim > 1 and float(p.abs().sum()) == 0:
                p.normal_(std=0.05)
    x, c, mk = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16), torch.ones(3, 1, 16, 16)
    t = torch.tensor([5, 500, 990])
    grads, losses = [], []
    for ckpt in (False, True):
        m.checkpointing = ckpt
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks (checkpoint replays the RNG state in its recompute)
        loss = m(x, t, c, mk).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0]), [n for n in grads[0]
                                                                          if not torch.equal(grads[0][n], grads[1][n])]
