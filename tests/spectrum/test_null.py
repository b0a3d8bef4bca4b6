"""BBP threshold, noise estimates, the Wishart-shortcut null of the max ratio, and the Krylov bound."""

from __future__ import annotations

import numpy as np
import pytest

from spectral_edge.spectrum.null import (
    adam_noise_level,
    bbp_ratio,
    bbp_threshold,
    krylov_bound,
    noise_level_from_spectrum,
    null_max_ratio_quantile,
    null_max_ratio_samples,
    null_p_value,
)


def _direct_null(w: int, p: int, n: int, seed: int) -> np.ndarray:
    """The slow reference: draw the P-dimensional noise rows themselves."""
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for i in range(n):
        s = np.linalg.svd(rng.standard_normal((w, p)), compute_uv=False)
        out[i] = np.max(s[:-1] / s[1:])
    return out


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


@pytest.mark.parametrize(("w", "p"), [(10, 400), (3, 50), (5, 5)])
def test_wishart_shortcut_matches_direct_simulation(w, p):
    n = 3000
    shortcut = null_max_ratio_samples(w, p, n_samples=n, seed=1)
    direct = _direct_null(w, p, n, seed=2)
    # Two-sample Kolmogorov–Smirnov at the 0.1% level: c(α) = 1.95.
    assert _ks_statistic(shortcut, direct) < 1.95 * np.sqrt(2.0 / n)
    # The 95% quantiles agree within their Monte Carlo error (a few percent of the excess over 1).
    q_short, q_direct = np.quantile(shortcut, 0.95), np.quantile(direct, 0.95)
    assert abs(q_short - q_direct) < 0.1 * (q_direct - 1.0)


def test_null_quantile_scales_as_one_over_root_p():
    # formulas.md §5: for W = 10 the 95% quantile is 1 + c/√P with c ≈ 1.6–1.7.
    for p in (10**4, 10**6, 10**8):
        c95 = (null_max_ratio_quantile(10, p, 0.95) - 1.0) * np.sqrt(p)
        assert 1.4 < c95 < 2.0
    assert null_max_ratio_quantile(10, 10**8, 0.99) > null_max_ratio_quantile(10, 10**8, 0.95)


def test_null_is_seeded_cached_and_read_only():
    a = null_max_ratio_samples(10, 1000, n_samples=500, seed=7)
    b = null_max_ratio_samples(10, 1000, n_samples=500, seed=7)
    assert a is b and not a.flags.writeable
    assert not np.array_equal(a, null_max_ratio_samples(10, 1000, n_samples=500, seed=8))
    assert null_p_value(10.0, 10, 1000, n_samples=500) == pytest.approx(1 / 501)
    assert null_p_value(1.0, 10, 1000, n_samples=500) == 1.0


def test_null_with_fewer_parameters_than_updates():
    samples = null_max_ratio_samples(10, 3, n_samples=200)
    assert np.all(np.isfinite(samples)) and np.all(samples >= 1.0)
    assert np.all(null_max_ratio_samples(10, 1, n_samples=5) == np.inf)


def test_bbp_threshold_and_noise_estimates():
    # formulas.md §3: η = 1e-3, B = 20, P = 1.63e8, W = 10 gives ν = 2.24e-4 and d_crit ≈ 0.045 (0.044 with W−1).
    nu = adam_noise_level(1e-3, 20)
    assert nu == pytest.approx(2.236e-4, rel=1e-3)
    assert bbp_threshold(nu, 163_150_848, 10) == pytest.approx(0.0452, abs=5e-4)
    assert bbp_threshold(nu, 163_150_848, 10, "P(W-1)") == pytest.approx(0.0440, abs=5e-4)
    assert bbp_threshold(1.0, 1000, 10) == pytest.approx(10.0)  # (P W)^{1/4} = (10⁴)^{1/4}
    # Pure noise: ν from the bottom half recovers the per-coordinate standard deviation.
    rng = np.random.default_rng(0)
    x = 0.01 * rng.standard_normal((10, 200_000))
    lam = np.linalg.svd(x, compute_uv=False) ** 2
    assert noise_level_from_spectrum(lam, 200_000) == pytest.approx(0.01, rel=0.01)
    # A noise window sits near the threshold scale, far below a signal window's σ_W / d_crit.
    noise_ratio = bbp_ratio(np.sqrt(lam), 0.01, 200_000)
    assert 1.0 < noise_ratio < 100.0
    with pytest.raises(ValueError, match="variant"):
        bbp_threshold(1.0, 10, 10, "bad")


def test_krylov_bound():
    check = krylov_bound(np.array([5000.0, 3400.0, 3000.0, 10.0]), lr=3e-5, window=10, k_star=2)
    assert check.threshold == pytest.approx(1 / 3e-4)  # 3333, the GPT-2 row of Table 3
    assert check.active_modes == 2 and check.satisfied
    assert not krylov_bound(np.array([1.0]), lr=1e-3, window=10, k_star=1).satisfied
    assert krylov_bound(np.array([1.0]), lr=1e-3, window=10).satisfied is None
