import math

import numpy as np
import pytest
import torch

from cfgdiff.config import ScheduleConfig
from cfgdiff.schedule import NoiseSchedule, make_betas


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [10, 1000])
def test_schedule_identities(kind, T):
    s = NoiseSchedule.from_config(ScheduleConfig(kind, T))
    b = make_betas(kind, T)
    assert s.beta.dtype == torch.float32 and s.T == T
    assert np.all(b > 0) and np.all(b <= 0.999)
    ab = np.cumprod(1 - b)
    np.testing.assert_allclose(s.alpha_bar.numpy(), ab, rtol=1e-6)
    assert np.all(np.diff(ab) < 0), "alpha_bar decreases"
    np.testing.assert_allclose(s.alpha_bar_prev[1:].numpy(), ab[:-1], rtol=1e-6)
    assert s.alpha_bar_prev[0] == 1.0
    # posterior variance = beta (1 - ab_prev) / (1 - ab), and lies between 0 and beta (DDPM eq. 7)
    pv = s.posterior_variance.numpy()
    assert np.all(pv <= b + 1e-7) and pv[0] == 0.0


def test_linear_endpoints_and_cosine_form():
    b = make_betas("linear", 1000)
    assert math.isclose(b[0], 1e-4) and math.isclose(b[-1], 0.02)
    ab = np.cumprod(1 - make_betas("cosine", 1000))
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 100, 500, 900):
        assert math.isclose(ab[t], f(t + 1) / f(0), rel_tol=1e-9)


def test_q_sample_monte_carlo_statistics():
    s = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    for t_val in (0, 300, 999):
        t = torch.full((n,), t_val)
        xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        ab = float(s.alpha_bar[t_val])
        assert abs(xt.mean().item() - math.sqrt(ab) * 0.7) < 5 * math.sqrt((1 - ab) / n) + 1e-6
        assert abs(xt.var().item() - (1 - ab)) < 0.02 * (1 - ab) + 1e-6


def test_parametrisation_round_trips():
    s = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 2, 4, 4, generator=g), torch.randn(8, 2, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.predict_x0(xt, t, eps), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(s.predict_eps(xt, t, x0), eps, atol=2e-3, rtol=1e-3)
    v = s.v_target(x0, t, eps)
    torch.testing.assert_close(s.x0_from_v(xt, t, v), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.eps_from_v(xt, t, v), eps, atol=1e-4, rtol=1e-4)
    snr = s.snr(t)
    ab = s.alpha_bar[t]
    torch.testing.assert_close(snr, ab / (1 - ab))


def test_posterior_reproduces_x_prev_given_true_x0():
    """With the true x0, q(x_{t-1} | x_t, x0) has the closed-form mean and variance (eqs. 6-7):
    the Monte-Carlo moments of x_{t-1} drawn jointly with x_t match it."""
    s = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    g = torch.Generator().manual_seed(2)
    n, t_val = 400_000, 500
    x0 = torch.full((n, 1, 1, 1), 0.5)
    # draw x_{t-1} ~ q(x_{t-1}|x0), then x_t ~ q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)
    x_prev = s.q_sample(x0, torch.full((n,), t_val - 1), torch.randn(x0.shape, generator=g))
    beta = float(s.beta[t_val])
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(x0.shape, generator=g)
    mean, var = s.q_posterior(x0, x_t, torch.full((n,), t_val))
    resid = x_prev - mean
    assert abs(resid.mean().item()) < 5 * math.sqrt(var[0].item() / n)
    assert abs(resid.var().item() / var[0].item() - 1) < 0.02
    # regression check: E[x_{t-1} | x_t] is linear in x_t with the posterior coefficient
    c2 = float(s.posterior_mean_coef2[t_val])
    slope = ((x_prev - x_prev.mean()) * (x_t - x_t.mean())).mean() / x_t.var()
    assert abs(slope.item() - c2) < 0.01


def test_bad_schedule_config():
    with pytest.raises(ValueError, match="schedule.kind"):
        ScheduleConfig("quadratic", 10)
    with pytest.raises(ValueError, match="num_timesteps"):
        ScheduleConfig("linear", 0)
