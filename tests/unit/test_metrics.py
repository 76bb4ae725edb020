import math

import pytest
import torch

from cfgdiff.metrics import (
    coverage,
    exact_sample_coverage,
    exact_sample_std_ratio,
    known_error,
    mae_missing,
    mean_fill,
    mean_of_k_psnr_loss_db,
    posterior_mean_mse,
    psnr,
    ratio_of_means_ci,
    rmse_missing,
    samples_for_psnr_loss,
    ssim,
    std_error_correlation,
)


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.2
    p = psnr(x, y, data_range=2.0)
    torch.testing.assert_close(p, torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]))


def test_ssim_identity_and_degradation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    torch.testing.assert_close(ssim(x, x, 1.0), torch.ones(2))
    noisy = x + 0.2 * torch.randn(x.shape, generator=g)
    s = ssim(noisy, x, 1.0)
    assert torch.all(s < 0.9) and torch.all(s > 0)
    # SSIM of a constant shift c: luminance term (2 mu mu' + C1)/(mu^2 + mu'^2 + C1) on flat images
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.6)
    c1 = (0.01) ** 2
    torch.testing.assert_close(ssim(a, b, 1.0), torch.tensor([(2 * 0.3 + c1) / (0.25 + 0.36 + c1)]), rtol=1e-3, atol=0)


def _structured(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Smooth fields with edges: sums of random sinusoids plus a bright box (a non-trivial SSIM map)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.zeros(n, 1, h, w)
    for i in range(n):
        f = torch.rand(4, generator=g) * 8
        out[i, 0] = torch.sin(f[0] * xx + f[1] * yy) + 0.5 * torch.cos(f[2] * xx * yy * 3 + f[3])
        out[i, 0, h // 4: h // 2, w // 3: 2 * w // 3] += 1.5
    return out


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_and_psnr_pinned_to_skimage(kind):
    """Our SSIM equals skimage's Gaussian-window SSIM (Wang et al.) to 1e-6; a box window would not."""
    metrics = pytest.importorskip("skimage.metrics")  # the eval extra, which `make` installs
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 1, 33, 27, generator=g) if kind == "random" else _structured(3, 33, 27, g)
    x = ref + 0.3 * torch.randn(ref.shape, generator=g)
    R = 2.7  # any data range in the user's units
    ours_s, ours_p = ssim(x, ref, R), psnr(x, ref, R)
    for i in range(3):
        a, b = x[i, 0].double().numpy(), ref[i, 0].double().numpy()
        sk = metrics.structural_similarity(a, b, data_range=R, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False)
        assert abs(float(ours_s[i]) - sk) < 1e-6, (float(ours_s[i]), sk)
        assert abs(float(ours_p[i]) - metrics.peak_signal_noise_ratio(b, a, data_range=R)) < 1e-4
    box = metrics.structural_similarity(x[0, 0].double().numpy(), ref[0, 0].double().numpy(), data_range=R,
                                        win_size=11, use_sample_covariance=False)
    assert abs(float(ours_s[0]) - box) > 1e-4, "the box-window variant differs, so the pin above has teeth"


def test_metrics_use_the_stored_data_range_in_user_units():
    """PSNR/SSIM are those of the user-unit arrays with peak hi - lo (per channel), whatever the normalisation."""
    from cfgdiff.normalize import ChannelAffine

    g = torch.Generator().manual_seed(0)
    ref_u = 300.0 + 40.0 * torch.rand(2, 2, 16, 16, generator=g)  # e.g. kelvin
    x_u = ref_u + torch.randn(ref_u.shape, generator=g)
    aff = ChannelAffine(offset=(320.0, 10.0), scale=(9.0, 1.0), lo=(300.0, 0.0), hi=(340.0, 50.0))  # mean/std-like
    rng = aff.data_range_tensor()
    assert aff.data_range() == (40.0, 50.0)
    p = psnr(x_u, ref_u, rng)
    mse = (x_u - ref_u).double().pow(2).mean((2, 3))  # (B, C)
    expected = 10 * torch.log10(1.0 / (mse / torch.tensor([40.0**2, 50.0**2])).mean(1))
    torch.testing.assert_close(p, expected.float())
    assert ChannelAffine((0.0,), (3.0,)).data_range() == (6.0,)  # no stored extremes: 2 * scale
    with pytest.raises(ValueError, match="data_range"):
        psnr(x_u, ref_u, 0.0)


def test_missing_pixel_errors_and_known_error():
    x = torch.zeros(1, 2, 2, 2)
    y = torch.zeros(1, 2, 2, 2)
    y[0, :, 0, 0] = 1.0  # error on a known pixel
    y[0, :, 1, 1] = 2.0  # error on a missing pixel
    mask = torch.ones(1, 1, 2, 2)
    mask[0, 0, 1, 1] = 0
    mask[0, 0, 0, 1] = 0
    torch.testing.assert_close(mae_missing(x, y, mask), torch.tensor([1.0]))  # (2+2+0+0)/4
    torch.testing.assert_close(rmse_missing(x, y, mask), torch.tensor([math.sqrt(2.0)]))
    torch.testing.assert_close(known_error(x, y, mask), torch.tensor([1.0]))


def test_mean_fill_and_calibration():
    known = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    torch.testing.assert_close(mean_fill(known, mask), torch.tensor([[[[1.0, 3.0], [2.0, 2.0]]]]))
    g = torch.Generator().manual_seed(0)
    mean = torch.zeros(1, 1, 100, 100)
    std = torch.rand(1, 1, 100, 100, generator=g) + 0.5
    truth = std * torch.randn(1, 1, 100, 100, generator=g)
    m = torch.zeros(1, 1, 100, 100)
    cov = coverage(mean, std, truth, m).item()
    assert abs(cov - 0.9545) < 0.01
    assert std_error_correlation(std, mean, truth, m).item() > 0.2


def test_ratio_ci_matches_the_normal_interval_and_covers_at_its_level():
    g = torch.Generator().manual_seed(0)
    # den = 1: the ratio is a plain mean, whose 95% interval is mean +- 1.96 s / sqrt(n) (CLT closed form)
    num = torch.empty(400, dtype=torch.float64).exponential_(2.0, generator=g)
    lo, hi = ratio_of_means_ci(num, torch.ones(400), n_boot=4000)
    half = 1.96 * num.std().item() / math.sqrt(400)
    assert abs((hi - lo) / 2 - half) < 0.1 * half and abs((lo + hi) / 2 - num.mean().item()) < 0.1 * half
    # paired rows, true ratio 1.5: the interval covers it in about 95% of repeated draws
    covered = 0
    for rep in range(200):
        den = 0.5 + torch.rand(100, generator=g)
        num = 1.5 * den * (1 + 0.3 * torch.randn(100, generator=g))
        lo, hi = ratio_of_means_ci(num, den, n_boot=500, seed=rep)
        covered += lo <= 1.5 <= hi
    assert 0.88 <= covered / 200 <= 0.99, covered
    # an exact ratio has a zero-width interval; NaN rows (no missing pixel) are dropped in pairs
    den = torch.tensor([1.0, 2.0, float("nan"), 4.0])
    assert ratio_of_means_ci(2 * den, den) == pytest.approx((2.0, 2.0))
    with pytest.raises(ValueError, match="at least 2 rows"):
        ratio_of_means_ci(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 1.0]))


def test_exact_sample_calibration_closed_forms_and_monte_carlo():
    # Student-t closed forms: nu = 1 is Cauchy, P(|T| <= a) = (2/pi) atan(a); nu = 2: a / sqrt(2 + a^2)
    a2, a3 = 2 / math.sqrt(1.5), 2 / math.sqrt(4 / 3)
    assert exact_sample_coverage(2) == pytest.approx(2 / math.pi * math.atan(a2), abs=1e-9)
    assert exact_sample_coverage(3) == pytest.approx(a3 / math.sqrt(2 + a3 * a3), abs=1e-9)
    assert exact_sample_coverage(10**6) == pytest.approx(math.erf(2 / math.sqrt(2)), abs=1e-5)
    assert exact_sample_std_ratio(2) == pytest.approx(math.sqrt(2 / math.pi), abs=1e-12)  # c4(2)
    # the metrics as evaluate computes them, on exact posterior samples: truth and K samples i.i.d.
    g = torch.Generator().manual_seed(0)
    for K in (4, 16):
        sigma = 0.5 + torch.rand(2000, 1, 8, 8, generator=g)  # a different posterior std per pixel
        mu = torch.randn(2000, 1, 8, 8, generator=g)
        truth = mu + sigma * torch.randn(2000, 1, 8, 8, generator=g)
        samples = mu[:, None] + sigma[:, None] * torch.randn(2000, K, 1, 8, 8, generator=g)
        mean, std = samples.mean(1), samples.std(1, unbiased=True)
        mask = torch.zeros(2000, 1, 8, 8)
        assert coverage(mean, std, truth, mask).mean().item() == pytest.approx(exact_sample_coverage(K), abs=0.005)
        assert (std / sigma).mean().item() == pytest.approx(exact_sample_std_ratio(K), abs=0.005)
    with pytest.raises(ValueError, match="num_samples"):
        exact_sample_coverage(1)


def test_posterior_mean_mse_removes_the_k_sample_noise():
    # samples ~ N(mu, s^2) per pixel: the plain mean of K scores ||mu - x||^2 + s^2 / K on average;
    # the estimate is unbiased for ||mu - x||^2 (closed form), whatever K
    g = torch.Generator().manual_seed(0)
    B, K, H = 400, 3, 16
    x = torch.randn(B, 1, H, H, generator=g)
    mu = x + 0.3 * torch.randn(B, 1, H, H, generator=g)  # the model's posterior mean, MSE 0.09
    samples = mu[:, None] + 0.8 * torch.randn(B, K, 1, H, H, generator=g)
    mask = (torch.rand(B, 1, H, H, generator=g) > 0.5).float()
    mean, std = samples.mean(1), samples.std(1, unbiased=True)
    exact = rmse_missing(mu, x, mask).pow(2).mean().item()
    plain = rmse_missing(mean, x, mask).pow(2).mean().item()
    est = posterior_mean_mse(mean, std.pow(2) / K, x, mask).mean().item()  # Var(mean of K) = s^2 / K, estimated
    assert abs(plain - (exact + 0.64 / K)) < 0.01  # the bias the plain mean carries
    assert abs(est - exact) < 0.01


def test_mean_of_k_samples_loses_10log10_1_plus_1_over_k():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g, dtype=torch.float64)  # truth and K samples: i.i.d. from the posterior
    for K in (1, 4, 16):
        mean_k = torch.randn(200_000, K, generator=g, dtype=torch.float64).mean(1)
        db = 10 * math.log10(((mean_k - x) ** 2).mean().item() / (x**2).mean().item())  # posterior mean = 0
        assert db == pytest.approx(mean_of_k_psnr_loss_db(K), abs=0.03)
    assert mean_of_k_psnr_loss_db(4) == pytest.approx(0.9691, abs=1e-4)
    for db in (0.5, 0.25, 0.1, 1.0):
        K = samples_for_psnr_loss(db)
        assert mean_of_k_psnr_loss_db(K) <= db and (K == 1 or db < mean_of_k_psnr_loss_db(K - 1))
    assert [samples_for_psnr_loss(d) for d in (0.5, 0.25, 0.1)] == [9, 17, 43]
    with pytest.raises(ValueError):
        samples_for_psnr_loss(0.0)
