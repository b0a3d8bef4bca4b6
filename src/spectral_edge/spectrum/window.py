"""The spectrum of one window of updates: σ, k*, the gap ratio R, the gap g, K_95 (Parts I and III).

Everything here is a pure function of the W × W Gram matrix G = X Xᵀ (Def 1.3), computed in float64.
``analyze_window`` builds G from the (W, P) trajectory matrix X whose rows are the updates δ_t in time order
(Def 1.2); ``analyze_gram`` starts from G itself, which is what the streaming monitor keeps.

Rank-deficient windows (P < W, repeated or zero updates) have a defined answer and never produce NaN:

* eigenvalues below ``rank_rtol · λ_1`` are round-off and are set to exactly 0, so σ_j = 0 beyond the
  numerical rank r;
* the ratio σ_j/σ_{j+1} is +inf at the rank edge (σ_j > 0 = σ_{j+1}) and 1.0 between two zeros;
* k* is the argmax over the positions inside the rank (j < r), because the ratio to a structural zero is
  infinite whatever the dynamics; with r = 1 the window is one direction (k* = 1, R = +inf) and with r = 0
  nothing moved (k* = 1, R = 1, g = 0).
"""

from __future__ import annotations

import math
import operator
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectral_edge.errors import NotPositiveSemidefiniteError, SpectrumWarning

#: Default relative tolerance below which an eigenvalue of G counts as zero. Eigenvalues of a float64 Gram
#: matrix carry an absolute error of about W·eps·λ_1; 1e-13 is a few hundred times that for W ≤ 40.
DEFAULT_RANK_RTOL = 1e-13


#: A negative eigenvalue below −NEGATIVE_RAISE_RTOL·λ_1 means G is not a Gram matrix at all. Negative
#: eigenvalues within the round-off level ``rank_rtol·λ_1`` are zeroed silently; those in between are
#: clipped with a SpectrumWarning.
NEGATIVE_RAISE_RTOL = 1e-4


def storage_rank_rtol(unit_roundoff: float, window: int) -> float:
    """The rank cut of a window whose rows were rounded to a format of unit round-off u before their Gram
    was accumulated in float64 (the monitor's windows: u = 2⁻²⁴ for float32, 2⁻⁸ for bfloat16).

    Rounding each stored entry changes X by E with |E_ij| ≤ u·|X_ij|, so ‖E‖₂ ≤ ‖E‖_F ≤ u·‖X‖_F ≤
    u·√W·σ_1, and by Weyl's inequality no σ_j moves by more than that. A σ_j below u·√W·σ_1 may be the
    rounding alone, so eigenvalues λ_j = σ_j² below W·u²·λ_1 are not resolved by the stored window. The cut
    is never below ``DEFAULT_RANK_RTOL``, the float64 Gram's own round-off. For float32 at W ≤ 28 the two
    coincide: a float32 window accumulated in float64 resolves σ_j down to about 3e-7·σ_1, as a float64
    window does; for bfloat16 at W = 10 the cut is σ_j ≈ 1.2e-2·σ_1.

    Args:
        unit_roundoff: u = eps/2 of the storage format (1.1e-16 for float64).
        window: W, the number of stored rows.

    Example:
        >>> storage_rank_rtol(2.0**-24, 10) == DEFAULT_RANK_RTOL
        True
        >>> round(storage_rank_rtol(2.0**-8, 10), 7)
        0.0001526
    """
    return max(DEFAULT_RANK_RTOL, window * unit_roundoff**2)


@dataclass(frozen=True)
class WindowSpectrum:
    """The spectrum of one window and the gap statistics read from it.

    Arrays are read-only float64. Positions (``k_star``, ``k95``, ``k_star_weighted``) are 1-based as in
    the paper.

    Attributes:
        singular_values: (W,) σ_1 ≥ … ≥ σ_W ≥ 0, the singular values of X (Def 1.3).
        eigenvalues: (W,) λ_j = σ_j², the eigenvalues of G.
        eigenvectors: (W, W) orthonormal eigenvectors u_j of G as columns, in the window's time order
            (the left singular vectors of X); v_j = Xᵀu_j/σ_j.
        ratios: (W−1,) σ_j/σ_{j+1} (eq 13).
        k_star: argmax_j σ_j/σ_{j+1} (Def 6.1, eq 13).
        gap_ratio: R = σ_{k*}/σ_{k*+1} (Def 6.3, eq 15).
        gap: g = σ_{k*} − σ_{k*+1}, in singular-value units (Def 8.1, eq 18).
        gap_lambda: g_λ = λ_{k*} − λ_{k*+1} = 2 d̄ g, in eigenvalue units (Cor 9.2).
        k95: min{k : Σ_{j≤k} λ_j / Σ λ ≥ threshold} (Def 7.1, eq 17); 1 for an all-zero window.
        k95_threshold: the cumulative-variance threshold used for ``k95``.
        k_star_weighted: argmax_j (σ_j/Σσ)(σ_j/σ_{j+1}), the author's replication variant (formulas.md §5).
        gap_ratio_weighted: σ_{k*_w}/σ_{k*_w+1}.
        g23: λ_2 − λ_3, the dynamical signal in grokking (§27, Table 7); None when W < 3.
        rank: numerical rank r (number of eigenvalues above ``rank_rtol · λ_1``).
        effective_rank: exp(−Σ p_j log p_j) with p = λ/Σλ; 0 for an all-zero window.
        total_variance: Σ λ_j = ‖X‖_F².
    """

    singular_values: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    ratios: np.ndarray
    k_star: int
    gap_ratio: float
    gap: float
    gap_lambda: float
    k95: int
    k95_threshold: float
    k_star_weighted: int
    gap_ratio_weighted: float
    g23: float | None
    rank: int
    effective_rank: float
    total_variance: float

    @property
    def window(self) -> int:
        """W, the number of updates in the window."""
        return int(self.singular_values.shape[0])


def analyze_window(
    updates: Any,
    *,
    k95_threshold: float = 0.95,
    rank_rtol: float = DEFAULT_RANK_RTOL,
) -> WindowSpectrum:
    """Spectrum of a window of updates given as the (W, P) trajectory matrix X (Def 1.2).

    Args:
        updates: (W, P) array-like (NumPy array, torch tensor on any device, nested lists), rows are the
            updates δ_t = θ_t − θ_{t−1} in time order, oldest first. Cast to float64 before any product.
        k95_threshold: cumulative-variance threshold of K_95 (Def 7.1), in (0, 1].
        rank_rtol: eigenvalues below ``rank_rtol · λ_1`` count as zero.

    Returns:
        The :class:`WindowSpectrum` of G = X Xᵀ.

    Example:
        >>> import numpy as np
        >>> X = np.diag([4.0, 1.0, 0.5]) @ np.eye(3, 100)
        >>> spec = analyze_window(X)
        >>> spec.k_star, spec.gap_ratio, spec.gap
        (1, 4.0, 3.0)
    """
    return analyze_gram(_gram_of_updates(updates), k95_threshold=k95_threshold, rank_rtol=rank_rtol)


def analyze_gram(
    gram: Any,
    *,
    k95_threshold: float = 0.95,
    rank_rtol: float = DEFAULT_RANK_RTOL,
) -> WindowSpectrum:
    """Spectrum of a window given its W × W Gram matrix G = X Xᵀ (Def 1.3).

    G is symmetrised, diagonalised in float64 with ``numpy.linalg.eigh`` (microseconds for W ≤ 40),
    tiny negative eigenvalues (round-off) are clipped to 0, and σ_j = √λ_j.

    Args:
        gram: (W, W) symmetric positive semi-definite array-like, rows and columns in time order.
        k95_threshold: cumulative-variance threshold of K_95 (Def 7.1), in (0, 1].
        rank_rtol: eigenvalues below ``rank_rtol · λ_1`` count as zero: 1e-13 for a float64 Gram
            (default); :func:`storage_rank_rtol` for the Gram of rows stored in a narrower format.

    Raises:
        ValueError: G is not square, has W < 2, or holds NaN/Inf.
        NotPositiveSemidefiniteError: an eigenvalue is below −1e-4 λ_1, so G is no Gram matrix.

    Example:
        >>> import numpy as np
        >>> analyze_gram(np.diag([9.0, 1.0, 1.0])).k_star
        1
    """
    return _analyze_stack(gram, None, k95_threshold, rank_rtol)[0]


def analyze_gram_with_parts(
    gram: Any,
    parts: Any,
    *,
    k95_threshold: float = 0.95,
    rank_rtol: float = DEFAULT_RANK_RTOL,
) -> tuple[WindowSpectrum, np.ndarray | None]:
    """:func:`analyze_gram` of G and :func:`gram_singular_values` of its parts, from one eigensolver call.

    The monitor's record needs the total Gram's spectrum and the singular values of each group's Gram
    (which sum to it); diagonalising them as one stack pays the solver's fixed cost once. Every matrix is
    symmetrised and clipped as :func:`analyze_gram` does, each against its own λ_1.

    Args:
        gram: (W, W) Gram matrix, as for :func:`analyze_gram`.
        parts: (n, W, W) Gram matrices of parts of the updates, or None.
        k95_threshold: as for :func:`analyze_gram`.
        rank_rtol: as for :func:`analyze_gram`.

    Returns:
        ``(spectrum, part_singular_values)``: the :class:`WindowSpectrum` of ``gram`` and the (n, W)
        descending singular values of ``parts`` (None when ``parts`` is None).

    Raises:
        As :func:`analyze_gram`, for ``gram`` or any part.

    Example:
        >>> spec, parts = analyze_gram_with_parts(np.diag([9.0, 1.0]), np.array([np.diag([9.0, 0.0])] * 2) / 2)
        >>> spec.k_star, parts.tolist()
        (1, [[2.1213203435596424, 0.0], [2.1213203435596424, 0.0]])
    """
    return _analyze_stack(gram, parts, k95_threshold, rank_rtol)


def _analyze_stack(
    gram: Any, parts: Any, k95_threshold: float, rank_rtol: float
) -> tuple[WindowSpectrum, np.ndarray | None]:
    """The one body of :func:`analyze_gram` and :func:`analyze_gram_with_parts`."""
    _check_options(k95_threshold, rank_rtol)
    lam, vec = eigh_of_grams(gram, parts)
    # A warning names the line that called analyze_gram(_with_parts), three frames above this one.
    return _float_stage(lam.tolist(), vec[0], parts is not None, k95_threshold, rank_rtol, stacklevel=4)


def eigh_of_grams(gram: Any, parts: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The eigen stage of :func:`analyze_gram_with_parts`: G and its parts checked and stacked, and
    diagonalised in one LAPACK call (:func:`descending_eigh`).

    Returns:
        ``(eigenvalues, eigenvectors)`` of shapes (1 + n, W) and (1 + n, W, W), G first, descending and
        not clipped.

    Raises:
        ValueError: G is not square, has W < 2, the parts are not (n, W, W), or anything is NaN or Inf.
    """
    g = _as_float64_matrix(gram)
    w = g.shape[0]
    if g.shape != (w, w):
        raise ValueError(f"a Gram matrix must be square (W, W), got shape {g.shape}")
    if w < 2:
        raise ValueError(f"a window needs at least 2 updates to have a gap, got W={w}")
    stack = g[None]
    if parts is not None:
        parts = np.asarray(parts, dtype=np.float64)
        if parts.ndim != 3 or parts.shape[1:] != (w, w):
            raise ValueError(f"parts must be (n, {w}, {w}) Gram matrices, got shape {parts.shape}")
        stack = np.concatenate([stack, parts])
    if not np.all(np.isfinite(stack)):
        raise ValueError("the Gram matrix holds NaN or Inf: an update was not finite")
    return descending_eigh(stack)


def spectrum_from_eigen(
    eigenvalues: Any,
    eigenvectors: Any,
    parts: Any = None,
    *,
    k95_threshold: float = 0.95,
    rank_rtol: float = DEFAULT_RANK_RTOL,
) -> tuple[WindowSpectrum, np.ndarray | None]:
    """:func:`analyze_gram_with_parts` for Gram matrices whose eigenvalues are already known.

    For callers with their own eigensolver (the monitor's compiled one, ``tracking/_spectra.py``): the
    eigenvalues are checked, clipped (each row against its own λ_1, refusals before warnings, at most one
    warning) and turned into the gap statistics exactly as :func:`analyze_gram_with_parts` does after
    its own ``eigh``.

    Args:
        eigenvalues: (W,) eigenvalues of G, descending, as the solver returned them (not clipped).
        eigenvectors: (W, W) the matching eigenvectors as columns (copied).
        parts: (n, W) descending eigenvalues of the parts' Grams, or None.
        k95_threshold: as for :func:`analyze_gram`.
        rank_rtol: as for :func:`analyze_gram`.

    Returns:
        ``(spectrum, part_singular_values)`` as :func:`analyze_gram_with_parts` returns them.

    Raises:
        ValueError: W < 2, a value is NaN or Inf, a row is not descending or not of length W, or the
            eigenvectors are not (W, W).
        NotPositiveSemidefiniteError: as :func:`analyze_gram`.

    Example:
        >>> spec, parts = spectrum_from_eigen([9.0, 1.0, 1e-20], np.eye(3), [[4.0, 0.0, 0.0]])
        >>> spec.singular_values.tolist(), parts.tolist()
        ([3.0, 1.0, 0.0], [[2.0, 0.0, 0.0]])
    """
    _check_options(k95_threshold, rank_rtol)
    rows = [_checked_eigenvalues(eigenvalues, None)]
    w = len(rows[0])
    if w < 2:
        raise ValueError(f"a window needs at least 2 updates to have a gap, got W={w}")
    if parts is not None:
        rows += [_checked_eigenvalues(part, w) for part in parts]
    # A copy: the spectrum's arrays are made read-only, and the caller's own array must stay as it was.
    vectors = np.array(eigenvectors, dtype=np.float64)
    if vectors.shape != (w, w):
        raise ValueError(f"expected ({w}, {w}) eigenvectors for {w} eigenvalues, got shape {vectors.shape}")
    return _float_stage(rows, vectors, parts is not None, k95_threshold, rank_rtol, stacklevel=3)


def _checked_eigenvalues(values: Any, length: int | None) -> list[float]:
    """One Gram's eigenvalues as floats, refused unless finite, descending and (if given) of ``length``."""
    row = list(map(float, values))
    if length is not None and len(row) != length:
        raise ValueError(f"every row of eigenvalues must have W={length} values, got {len(row)}")
    # map over builtins, not generators: this runs on every row of every record.
    if not all(map(math.isfinite, row)):
        raise ValueError("the eigenvalues hold NaN or Inf: the Gram matrix was not finite")
    if any(map(operator.lt, row, row[1:])):
        raise ValueError("eigenvalues must be in descending order, as the spectrum functions return them")
    return row


def _float_stage(
    rows: list[list[float]],
    vectors: np.ndarray,
    with_parts: bool,
    k95_threshold: float,
    rank_rtol: float,
    stacklevel: int,
) -> tuple[WindowSpectrum, np.ndarray | None]:
    """What :func:`analyze_gram_with_parts` and :func:`spectrum_from_eigen` do once the eigenvalues are
    known: rows[0] is the total Gram's, rows[1:] the parts'; one clipping pass checks all of them."""
    clipped = _clipped_rows(rows, rank_rtol, stacklevel + 1)
    spectrum = _spectrum_from_eigenvalues(clipped[0], vectors, k95_threshold)
    return spectrum, (_singular_values_of_rows(clipped[1:]) if with_parts else None)


def _singular_values_of_rows(rows: list[list[float]]) -> np.ndarray:
    return np.array([[math.sqrt(v) for v in row] for row in rows], dtype=np.float64)


def _check_options(k95_threshold: float, rank_rtol: float) -> None:
    if not 0.0 < k95_threshold <= 1.0:
        raise ValueError(f"k95_threshold must be in (0, 1], got {k95_threshold!r}")
    if not 0.0 <= rank_rtol < 1.0:
        raise ValueError(f"rank_rtol must be in [0, 1), got {rank_rtol!r}")


def descending_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns, in the same order) of a symmetric matrix or a
    stack of them, in one LAPACK call; the input is symmetrised first, so round-off asymmetry is harmless."""
    lam, vec = np.linalg.eigh(_symmetrised(matrix))  # ascending
    return lam[..., ::-1].copy(), vec[..., ::-1].copy()


def _symmetrised(matrix: np.ndarray) -> np.ndarray:
    """(M + Mᵀ)/2 of a matrix or of each matrix of a stack: LAPACK reads one triangle only."""
    return 0.5 * (matrix + np.swapaxes(matrix, -1, -2))


def gram_singular_values(gram: Any, *, rank_rtol: float = DEFAULT_RANK_RTOL) -> np.ndarray:
    """Only σ_1 ≥ … ≥ σ_W of a Gram matrix, or of a stack of them (no eigenvectors).

    The cheap path for per-group spectra: a (n, W, W) stack is diagonalised in one call. Eigenvalues are
    clipped and zeroed exactly as :func:`analyze_gram` does.

    Args:
        gram: (W, W) or (n, W, W) symmetric positive semi-definite array.
        rank_rtol: as for :func:`analyze_gram`.

    Returns:
        (W,) or (n, W) descending singular values.

    Example:
        >>> gram_singular_values(np.diag([4.0, 9.0])).tolist()
        [3.0, 2.0]
    """
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim not in (2, 3) or g.shape[-1] != g.shape[-2] or g.shape[-1] < 2 or not np.all(np.isfinite(g)):
        raise ValueError(
            f"expected finite (W, W) or (n, W, W) Gram matrices with W >= 2, got shape {g.shape}"
        )
    lam = np.linalg.eigvalsh(_symmetrised(g))[..., ::-1]
    sigma = _singular_values_of_rows(_clipped_rows(lam.reshape(-1, lam.shape[-1]).tolist(), rank_rtol))
    return sigma.reshape(lam.shape)


def gap_statistics(singular_values: Any) -> tuple[np.ndarray, int, float, int]:
    """Ratios σ_j/σ_{j+1}, k*, R and the numerical rank from descending singular values.

    Zeros must already be exact (see the module docstring); this never divides by zero. k* is the
    argmax of the ratios inside the rank (the first one on a tie), so that structural zeros never win;
    rank 1 gives k* = 1 with R = inf, rank 0 gives k* = 1 with R = 1.

    The W values are handled as Python floats (float64 like NumPy's): on 10 values at every record,
    NumPy's per-call overhead cost far more than the arithmetic.

    Returns:
        ``(ratios, k_star, gap_ratio, rank)`` with ``k_star`` 1-based.
    """
    s = np.asarray(singular_values, dtype=np.float64).reshape(-1).tolist()
    ratios, k_star, gap_ratio, rank = _gap_of_floats(s)
    return np.array(ratios, dtype=np.float64), k_star, gap_ratio, rank


def gap_positions(singular_values: Any) -> list[tuple[int, float]]:
    """``(k*, R)`` of each row of a (n, W) stack of descending singular values, as :func:`gap_statistics`
    finds them: one conversion to floats for the whole stack (the monitor's per-group gaps).

    Example:
        >>> gap_positions(np.array([[4.0, 1.0, 0.5], [3.0, 2.0, 0.1]]))
        [(1, 4.0), (2, 20.0)]
    """
    return [_gap_of_floats(row)[1:3] for row in np.asarray(singular_values, dtype=np.float64).tolist()]


def _gap_of_floats(s: list[float]) -> tuple[list[float], int, float, int]:
    """:func:`gap_statistics` on a list of floats, the ratios left as a list."""
    rank = sum(1 for v in s if v > 0.0)
    ratios = [
        a / b if b > 0.0 else (math.inf if a > 0.0 else 1.0) for a, b in zip(s[:-1], s[1:], strict=True)
    ]
    if rank >= 2:
        inside = ratios[: rank - 1]
        k_star = inside.index(max(inside)) + 1
        return ratios, k_star, ratios[k_star - 1], rank
    return ratios, 1, (math.inf if rank == 1 else 1.0), rank


def cumulative_variance_rank(eigenvalues: Any, threshold: float = 0.95) -> int:
    """K_95: the fewest leading modes holding ``threshold`` of Σλ (Def 7.1, eq 17).

    Example:
        >>> cumulative_variance_rank(np.array([90.0, 6.0, 4.0]), 0.95)
        2
    """
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1).tolist()
    total = sum(lam)
    if total <= 0.0:
        return 1
    # A running sum in order, as np.cumsum; a tiny slack so that a share of exactly `threshold` counts
    # despite round-off in the sum.
    below, running = 0, 0.0
    for value in lam:
        running += value
        below += running / total < threshold - 1e-12
    return below + 1


def _spectrum_from_eigenvalues(lam_f: list[float], evecs: np.ndarray, k95_threshold: float) -> WindowSpectrum:
    # Plain floats for the W-length arithmetic (see gap_statistics); arrays only for what is returned.
    sigma_f = [math.sqrt(v) for v in lam_f]
    ratios, k_star, gap_ratio, rank = _gap_of_floats(sigma_f)
    w = len(lam_f)

    # Weighted variant k*_w = argmax (σ_j/Σσ)(σ_j/σ_{j+1}) of the author's replication scripts; inside the
    # rank like k*, so that structural zeros do not win.
    total_sigma = sum(sigma_f)
    if rank >= 2:
        scores = [(sigma_f[j] / total_sigma) * ratios[j] for j in range(rank - 1)]
        k_star_w = scores.index(max(scores)) + 1
        gap_ratio_w = ratios[k_star_w - 1]
    else:
        k_star_w, gap_ratio_w = 1, gap_ratio

    total = sum(lam_f)
    if total > 0.0:
        # p > 0 tested after the division: a positive λ_j far below the total can underflow to 0.
        shares = [v / total for v in lam_f]
        effective_rank = math.exp(-sum(p * math.log(p) for p in shares if p > 0.0))
    else:
        effective_rank = 0.0
    # All three arrays are new; evecs comes from the solver and is only marked read-only.
    sigma, ratios_array = np.array(sigma_f, dtype=np.float64), np.array(ratios, dtype=np.float64)
    lam = np.array(lam_f, dtype=np.float64)
    for array in (sigma, ratios_array, lam, evecs):
        array.setflags(write=False)

    return WindowSpectrum(
        singular_values=sigma,
        eigenvalues=lam,
        eigenvectors=evecs,
        ratios=ratios_array,
        k_star=k_star,
        gap_ratio=gap_ratio,
        gap=sigma_f[k_star - 1] - sigma_f[k_star],
        gap_lambda=lam_f[k_star - 1] - lam_f[k_star],
        k95=cumulative_variance_rank(lam_f, k95_threshold),
        k95_threshold=float(k95_threshold),
        k_star_weighted=k_star_w,
        gap_ratio_weighted=gap_ratio_w,
        g23=lam_f[1] - lam_f[2] if w >= 3 else None,
        rank=rank,
        effective_rank=effective_rank,
        total_variance=total,
    )


def _clipped_rows(rows: list[list[float]], rank_rtol: float, stacklevel: int = 3) -> list[list[float]]:
    """Zero the round-off eigenvalues of each row; warn about, or refuse, clearly negative ones.

    Each row holds one Gram's eigenvalues, descending, and is clipped against its own λ_1: values
    below ``rank_rtol · λ_1``, and every value of an all-zero Gram (λ_1 = 0), become +0.0.
    """
    # Nothing to refuse or warn about unless some λ_W is below −min(rank_rtol, NEGATIVE_RAISE_RTOL)·λ_1
    # (a negative λ_1 is too: then λ_W ≤ λ_1 < 0 < −rtol·λ_1); the common case costs this one test a row.
    gate = -min(rank_rtol, NEGATIVE_RAISE_RTOL)
    suspect = [(row[0], row[-1]) for row in rows if row[-1] < gate * row[0]]
    if suspect:
        _check_negative_eigenvalues(suspect, rank_rtol, stacklevel + 1)
    # v > 0 as well: an all-zero Gram is zero whatever its round-off, and +0.0 where LAPACK returned −0.0.
    return [[v if v > 0.0 and v >= rank_rtol * row[0] else 0.0 for v in row] for row in rows]


def _check_negative_eigenvalues(
    extremes: list[tuple[float, float]], rank_rtol: float, stacklevel: int
) -> None:
    """Refuse a Gram whose λ_1 is negative or whose λ_W is clearly negative; warn (once) about one whose
    λ_W is below the round-off level rank_rtol·λ_1. ``extremes`` holds (λ_1, λ_W) per Gram; Grams with
    λ_1 = 0 are zero and pass."""
    for top, _ in extremes:
        if top < 0.0:
            raise NotPositiveSemidefiniteError(
                f"the largest eigenvalue of the Gram matrix is negative ({top:.3e}): it is not X Xᵀ"
            )
    for top, lowest in extremes:
        if top > 0.0 and lowest < -NEGATIVE_RAISE_RTOL * top:
            raise NotPositiveSemidefiniteError(
                f"the Gram matrix has eigenvalue {lowest:.3e} against λ_1 = {top:.3e}; a Gram matrix X Xᵀ "
                "is positive semi-definite. Pass the Gram of the updates, not a covariance estimate or a "
                "difference of Grams."
            )
    for top, lowest in extremes:
        if top > 0.0 and lowest < -rank_rtol * top:
            warnings.warn(
                f"clipped a negative eigenvalue {lowest:.3e} (λ_1 = {top:.3e}) of the Gram matrix to 0; "
                "it is below the round-off level rank_rtol·λ_1; was G accumulated in lower precision than "
                "rank_rtol assumes?",
                SpectrumWarning,
                stacklevel=stacklevel,
            )
            return


#: Columns per block when a torch window's Gram is formed on its own device in float64.
_GRAM_BLOCK = 1 << 22


def _gram_of_updates(updates: Any) -> np.ndarray:
    """G = X Xᵀ in float64. A torch tensor is reduced on its own device in column blocks, so a (W, P)
    window on a GPU never travels to the host nor exists whole in float64."""
    # A tensor can only come from torch once it is imported, so the pure maths never imports it itself.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(updates, torch.Tensor):
        rows = updates.detach()
        if rows.ndim != 2:
            raise ValueError(f"expected a 2-D (W, P) array, got {rows.ndim} dimension(s)")
        gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=rows.device)
        for lo in range(0, rows.shape[1], _GRAM_BLOCK):
            block = rows[:, lo : lo + _GRAM_BLOCK].to(torch.float64)
            gram += block @ block.T
        return gram.cpu().numpy()
    x = _as_float64_matrix(updates)
    return x @ x.T  # (W, W)


def _as_float64_matrix(values: Any) -> np.ndarray:
    """A 2-D float64 NumPy copy of an array-like (torch tensors may live on any device)."""
    torch = sys.modules.get("torch")  # as in _gram_of_updates: a tensor means torch is already imported
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (W, P) or (W, W) array, got {array.ndim} dimension(s)")
    return array
