import math

import pytest
import torch

from cfgdiff.config import ExperimentConfig, ModelConfig, ScheduleConfig, TrainConfig
from cfgdiff.engine import EMA, make_lr_scheduler, make_optimizer, resume_lr_scheduler, train_step
from cfgdiff.metrics import psnr
from cfgdiff.sampling import sample
from cfgdiff.schedule import NoiseSchedule
from cfgdiff.unet import ConditionalUNet


def test_ema_closed_form():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ds = []
    for _ in range(50):
        ds.append(ema.current_decay())
        ema.update(m)
    # shadow = 3 - 2 * prod(d_i) with d_i = min(0.9, (1+i)/(10+i))
    expected = 3.0 - 2.0 * torch.prod(torch.tensor(ds, dtype=torch.float64))
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), float(expected)))
    assert ds[0] == 0.1 and ds[-1] == min(0.9, 50 / 59)
    state = ema.state_dict()
    ema2 = EMA(m, decay=0.5)
    ema2.load_state_dict(state)
    assert ema2.num_updates == 50 and torch.equal(ema2.shadow["weight"], ema.shadow["weight"])
    assert ema2.decay == 0.5 and ema2.current_decay() == 0.5, "a newly configured decay is applied, not the saved 0.9"


def test_lr_schedule_warmup_then_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sch = make_lr_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=10, max_steps=110))
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] < 0.2 and abs(lrs[10] - 1.0) < 1e-6
    assert all(a <= b + 1e-9 for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b - 1e-9 for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.05



def _lrs(opt, sch, n: int) -> list[float]:
    out = []
    for _ in range(n):
        opt.step()
        sch.step()
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("new_steps", [30, 50])
def test_resumed_lr_schedule_equals_an_uninterrupted_run_even_with_a_new_horizon(new_steps):
    """Stop at step 12 of a 30-step run, resume with max_steps=new_steps: the LR from then on equals
    an uninterrupted new_steps run exactly; the old cosine state, run past its end, would climb."""
    cfg = TrainConfig(lr=1e-3, warmup_steps=8, max_steps=30)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sch = make_lr_scheduler(opt, cfg)
    _lrs(opt, sch, 12)
    saved_opt, saved_sch = opt.state_dict(), sch.state_dict()

    new = TrainConfig(lr=1e-3, warmup_steps=8, max_steps=new_steps)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=new.lr)
    sch2 = make_lr_scheduler(opt2, new)  # what the train loop builds before restoring state
    opt2.load_state_dict(saved_opt)
    sch2 = resume_lr_scheduler(sch2, opt2, new, saved_sch, step=12)
    got = _lrs(opt2, sch2, new_steps - 12)

    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=new.lr)
    ref = _lrs(ref_opt, make_lr_scheduler(ref_opt, new), new_steps)[12:]
    assert got == ref
    assert all(a >= b for a, b in zip(got, got[1:])) and got[-1] < 0.02 * new.lr

    if new_steps > 30:  # the bug this guards against: the restored 30-step cosine climbs after step 30
        opt3 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=new.lr)
        sch3 = make_lr_scheduler(opt3, cfg)
        opt3.load_state_dict(saved_opt)
        sch3.load_state_dict(saved_sch)
        old = _lrs(opt3, sch3, new_steps - 12)
        assert old[-1] > 10 * got[-1]


def test_gradient_accumulation_matches_full_batch():
    cfg = ExperimentConfig(model=ModelConfig(image_size=(8, 8), dim=8, dim_mults=(1, 2), num_res_blocks=1,
                                             heads=1, dim_head=4, groups=4, use_cross_attn=False),
                           schedule=ScheduleConfig("cosine", 100), train=TrainConfig(p_uncond=0.3, grad_clip=0.0))
    sched = NoiseSchedule.from_config(cfg.schedule)
    x0 = torch.randn(8, 1, 8, 8)
    grads, losses = [], []
    for mb in (0, 2, 3):
        torch.manual_seed(1)
        m = ConditionalUNet(cfg.model)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        out = train_step(m, opt, sch, sched, x0, x0, torch.ones(8, 1, 8, 8), cfg,
                         generator=torch.Generator().manual_seed(3), micro_batch_size=mb)
        losses.append(out["loss"])
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    for g, l in zip(grads[1:], losses[1:]):
        torch.testing.assert_close(l, losses[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)


def test_tiny_model_overfits_and_samples_its_images():
    torch.manual_seed(0)
    cfg = ExperimentConfig(model=ModelConfig(image_size=(16, 16), dim=32, dim_mults=(1, 2), num_res_blocks=1,
                                             heads=2, dim_head=16, groups=8, use_cross_attn=False, linear_attn_levels=(),
                                             prediction="v"),
                           schedule=ScheduleConfig("cosine", 1000),
                           train=TrainConfig(lr=2e-3, warmup_steps=20, max_steps=400, p_uncond=0.0, grad_clip=1.0))
    sched = NoiseSchedule.from_config(cfg.schedule)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    imgs = torch.stack([torch.sin(3 * (k + 1) * xx / 4 + k) * torch.cos(2 * yy + k / 2) for k in range(8)])[:, None]
    model = ConditionalUNet(cfg.model)
    opt, g = make_optimizer(model, cfg.train), torch.Generator().manual_seed(0)
    sch = make_lr_scheduler(opt, cfg.train)
    ones = torch.ones(8, 1, 16, 16)
    losses = []
    for _ in range(cfg.train.max_steps):
        losses.append(float(train_step(model, opt, sch, sched, imgs, imgs, ones, cfg, generator=g)["loss"]))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first / 10, (first, last)
    model.eval()
    # dense condition, no projection: the network itself must return the images
    res = sample(model, imgs, ones, schedule=sched, steps=20, seed=0, project=False, prediction="v")
    p = psnr(res.x0, imgs, 2.0)  # per image; which image is worst depends on its noise draw (23-44 dB seen)
    assert p.mean().item() >= 30.0 and p.min().item() >= 20.0, p


@pytest.mark.slow
def test_compiled_model_trains_and_ema_sees_through_compile():
    """train.compile: a torch.compile'd model in the shared train_step updates the real parameters and the EMA
    reads them through the wrapper (``_orig_mod.`` names). Dynamo traces and AOTAutograd builds the backward as in
    training; the aot_eager backend skips only Inductor's C++ code generation, which took two minutes of CPU here
    and is PyTorch's own to test."""
    cfg = ExperimentConfig(model=ModelConfig(image_size=(16, 16), dim=16, dim_mults=(1, 2), num_res_blocks=1, heads=2,
                                             dim_head=8, groups=4), schedule=ScheduleConfig("cosine", 100),
                           train=TrainConfig(compile=True, warmup_steps=2, max_steps=20, lr=2e-3))
    torch.manual_seed(0)
    model = ConditionalUNet(cfg.model)
    compiled = torch.compile(model, backend="aot_eager")
    ema = EMA(compiled, 0.5)
    w0 = model.out_conv.weight.detach().clone()
    opt, sched = make_optimizer(model, cfg.train), NoiseSchedule.from_config(cfg.schedule)
    lrs = make_lr_scheduler(opt, cfg.train)
    x = torch.randn(8, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        losses.append(float(train_step(compiled, opt, lrs, sched, x, x, torch.ones(8, 1, 16, 16), cfg, generator=g)["loss"]))
        ema.update(compiled)
    assert all(map(math.isfinite, losses)) and set(ema.shadow) == set(model.state_dict())
    assert not torch.equal(model.out_conv.weight, w0), "the compiled step updated the real parameters"
    torch.testing.assert_close(ema.shadow["out_conv.weight"].norm(), model.out_conv.weight.norm(), rtol=0.2, atol=0)
    assert not torch.equal(ema.shadow["out_conv.weight"], w0), "the EMA followed them"


def test_non_finite_step_leaves_weights_and_optimizer_untouched():
    cfg = ExperimentConfig(model=ModelConfig(image_size=(8, 8), dim=8, dim_mults=(1, 2), num_res_blocks=1, heads=1,
                                             dim_head=4, groups=4), schedule=ScheduleConfig(num_timesteps=50))
    m = ConditionalUNet(cfg.model)
    opt, sch = make_optimizer(m, cfg.train), None
    sch = make_lr_scheduler(opt, cfg.train)
    sched = NoiseSchedule.from_config(cfg.schedule)
    x0, c, mk = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    out = train_step(m, opt, sch, sched, x0, c, mk, cfg)
    assert out["finite"] is True
    before = {k: v.clone() for k, v in m.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    x0[0, 0, 0, 0] = float("nan")
    out = train_step(m, opt, sch, sched, x0, c, mk, cfg)
    assert out["finite"] is False and not torch.isfinite(out["loss"])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "weights unchanged"
    assert all(torch.equal(moments[k], v) for k, v in opt.state_dict()["state"][0].items()), "Adam moments unchanged"


def test_auto_precision_is_bf16_only_where_it_is_native():
    """An AVX2-only CPU emulates bf16 (a training step ran 11x slower than fp32 here): ``auto`` picks fp32 there."""
    from cfgdiff.config import ExperimentConfig, apply_overrides
    from cfgdiff.engine import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert native_bf16(cpu) == native
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    cfg = apply_overrides(ExperimentConfig(), ['train.precision="auto"', 'sampler.precision="auto"'])
    assert cfg.train.precision == "auto" and cfg.sampler.precision == "auto"
    with pytest.raises(ValueError, match="'fp32', 'bf16', 'auto'"):
        apply_overrides(ExperimentConfig(), ['train.precision="fp16"'])
