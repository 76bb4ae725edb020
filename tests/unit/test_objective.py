import torch

from cfgdiff.config import ScheduleConfig
from cfgdiff.objective import diffusion_loss, drop_condition, min_snr_weight
from cfgdiff.schedule import NoiseSchedule


def test_drop_rate_matches_p():
    g = torch.Generator().manual_seed(0)
    cond, mask = torch.ones(20000, 1, 2, 2), torch.ones(20000, 1, 2, 2)
    for p in (0.0, 0.1, 0.5):
        c, m, dropped = drop_condition(cond, mask, p, g)
        rate = dropped.float().mean().item()
        assert abs(rate - p) < 0.015
        # dropped samples have both cond and mask zeroed, kept ones are untouched
        assert torch.all(c[dropped] == 0) and torch.all(m[dropped] == 0)
        assert torch.all(c[~dropped] == 1) and torch.all(m[~dropped] == 1)


def test_loss_is_mse_to_eps_and_v():
    s = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    x0 = torch.randn(64, 1, 4, 4)
    cond, mask = x0.clone(), torch.ones(64, 1, 4, 4)
    zero_model = lambda x_t, t, c, m: torch.zeros_like(x_t)
    g = torch.Generator().manual_seed(0)
    loss, diag = diffusion_loss(zero_model, s, x0, cond, mask, p_uncond=0.2, generator=g)
    # with a zero predictor the eps loss is E||eps||^2 / d = 1 up to MC error
    assert abs(loss.item() - 1.0) < 0.1
    assert 0.0 <= diag["drop_rate"].item() <= 1.0
    # a perfect eps oracle gives zero loss: replay the generator to get the same t and eps
    g1 = torch.Generator().manual_seed(5)
    t = torch.randint(0, s.T, (64,), generator=g1)
    eps = torch.randn(x0.shape, generator=g1)
    oracle = lambda x_t, tt, c, m: eps
    loss0, _ = diffusion_loss(oracle, s, x0, cond, mask, p_uncond=0.0, generator=torch.Generator().manual_seed(5))
    assert loss0.item() < 1e-10
    v = s.v_target(x0, t, eps)
    loss_v, _ = diffusion_loss(lambda *a: v, s, x0, cond, mask, p_uncond=0.0, prediction="v",
                               generator=torch.Generator().manual_seed(5))
    assert loss_v.item() < 1e-10


def test_min_snr_weight():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
