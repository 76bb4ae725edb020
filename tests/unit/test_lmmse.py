"""LMMSE (kriging with a fitted covariance) against closed forms on Gaussian random fields."""

import numpy as np
import pytest

from cfgdiff.demo import gaussian_random_fields, grf_covariance, kriging
from cfgdiff.lmmse import HOLDOUT_EVERY, LinearGaussian


def _masks(n, S, keep, seed):
    return (np.random.default_rng(seed).random((n, 1, S, S)) < keep).astype(np.float32)


def test_with_the_true_covariance_it_is_the_exact_kriging_posterior():
    S = 12
    cov = grf_covariance(S, S)
    x = gaussian_random_fields(40, S, S, seed=3).astype(np.float64)
    mask = _masks(40, S, 0.25, 0)
    mask[10:20] = mask[10]  # rows sharing a mask share one factorisation: same answer as alone
    mask[20, 0] = 1.0  # nothing missing
    mask[21, 0] = 0.0  # nothing known
    mask[30:] = _masks(10, S, 0.8, 1)  # more known than missing: the precision form factors Q_UU instead of S_KK
    mu, sd = LinearGaussian(np.zeros(S * S), cov, (1, S, S)).predict(np.where(mask > 0, x, np.nan), mask)
    Q = np.linalg.inv(cov)  # the precision form, independent of S_KK: mu_U = -Q_UU^-1 Q_UK x_K
    for i in range(40):
        m_ref, s_ref = kriging(x[i, 0], mask[i, 0], cov)
        np.testing.assert_allclose(mu[i, 0], m_ref, atol=2e-6)  # float32 output of O(1) values
        np.testing.assert_allclose(sd[i, 0], s_ref, atol=2e-6)
        k = mask[i, 0].reshape(-1) > 0
        u = ~k
        if k.any() and u.any():
            prec = -np.linalg.solve(Q[np.ix_(u, u)], Q[np.ix_(u, k)] @ x[i, 0].reshape(-1)[k])
            np.testing.assert_allclose(mu[i, 0].reshape(-1)[u], prec, atol=1e-5)
            post_cov = np.linalg.inv(Q[np.ix_(u, u)])  # S_U|K = Q_UU^-1
            np.testing.assert_allclose(sd[i, 0].reshape(-1)[u], np.sqrt(np.diag(post_cov)), atol=1e-5)
        assert np.array_equal(mu[i, 0][mask[i, 0] > 0], x[i, 0][mask[i, 0] > 0].astype(np.float32))
    assert np.all(sd[mask.astype(bool)] == 0)


def test_fitted_on_more_rows_it_approaches_kriging():
    """Excess missing-pixel MSE over the exact posterior mean falls as the fit sees more rows: the
    estimation error of a D x D covariance shrinks like D/N (here D = 64, 400 test fields, 30% known)."""
    S = 8
    test = gaussian_random_fields(400, S, S, seed=2).astype(np.float64)
    mask = _masks(400, S, 0.3, 5)
    miss = mask == 0
    exact, _ = LinearGaussian(np.zeros(S * S), grf_covariance(S, S), (1, S, S)).predict(test, mask)
    excess = []
    for n in (200, 2000, 20000):
        train = gaussian_random_fields(n, S, S, seed=1)
        fit = LinearGaussian.fit(np.array_split(train, 7))  # streamed in uneven batches
        assert fit.rows == n
        mu, _ = fit.predict(test, mask)
        excess.append(((mu - test) ** 2)[miss].mean() / ((exact - test) ** 2)[miss].mean() - 1)
    assert excess[0] > excess[1] > excess[2], excess
    assert excess[2] < 0.01 and excess[0] < 0.15, excess


def test_streaming_fit_matches_the_batch_estimate_and_shrinks_only_when_it_helps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 2, 3, 3)) * 1e3 + 1e6  # a large offset: shifted sums keep precision
    fit = LinearGaussian.fit([x[:7], x[7:300], x[300:]], shrinkages=(0.0,))
    flat = x.reshape(500, -1)
    np.testing.assert_allclose(fit.mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(fit.cov, np.cov(flat.T), rtol=1e-9, atol=1e-6)
    # independent coordinates (true covariance diagonal): the held-out likelihood picks strong shrinkage
    assert LinearGaussian.fit([x]).shrinkage >= 0.3
    # a smooth field with few rows: full shrinkage to the diagonal would throw the correlations away
    assert LinearGaussian.fit([gaussian_random_fields(300, 8, 8, seed=4)]).shrinkage < 0.3


def test_per_channel_masks_and_refusals():
    rng = np.random.default_rng(1)
    base = gaussian_random_fields(600, 6, 6, seed=0)
    x = np.concatenate([base, 0.5 * base + 0.1 * rng.standard_normal(base.shape)], axis=1)  # correlated channels
    fit = LinearGaussian.fit([x])
    m = np.ones((1, 2, 6, 6), np.float32)
    m[0, 1] = 0  # the second component lost entirely, the first seen: predicted from the first
    mu, sd = fit.predict(x[:1], m)
    assert np.array_equal(mu[0, 0], x[0, 0])
    assert np.abs(mu[0, 1] - x[0, 1]).mean() < 0.15 < np.abs(x[0, 1]).mean()
    with pytest.raises(ValueError, match="at least"):
        LinearGaussian.fit([x[: HOLDOUT_EVERY - 1]])
    with pytest.raises(ValueError, match="NaN"):
        LinearGaussian.fit([np.full((20, 1, 2, 2), np.nan)])


def test_dense_linear_observations_super_resolution():
    """Given y = A x: a selection matrix A gives exactly the masked answer; 2x2 average pooling gives a
    reconstruction that reproduces y, whose error matches its own posterior variance on Gaussian data."""
    S = 8
    cov = grf_covariance(S, S)
    lg = LinearGaussian(np.zeros(S * S), cov, (1, S, S))
    x = gaussian_random_fields(400, S, S, seed=7).astype(np.float64)
    mask = np.zeros((1, 1, S, S), np.float32)
    mask[..., ::3, ::2] = 1
    sel = np.eye(S * S)[mask.reshape(-1) > 0]  # (M, D)
    mu_m, sd_m = lg.predict(x[:5], np.repeat(mask, 5, 0))
    mu_l, sd_l = lg.predict_linear(x[:5].reshape(5, -1) @ sel.T, sel)
    np.testing.assert_allclose(mu_l, mu_m, atol=1e-5)
    np.testing.assert_allclose(sd_l, sd_m, atol=1e-4)  # known pixels: sqrt of the 1e-10 jitter, not 0
    pool = np.zeros((S * S // 4, S * S))
    for i in range(S // 2):
        for j in range(S // 2):
            for di in (0, 1):
                for dj in (0, 1):
                    pool[i * S // 2 + j, (2 * i + di) * S + 2 * j + dj] = 0.25
    y = x.reshape(400, -1) @ pool.T
    mu, sd = lg.predict_linear(y, pool)
    np.testing.assert_allclose(mu.reshape(400, -1).astype(np.float64) @ pool.T, y, atol=1e-5)
    mse, var = ((mu - x) ** 2).mean(), (sd.astype(np.float64) ** 2).mean()
    assert abs(mse / var - 1) < 0.1, (mse, var)
