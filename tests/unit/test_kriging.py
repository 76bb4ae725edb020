"""Stationary kriging at any size (``cfgdiff.kriging``) against the dense closed form (``demo.kriging``), and the
seam figures of tiled reconstructions (``cfgdiff.seams``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cfgdiff.demo import gaussian_random_fields, grf_covariance, grf_model, kriging
from cfgdiff.seams import error_map, seam_report, window_edges


@pytest.mark.parametrize("known_fraction", [0.15, 0.85])  # fewer known pixels: covariance form; more: precision form
def test_stationary_kriging_is_the_dense_posterior_on_a_non_square_torus(known_fraction):
    H, W, mean = 12, 10, 0.3
    x = gaussian_random_fields(5, H, W, seed=2)[:, 0] + mean
    rng = np.random.default_rng(0)
    mask = (rng.uniform(size=(5, H, W)) < known_fraction).astype(np.uint8)
    mask[1] = mask[0]  # rows sharing a mask share one factorisation
    mask[3] = 1  # nothing missing
    mask[4] = 0  # nothing known: the prior
    mu, sd = grf_model(H, W, mean=mean).krige(x, mask)
    cov = grf_covariance(H, W)
    for i in range(5):
        m_ref, s_ref = kriging(x[i], mask[i], cov, mean)
        # the dense form adds 1e-9 to C_KK's diagonal; the precision form needs none, hence 1e-7, not 1e-15
        np.testing.assert_allclose(mu[i], m_ref, atol=1e-7)
        np.testing.assert_allclose(sd[i], s_ref, atol=1e-7)
    k = mask.astype(bool)
    assert np.array_equal(mu[k], x[k]) and (sd[k] == 0).all() and (sd[~k] > 0).all()


def test_stationary_kriging_scores_the_bayes_mse_it_predicts():
    """Over many fields, the posterior mean's squared error averages the posterior variance (a property of the
    exact posterior, at 64x64 where the dense matrix would be 4096^2)."""
    x = gaussian_random_fields(40, 64, 64, seed=7)[:, 0].astype(np.float64)
    rng = np.random.default_rng(1)
    mask = rng.uniform(size=x.shape) < 0.1
    mu, sd = grf_model(64, 64).krige(x, mask)
    err, var = ((mu - x) ** 2)[~mask].mean(), (sd ** 2)[~mask].mean()
    assert err == pytest.approx(var, rel=0.1)


def test_window_edges_and_error_map():
    assert window_edges(128, 64, 16) == [48, 64, 112]  # windows at 0, 48, 64 (the last flush with the edge)
    assert window_edges(64, 64, 16) == []
    target = np.zeros((2, 1, 4, 4))
    recon = np.ones((2, 1, 4, 4))
    mask = np.ones((2, 1, 4, 4))
    mask[0, 0, 0, 0] = 0
    mask[:, 0, 1, 1] = 0
    recon[1, 0, 1, 1] = 3.0
    E = error_map(recon, target, mask)
    assert E[0, 0] == 1.0 and E[1, 1] == 5.0 and np.isnan(E[2, 2])  # (1 + 9) / 2 over the two rows missing it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lines never missing are None (JSON has no NaN), without a warning
        doc, _ = seam_report(recon, target, mask, 2, 1)
    assert doc["model"]["row_mean_mse"] == [1.0, 5.0, None, None] == doc["model"]["col_mean_mse"]


def test_a_seam_shows_in_the_edge_ratio_and_not_in_a_seamless_reference():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((8, 1, 96, 96))
    mask = (rng.uniform(size=target.shape) < 0.2).astype(np.uint8)
    reference = target + 0.3 * rng.standard_normal(target.shape)
    seamed = reference.copy()
    for e in window_edges(96, 64, 16):  # extra error on the pixels either side of each window edge
        seamed[..., e - 1:e + 1, :] += 0.3 * rng.standard_normal(seamed[..., e - 1:e + 1, :].shape)
    doc, maps = seam_report(seamed, target, mask, 64, 16, reference=reference)
    assert doc["row_edges"] == [32, 64] and doc["col_edges"] == [32, 64] and set(maps) == {"model", "reference"}
    assert doc["reference"]["edge_over_rest"] == pytest.approx(1.0, abs=0.05)
    assert doc["model"]["edge_over_rest"] > 1.3  # rows at the edges carry twice the variance; columns do not
    rows = np.array(doc["model"]["row_mean_mse"])
    assert rows[[31, 32, 63, 64]].min() > 1.5 * np.median(rows)
