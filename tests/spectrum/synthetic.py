"""Synthetic trajectories with known spectra, shared by the spectrum tests."""

from __future__ import annotations

import numpy as np


def planted_window(singular_values, n_params: int, seed: int = 0) -> np.ndarray:
    """A (W, P) window X = U diag(d) Vᵀ with the given singular values and random orthonormal U, V."""
    d = np.asarray(singular_values, dtype=np.float64)
    w = d.shape[0]
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((w, w)))
    v, _ = np.linalg.qr(rng.standard_normal((n_params, w)))  # (P, W) orthonormal columns
    return (u * d) @ v.T


def reference_singular_values(x: np.ndarray) -> np.ndarray:
    """The obviously-correct reference: a dense float64 SVD of the time-ordered X, padded to length W."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    return np.pad(s, (0, x.shape[0] - s.shape[0]))
