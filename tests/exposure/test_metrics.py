"""Bootstrap CIs cover and narrow; SSIM/PSNR and re-identification behave at their extremes."""

from __future__ import annotations

import numpy as np

from caltrain.exposure.metrics import PSNR_CAP, bootstrap, reidentification, ssim_psnr


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        est = bootstrap(rng.normal(1.0, 1.0, 200), 400, rng)["mean"]
        covered += est.lo <= 1.0 <= est.hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ci_narrows_with_more_samples_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    small, large = (bootstrap(rng.exponential(1.0, n), 500, rng) for n in (50, 2000))
    for name in ("mean", "median", "p95"):
        for est in (small[name], large[name]):
            assert est.lo <= est.value <= est.hi
        assert large[name].hi - large[name].lo < 0.5 * (small[name].hi - small[name].lo)
    assert abs(large["p95"].value - np.log(20)) < 0.3  # 95th percentile of Exp(1)


def test_ssim_psnr_extremes() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((3, 1, 8, 8)).astype(np.float32)
    ssim, psnr = ssim_psnr(x, x)
    assert np.allclose(ssim, 1.0) and np.all(psnr == PSNR_CAP)
    ssim, psnr = ssim_psnr(x, rng.random((3, 1, 8, 8)).astype(np.float32))
    assert np.all(ssim < 0.5) and np.all(psnr < 15)


def test_reidentification_perfect_vs_class_mean() -> None:
    rng = np.random.default_rng(3)
    pool_y = np.repeat(np.arange(4), 30)
    pool_x = rng.random((len(pool_y), 1, 6, 6)).astype(np.float32)
    index = np.arange(0, len(pool_y), 2)
    assert reidentification(pool_x[index], index, pool_x, pool_y, 10, rng).all()
    class_means = np.stack([pool_x[pool_y == pool_y[t]].mean(0) for t in index])
    noise_recon = class_means + rng.normal(0, 0.01, class_means.shape)  # knows the class, nothing else
    rate = reidentification(noise_recon, index, pool_x, pool_y, 10, rng).mean()
    assert rate < 0.3
