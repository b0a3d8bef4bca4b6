"""Lag correlation, three-phase segmentation and gap flow on synthetic series with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_edge import SpectralMonitor
from spectral_edge.series import (
    GapFlowTerms,
    aligned_series,
    detrend,
    gap_flow_check,
    gap_flow_terms,
    lag_correlation,
    pearson,
    three_phases,
)

# ------------------------------------------------------------------ lag correlation


def test_missing_samples_keep_their_positions_when_pairwise():
    """missing='pairwise' drops pairs after shifting, so lag ℓ still pairs samples ℓ apart; on finite
    series it equals the default; the default refuses NaN."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    full = lag_correlation(x, y, max_lag=4, detrend_order=1)
    same = lag_correlation(x, y, max_lag=4, detrend_order=1, missing="pairwise")
    np.testing.assert_array_equal(full.r, same.r)
    assert (full.n, full.best_lag) == (same.n, same.best_lag)

    x[[3, 20]], y[31] = np.nan, np.inf
    with pytest.raises(ValueError, match="missing='pairwise'"):
        lag_correlation(x, y, max_lag=4)
    got = lag_correlation(x, y, max_lag=4, detrend_order=None, missing="pairwise")
    assert got.n == 47
    for lag, r in zip(got.lags.tolist(), got.r.tolist(), strict=True):
        pairs = [(x[i], y[i + lag]) for i in range(50) if 0 <= i + lag < 50]
        a, b = np.array([p for p in pairs if np.isfinite(p[0]) and np.isfinite(p[1])]).T
        assert r == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    with pytest.raises(ValueError, match="missing must be"):
        lag_correlation(x, y, missing="drop")


def test_detrend_fits_on_the_finite_samples_only():
    t = np.linspace(0.0, 1.0, 9)
    y = 2.0 + 3.0 * t
    y[4] = np.nan
    out = detrend(y, 1)
    assert np.isnan(out[4])
    np.testing.assert_allclose(np.delete(out, 4), 0.0, atol=1e-12)


def test_pearson_edges():
    assert pearson([1.0, 2.0, 4.0], [2.0, 4.0, 8.0]) == pytest.approx(1.0)
    assert np.isnan(pearson([1.0, 2.0], [1.0, 2.0])) and np.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize("lag", [-4, -1, 0, 2, 5])
def test_lag_correlation_finds_a_planted_lead_under_a_trend(lag):
    """y(t) = s(t − lag) + trend: x leads by `lag`; the linear trends would make every lag look alike."""
    rng = np.random.default_rng(abs(lag))
    signal = rng.standard_normal(80)
    t = np.arange(60)
    x = signal[10 + t] + 0.05 * t
    y = signal[10 + t - lag] - 0.08 * t + 0.05 * rng.standard_normal(60)
    result = lag_correlation(x, y)
    assert result.best_lag == lag
    assert result.best_r > 0.95
    assert list(result.lags) == list(range(-5, 6))
    assert result.zero_lag_r == pytest.approx(result.r[5])


def test_lag_correlation_sign_convention_matches_the_protocol():
    """lag > 0 is corr(x[:-lag], y[lag:]) (formulas.md §13, Test 4), computed on detrended series."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    result = lag_correlation(x, y, max_lag=3, detrend_order=None)
    for lag, r in zip(result.lags, result.r, strict=True):
        a, b = (x[:-lag], y[lag:]) if lag > 0 else (x[-lag:], y[:lag]) if lag < 0 else (x, y)
        assert r == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)


def test_detrend_removes_polynomials_of_its_order():
    t = np.linspace(0.0, 1.0, 25)
    cubic = 2.0 - 3.0 * t + 5.0 * t**2 - 7.0 * t**3
    np.testing.assert_allclose(detrend(cubic, 3), 0.0, atol=1e-12)
    assert np.abs(detrend(cubic, 1)).max() > 0.01
    np.testing.assert_allclose(detrend(np.full(5, 4.0), 0), 0.0)
    np.testing.assert_array_equal(detrend(cubic, None), cubic)


def test_lag_correlation_errors():
    with pytest.raises(ValueError, match="one length"):
        lag_correlation([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least"):
        lag_correlation(np.arange(6.0), np.arange(6.0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        lag_correlation([1.0, np.inf, *range(10)], np.arange(12.0))


# ------------------------------------------------------------------ three phases


def test_three_phases_recovers_a_planted_rise_plateau_collapse():
    rng = np.random.default_rng(1)
    steps = np.arange(0, 10_000, 100)
    r = np.interp(steps, [0, 3000, 5000, 7000, 7600, 10_000], [1.05, 3.0, 3.2, 3.0, 1.1, 1.02])
    r = r + 0.03 * rng.standard_normal(steps.size)
    phases = three_phases(steps, r)
    assert 4000 <= phases.peak_step <= 6000
    assert 2000 <= phases.plateau[0] <= 3500 and 6000 <= phases.plateau[1] <= 7200
    assert phases.rise == (0, phases.plateau[0] - 100)
    assert phases.collapse == (phases.plateau[1] + 100, 9900)
    assert 7000 <= phases.collapse_onset <= 7700


def test_three_phases_rise_only_has_no_collapse():
    steps = np.arange(50)
    phases = three_phases(steps, 1.0 + np.linspace(0.0, 4.0, 50))
    assert phases.collapse is None and phases.collapse_onset is None
    assert phases.plateau[1] == 49


def test_three_phases_ignores_an_infinite_ratio_and_rejects_bad_settings():
    r = [1.1, 2.0, np.inf, 3.0, 2.9, 1.1, 1.0]
    assert three_phases(range(7), r, smoothing=1).collapse_onset == 5
    with pytest.raises(ValueError, match="odd"):
        three_phases(range(7), r, smoothing=4)
    with pytest.raises(ValueError, match="plateau_level"):
        three_phases(range(7), r, plateau_level=0.0)


# ------------------------------------------------------------------ gap flow


def test_gap_flow_explains_a_trajectory_that_follows_eq_68():
    """Integrate eq 67 for two modes with Euler steps; eq 68's prediction must match the measured dg/dt."""
    eta, omega, w = 1e-2, 0.1, 10
    h = np.array([3.0, 1.0])
    n = 400
    d = np.empty((n, 2))
    d[0] = [1.0, 0.8]
    grad = np.empty((n, 2))
    for i in range(n):
        grad[i] = [0.3 + 0.2 * np.sin(i / 40), 0.2]
        if i + 1 < n:  # eq 67: ḋ_j = −η(h_j + ω) d_j + η W G_j² / d_j
            d[i + 1] = d[i] + (-eta * (h + omega) * d[i] + eta * w * grad[i] ** 2 / d[i])
    terms = gap_flow_terms(
        lr=eta, weight_decay=omega, window=w, h=np.tile(h, (n, 1)), grad_proj=grad, sigma=d
    )
    check = gap_flow_check(np.arange(n), d[:, 0] - d[:, 1], terms)
    assert check.r_squared > 0.99
    assert check.correlation > 0.99
    assert sum(check.shares.values()) == pytest.approx(1.0)
    # eq 68 is exact algebra on eq 67: the three terms sum to ḋ_k* − ḋ_k*+1.
    rate = -eta * (h + omega) * d + eta * w * grad**2 / d
    np.testing.assert_allclose(terms.total, rate[:, 0] - rate[:, 1], rtol=1e-12)


def test_gap_flow_errors():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        gap_flow_terms(
            lr=1.0,
            weight_decay=0.0,
            window=10,
            h=np.ones((3, 3)),
            grad_proj=np.ones((3, 3)),
            sigma=np.ones((3, 3)),
        )
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gap_flow_terms(
            lr=1.0,
            weight_decay=0.0,
            window=10,
            h=np.ones((1, 2)),
            grad_proj=np.ones((1, 2)),
            sigma=np.zeros((1, 2)),
        )
    flat = GapFlowTerms(np.zeros(2), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="length >= 3"):
        gap_flow_check(np.arange(2.0), np.arange(2.0), flat)


# ------------------------------------------------------------------ from a run store


def test_aligned_series_pairs_each_evaluation_with_the_latest_record(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 6), torch.randn(64, 2)
    mon = SpectralMonitor(model, window=4, lr=opt, store=tmp_path / "run")
    records = {}
    for step in range(1, 41):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        rec = mon.step()
        if rec is not None:
            records[step] = rec
        if step % 5 == 0:
            mon.log_eval(val_loss=loss.item())
    mon.close()
    steps, ratio, val = aligned_series(tmp_path / "run", "gap_ratio", "val_loss")
    assert steps.tolist() == list(range(5, 41, 5))  # the first record is at step 4
    np.testing.assert_allclose(ratio, [records[s].gap_ratio for s in steps])
    _, r12, _ = aligned_series(tmp_path / "run", "ratio_1", "val_loss")
    np.testing.assert_allclose(r12, [records[s].ratios[0] for s in steps])
    assert val.shape == steps.shape
    with pytest.raises(ValueError, match="no evaluation metric"):
        aligned_series(tmp_path / "run", "gap_ratio", "test_acc")
    with pytest.raises(ValueError, match="no field"):
        aligned_series(tmp_path / "run", "nope", "val_loss")
