"""Perturbation identities of the sliding-window covariance (Part V, §11), as checkable functions.

When the window slides by one step the newest update a = δ_{t+1} enters and the oldest b = δ_{t−W+1}
leaves, so C = XᵀX changes by the rank-two matrix ΔC = a aᵀ − b bᵀ (Prop 11.1). Everything here works
from the window's Gram information — the spectrum (λ_j, u_j) of G and the dot products of a and b with the
window's rows — so no P × P matrix is ever formed: with v_j = Xᵀu_j/σ_j, ⟨v_j, a⟩ = u_jᵀ(X a)/σ_j.
"""

from __future__ import annotations

import math

import numpy as np


def covariance_rank_two_update(covariance: np.ndarray, added: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """C(t+1) = C(t) + a aᵀ − b bᵀ (Prop 11.1): the exact update of the P × P sliding-window covariance.

    Dense and O(P²): meant for checking trajectories of small models, not for monitoring.

    Example:
        >>> c = np.outer([1.0, 0.0], [1.0, 0.0])
        >>> covariance_rank_two_update(c, np.array([0.0, 2.0]), np.array([1.0, 0.0])).tolist()
        [[0.0, 0.0], [0.0, 4.0]]
    """
    a = np.asarray(added, dtype=np.float64)
    b = np.asarray(dropped, dtype=np.float64)
    return np.asarray(covariance, dtype=np.float64) + np.outer(a, a) - np.outer(b, b)


def delta_c_frobenius(added_sq_norm: float, dropped_sq_norm: float, added_dot_dropped: float) -> float:
    """‖ΔC‖_F for ΔC = a aᵀ − b bᵀ from three dot products: √(‖a‖⁴ + ‖b‖⁴ − 2(aᵀb)²).

    ‖a aᵀ − b bᵀ‖_F² = tr((a aᵀ − b bᵀ)²) = ‖a‖⁴ − 2(aᵀb)² + ‖b‖⁴. The streaming window reads aᵀb off the
    Gram row it computes anyway, so this costs no extra pass over the parameters. It is evaluated as
    (‖a‖² − ‖b‖²)² + 2(‖a‖‖b‖ − aᵀb)(‖a‖‖b‖ + aᵀb), which keeps the difference of the two norms exact;
    the part along a ∥ b is still ill-conditioned from dot products (absolute error about
    eps·‖a‖²‖b‖²/‖ΔC‖_F), which matters only when the newest and the oldest update are nearly parallel.
    Round-off can push the radicand a hair below zero; it is clipped at 0.

    Example:
        >>> delta_c_frobenius(1.0, 1.0, 0.0) == math.sqrt(2.0)
        True
    """
    norms = math.sqrt(max(added_sq_norm, 0.0) * max(dropped_sq_norm, 0.0))
    radicand = (added_sq_norm - dropped_sq_norm) ** 2 + 2.0 * (norms - added_dot_dropped) * (
        norms + added_dot_dropped
    )
    return math.sqrt(max(radicand, 0.0))


def project_on_directions(
    eigenvalues: np.ndarray, eigenvectors: np.ndarray, window_dots: np.ndarray
) -> np.ndarray:
    """⟨v_j, y⟩ for every direction v_j = Xᵀu_j/σ_j of the window, from the dot products X y.

    Args:
        eigenvalues: (W,) λ_j of G, in the order of the columns of ``eigenvectors``.
        eigenvectors: (W, W) u_j as columns.
        window_dots: (W,) the dot products ⟨x_i, y⟩ of y with each row of X, in the same time order as G.

    Returns:
        (W,) projections; 0 for directions with λ_j = 0 (undefined, and they carry no variance).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    u = np.asarray(eigenvectors, dtype=np.float64)
    dots = np.asarray(window_dots, dtype=np.float64)
    out = np.zeros_like(lam)
    live = lam > 0.0
    out[live] = (u[:, live].T @ dots) / np.sqrt(lam[live])
    return out


def first_order_increments(added_proj: np.ndarray, dropped_proj: np.ndarray) -> np.ndarray:
    """Δλ_j⁽¹⁾ = ⟨v_j, a⟩² − ⟨v_j, b⟩² (Cor 11.3, eq 32), the Hellmann–Feynman term v_jᵀ ΔC v_j (Thm 10.1).

    Args:
        added_proj: (W,) ⟨v_j, a⟩ for the entering update a.
        dropped_proj: (W,) ⟨v_j, b⟩ for the leaving update b.
    """
    a = np.asarray(added_proj, dtype=np.float64)
    b = np.asarray(dropped_proj, dtype=np.float64)
    return a * a - b * b


def perturbation_in_eigenbasis(added_proj: np.ndarray, dropped_proj: np.ndarray) -> np.ndarray:
    """E_jk = v_jᵀ ΔC v_k = ⟨v_j,a⟩⟨v_k,a⟩ − ⟨v_j,b⟩⟨v_k,b⟩ restricted to the window's directions."""
    a = np.asarray(added_proj, dtype=np.float64)
    b = np.asarray(dropped_proj, dtype=np.float64)
    return np.outer(a, a) - np.outer(b, b)


def second_order_increments(
    eigenvalues: np.ndarray,
    added_proj: np.ndarray,
    dropped_proj: np.ndarray,
    added_sq_norm: float | None = None,
) -> np.ndarray:
    """Σ_{k≠j} E_jk² / (λ_j − λ_k), the second-order eigenvalue increment of Prop 11.2 / Cor 11.3 (eq 31).

    The sum runs over the other directions of the window and, when ``added_sq_norm`` = ‖a‖² is given, also
    over the complement of the window's span (eigenvalue 0 of C): only a reaches it (b lies in the window),
    with total weight ‖a_⊥‖² = ‖a‖² − Σ_k ⟨v_k, a⟩², contributing ‖a_⊥‖² ⟨v_j, a⟩² / λ_j.
    Terms with λ_j = λ_k (degenerate pairs, where this expansion does not apply) are left out.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    a = np.asarray(added_proj, dtype=np.float64)
    e = perturbation_in_eigenbasis(added_proj, dropped_proj)
    out = mode_coupling_terms(lam, e)
    if added_sq_norm is not None:
        outside = max(float(added_sq_norm) - float(np.sum(a * a)), 0.0)
        live = lam > 0.0
        out[live] += outside * a[live] ** 2 / lam[live]
    return out


def mode_coupling_terms(eigenvalues: np.ndarray, coupling: np.ndarray) -> np.ndarray:
    """S_j = Σ_{k≠j} E_jk² / (λ_j − λ_k) for a symmetric coupling E (Cor 10.2, Thm 12.4).

    Each pair (j, k) enters S_j and S_k with opposite signs, so Σ_j S_j = 0 (eq 51): mode coupling
    redistributes signal between directions and creates none. Degenerate pairs (λ_j = λ_k) are skipped.

    Example:
        >>> s = mode_coupling_terms(np.array([3.0, 2.0, 1.0]), np.ones((3, 3)))
        >>> s.tolist(), bool(abs(s.sum()) < 1e-15)
        ([1.5, 0.0, -1.5], True)
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    e = np.asarray(coupling, dtype=np.float64)
    diff = lam[:, None] - lam[None, :]  # (W, W) λ_j − λ_k
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(diff != 0.0, e * e / np.where(diff != 0.0, diff, 1.0), 0.0)
    return terms.sum(axis=1)
