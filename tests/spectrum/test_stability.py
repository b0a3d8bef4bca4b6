"""α_j, half-window α, Davis–Kahan and 𝒜 against dense float64 references on synthetic trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from spectral_edge.spectrum.stability import (
    AdiabaticRegimes,
    adiabatic_parameter,
    davis_kahan_bound,
    half_window_alignment,
    nearest_eigenvalue_gaps,
    stability_coefficients,
)
from spectral_edge.spectrum.window import analyze_window
from tests.spectrum.synthetic import planted_window


def _slide(trajectory: np.ndarray, w: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows before and after the update at row t of a trajectory (rows t−w … t−1, then t−w+1 … t)."""
    return trajectory[t - w : t], trajectory[t - w + 1 : t + 1]


def _dense_delta_c(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.linalg.norm(after.T @ after - before.T @ before))  # ‖ΔC‖_F from the P × P matrices


@pytest.mark.parametrize("w", [2, 3, 10])
def test_alpha_matches_definition_with_dense_delta_c(w):
    rng = np.random.default_rng(w)
    trajectory = rng.standard_normal((w + 5, 40)) * np.linspace(2.0, 1.0, 40)
    before, after = _slide(trajectory, w, w + 3)
    dc = _dense_delta_c(before, after)
    lam = np.linalg.svd(after, compute_uv=False) ** 2
    separation = np.array([min(abs(lam[j] - lam[k]) for k in range(w) if k != j) for j in range(w)])
    expected = np.clip(1.0 - dc**2 / separation**2, 0.0, 1.0)
    np.testing.assert_allclose(stability_coefficients(lam, dc), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nearest_eigenvalue_gaps(lam), separation, rtol=1e-12)
    np.testing.assert_allclose(
        stability_coefficients(lam, dc, c=0.25), np.clip(1 - 0.25 * dc**2 / separation**2, 0, 1)
    )


def test_alpha_lower_bounds_the_squared_cosine_of_each_direction():
    # A slowly turning trajectory with a well separated spectrum: α_j ≤ cos²θ_j must hold (Davis–Kahan).
    rng = np.random.default_rng(3)
    w, p = 6, 60
    base = planted_window([40.0, 20.0, 10.0, 5.0, 2.5, 1.2], p, seed=4)
    trajectory = np.vstack([base, base[0] + 0.01 * rng.standard_normal(p)])
    before, after = trajectory[:w], trajectory[1:]
    dc = _dense_delta_c(before, after)
    _, _, v0 = np.linalg.svd(before, full_matrices=False)
    _, s1, v1 = np.linalg.svd(after, full_matrices=False)
    cos2 = np.sum(v0 * v1, axis=1) ** 2
    alpha = stability_coefficients(s1**2, dc)
    assert np.all(alpha <= cos2 + 1e-12)
    assert alpha[0] > 0.5  # the dominant direction is certified stable


def test_alpha_degenerate_cases():
    assert stability_coefficients(np.array([2.0, 2.0, 1.0]), 0.0).tolist() == [1.0, 1.0, 1.0]
    assert stability_coefficients(np.array([2.0, 2.0, 1.0]), 0.1).tolist()[:2] == [0.0, 0.0]
    with pytest.raises(ValueError, match="c must be > 0"):
        stability_coefficients(np.ones(3), 0.1, c=0.0)


@pytest.mark.parametrize("w", [4, 5, 10, 40])
def test_half_window_alignment_matches_direct_svd_of_the_halves(w):
    rng = np.random.default_rng(w)
    x = planted_window(np.geomspace(50.0, 1.0, w), 3 * w, seed=w) + 0.05 * rng.standard_normal((w, 3 * w))
    h = w // 2
    _, _, v1 = np.linalg.svd(x[:h], full_matrices=False)
    _, _, v2 = np.linalg.svd(x[w - h :], full_matrices=False)
    expected = np.abs(np.sum(v1 * v2, axis=1))
    np.testing.assert_allclose(half_window_alignment(x @ x.T), expected, rtol=1e-8, atol=1e-10)


def test_half_window_alignment_edge_cases():
    with pytest.raises(ValueError, match="W >= 4"):
        half_window_alignment(np.eye(3))
    assert half_window_alignment(np.zeros((4, 4))).tolist() == [0.0, 0.0]
    x = np.zeros((4, 5))
    x[:, 0] = 1.0  # every update along one axis: the first direction is identical, the second undefined
    np.testing.assert_allclose(half_window_alignment(x @ x.T), [1.0, 0.0], atol=1e-12)


def test_davis_kahan_bound_holds_for_the_top_subspace():
    rng = np.random.default_rng(11)
    w, p = 8, 50
    trajectory = planted_window(np.r_[30.0, 28.0, np.geomspace(6.0, 1.0, w - 2)], p, seed=2)
    trajectory = np.vstack([trajectory, trajectory[0] * 1.02 + 0.05 * rng.standard_normal(p)])
    before, after = trajectory[:w], trajectory[1:]
    spec = analyze_window(after)
    bound = davis_kahan_bound(_dense_delta_c(before, after), spec.gap_lambda)
    k = spec.k_star
    _, _, v0 = np.linalg.svd(before, full_matrices=False)
    _, _, v1 = np.linalg.svd(after, full_matrices=False)
    cosines = np.linalg.svd(v0[:k] @ v1[:k].T, compute_uv=False)
    sin_theta = np.sqrt(np.sum(1.0 - np.clip(cosines, 0, 1) ** 2))
    assert sin_theta <= bound
    assert davis_kahan_bound(0.0, 0.0) == 0.0 and davis_kahan_bound(1.0, 0.0) == np.inf


def test_adiabatic_parameter_and_units():
    rng = np.random.default_rng(2)
    trajectory = rng.standard_normal((11, 30))
    before, after = trajectory[:10], trajectory[1:]
    spec = analyze_window(after)
    dc = _dense_delta_c(before, after)
    s = np.linalg.svd(after, compute_uv=False)
    k = spec.k_star
    eta = 3e-4
    assert adiabatic_parameter(dc, eta, gap=spec.gap) == pytest.approx(
        dc / (eta * (s[k - 1] - s[k]) ** 2), rel=1e-9
    )
    lam_gap = s[k - 1] ** 2 - s[k] ** 2
    assert adiabatic_parameter(
        dc, eta, gap=spec.gap, gap_lambda=spec.gap_lambda, units="lambda"
    ) == pytest.approx(dc / (eta * lam_gap**2), rel=1e-9)
    assert adiabatic_parameter(0.0, eta, gap=0.0) == 0.0
    assert adiabatic_parameter(1.0, eta, gap=0.0) == np.inf
    with pytest.raises(ValueError, match="learning rate"):
        adiabatic_parameter(1.0, 0.0, gap=1.0)
    with pytest.raises(ValueError, match="gap_lambda"):
        adiabatic_parameter(1.0, 1.0, gap=1.0, units="lambda")


def test_regimes():
    # By default the regime reads the dimensionless η·𝒜; scale="none" reads 𝒜 itself.
    assert [AdiabaticRegimes().classify(a, lr=1e-3) for a in (50.0, 500.0, 5e4)] == [
        "plateau",
        "transition",
        "forgetting",
    ]
    with pytest.raises(ValueError, match="needs the learning rate"):
        AdiabaticRegimes().classify(1.0)
    regimes = AdiabaticRegimes(low=0.5, high=2.0, scale="none")
    assert [regimes.classify(a) for a in (0.1, 0.5, 1.0, 2.0, 3.0, np.inf)] == [
        "plateau",
        "transition",
        "transition",
        "transition",
        "forgetting",
        "forgetting",
    ]
    with pytest.raises(ValueError, match="0 < low < high"):
        AdiabaticRegimes(low=2.0, high=1.0)


def test_include_zero_gives_the_covariance_bound_when_p_exceeds_w():
    # C = XᵀX also has the eigenvalue 0 when P > W: the smallest λ_j is then closer to 0 than to λ_{j-1}.
    lam = np.array([10.0, 4.0, 1.0])
    assert stability_coefficients(lam, 1.5)[2] == pytest.approx(0.75)  # the paper's Def 16.1 on G
    assert stability_coefficients(lam, 1.5, include_zero=True)[2] == 0.0  # 1 − 1.5²/1² < 0


def test_extreme_scales_neither_raise_nor_lose_the_clip():
    """Plain-float arithmetic at scales where a square underflows or overflows: α stays in [0, 1]."""
    np.testing.assert_array_equal(stability_coefficients(np.array([1e-170, 0.0]), 0.1), [0.0, 0.0])
    np.testing.assert_allclose(stability_coefficients(np.array([1e200, 0.0, -1.0]), 0.1), [1.0, 0.99, 0.99])
    alpha = half_window_alignment(np.diag([1e-170, 2e-170, 1e-171, 0.0]))
    assert np.all((alpha >= 0.0) & (alpha <= 1.0))
