"""Samplers against closed forms: CFG algebra, projection, and the exact score of Gaussian data."""

import math

import numpy as np
import pytest
import torch

from cfgdiff.config import ScheduleConfig
from cfgdiff.sampling import guided_output, plan_moves, sample, timestep_sequence
from cfgdiff.schedule import NoiseSchedule

SHAPE = (1, 2, 3)  # d = 6 pixels
D = 6


def gaussian_problem(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, D))
    sigma = A @ A.T / D + 0.3 * np.eye(D)  # non-diagonal SPD
    mu = rng.normal(size=D) * 0.5
    return mu, sigma


class GaussianEps:
    """Exact E[eps | x_t] for x0 ~ N(m, S): sqrt(1-ab) (ab S + (1-ab) I)^-1 (x_t - sqrt(ab) m).

    With a non-empty mask the data distribution is the conditional p(x0 | x_K = y): mean = kriging
    mean (y on K), covariance = posterior covariance (zero rows/cols on K).
    """

    prediction = "eps"  # declared, as a checkpoint's network declares it

    def __init__(self, schedule, mu, sigma):
        self.ab = schedule.alpha_bar.double()
        self.mu, self.sigma = torch.tensor(mu), torch.tensor(sigma)

    def conditional(self, y, known):
        k, u = known, ~known
        S = self.sigma
        gain = S[u][:, k] @ torch.linalg.inv(S[k][:, k])
        m = self.mu.clone()
        m[k] = y[k]
        m[u] = self.mu[u] + gain @ (y[k] - self.mu[k])
        Sc = torch.zeros_like(S)
        Sc[np.ix_(u.numpy(), u.numpy())] = S[u][:, u] - gain @ S[k][:, u]
        return m, Sc

    def __call__(self, x_t, t, cond, mask):
        B = x_t.shape[0]
        ab = self.ab[t[0]]
        known = mask[0].flatten().bool()
        if known.any():
            m, S = self.conditional(cond[0].flatten().double(), known)
        else:
            m, S = self.mu, self.sigma
        C = ab * S + (1 - ab) * torch.eye(D, dtype=torch.float64)
        x = x_t.reshape(B, D).double()
        eps = math.sqrt(1 - ab) * torch.linalg.solve(C, (x - math.sqrt(ab) * m).T).T
        return eps.float().reshape(x_t.shape)


def kriging_problem(sched, N: int, known=(1, 0, 0, 1, 0, 1), shape=SHAPE, mask_shape=(1, 2, 3)):
    """The conditional Gaussian problem: 3 of 6 values known, N copies of one observation y, and its exact
    kriging posterior (mean, covariance). ``shape`` lays the 6 values out as (C, H, W) and ``mask_shape``
    is the mask's (1, H, W) per pixel or (C, H, W) per channel. Returns model, known, y, cond, mask, m_post,
    S_post."""
    mu, sigma = gaussian_problem(1)
    model = GaussianEps(sched, mu, sigma)
    known = torch.tensor(known, dtype=torch.bool)
    y = torch.tensor(np.random.default_rng(3).multivariate_normal(mu, sigma))
    m_post, S_post = model.conditional(y, known)
    cond = (y * known).float().reshape(1, *shape).expand(N, *shape).contiguous()
    mask = known.float().reshape(1, *mask_shape).expand(N, *mask_shape).contiguous()
    return model, known, y, cond, mask, m_post, S_post


def _moments(x):
    x = x.reshape(x.shape[0], -1).double().numpy()
    return x.mean(0), np.cov(x.T)


def exact_sampler_moments(sched, model, method, steps, eta, known=None, y=None, y_cond=None):
    """Exact mean/covariance of the *discretised* sampler's output for the affine Gaussian eps.

    Every move is x_s = M x + v + sigma z (then projection of known pixels), so moments propagate
    in closed form: m <- M m + v, P <- M P M^T + sigma^2 I. This checks the implementation to
    Monte-Carlo precision, separately from the discretisation error of using few steps.
    """
    from cfgdiff.sampling import move_coefficients

    taus = timestep_sequence(sched.T, steps)
    ab_lv = torch.cat([sched.alpha_bar.double()[taus], torch.ones(1, dtype=torch.float64)])
    moves = plan_moves(len(taus), None)
    coefs = move_coefficients(ab_lv, moves, method, eta)
    I = torch.eye(D, dtype=torch.float64)
    if known is not None:
        m_data, S_data = model.conditional(y_cond, known)
        Pk = torch.diag(known.double())
        Pu = I - Pk
    else:
        m_data, S_data = model.mu, model.sigma
    m, P = torch.zeros(D, dtype=torch.float64), I.clone()

    def project(m, P, lv):
        if known is None:
            return m, P
        a = math.sqrt(float(ab_lv[lv]))
        return Pu @ m + Pk @ (a * y), Pu @ P @ Pu + (1 - float(ab_lv[lv])) * Pk

    m, P = project(m, P, 0)
    for (k, k2), (a, b, c, sig) in zip(moves, coefs):
        ab = float(ab_lv[k])
        C = ab * S_data + (1 - ab) * I
        G = math.sqrt(1 - ab) * torch.linalg.inv(C)
        g = -math.sqrt(ab) * G @ m_data
        A0 = (I - math.sqrt(1 - ab) * G) / math.sqrt(ab)
        a0 = -math.sqrt(1 - ab) * g / math.sqrt(ab)
        M = a * A0 + b * G + c * I
        v = a * a0 + b * g
        m, P = M @ m + v, M @ P @ M.T + sig**2 * I
        m, P = project(m, P, k2)
    return m.numpy(), P.numpy()


def test_exact_gaussian_unconditional_ddpm_matches_data_distribution():
    sched = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    mu, sigma = gaussian_problem()
    model = GaussianEps(sched, mu, sigma)
    N = 6000
    zeros = torch.zeros(N, *SHAPE)
    res = sample(model, zeros, zeros[:, :1], schedule=sched, shape=(N, *SHAPE), method="ddpm", steps=1000,
                 w=1.0, generator=torch.Generator().manual_seed(0), clip_x0=False, project=False)
    m, c = _moments(res.x0)
    se = np.sqrt(np.diag(sigma) / N)
    assert np.all(np.abs(m - mu) < 5 * se + 0.01), (m, mu)
    assert np.max(np.abs(c - sigma)) < 0.06, np.max(np.abs(c - sigma))


@pytest.mark.parametrize("method,steps,eta,max_gap", [("ddpm", 1000, 1.0, 0.03), ("ddim", 100, 1.0, 0.12),
                                                      ("ddim", 50, 0.0, 0.12)])
def test_exact_gaussian_unconditional_matches_closed_form_of_the_sampler(method, steps, eta, max_gap):
    sched = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    mu, sigma = gaussian_problem()
    model = GaussianEps(sched, mu, sigma)
    N = 8000
    zeros = torch.zeros(N, *SHAPE)
    res = sample(model, zeros, zeros[:, :1], schedule=sched, shape=(N, *SHAPE), method=method, steps=steps,
                 eta=eta, w=1.0, generator=torch.Generator().manual_seed(0), clip_x0=False, project=False)
    m_exact, P_exact = exact_sampler_moments(sched, model, method, steps, eta)
    m, c = _moments(res.x0)
    assert np.all(np.abs(m - m_exact) < 5 * np.sqrt(np.diag(P_exact) / N) + 1e-3)
    assert np.max(np.abs(c - P_exact)) < 5 * np.sqrt(2.0 / N) * np.max(np.diag(P_exact))
    # the discretisation gap itself, relative on the variances: small, and smallest for DDPM-1000
    gap = np.max(np.abs(np.diag(P_exact) / np.diag(sigma) - 1))
    assert gap < max_gap, gap


@pytest.mark.parametrize("method,steps", [("ddpm", 1000), ("ddim", 100)])
def test_exact_gaussian_conditional_with_projection_matches_kriging(method, steps):
    sched = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    N = 6000
    model, known, y, cond, mask, m_post, S_post = kriging_problem(sched, N)
    res = sample(model, cond, mask, schedule=sched, method=method, steps=steps, eta=1.0, w=1.0,
                 generator=torch.Generator().manual_seed(1), clip_x0=False)
    x = res.x0.reshape(N, D)
    assert torch.equal(x[:, known], cond.reshape(N, D)[:, known]), "known pixels equal the observation exactly"
    m, c = _moments(res.x0)
    u = (~known).numpy()
    uu = np.ix_(u, u)
    # 1. against the closed form of this discretised sampler, to Monte-Carlo precision
    m_exact, P_exact = exact_sampler_moments(sched, model, method, steps, 1.0, known, y.double(), y)
    se = np.sqrt(np.diag(P_exact)[u] / N)
    assert np.all(np.abs(m[u] - m_exact[u]) < 5 * se + 1e-3)
    assert np.max(np.abs(c[uu] - P_exact[uu])) < 5 * np.sqrt(2.0 / N) * np.max(np.diag(P_exact))
    # 2. against the kriging posterior itself
    se = np.sqrt(np.diag(S_post.numpy())[u] / N)
    assert np.all(np.abs(m[u] - m_post.numpy()[u]) < 5 * se + 0.01)
    mc = 5 * np.sqrt(2.0 / N) * np.max(np.diag(S_post.numpy()))
    assert np.max(np.abs(c[uu] - S_post.numpy()[uu])) < mc + (0.01 if method == "ddpm" else 0.1)


def test_ddim_eta1_full_schedule_has_ddpm_posterior_variance():
    from cfgdiff.sampling import move_coefficients

    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 50))
    taus = timestep_sequence(50, 50)
    assert taus == list(range(49, -1, -1))
    ab = torch.cat([sched.alpha_bar.double()[taus], torch.ones(1, dtype=torch.float64)])
    moves = plan_moves(50, None)
    ddim = move_coefficients(ab, moves, "ddim", 1.0)
    ddpm = move_coefficients(ab, moves, "ddpm", 1.0)
    for (k, _), (_, _, _, s_ddim), (a, _, c, s_ddpm) in zip(moves, ddim, ddpm):
        t = taus[k]
        assert math.isclose(s_ddim**2, float(sched.posterior_variance[t]), rel_tol=1e-4, abs_tol=1e-12)
        assert math.isclose(s_ddpm**2, float(sched.posterior_variance[t]), rel_tol=1e-4, abs_tol=1e-12)
        # DDPM move coefficients are the eq. 7 posterior mean coefficients
        assert math.isclose(a, float(sched.posterior_mean_coef1[t]), rel_tol=1e-4)
        assert math.isclose(c, float(sched.posterior_mean_coef2[t]), rel_tol=1e-4)


class Recorder:
    prediction = "eps"

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x_t, t, cond, mask):
        self.calls.append((x_t.clone(), t.clone(), cond.clone(), mask.clone()))
        return self.fn(x_t, t, cond, mask)


def test_cfg_algebra_and_batched_forward():
    torch.manual_seed(0)
    lin = torch.nn.Conv2d(3, 1, 1)
    f = lambda x, t, c, m: lin(torch.cat([x, c, m], 1)) + 0.01 * t.view(-1, 1, 1, 1)
    x, t = torch.randn(4, 1, 4, 4), torch.randint(0, 10, (4,))
    c, m = torch.randn(4, 1, 4, 4), torch.ones(4, 1, 4, 4)
    with torch.no_grad():
        e_c, e_u = f(x, t, c, m), f(x, t, torch.zeros_like(c), torch.zeros_like(m))
        torch.testing.assert_close(guided_output(f, x, t, c, m, 0.0), e_u)
        torch.testing.assert_close(guided_output(f, x, t, c, m, 1.0), e_c)
        g = {w: guided_output(f, x, t, c, m, w) for w in (0.5, 2.0, 3.5)}
        torch.testing.assert_close(g[2.0], e_u + 2.0 * (e_c - e_u), atol=1e-6, rtol=1e-5)
        # linear in w
        torch.testing.assert_close(g[3.5] - g[2.0], 1.5 * (e_c - e_u), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close((g[3.5] - g[0.5]) / 3.0, (g[2.0] - g[0.5]) / 1.5, atol=1e-5, rtol=1e-4)
    rec = Recorder(f)
    with torch.no_grad():
        guided_output(rec, x, t, c, m, 2.0)
    assert len(rec.calls) == 1 and rec.calls[0][0].shape[0] == 8, "one 2B forward"
    for w, n in ((1.0, 4), (0.0, 4)):
        rec.calls.clear()
        with torch.no_grad():
            guided_output(rec, x, t, c, m, w)
        assert len(rec.calls) == 1 and rec.calls[0][0].shape[0] == n


def test_projection_exact_at_end_and_level_s_midway():
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    N = 4000
    known = torch.full((N, 1, 2, 2), 0.8)
    mask = torch.zeros(N, 1, 2, 2)
    mask[:, :, 0, 0] = 1
    rec = Recorder(lambda x, t, c, m: torch.zeros_like(x))
    res = sample(rec, known, mask, schedule=sched, steps=10, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x0[:, :, 0, 0], known[:, :, 0, 0])
    taus = timestep_sequence(1000, 10)
    # the input to call i was projected to the level taus[i] of the sample being produced
    for i in (1, 3, 5):
        x_in = rec.calls[i][0][:, 0, 0, 0]
        ab_s = float(sched.alpha_bar[taus[i]])  # level of the sample produced by step i-1
        ab_t = float(sched.alpha_bar[taus[i - 1]])  # level of the step just taken
        assert abs(x_in.mean().item() - math.sqrt(ab_s) * 0.8) < 0.03
        assert abs(x_in.std().item() - math.sqrt(1 - ab_s)) < 0.03
        assert abs(x_in.mean().item() - math.sqrt(ab_t) * 0.8) > 0.06, "not the level of the step just taken"


def test_per_sample_seeding_independent_of_batch():
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    f = lambda x, t, c, m: 0.1 * x
    cond, mask = torch.zeros(6, 1, 4, 4), torch.zeros(6, 1, 4, 4)
    full = sample(f, cond, mask, schedule=sched, steps=10, eta=1.0, seed=7, sample_index=range(6), prediction="eps").x0
    part = sample(f, cond[3:], mask[3:], schedule=sched, steps=10, eta=1.0, seed=7, sample_index=range(3, 6),
                  prediction="eps").x0
    assert torch.equal(full[3:], part)


def test_repaint_schedule_and_call_count():
    assert plan_moves(4, None) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    moves = plan_moves(4, (2, 2))
    # denoise to 2, jump back to 0, denoise to 2 again, continue
    assert moves[:5] == [(0, 1), (1, 2), (2, 0), (0, 1), (1, 2)]
    assert moves[-1] == (3, 4)
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    cond, mask = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    res = sample(lambda x, t, c, m: 0 * x, cond, mask, schedule=sched, steps=10, w=2.0, resample=(2, 3),
                 prediction="eps")
    denoise = sum(1 for a, b in plan_moves(10, (2, 3)) if b > a)
    assert res.num_steps == denoise and res.num_model_calls == 2 * denoise
    assert denoise == 10 + 2 * 2 * 4  # 4 jump points (2, 4, 6, 8), r-1 = 2 extra passes of j = 2


def test_sr_consistency_step_makes_output_consistent():
    from cfgdiff.degrade import PoolOperator

    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    y = torch.rand(3, 1, 4, 4) * 2 - 1
    op = PoolOperator(2, y)
    cond = op.A_pinv(y)
    res = sample(lambda x, t, c, m: torch.zeros_like(x), cond, torch.zeros(3, 1, 8, 8), schedule=sched, prediction="eps",
                 shape=(3, 1, 8, 8), steps=10, operator=op, project=False, clip_x0=True)
    torch.testing.assert_close(op.A(res.x0), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(steps=101), "steps"), (dict(eta=1.5), "eta"),
    (dict(w=float("nan")), "w must be finite"), (dict(w=float("inf")), "w must be finite"),
    (dict(method="euler"), "method"),
])
def test_sampler_argument_errors(kwargs, match):
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    cond, mask = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match=match):
        sample(lambda *a: a[0], cond, mask, schedule=sched, prediction="eps", **kwargs)


def test_sampler_shape_errors():
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    cond = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="mask must have shape"):
        sample(lambda *a: a[0], cond, torch.ones(2, 1, 4, 5), schedule=sched, prediction="eps")
    with pytest.raises(ValueError, match="mask must be binary"):
        sample(lambda *a: a[0], cond, torch.full((2, 1, 4, 4), 0.5), schedule=sched, prediction="eps")
    with pytest.raises(ValueError, match="known must be"):
        sample(lambda *a: a[0], cond, torch.ones(2, 1, 4, 4), known=torch.zeros(3, 1, 4, 4), schedule=sched,
               prediction="eps")


def test_noise_streams_of_neighbouring_seeds_share_no_row():
    """#20.3: sample i of seed s drew the same noise as sample i+1 of seed s-1 (seed + index). Keyed by the
    pair, no row of seed 0 correlates with any row of seed 1."""
    from cfgdiff.sampling import NoiseSource

    a = NoiseSource((64, 1, 16, 16), torch.device("cpu"), seed=0, sample_index=range(64))().reshape(64, -1)
    b = NoiseSource((64, 1, 16, 16), torch.device("cpu"), seed=1, sample_index=range(64))().reshape(64, -1)
    a, b = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True), (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True)
    corr = (a @ b.T) / 255  # 4096 pairs of 256 independent normals: |r| has std 1/16, max about 0.28
    assert corr.abs().max().item() < 0.35, corr.abs().max()
    again = NoiseSource((3, 1, 16, 16), torch.device("cpu"), seed=0, sample_index=[5, 6, 7])().reshape(3, -1)
    assert torch.equal(again, NoiseSource((64, 1, 16, 16), torch.device("cpu"), seed=0,
                                          sample_index=range(64))().reshape(64, -1)[5:8]), "keyed by index"


def test_the_model_says_what_it_predicts():
    """#20.1: a v-network is sampled as v; asking for eps is an error, not wrong samples; a bare callable must
    say what it returns. The v-model and its eps view (eps = sqrt(ab) v + sqrt(1 - ab) x_t) agree."""
    from cfgdiff.config import ModelConfig
    from cfgdiff.unet import ConditionalUNet

    torch.manual_seed(0)
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    net = ConditionalUNet(ModelConfig(image_size=(8, 8), dim=8, dim_mults=(1, 2), num_res_blocks=1, heads=1,
                                      dim_head=4, groups=4, prediction="v")).eval()
    cond, mask = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    with pytest.raises(ValueError, match="the model predicts 'v'"):
        sample(net, cond, mask, schedule=sched, steps=5, prediction="eps")
    with pytest.raises(ValueError, match="pass prediction='eps' or 'v'"):
        sample(lambda x, t, c, m: net(x, t, c, m), cond, mask, schedule=sched, steps=5)

    def eps_view(x, t, c, m):
        ab = sched.alpha_bar[t].view(-1, 1, 1, 1).float()
        return ab.sqrt() * net(x, t, c, m) + (1 - ab).sqrt() * x

    v = sample(net, cond, mask, schedule=sched, steps=5, w=1.5, seed=3).x0
    e = sample(eps_view, cond, mask, schedule=sched, steps=5, w=1.5, seed=3, prediction="eps").x0
    assert torch.allclose(v, e, atol=1e-4), (v - e).abs().max()


def _flow_endpoint_error(sched, method: str, steps: int, N: int = 256) -> float:
    """Mean distance between a deterministic sampler's output and the exact probability-flow endpoint.

    For x0 ~ N(m, S) = U diag(s) U^T the PF-ODE keeps z = U^T (x_t - alpha_t m) / sqrt(alpha_t^2 s + sigma_t^2)
    constant, so the exact endpoint of the trajectory from x_T is m + U diag(sqrt(s)) z: a closed form."""
    mu, S = gaussian_problem(0)
    model = GaussianEps(sched, mu, S)
    zeros = torch.zeros(N, *SHAPE)
    res = sample(model, zeros, zeros[:, :1], schedule=sched, shape=(N, *SHAPE), method=method, steps=steps, eta=0.0,
                 generator=torch.Generator().manual_seed(0), clip_x0=False, project=False)
    x_T = torch.randn((N, *SHAPE), generator=torch.Generator().manual_seed(0)).reshape(N, D).double().numpy()
    ab0 = float(sched.alpha_bar.double()[timestep_sequence(sched.T, steps)[0]])
    s, U = np.linalg.eigh(S)
    z = ((x_T - math.sqrt(ab0) * mu) @ U) / np.sqrt(ab0 * s + (1 - ab0))
    exact = mu + (z * np.sqrt(s)) @ U.T
    return float(np.sqrt(((res.x0.reshape(N, D).double().numpy() - exact) ** 2).sum(1)).mean())


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_solvers_converge_to_the_exact_flow_at_their_order(kind):
    """#20: DDIM (eta 0) is first order, DPM-Solver++(2M) about second: the slope of log error against log steps.
    Measured: DDIM -0.96/-0.97, 2M -1.78/-1.79 (its first and last steps are first order, as in the paper)."""
    sched = NoiseSchedule.from_config(ScheduleConfig(kind, 1000))
    steps = (10, 20, 40, 80)
    errs = {m: [_flow_endpoint_error(sched, m, n) for n in steps] for m in ("ddim", "dpm2m")}
    slope = {m: np.polyfit(np.log(steps), np.log(e), 1)[0] for m, e in errs.items()}
    assert -1.2 < slope["ddim"] < -0.8, slope
    assert -2.3 < slope["dpm2m"] < -1.5, slope
    assert all(a > 3 * b for a, b in zip(errs["ddim"][1:], errs["dpm2m"][1:])), errs  # >= 20 steps: 3x closer


def test_dpm2m_matches_kriging_with_projection_and_returns_known_pixels_exactly():
    """At 20 steps with the known-pixel projection, DPM-Solver++(2M) and its SDE form have the posterior's
    spread (measured 0.99-1.02 and 1.02-1.08 of the kriging variance) where DDIM's are narrow (0.86-0.89):
    the calibration gap of #20."""
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    N = 4000
    model, known, _, cond, mask, m_post, S_post = kriging_problem(sched, N)
    ratios = {}
    for method in ("dpm2m", "dpm2m-sde", "ddim"):
        res = sample(model, cond, mask, schedule=sched, method=method, steps=20, clip_x0=False,
                     generator=torch.Generator().manual_seed(2))
        x = res.x0.reshape(N, D)
        assert torch.equal(x[:, known], cond.reshape(N, D)[:, known]), "known pixels equal the observation exactly"
        assert res.num_model_calls == 20
        m, c = _moments(res.x0)
        u = (~known).numpy()
        se = np.sqrt(np.diag(S_post.numpy())[u] / N)
        assert np.all(np.abs(m[u] - m_post.numpy()[u]) < 5 * se + 0.01), (method, m[u], m_post.numpy()[u])
        ratios[method] = np.diag(c)[u] / np.diag(S_post.numpy())[u]
    assert np.all(np.abs(ratios["dpm2m"] - 1) < 0.05), ratios  # Monte-Carlo sd of a variance ratio: 0.022
    assert np.all(np.abs(ratios["dpm2m-sde"] - 1) < 0.12), ratios
    assert np.all(ratios["ddim"] < 0.92), ratios


def test_antithetic_streams_are_the_plain_even_streams_and_their_negation():
    from cfgdiff.sampling import NoiseSource

    shape, cpu = (6, 1, 4, 4), torch.device("cpu")
    plain = NoiseSource(shape, cpu, seed=3, sample_index=range(10, 16))
    anti = NoiseSource(shape, cpu, seed=3, sample_index=range(10, 16), antithetic=True)
    for _ in range(3):  # every draw, not only the first
        p, a = plain(), anti()
        assert torch.equal(a[0::2], p[0::2]) and torch.equal(a[1::2], -p[0::2])
    with pytest.raises(ValueError, match="per-sample streams"):
        NoiseSource(shape, cpu, generator=torch.Generator(), antithetic=True)


@pytest.mark.parametrize("method", ["dpm2m", "dpm2m-sde", "ddpm"])
def test_antithetic_pairs_cancel_the_noise_of_an_affine_sampler(method):
    """With the exact Gaussian denoiser each solver's map from its noise (the start, every stochastic step and the
    re-noised known pixels) to the sample is affine, so every antithetic pair averages to the same point, the
    sampler's own mean: pair means agree to float rounding where independent pairs spread by about the sampler's
    std over sqrt(2). Each sample keeps the sampler's law: mean and variance as with independent streams."""
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    N = 4000
    model, known, _, cond, mask, m_post, S_post = kriging_problem(sched, N)
    u = (~known).numpy()
    run = lambda anti: sample(model, cond, mask, schedule=sched, method=method, steps=20, eta=1.0, clip_x0=False, seed=5,
                              sample_index=range(N), antithetic=anti).x0.reshape(N, D).double().numpy()
    x, plain = run(True), run(False)
    pair_means = (x[0::2] + x[1::2]) / 2
    assert np.all(pair_means[:, ~u] == x[0, ~u]), "known pixels exact"
    post_sd = np.sqrt(np.diag(S_post.numpy())[u])
    assert pair_means[:, u].std(0).max() < 1e-4 * post_sd.min(), pair_means[:, u].std(0)
    assert ((plain[0::2] + plain[1::2]) / 2)[:, u].std(0).min() > 0.3 * post_sd.min(), "independent pairs do spread"
    se = post_sd / np.sqrt(N / 2)
    assert np.all(np.abs(pair_means[0, u] - plain[:, u].mean(0)) < 5 * se), "the sampler's own mean"
    ratio = x[:, u].var(0) / plain[:, u].var(0)  # the sampler's own spread (DDPM at 20 steps is narrow: 0.75-0.8)
    assert np.all(np.abs(ratio - 1) < 0.15), ratio  # Monte-Carlo sd of this ratio: about 0.04


@pytest.mark.parametrize("K", [4, 8])
def test_antithetic_sample_std_is_unbiased_for_a_nonlinear_map(K):
    """Samples f(z), f(-z) of f(z) = z + 0.7 z^2: Var f(z) = 1 + 2 * 0.49 = 1.98. The pairs' mean keeps the even part
    0.7 z^2, so the plain spread around the mean is low by Var(mean) (1.98 - 0.98 / (K/2) at K = 4: 1.49);
    the estimator adds Var(mean) back from the pair means. Independent samples keep the ddof=1 estimate."""
    from cfgdiff.api import mean_variance, sample_std

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, K // 2, generator=g, dtype=torch.float64)
    f = lambda v: v + 0.7 * v * v
    x = torch.stack([f(z), f(-z)], 2).reshape(len(z), K)  # samples 2j, 2j+1 are a pair
    var = sample_std(x, antithetic=True).pow(2).mean().item()
    assert var == pytest.approx(1.98, rel=0.01)
    assert (x - x.mean(1, keepdim=True)).pow(2).mean(1).mean().item() < 1.98 - 0.9 / (K // 2)  # without the term
    y = f(torch.randn(200_000, K, generator=g, dtype=torch.float64))
    assert sample_std(y).pow(2).mean().item() == pytest.approx(1.98, rel=0.01)
    # the variance of the mean of K (what evaluate removes from the plain mean's MSE): a pair mean is 0.7 z^2 + const,
    # variance 0.98, so 0.98 / (K/2) from pairs, and 1.98 / K for independent samples; none from a single pair
    mean_k = x.mean(1)
    assert mean_variance(x, antithetic=True).mean().item() == pytest.approx(0.98 / (K // 2), rel=0.02)
    assert mean_k.var().item() == pytest.approx(0.98 / (K // 2), rel=0.02)  # what it estimates, here by brute force
    assert mean_variance(y).mean().item() == pytest.approx(1.98 / K, rel=0.01)
    assert mean_variance(x[:, :2], antithetic=True) is None and mean_variance(y[:, :1]) is None


def test_sde_2m_first_step_is_the_ddpm_posterior_step():
    from cfgdiff.sampling import dpm_solver_2m_sde_step, move_coefficients

    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    taus = timestep_sequence(1000, 10)
    ab = torch.cat([sched.alpha_bar.double()[taus], torch.ones(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(0)
    x, x0, z = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for k in (0, 4, 8):
        a, _, c, sigma = move_coefficients(ab, [(k, k + 1)], "ddpm", 1.0)[0]
        got, _ = dpm_solver_2m_sde_step(x, x0, float(ab[k]), float(ab[k + 1]), None, lambda: z)
        torch.testing.assert_close(got, a * x0 + c * x + sigma * z, rtol=1e-12, atol=1e-12)
    last, _ = dpm_solver_2m_sde_step(x, x0, float(ab[9]), 1.0, (0.0, x0), lambda: z)
    assert torch.equal(last, x0), "the step to the clean level returns the x0 estimate"


def test_sde_2m_reaches_the_data_distribution_with_fewer_steps_than_ddpm():
    """Unconditional exact Gaussian: the largest relative error of the sample variances after n steps.
    Measured (20000 samples, Monte-Carlo sd of one ratio 0.01): DDPM 0.52 / 0.36 / 0.22 at 5 / 10 / 20 steps,
    SDE-DPM-Solver++(2M) 0.30 / 0.05 / 0.07: at 10 steps it has the spread DDPM needs far more steps for."""
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 1000))
    mu, sigma = gaussian_problem()
    model = GaussianEps(sched, mu, sigma)
    N = 20000
    zeros = torch.zeros(N, *SHAPE)
    gap = {}
    for method in ("ddpm", "dpm2m-sde"):
        for n in (5, 10, 20):
            res = sample(model, zeros, zeros[:, :1], schedule=sched, shape=(N, *SHAPE), method=method, steps=n,
                         eta=1.0, generator=torch.Generator().manual_seed(n), clip_x0=False, project=False)
            _, c = _moments(res.x0)
            gap[method, n] = float(np.max(np.abs(np.diag(c) / np.diag(sigma) - 1)))
    for n in (10, 20):
        assert gap["dpm2m-sde", n] < 0.1 and gap["dpm2m-sde", n] < gap["ddpm", n] / 2, gap
    assert gap["dpm2m-sde", 5] < gap["ddpm", 5], gap


def test_per_channel_masks_project_exactly_and_reach_the_two_channel_kriging_posterior():
    """#19.3: 2-channel data (two rows of 3 pixels, the 6 values jointly Gaussian, correlated across the
    channels) with a per-channel mask (N, 2, 1, 3): channel 0 is known at pixels 0 and 2, channel 1 only
    at pixel 1, so no pixel is known or missing in both. The projection returns exactly the known values of
    each channel and leaves the other channel's value at that pixel to the sampler; the samples' moments
    on the missing values match the 2-channel kriging posterior (the exact conditional of all 6 values)."""
    sched = NoiseSchedule.from_config(ScheduleConfig("linear", 1000))
    N = 6000
    model, known, _, cond, mask, m_post, S_post = kriging_problem(sched, N, known=(1, 0, 1, 0, 1, 0), shape=(2, 1, 3),
                                                                  mask_shape=(2, 1, 3))
    res = sample(model, cond, mask, schedule=sched, method="ddpm", steps=1000, eta=1.0,
                 generator=torch.Generator().manual_seed(1), clip_x0=False)
    x = res.x0.reshape(N, D)
    assert torch.equal(x[:, known], cond.reshape(N, D)[:, known]), "each channel's known values, exactly"
    assert x[:, ~known].std(0).min() > 0.05, "the other channel at a known pixel is sampled, not copied"
    m, c = _moments(res.x0)
    u = (~known).numpy()
    se = np.sqrt(np.diag(S_post.numpy())[u] / N)
    assert np.all(np.abs(m[u] - m_post.numpy()[u]) < 5 * se + 0.01)
    uu = np.ix_(u, u)
    assert np.max(np.abs(c[uu] - S_post.numpy()[uu])) < 5 * np.sqrt(2.0 / N) * np.max(np.diag(S_post.numpy())) + 0.01
    # a per-pixel mask of the wrong channel count is refused
    with pytest.raises(ValueError, match=r"per channel"):
        sample(model, cond, mask[:, :1].repeat(1, 3, 1, 1)[:, :, :, :3], schedule=sched, steps=2, clip_x0=False)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm2m", "dpm2m-sde"])
def test_each_solver_composed_from_its_parts_equals_sample_and_returns_known_pixels_exactly(method):
    """#20.1: sample() is only the composition CFG -> Denoiser (x0 hooks) -> solver (sample hooks); built by hand
    from the parts, every solver gives the same bits, with RePaint moves and guidance, and known pixels exact."""
    from cfgdiff.config import METHODS
    from cfgdiff.sampling import CFG, SOLVERS, ClipX0, Denoiser, NoiseSource, Points, ProjectKnown

    assert set(SOLVERS) == set(METHODS), "every method the config accepts is a solver"
    sched = NoiseSchedule.from_config(ScheduleConfig("cosine", 100))
    model, known, y, cond, mask, _, _ = kriging_problem(sched, 16)
    ref = sample(model, cond, mask, schedule=sched, method=method, steps=8, w=1.5, seed=2, resample=(2, 2))

    noise = NoiseSource(cond.shape, cond.device, seed=2)
    points = Points.make(sched, 8, (2, 2), cond.device)
    denoiser = Denoiser(CFG(model, 1.5), sched, cond, mask, x0_hooks=[ClipX0(-1.0, 1.0, cond.device)])
    project = ProjectKnown(cond, mask.bool(), noise, points.ab.sqrt().tolist(), (1 - points.ab).sqrt().tolist())
    x = SOLVERS[method](denoiser, project(noise(), 0), points, noise, [project])
    assert torch.equal(x, ref.x0)
    assert denoiser.calls == ref.num_model_calls == 2 * denoiser.evals and denoiser.evals == ref.num_steps
    assert ref.num_steps > 8, "the RePaint moves were taken"
    keep = mask.bool().expand_as(x)
    assert torch.equal(x[keep], cond[keep]), "known pixels exact at the end"
