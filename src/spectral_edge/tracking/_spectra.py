"""The eigen stage of a record: the spectra of the window's Gram matrices, compiled or with NumPy.

A record needs the eigenvalues of the total Gram G (and its eigenvectors, Def 1.3), the eigenvalues of
each group's Gram, and, for the half-window alignment (§28), the eigen-decompositions of the two halves'
Grams and the diagonal of u₁ᵀ G₁₂ u₂. :func:`window_spectra` returns all of them as plain floats for the
float stage in :mod:`spectral_edge.spectrum` (clipping, the gap, α), which both paths share.

Why a compiled path (``csrc/window_spectra.cpp``): right after a training step each NumPy call of this
stage costs 10–20 µs (its code and data are out of cache), and the stage makes several of them around its
two LAPACK calls (gathering the Grams in time order, summing, checking, the halves). The compiled path
does the stage in one call: Householder reduction to tridiagonal form and implicit symmetric QR steps
with a Wilkinson shift (Golub & Van Loan, Algs 8.3.1 and 8.3.3), which for these small matrices touches
a few kilobytes of code and data. Measured at W = 10 (benchmarks/monitor_step.py, part (e);
docs/benchmarks.md): 0.06–0.10 ms a record against 0.31–0.40 ms with NumPy, which is 0.8–1.0 points of
overhead on the demo's training step and 0.6–1.6% of the monitor's whole step at P = 10⁷, a difference
the benchmark resolves there. Issue 16 keeps it on that second count; the saving is the same ~0.3 ms at
every P, so its share keeps falling as P grows. ``SPECTRAL_EDGE_EIGEN=numpy`` selects the NumPy stage
(read when a window is made), for that comparison.

It is built into the same extension as the fused push (``tracking/_native.py``). The NumPy path
(:func:`window_spectra_numpy`) is the reference it is tested against (both also against a dense
float64 SVD of the window), and what runs where the extension
does not build or the window does not use it, for W > 64, for a non-finite entry (NumPy then raises its
clear error), or where the compiled solver reports that it did not converge. Grams with large exact null
spaces (a few distinct updates) once made it give up; the tests now hold it to converging on them, and
the fallback keeps a record correct if anything else ever does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from spectral_edge.spectrum.stability import half_window_eigen
from spectral_edge.spectrum.window import eigh_of_grams


class WindowEigen(NamedTuple):
    """The eigen stage of one record (see the module docstring); eigenvalues descending and unclipped."""

    total: list[float]  # (W,) eigenvalues of the total Gram in time order
    vectors: np.ndarray  # (W, W) its eigenvectors as columns, in the same order
    groups: list[list[float]] | None  # each group's W eigenvalues; None when not asked for
    half: tuple[list[float], list[float], list[float]] | None  # (λ¹, λ², u₁ᵀG₁₂u₂) of the halves, W ≥ 4


def window_spectra(
    grams: np.ndarray,
    order: list[int],
    *,
    groups: bool,
    half: bool,
    kernel: Any = None,
    grams_tensor: Any = None,
) -> WindowEigen:
    """The eigen stage for the slot-indexed group Grams ``grams`` (n_groups, S, S) and the window's
    slots ``order`` (oldest first): compiled when ``kernel`` (the extension) is given, else, or if the
    compiled call declines, with NumPy. ``grams_tensor``, a torch view of ``grams`` kept by the caller,
    saves making one per call."""
    if kernel is not None:
        if grams_tensor is None:
            grams_tensor = torch.from_numpy(grams)
        out = kernel.window_spectra(grams_tensor, order, groups, half)
        if out is not None:
            total, vectors, group_values, half_values = out
            return WindowEigen(total, vectors.numpy(), group_values, half_values)
    return window_spectra_numpy(grams, order, groups=groups, half=half)


def window_spectra_numpy(grams: np.ndarray, order: list[int], *, groups: bool, half: bool) -> WindowEigen:
    """The reference eigen stage: the Grams gathered in time order and diagonalised with LAPACK, through
    the same :func:`~spectral_edge.spectrum.window.eigh_of_grams` as ``analyze_gram_with_parts``."""
    idx = np.asarray(order, dtype=np.intp)
    in_time = grams[:, idx[:, None], idx[None, :]]  # (n_groups, W, W)
    total = in_time.sum(axis=0)
    lam, vec = eigh_of_grams(total, in_time if groups else None)
    rows = lam.tolist()
    return WindowEigen(
        total=rows[0],
        vectors=vec[0],
        groups=rows[1:] if groups else None,
        half=half_window_eigen(total) if half and len(order) >= 4 else None,
    )
