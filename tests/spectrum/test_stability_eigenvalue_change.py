"""α_j in the author's eigenvalue-change form (formulas.md §6, §11) against a hand-written NumPy reference.

The reference is what the author's harness (``theory_experiment_match.py``, ``test_stability_coefficient``)
does, written out from dense SVDs of synthetic windows: λ = σ² of consecutive windows, the change
√(Σ_j Δλ_j²) in place of ‖ΔG‖_F, the nearest-neighbour gaps of the current window, α = max(0, 1 − Δ²/δ²).
"""

from __future__ import annotations

import numpy as np
import pytest

from spectral_edge.spectrum.stability import (
    eigenvalue_change_norm,
    stability_coefficients,
    stability_coefficients_from_eigenvalue_change,
)


def _windows(n_windows: int, w: int, p: int, seed: int) -> list[np.ndarray]:
    """Sliding windows of one trajectory: window i holds updates i … i + w − 1 (one slide apart)."""
    rng = np.random.default_rng(seed)
    trajectory = rng.standard_normal((n_windows + w - 1, p)) * np.linspace(3.0, 0.5, p)
    return [trajectory[i : i + w] for i in range(n_windows)]


def _reference_alpha(previous: np.ndarray, current: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """The harness's α from two windows' dense SVDs, written out by hand."""
    lam_prev = np.linalg.svd(previous, compute_uv=False) ** 2
    lam_curr = np.linalg.svd(current, compute_uv=False) ** 2
    change = np.sqrt(np.sum((lam_curr - lam_prev) ** 2))
    w = lam_curr.size
    gaps = np.array([min(abs(lam_curr[j] - lam_curr[k]) for k in range(w) if k != j) for j in range(w)])
    return np.maximum(0.0, 1.0 - c * change**2 / gaps**2), float(change)


@pytest.mark.parametrize(("w", "c"), [(2, 1.0), (5, 1.0), (10, 1.0), (10, 0.25)])
def test_matches_the_harness_on_dense_svds(w, c):
    windows = _windows(6, w, 60, seed=w)
    for previous, current in zip(windows, windows[1:], strict=False):
        expected, change = _reference_alpha(previous, current, c)
        lam_prev = np.linalg.svd(previous, compute_uv=False) ** 2
        lam_curr = np.linalg.svd(current, compute_uv=False) ** 2
        assert eigenvalue_change_norm(lam_curr, lam_prev) == pytest.approx(change, rel=1e-12)
        np.testing.assert_allclose(
            stability_coefficients_from_eigenvalue_change(lam_curr, lam_prev, c),
            expected,
            rtol=1e-9,
            atol=1e-12,
        )


def test_eigenvalue_change_is_a_lower_bound_on_delta_c():
    """Hoffman–Wielandt: ‖Δλ‖ ≤ ‖ΔC‖_F, so the author's α is never below the paper's on the same step."""
    windows = _windows(8, 10, 40, seed=3)
    for previous, current in zip(windows, windows[1:], strict=False):
        lam_prev = np.linalg.svd(previous, compute_uv=False) ** 2
        lam_curr = np.linalg.svd(current, compute_uv=False) ** 2
        # exact, from the P × P covariances
        delta_c = np.linalg.norm(current.T @ current - previous.T @ previous)
        change = eigenvalue_change_norm(lam_curr, lam_prev)
        assert change <= delta_c * (1 + 1e-12)
        paper = stability_coefficients(lam_curr, delta_c)
        author = stability_coefficients_from_eigenvalue_change(lam_curr, lam_prev)
        assert np.all(author >= paper - 1e-12)


def test_a_pure_rotation_moves_no_eigenvalue():
    """The harness's proxy cannot see a rotation of the window: Δλ = 0 and α = 1 while ‖ΔC‖_F > 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 30))
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    rotated = x @ q  # same singular values, other directions
    lam, lam_rot = (np.linalg.svd(m, compute_uv=False) ** 2 for m in (x, rotated))
    assert eigenvalue_change_norm(lam_rot, lam) == pytest.approx(0.0, abs=1e-9 * lam[0])
    assert np.linalg.norm(rotated.T @ rotated - x.T @ x) > 1.0
    assert stability_coefficients_from_eigenvalue_change(lam, lam).tolist() == [1.0] * 4


def test_order_of_the_inputs_does_not_pair_the_wrong_eigenvalues():
    """Both spectra are sorted before they are paired; α follows the order of the current eigenvalues."""
    lam, prev = np.array([1.0, 10.0, 4.0]), np.array([9.0, 2.0, 4.0])
    assert eigenvalue_change_norm(lam, prev) == pytest.approx(np.sqrt(2.0))
    sorted_alpha = stability_coefficients_from_eigenvalue_change(np.sort(lam)[::-1], prev)
    np.testing.assert_allclose(
        stability_coefficients_from_eigenvalue_change(lam, prev), sorted_alpha[[2, 0, 1]], rtol=1e-12
    )


def test_bad_inputs_are_refused_with_the_values():
    with pytest.raises(ValueError, match="same W, got 3 eigenvalues and 2"):
        eigenvalue_change_norm(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="NaN or Inf"):
        eigenvalue_change_norm(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="c must be > 0, got 0"):
        stability_coefficients_from_eigenvalue_change(np.array([2.0, 1.0]), np.array([2.0, 1.5]), c=0)
