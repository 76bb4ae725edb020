"""Stationary kriging at any size (``cfgdiff.kriging``) against the dense closed form (``demo.kriging``), and the
seam figures of tiled reconstructions (``cfgdiff.seams``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cfgdiff.demo import gaussian_random_fields, grf_covariance, grf_model, kriging
from cfgdiff.kriging import canonical_shift
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


def test_a_mask_and_its_translates_roll_to_one_canonical_mask():
    rng = np.random.default_rng(3)
    box = np.ones((12, 10), bool)
    box[2:7, 3:6] = False
    band = np.ones((12, 10), bool)
    band[:, :5] = False  # a half: invariant under vertical shifts
    for m in (box, band, rng.uniform(size=(12, 10)) < 0.3, rng.uniform(size=(12, 10)) < 0.9):
        canon = np.roll(m, [-s for s in canonical_shift(m)], axis=(0, 1))
        for t in ((0, 1), (5, 7), (11, 9), (6, 0)):
            mt = np.roll(m, t, axis=(0, 1))
            assert np.array_equal(np.roll(mt, [-s for s in canonical_shift(mt)], axis=(0, 1)), canon), t


@pytest.mark.parametrize("H,W", [(12, 10), (10, 10)])
def test_rows_whose_masks_are_translates_share_one_factorisation_and_keep_the_exact_posterior(H, W):
    """Random boxes of one size (some wrapping around the torus's edge) and halves: one factorisation per kind,
    each row still the dense closed form, known pixels returned bit for bit. On the square torus the isotropic
    field's law is also symmetric under transposition, so top and bottom halves join left and right."""
    x = gaussian_random_fields(6, H, W, seed=4)[:, 0]
    box = np.ones((H, W), np.uint8)
    box[3:8, 2:6] = 0
    left = np.ones((H, W), np.uint8)
    left[:, W // 2:] = 0
    boxes = [np.roll(box, t, axis=(0, 1)) for t in [(0, 0), (4, 1), (9, 8), (2, 5), (H - 1, 3), (7, W - 1)]]
    halves = [np.roll(left, t, axis=(0, 1)) for t in [(0, 0), (0, W // 2), (3, W // 2), (0, 0)]]
    if H == W:
        halves += [left.T, np.roll(left.T, H // 2, axis=0)]  # top and bottom
    cov = grf_covariance(H, W)
    for masks in (boxes, halves):
        mask = np.stack(masks)
        field = grf_model(H, W)
        calls = []
        factor = field._posterior
        field._posterior = lambda xk, k: calls.append(k.sum()) or factor(xk, k)
        mu, sd = field.krige(x[:len(mask)], mask)
        assert len(calls) == 1
        for i in range(len(mask)):
            m_ref, s_ref = kriging(x[i], mask[i], cov)
            np.testing.assert_allclose(mu[i], m_ref, atol=1e-7)
            np.testing.assert_allclose(sd[i], s_ref, atol=1e-7)
        k = mask.astype(bool)
        assert np.array_equal(mu[k], x[:len(mask)][k]) and (sd[k] == 0).all()


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
