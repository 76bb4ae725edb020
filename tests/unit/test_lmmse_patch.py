"""Patch-wise LMMSE (fields above lmmse.MAX_DIM values) against full LMMSE and closed forms on Gaussian fields."""

import numpy as np
import pytest
import torch

from cfgdiff.degrade import PoolOperator
from cfgdiff.demo import gaussian_random_fields, grf_model
from cfgdiff.evaluate import _lmmse_doc, fit_lmmse
from cfgdiff.lmmse import LinearGaussian
from cfgdiff.lmmse_patch import PatchLinearGaussian, patch_plan, window_for

TORUS = 160  # fields are cut from a larger torus, so that a crop is not periodic (windows cannot see round it)


def _crops(n, S, seed):
    return gaussian_random_fields(n, TORUS, TORUS, seed=seed)[:, :, :S, :S].astype(np.float64)


def _true(h, w):
    """The exact covariance of an h x w crop: a block of the torus' circulant covariance."""
    model = grf_model(TORUS, TORUS)
    ii = torch.from_numpy((np.arange(h)[:, None] * TORUS + np.arange(w)[None, :]).reshape(-1))
    return LinearGaussian(np.zeros(h * w), model._block(model.cov_row, ii, ii).numpy(), (1, h, w))


def _drop(n, S, keep, seed):
    return (np.random.default_rng(seed).random((n, 1, S, S)) < keep).astype(np.float32)


def test_one_window_is_full_lmmse_and_windows_approach_it():
    """A field that is one window gives full LMMSE; a 48x48 field in 32x32 windows (overlap 8) gives, with the
    true window covariance, a missing-pixel MSE within 3% of full LMMSE at 10% and 50% known (measured 1.00-1.01:
    the demo field's correlation length, about 5 px here, is well inside a window). Known pixels exact."""
    S = 48
    x = _crops(24, S, seed=1)
    full = _true(S, S)
    one = PatchLinearGaussian(full, (1, S, S), 12)
    mask = _drop(24, S, 0.1, 0)
    np.testing.assert_allclose(one.predict(x, mask)[0], full.predict(x, mask)[0], atol=1e-6)
    (win, ov) = patch_plan((1, S, S), 32)
    assert win == (32, 32) and ov == 8
    patch = PatchLinearGaussian(_true(*win), (1, S, S), ov)
    for keep in (0.1, 0.5):
        mask = _drop(24, S, keep, 1)
        miss = mask == 0
        mu, sd = patch.predict(np.where(mask > 0, x, np.nan), mask)
        ref, ref_sd = full.predict(x, mask)
        ratio = ((mu - x) ** 2)[miss].mean() / ((ref - x) ** 2)[miss].mean()
        assert 0.99 < ratio < 1.03, (keep, ratio)
        assert np.array_equal(mu[~miss], x[~miss].astype(np.float32)) and np.all(sd[~miss] == 0)
        # the fused std tracks the full posterior's (an approximation: measured within 0.5% on average)
        assert abs(sd[miss].mean() / ref_sd[miss].mean() - 1) < 0.03


def test_fit_on_windows_and_the_windows_plan():
    """The fit pools every window of every training field; from 300 fields it predicts within 5% of the
    true window covariance's MSE. Windows shrink with the channel count to stay within the covariance limit."""
    S = 40
    train, test = _crops(300, S, seed=2).astype(np.float32), _crops(20, S, seed=3)
    fit = PatchLinearGaussian.fit(np.array_split(train, 3), (1, S, S), patch=16)
    assert fit.window == (16, 16) and fit.overlap == 4 and fit.rows == 300 * 9  # windows at 0, 12, 24 per side
    mask = _drop(20, S, 0.2, 4)
    miss = mask == 0
    mu, _ = fit.predict(test, mask)
    ref, _ = PatchLinearGaussian(_true(16, 16), (1, S, S), 4).predict(test, mask)
    assert ((mu - test) ** 2)[miss].mean() / ((ref - test) ** 2)[miss].mean() < 1.05
    assert patch_plan((1, 128, 128)) == ((64, 64), 16)
    assert patch_plan((3, 128, 128)) == ((32, 32), 8) and patch_plan((2, 20, 300)) == ((20, 40), 5)
    assert "exceed" in patch_plan((100, 64, 64))
    # evaluate's choice: one covariance when it fits and has at least as many rows as values, else the largest
    # window with at least 2 window rows per value
    assert window_for((1, 32, 32), 1920) is None and window_for((1, 64, 64), 4096) is None
    assert window_for((1, 64, 64), 960) == 40 and window_for((1, 128, 128), 960) == 64  # 4 and 9 windows a field
    assert window_for((1, 128, 128), 100) == 32 and window_for((3, 32, 32), 500) == 16
    with pytest.raises(ValueError, match="expected"):
        PatchLinearGaussian.fit([train[:, :, :32]], (1, S, S), patch=16)


def test_super_resolution_on_aligned_windows_and_refused_otherwise():
    S = 48
    x = _crops(16, S, seed=5)
    patch = PatchLinearGaussian(_true(24, 24), (1, S, S), 8)  # windows at 0, 16, 24: aligned with 2, 4 and 8
    for f in (2, 4):  # 2 and 4: within 2% of full LMMSE (measured 1.001, 1.012); an 8x pooling leaves a 24 px window 9 values
        op = PoolOperator(f)
        mu, sd = patch.predict_op(x, op)
        ref, _ = _true(S, S).predict_op(x, op)
        assert ((mu - x) ** 2).mean() / ((ref - x) ** 2).mean() < 1.03
        y_mu = op.A(torch.from_numpy(mu.astype(np.float64)))
        assert (y_mu - op.A(torch.from_numpy(x))).abs().max() < 0.02  # y kept, up to the fusion
    with pytest.raises(ValueError, match="pooling factor 3"):
        patch.predict_op(x, PoolOperator(3))


def test_evaluate_fits_windows_above_the_limit(tmp_path):
    """``evaluate``'s LMMSE: 8x520 strips (4160 values) get the patch-wise fit, on the rows it does not score;
    with 20 of them, 8x24 windows (24 a strip, 480 rows for 192 values) are the largest with 2 rows per value."""
    np.save(tmp_path / "x.npy", gaussian_random_fields(30, 8, 520, seed=0))
    fit, why = fit_lmmse(str(tmp_path / "x.npy"), scored_rows=10)
    assert why is None and isinstance(fit, PatchLinearGaussian) and fit.rows == 20 * 24  # windows at 0, 22, .., 496
    assert _lmmse_doc(fit) == {"rows": 480, "shrinkage": fit.shrinkage, "window": [8, 24], "overlap": 2}
    np.save(tmp_path / "y.npy", gaussian_random_fields(40, 8, 8, seed=0))
    fit, why = fit_lmmse(str(tmp_path / "y.npy"), scored_rows=10)  # 30 rows for 64 values: 8x8 is one window
    assert why is None and isinstance(fit, PatchLinearGaussian) and fit.window == (8, 8)

