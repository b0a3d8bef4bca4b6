"""The paper's perturbation identities on synthetic trajectories (Prop 11.1, Cor 11.3, Thm 12.4)."""

from __future__ import annotations

import numpy as np
import pytest

from spectral_edge.spectrum.perturbation import (
    covariance_rank_two_update,
    delta_c_frobenius,
    first_order_increments,
    mode_coupling_terms,
    project_on_directions,
    second_order_increments,
)
from tests.spectrum.synthetic import planted_window


def test_rank_two_update_gives_the_next_window_covariance():
    rng = np.random.default_rng(0)
    trajectory = rng.standard_normal((8, 25))
    w = 5
    for t in range(w, 8):
        before, after = trajectory[t - w : t], trajectory[t - w + 1 : t + 1]
        updated = covariance_rank_two_update(before.T @ before, trajectory[t], trajectory[t - w])
        np.testing.assert_allclose(updated, after.T @ after, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_delta_c_closed_form_matches_dense_difference(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(30), rng.standard_normal(30) * (1 + seed)
    dense = np.linalg.norm(np.outer(a, a) - np.outer(b, b))
    assert delta_c_frobenius(a @ a, b @ b, a @ b) == pytest.approx(dense, rel=1e-9)
    assert delta_c_frobenius(1.0, 1.0, 1.0) == 0.0


def test_delta_c_of_nearly_parallel_updates_stays_within_its_conditioning():
    # From dot products alone the component of ΔC along a ∥ b is ill-conditioned: the absolute error is
    # about eps·‖a‖²‖b‖²/‖ΔC‖_F. The closed form must stay within that and never go negative.
    rng = np.random.default_rng(4)
    a = rng.standard_normal(30)
    for scale in (1.0000001, 1.0 + 1e-12, 1.0):
        b = a * scale
        dense = np.linalg.norm(np.outer(a, a) - np.outer(b, b))
        value = delta_c_frobenius(a @ a, b @ b, a @ b)
        assert value >= 0.0
        bound = 50 * np.finfo(float).eps * (a @ a) * (b @ b) / max(dense, 1e-300)
        assert abs(value - dense) <= max(bound, 1e-6 * (a @ a))


def _exact_and_predicted(eps: float, seed: int = 0):
    """A window X, its oldest row b leaving and a ≈ b + ε·noise entering: ΔC is O(ε)."""
    rng = np.random.default_rng(seed)
    p = 40
    x = planted_window([20.0, 12.0, 7.0, 4.0, 2.0, 1.0], p, seed=seed)
    b = x[0]
    a = b + eps * rng.standard_normal(p)
    after = np.vstack([x[1:], a])
    exact = np.linalg.svd(after, compute_uv=False) ** 2 - np.linalg.svd(x, compute_uv=False) ** 2
    # Predictions from Gram information only: the spectrum of G and the dot products X a, X b.
    g = x @ x.T
    lam, u = np.linalg.eigh(g)
    lam, u = lam[::-1], u[:, ::-1]
    pa = project_on_directions(lam, u, x @ a)
    pb = project_on_directions(lam, u, x @ b)
    first = first_order_increments(pa, pb)
    second = second_order_increments(lam, pa, pb, added_sq_norm=a @ a)
    return exact, first, second


def test_first_order_increment_is_the_hellmann_feynman_term():
    # Against a dense projection in P space: Δλ⁽¹⁾_j = v_jᵀ ΔC v_j.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 30))
    a, b = rng.standard_normal(30), x[0]
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    dense = np.einsum("jp,pq,jq->j", vt, np.outer(a, a) - np.outer(b, b), vt)
    lam, u = np.linalg.eigh(x @ x.T)
    lam, u = lam[::-1], u[:, ::-1]
    first = first_order_increments(project_on_directions(lam, u, x @ a), project_on_directions(lam, u, x @ b))
    np.testing.assert_allclose(first, dense, rtol=1e-9, atol=1e-10)


def test_first_order_error_is_second_order_and_second_order_term_removes_it():
    errors_first, errors_second = [], []
    for eps in (1e-2, 1e-3):
        exact, first, second = _exact_and_predicted(eps)
        errors_first.append(np.max(np.abs(exact - first)))
        errors_second.append(np.max(np.abs(exact - first - second)))
    # Shrinking ε by 10 shrinks the first-order error by ~100 (it is O(ε²)) and the second-order one by ~1000.
    assert errors_first[0] / errors_first[1] == pytest.approx(100.0, rel=0.25)
    assert errors_second[1] < 0.05 * errors_first[1]
    exact, first, _ = _exact_and_predicted(1e-4)
    np.testing.assert_allclose(first, exact, rtol=2e-3)


@pytest.mark.parametrize("seed", range(4))
def test_mode_coupling_is_conservative(seed):
    # Thm 12.4: Σ_j S_j = 0 for any symmetric coupling and non-degenerate spectrum.
    rng = np.random.default_rng(seed)
    lam = np.sort(rng.uniform(0.1, 10.0, 12))[::-1]
    e = rng.standard_normal((12, 12))
    e = e + e.T
    s = mode_coupling_terms(lam, e)
    assert abs(s.sum()) < 1e-10 * np.abs(s).max()
    lam[3] = lam[4]  # a degenerate pair is skipped, and the sum still vanishes
    assert abs(mode_coupling_terms(lam, e).sum()) < 1e-10 * np.abs(s).max()
