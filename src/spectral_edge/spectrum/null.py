"""What pure noise would look like: the BBP threshold (Prop 4.1), the null of the maximum ratio
(Prop 6.4), and the Krylov bound on k* (Prop 5.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

BBPVariant = Literal["PW", "P(W-1)"]


def bbp_threshold(noise_level: float, n_params: int, window: int, variant: BBPVariant = "PW") -> float:
    """d_crit = ν (P W)^{1/4}, the BBP detection threshold of a W × P window (Prop 4.1, eq 4).

    A pure-noise window with i.i.d. per-coordinate noise of standard deviation ν has Gram eigenvalues
    Pν² ± O(ν²√(PW)); a spike of strength d is detectable iff d² > ν²√(PW). ``variant="P(W-1)"`` gives
    the author's code's ν (P(W−1))^{1/4}, 2.7% lower at W = 10.

    Example:
        >>> round(bbp_threshold(2.24e-4, 163_150_848, 10), 3)  # TinyStories 51M, formulas.md §3
        0.045
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level!r}")
    if n_params < 1 or window < 2:
        raise ValueError(f"need n_params >= 1 and window >= 2, got P={n_params}, W={window}")
    if variant == "PW":
        effective = n_params * window
    elif variant == "P(W-1)":
        effective = n_params * (window - 1)
    else:
        raise ValueError(f"variant must be 'PW' or 'P(W-1)', got {variant!r}")
    return float(noise_level * effective**0.25)


def noise_level_from_spectrum(eigenvalues: np.ndarray, n_params: int) -> float:
    """Data-driven ν: ν² = mean(λ_{⌊W/2⌋+1..W}) / P, the bottom half of the spectrum (author's Test 1).

    Example:
        >>> noise_level_from_spectrum(np.array([9.0, 5.0, 4.0, 4.0]), 100)
        0.2
    """
    if n_params < 1:
        raise ValueError(f"n_params must be >= 1, got {n_params}")
    # Plain floats: W values, where NumPy's per-call cost was most of the time at every record.
    lam = sorted(np.asarray(eigenvalues, dtype=np.float64).reshape(-1).tolist(), reverse=True)
    bottom = lam[len(lam) // 2 :]
    return math.sqrt(max(math.fsum(bottom) / len(bottom), 0.0) / n_params)


def adam_noise_level(lr: float, batch_size: int) -> float:
    """ν ≈ η/√B for Adam: the preconditioner normalises gradient noise per coordinate (Prop 4.1, eq 5).

    Example:
        >>> round(adam_noise_level(1e-3, 20), 7)
        0.0002236
    """
    if lr <= 0 or batch_size < 1:
        raise ValueError(f"need lr > 0 and batch_size >= 1, got lr={lr!r}, batch_size={batch_size!r}")
    return float(lr / math.sqrt(batch_size))


def bbp_ratio(
    singular_values: np.ndarray, noise_level: float, n_params: int, variant: BBPVariant = "PW"
) -> float:
    """σ_W / d_crit (eq 6): how far the weakest direction sits above the BBP threshold.

    Values ≫ 1 mean every direction of the window is signal and the BBP threshold is vacuous; +inf when
    ν = 0 (no noise estimate) and σ_W > 0.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    d_crit = bbp_threshold(noise_level, n_params, s.shape[0], variant)
    if d_crit == 0.0:
        return float("inf") if s[-1] > 0 else 0.0
    return float(s[-1] / d_crit)


def null_max_ratio_samples(window: int, n_params: int, n_samples: int = 20_000, seed: int = 0) -> np.ndarray:
    """Monte Carlo draws of max_j σ_j/σ_{j+1} for a pure isotropic-noise window (Prop 6.4, eq 16).

    Under H0 the rows of X are i.i.d. N(0, ν² I_P); the ratio is scale-free, so take ν = 1. Then
    G = X Xᵀ is Wishart_W(P, I), sampled directly by the Bartlett decomposition G = L Lᵀ with
    L_ii = √χ²_{P−i+1} and L_ij ~ N(0, 1) below the diagonal: O(W³) per draw whatever P is, so the null
    is exact for P = 10⁸ without ever drawing a P-dimensional vector. For P < W the window has rank P and
    X is drawn directly (cheap at that size). The ratio is taken inside the rank, as in
    :func:`spectral_edge.spectrum.window.gap_statistics`.

    The result is cached per argument tuple and returned read-only.

    Args:
        window: W ≥ 2.
        n_params: P ≥ 1.
        n_samples: number of Monte Carlo draws.
        seed: seed of the NumPy generator; the same arguments always give the same draws.

    Returns:
        (n_samples,) float64 array of maximal adjacent ratios.
    """
    if window < 2 or n_params < 1 or n_samples < 1:
        raise ValueError(
            f"need window >= 2, n_params >= 1, n_samples >= 1, got {window}, {n_params}, {n_samples}"
        )
    return _null_samples_cached(int(window), int(n_params), int(n_samples), int(seed))


@lru_cache(maxsize=64)
def _null_samples_cached(window: int, n_params: int, n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rank = min(window, n_params)
    if n_params >= window:
        lower = np.zeros((n_samples, window, window))
        rows, cols = np.tril_indices(window, k=-1)
        lower[:, rows, cols] = rng.standard_normal((n_samples, rows.size))
        dof = n_params - np.arange(window)  # P, P−1, …, P−W+1
        lower[:, np.arange(window), np.arange(window)] = np.sqrt(rng.chisquare(dof, size=(n_samples, window)))
        # Eigenvalues of L Lᵀ are the squared singular values of L: take those (better conditioned).
        sigma = np.linalg.svd(lower, compute_uv=False)  # (n, W) descending
    else:
        x = rng.standard_normal((n_samples, window, n_params))
        sigma = np.linalg.svd(x, compute_uv=False)  # (n, P) descending: the P non-zero σ
    sigma = sigma[:, :rank]
    if rank < 2:
        out = np.full(n_samples, np.inf)
    else:
        out = np.max(sigma[:, :-1] / sigma[:, 1:], axis=1)
    out.setflags(write=False)
    return out


def null_max_ratio_quantile(
    window: int, n_params: int, q: float = 0.95, n_samples: int = 20_000, seed: int = 0
) -> float:
    """The q-quantile of max_j σ_j/σ_{j+1} under isotropic noise (Prop 6.4), by seeded Monte Carlo.

    An observed gap ratio above this is significant at level 1 − q. For W = 10 the quantiles behave as
    1 + c/√P with c95 ≈ 1.7, so at P = 10⁸ any R above ≈ 1.0002 is signal.

    Example:
        >>> 1.0 < null_max_ratio_quantile(10, 10**8, 0.95) < 1.001
        True
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    return float(np.quantile(null_max_ratio_samples(window, n_params, n_samples, seed), q))


def null_p_value(
    gap_ratio: float, window: int, n_params: int, n_samples: int = 20_000, seed: int = 0
) -> float:
    """P(max ratio ≥ ``gap_ratio`` | isotropic noise), with the +1 correction of a Monte Carlo test."""
    samples = null_max_ratio_samples(window, n_params, n_samples, seed)
    return float((np.count_nonzero(samples >= gap_ratio) + 1) / (samples.shape[0] + 1))


@dataclass(frozen=True)
class KrylovCheck:
    """The Krylov bound of Prop 5.5 (eq 12) evaluated on given Hessian eigenvalues.

    Attributes:
        threshold: 1/(ηW), the curvature above which a mode varies within the window.
        active_modes: #{j : h_j ≥ 1/(ηW)}, the bound on k*.
        k_star: the observed k* (None if not given).
        satisfied: k* ≤ active_modes (None without k*).
    """

    threshold: float
    active_modes: int
    k_star: int | None
    satisfied: bool | None


def krylov_bound(
    hessian_eigenvalues: np.ndarray, lr: float, window: int, k_star: int | None = None
) -> KrylovCheck:
    """k* ≤ #{j : h_j ≳ 1/(ηW)} (Prop 5.5, eq 12).

    Over W steps the mode-j component of the update varies as (1 − ηh_j)^s, which changes appreciably only
    if ηh_jW ≳ 1; the rows of X span the Krylov space K_W(H, g₀), so only those modes can be separated.

    Example:
        >>> krylov_bound(np.array([500.0, 150.0, 20.0]), lr=1e-3, window=10, k_star=1)
        KrylovCheck(threshold=100.0, active_modes=2, k_star=1, satisfied=True)
    """
    if lr <= 0 or window < 1:
        raise ValueError(f"need lr > 0 and window >= 1, got lr={lr!r}, window={window!r}")
    threshold = 1.0 / (lr * window)
    h = np.asarray(hessian_eigenvalues, dtype=np.float64)
    active = int(np.count_nonzero(h >= threshold))
    satisfied = None if k_star is None else bool(k_star <= active)
    return KrylovCheck(threshold=float(threshold), active_modes=active, k_star=k_star, satisfied=satisfied)
