"""Stability of the spectral directions: α_j (Def 16.1), half-window α (§28), Davis–Kahan, and 𝒜.

The per-step perturbation of the sliding-window covariance C = XᵀX is the rank-two update
ΔC = a aᵀ − b bᵀ (Prop 11.1), whose Frobenius norm the streaming window gets from three dot products
(:func:`spectral_edge.spectrum.perturbation.delta_c_frobenius`). C and G = X Xᵀ share their non-zero
eigenvalues, so the Davis–Kahan bounds of the paper, stated for "ΔG", are applied with ‖ΔC‖_F.

The author's harness computes α_j with the change of the eigenvalues between consecutive windows in
place of ‖ΔG‖_F; :func:`stability_coefficients_from_eigenvalue_change` offers that form as an option
(and :func:`spectral_edge.series.run_stability` reads it from a run's stored records).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spectral_edge.spectrum.window import descending_eigh

#: Cut-offs of the adiabatic regimes. The paper (Prop 34.3) names the regimes 𝒜 ≪ 1, 𝒜 ~ 1 and 𝒜 ≫ 1
#: but gives no numbers; these defaults put "~ 1" at one decade either side of 1, applied to η·𝒜 (see
#: AdiabaticRegimes). They are settable everywhere a regime is computed.
DEFAULT_REGIME_LOW = 0.1
DEFAULT_REGIME_HIGH = 10.0

GapUnits = Literal["sigma", "lambda"]


def stability_coefficients(
    eigenvalues: np.ndarray, delta_c_fro: float, c: float = 1.0, *, include_zero: bool = False
) -> np.ndarray:
    """α_j = max(0, 1 − c ‖ΔC‖_F² / δ_j²) with δ_j = min_{k≠j} |λ_j − λ_k| (Def 16.1, eq 77).

    As in the paper, δ_j is the nearest-neighbour gap among the W eigenvalues of G. The direction v_j is
    an eigenvector of the P × P covariance C, which also has the eigenvalue 0 when P > W; a guaranteed
    Davis–Kahan lower bound on cos²θ_j (sin θ_j ≤ ‖ΔC‖_F/δ_j) therefore needs δ_j = min(δ_j, λ_j):
    pass ``include_zero=True`` for that. c = 1 is the paper's constant.

    Conventions for the degenerate cases: ‖ΔC‖_F = 0 gives α = 1 everywhere (nothing moved); δ_j = 0 with
    ‖ΔC‖_F > 0 gives α_j = 0 (a degenerate direction is not defined).

    Args:
        eigenvalues: (W,) eigenvalues λ_j of G, any order (the result follows the same order).
        delta_c_fro: ‖ΔC‖_F of the step, ≥ 0.
        c: the Davis–Kahan constant, > 0.
        include_zero: also bound δ_j by λ_j itself (the covariance's zero eigenvalue when P > W), for a
            guaranteed Davis–Kahan bound.

    Returns:
        (W,) float64 array in [0, 1].

    Example:
        >>> stability_coefficients(np.array([10.0, 4.0, 1.0]), delta_c_fro=1.5).round(4).tolist()
        [0.9375, 0.75, 0.75]
    """
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c!r}")
    if delta_c_fro < 0:
        raise ValueError(f"delta_c_fro must be >= 0, got {delta_c_fro!r}")
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if delta_c_fro == 0.0:
        return np.ones_like(lam)
    # Plain floats for the W values, as in nearest_eigenvalue_gaps.
    values = lam.reshape(-1).tolist()
    separation = _nearest_gaps(values)
    if include_zero:
        separation = [min(d, abs(v)) for d, v in zip(separation, values, strict=True)]
    # c (‖ΔC‖_F/δ_j)²: a quotient first and products, which overflow to inf where d² would underflow to
    # 0 (a ZeroDivisionError on floats) or ** would raise OverflowError.
    alpha = [
        min(max(1.0 - c * (delta_c_fro / d) * (delta_c_fro / d), 0.0), 1.0) if d > 0.0 else 0.0
        for d in separation
    ]
    return np.array(alpha, dtype=np.float64).reshape(lam.shape)


def eigenvalue_change_norm(eigenvalues: np.ndarray, previous_eigenvalues: np.ndarray) -> float:
    """‖Δλ‖ = √(Σ_j (λ_j(t) − λ_j(t−1))²), the change of the W eigenvalues between consecutive windows.

    This is how the author's thesis harness (``theory_experiment_match.py``, ``test_stability_coefficient``;
    formulas.md §6, Cor 9.2) stands in for ‖ΔG‖_F. With both spectra sorted the same way it is a lower
    bound on the exact ‖ΔC‖_F of the step (Hoffman–Wielandt: Σ_j (λ_j(A) − λ_j(B))² ≤ ‖A − B‖_F²), and
    is blind to rotations that leave the eigenvalues in place. Each spectrum is sorted descending here,
    so the j-th largest is paired with the j-th largest, as the harness pairs σ_j with σ_j.

    Args:
        eigenvalues: (W,) eigenvalues λ_j(t) of the window's Gram G, any order.
        previous_eigenvalues: (W,) eigenvalues λ_j(t−1) of the window one update earlier.

    Returns:
        ‖Δλ‖ ≥ 0, a float.

    Example:
        >>> eigenvalue_change_norm(np.array([10.0, 4.0, 1.0]), np.array([9.0, 4.0, 2.0])) == math.sqrt(2.0)
        True
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    prev = np.sort(np.asarray(previous_eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    if lam.shape != prev.shape:
        raise ValueError(
            f"both windows must have the same W, got {lam.size} eigenvalues and {prev.size} previous ones; "
            "pass the spectra of two windows of one run"
        )
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(prev))):
        raise ValueError("the eigenvalues hold NaN or Inf; pass the spectra of two full windows")
    return float(np.sqrt(np.sum((lam - prev) ** 2)))


def stability_coefficients_from_eigenvalue_change(
    eigenvalues: np.ndarray, previous_eigenvalues: np.ndarray, c: float = 1.0, *, include_zero: bool = False
) -> np.ndarray:
    """α_j of Def 16.1 (eq 77) in the author's form: ‖ΔG‖_F replaced by the eigenvalue change ‖Δλ‖.

    α_j = max(0, 1 − c ‖Δλ‖² / δ_j²), with ‖Δλ‖ = √(Σ_k (λ_k(t) − λ_k(t−1))²) from
    :func:`eigenvalue_change_norm` and δ_j = min_{k≠j} |λ_j(t) − λ_k(t)| of the current window, which is
    what the author's harness computes (``theory_experiment_match.py``; formulas.md §6 and §11). The
    paper's form, :func:`stability_coefficients` with the exact ‖ΔC‖_F of the rank-two update
    (Prop 11.1), is the library's default; since ‖Δλ‖ ≤ ‖ΔC‖_F, this form never gives a smaller α
    and is no longer a guaranteed Davis–Kahan bound on cos²θ_j.

    The harness adds 1e-20 to δ_j² to avoid a division by zero; here the conventions of
    :func:`stability_coefficients` apply instead (‖Δλ‖ = 0 gives α = 1; δ_j = 0 with ‖Δλ‖ > 0 gives 0),
    which differ from the harness only when δ_j² is within 1e-20 of 0.

    Args:
        eigenvalues: (W,) eigenvalues λ_j(t) of the window's Gram G, any order (the result follows it).
        previous_eigenvalues: (W,) eigenvalues λ_j(t−1) of the window one update earlier.
        c: the Davis–Kahan constant, > 0 (the author's code: 1.0).
        include_zero: as in :func:`stability_coefficients`.

    Returns:
        (W,) float64 array in [0, 1].

    Example:
        >>> lam, prev = np.array([10.0, 4.0, 1.0]), np.array([9.0, 4.0, 2.0])  # ‖Δλ‖² = 2
        >>> stability_coefficients_from_eigenvalue_change(lam, prev).round(4).tolist()
        [0.9444, 0.7778, 0.7778]
    """
    change = eigenvalue_change_norm(eigenvalues, previous_eigenvalues)
    return stability_coefficients(eigenvalues, change, c, include_zero=include_zero)


def nearest_eigenvalue_gaps(eigenvalues: np.ndarray) -> np.ndarray:
    """δ_j = min_{k≠j} |λ_j − λ_k| for every j (Def 16.1). Needs at least 2 eigenvalues."""
    return np.array(_nearest_gaps(np.asarray(eigenvalues, dtype=np.float64).reshape(-1).tolist()))


def _nearest_gaps(lam: list[float]) -> list[float]:
    """:func:`nearest_eigenvalue_gaps` on plain floats: W is small and this runs at every record, where
    NumPy's per-call cost was far more than the arithmetic."""
    if len(lam) < 2:
        raise ValueError(f"need at least 2 eigenvalues, got {len(lam)}")
    # The nearest other eigenvalue is a neighbour in sorted order.
    order = sorted(range(len(lam)), key=lam.__getitem__)
    gaps = [0.0] * len(lam)
    for pos, j in enumerate(order):
        below = lam[j] - lam[order[pos - 1]] if pos > 0 else math.inf
        above = lam[order[pos + 1]] - lam[j] if pos + 1 < len(order) else math.inf
        gaps[j] = min(below, above)
    return gaps


def half_window_alignment(gram: np.ndarray, *, rank_rtol: float = 1e-13) -> np.ndarray:
    """α_j = |⟨v_j⁽¹⁾, v_j⁽²⁾⟩| between the directions of the two halves of the window (§28).

    The window's updates are split into the older half X₁ (first ⌊W/2⌋ rows) and the newer half X₂; v_j⁽ⁱ⁾
    is the j-th right singular vector of Xᵢ. No P-dimensional vector is needed: with Gᵢᵢ = u Λ uᵀ for each
    half and the cross block G₁₂ = X₁X₂ᵀ of the time-ordered Gram matrix,
    ⟨v_j⁽¹⁾, v_k⁽²⁾⟩ = u_j⁽¹⁾ᵀ G₁₂ u_k⁽²⁾ / (σ_j⁽¹⁾ σ_k⁽²⁾).

    Args:
        gram: (W, W) Gram matrix in time order, W ≥ 4.
        rank_rtol: eigenvalues of a half below ``rank_rtol`` times the largest are round-off: their
            directions are undefined (a monitor's window gives its own cut, ``UpdateWindow.rank_rtol``).

    Returns:
        (⌊W/2⌋,) float64 array in [0, 1]; a direction that is zero in either half gets α = 0.

    Example:
        >>> x = np.array([[2.0, 0.0], [0.0, 1.0], [2.0, 0.2], [0.0, 1.0]])  # the newer half turned a little
        >>> half_window_alignment(x @ x.T).round(3).tolist()
        [0.991, 0.991]
    """
    return alignment_from_half_eigen(*half_window_eigen(gram), rank_rtol=rank_rtol)


def half_window_eigen(gram: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """The eigen stage of :func:`half_window_alignment`: (λ⁽¹⁾, λ⁽²⁾, u₁ᵀ G₁₂ u₂ diagonal) as floats.

    λ⁽ⁱ⁾ are the descending eigenvalues of the halves' Grams Gᵢᵢ (unclipped) and the third list holds
    u_j⁽¹⁾ᵀ G₁₂ u_j⁽²⁾ = σ_j⁽¹⁾ σ_j⁽²⁾ ⟨v_j⁽¹⁾, v_j⁽²⁾⟩ for each j.
    """
    g = np.asarray(gram, dtype=np.float64)
    w = g.shape[0]
    if g.shape != (w, w) or w < 4:
        raise ValueError(f"half-window alignment needs a (W, W) Gram matrix with W >= 4, got {g.shape}")
    h = w // 2
    # With odd W the middle update belongs to neither half, so both halves have h updates (the author's
    # script gives the extra update to the second half).
    first, second = slice(0, h), slice(w - h, w)
    # Both halves in one LAPACK call: at every record, each call's fixed cost outweighs an h × h solve.
    lam, u = descending_eigh(np.stack([g[first, first], g[second, second]]))
    (lam1, lam2), (u1, u2) = lam.tolist(), u
    # The diagonal of u₁ᵀ G₁₂ u₂ = diag(σ¹) V₁ᵀV₂ diag(σ²), without forming the rest of it.
    cross = np.einsum("aj,aj->j", u1, g[first, second] @ u2).tolist()
    return lam1, lam2, cross


def alignment_from_half_eigen(
    lam1: list[float], lam2: list[float], cross: list[float], *, rank_rtol: float = 1e-13
) -> np.ndarray:
    """The float stage of :func:`half_window_alignment`, from :func:`half_window_eigen`'s three lists:
    α_j = |u_j⁽¹⁾ᵀ G₁₂ u_j⁽²⁾| / (σ_j⁽¹⁾ σ_j⁽²⁾), 0 where either eigenvalue is round-off."""
    top = max(lam1[0], lam2[0])
    if top <= 0.0:
        return np.zeros(len(lam1))
    # Directions whose eigenvalue is round-off (a half with fewer than h independent updates) are undefined.
    cut = rank_rtol * top
    alpha = [
        min(abs(d) / (math.sqrt(a) * math.sqrt(b)), 1.0) if a > cut and b > cut else 0.0  # a·b may underflow
        for d, a, b in zip(cross, lam1, lam2, strict=True)
    ]
    return np.array(alpha, dtype=np.float64)


def davis_kahan_bound(delta_c_fro: float, gap_lambda: float) -> float:
    """‖sin Θ(V_{1:k*}(t), V_{1:k*}(t+1))‖ ≤ ‖ΔC‖_F / g_λ (Cor 9.2, eq 22).

    ``gap_lambda`` is the eigenvalue-unit gap λ_{k*} − λ_{k*+1}. Returns +inf for a zero gap with a
    non-zero perturbation and 0 when nothing moved. Values ≥ 1 say the bound is void: the top subspace
    may rotate arbitrarily within one step.

    Example:
        >>> davis_kahan_bound(0.5, 10.0)
        0.05
    """
    if delta_c_fro == 0.0:
        return 0.0
    if gap_lambda <= 0.0:
        return float("inf")
    return float(delta_c_fro / gap_lambda)


def adiabatic_parameter(
    delta_c_fro: float,
    lr: float,
    *,
    gap: float,
    gap_lambda: float | None = None,
    units: GapUnits = "sigma",
) -> float:
    """𝒜 = ‖ΔC‖_F / (η g²), the adiabatic parameter of the abstract and Prop 34.3.

    The paper leaves the unit of g open: ``units="sigma"`` uses Def 8.1's singular-value gap
    g = σ_{k*} − σ_{k*+1} (the default), ``units="lambda"`` the eigenvalue gap g_λ that appears in the
    Davis–Kahan bounds. Note that 𝒜 is not scale-free: for Adam-like updates (|δ_i| ≈ η) with
    ``units="sigma"`` it scales as 1/η, so regime cut-offs tuned for one learning rate need rescaling for
    another.

    Returns:
        𝒜 ≥ 0; +inf when the gap is zero and something moved; 0 when nothing moved.

    Example:
        >>> round(adiabatic_parameter(0.02, 1e-3, gap=5.0), 12)
        0.8
    """
    if lr <= 0:
        raise ValueError(f"the learning rate must be > 0 to compute 𝒜, got {lr!r}")
    if units == "sigma":
        g = gap
    elif units == "lambda":
        if gap_lambda is None:
            raise ValueError("units='lambda' needs gap_lambda")
        g = gap_lambda
    else:
        raise ValueError(f"units must be 'sigma' or 'lambda', got {units!r}")
    if delta_c_fro == 0.0:
        return 0.0
    if g <= 0.0:
        return float("inf")
    return float(delta_c_fro / (lr * g * g))


@dataclass(frozen=True)
class AdiabaticRegimes:
    """Cut-offs that turn 𝒜 into a regime (Prop 34.3): plateau / transition / forgetting.

    The paper names the regimes 𝒜 ≪ 1, 𝒜 ~ 1 and 𝒜 ≫ 1 without numbers. 𝒜 = ‖ΔC‖_F/(η g²) as written is
    not dimensionless when g is in σ units: for Adam-like updates it grows as 1/η (about 150 at η = 1e-3 on
    the demo), so fixed cut-offs would say "forgetting" at every step of a healthy run. By default
    (``scale="lr"``) the regime is therefore read from the dimensionless η·𝒜 = ‖ΔC‖_F/g², the per-step
    change of the window covariance against the squared gap; ``scale="none"`` compares 𝒜 itself.

    Attributes:
        low: below this (η·𝒜 or 𝒜) is "plateau": adiabatic, circuits preserved.
        high: above this is "forgetting": strongly non-adiabatic, circuits destroyed; in between is
            "transition" (circuits transform).
        scale: "lr" (default) or "none", as above.
    """

    low: float = DEFAULT_REGIME_LOW
    high: float = DEFAULT_REGIME_HIGH
    scale: Literal["lr", "none"] = "lr"

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high:
            raise ValueError(
                f"need 0 < low < high for the regime cut-offs, got low={self.low}, high={self.high}"
            )
        if self.scale not in ("lr", "none"):
            raise ValueError(f"scale must be 'lr' or 'none', got {self.scale!r}")

    def classify(self, adiabatic: float, lr: float | None = None) -> str:
        """The regime name of one value of 𝒜 computed with learning rate ``lr``.

        Example:
            >>> AdiabaticRegimes().classify(50.0, lr=1e-3), AdiabaticRegimes(scale="none").classify(50.0)
            ('plateau', 'forgetting')
        """
        value = adiabatic
        if self.scale == "lr":
            if lr is None or not lr > 0:
                raise ValueError("scale='lr' needs the learning rate the value of 𝒜 was computed with")
            value = adiabatic * lr
        if value < self.low:
            return "plateau"
        if value > self.high:
            return "forgetting"
        return "transition"
