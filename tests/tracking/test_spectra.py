"""The eigen stage of a record: the compiled solver against NumPy's LAPACK, and the record against spectrum/.

The compiled ``window_spectra`` (Householder + implicit QR, ``tracking/_spectra.py``) must give what the
NumPy reference ``window_spectra_numpy`` gives for the same slot-indexed Grams, on planted, rank-deficient,
repeated, zero and graded spectra, and both must give the squared singular values of a dense float64 SVD
of the window; a monitor's record must equal what spectrum/'s public functions compute from the
window's time-ordered Gram.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_edge import SpectralMonitor
from spectral_edge.spectrum.stability import half_window_alignment
from spectral_edge.spectrum.window import analyze_gram_with_parts
from spectral_edge.tracking._native import native_kernel
from spectral_edge.tracking._spectra import window_spectra, window_spectra_numpy
from spectral_edge.tracking.window import UpdateWindow

from ..spectrum.synthetic import planted_window

kernel = native_kernel()
needs_kernel = pytest.mark.skipif(kernel is None, reason="the compiled extension did not build here")


def window_rows(w: int, kind: str, seed: int) -> np.ndarray:
    """A float64 window X (w, P) of ``kind``, rows in time order."""
    rng = np.random.default_rng(seed)
    p = 300
    if kind == "planted":
        x = planted_window(np.geomspace(10.0, 0.01, w), p, seed)
    elif kind == "rank_deficient":  # P < W
        x = rng.standard_normal((w, max(1, w // 3)))
    elif kind == "repeated":  # two identical updates and a zero one
        x = rng.standard_normal((w, p))
        x[1] = x[0]
        x[-1] = 0.0
    elif kind == "degenerate":  # equal singular values: eigenvectors are not unique
        x = planted_window(np.repeat([3.0, 1.0], [w // 2, w - w // 2]), p, seed)
    elif kind == "graded":  # twelve decades of σ
        x = planted_window(np.geomspace(1e3, 1e-9, w), p, seed)
    elif kind == "zero":
        x = np.zeros((w, p))
    else:
        raise AssertionError(kind)
    return x


def slot_grams(n_groups: int, w: int, kind: str, seed: int) -> tuple[np.ndarray, list[int]]:
    """Slot-indexed group Grams (n_groups, w, w) of a window of ``kind`` (:func:`window_rows`, its columns
    split into ``n_groups`` groups), and a rotated slot order (as after wrap-around), so that the gather
    into time order is exercised."""
    x = window_rows(w, kind, seed)
    columns = np.array_split(np.arange(x.shape[1]), n_groups)
    in_time = np.stack([x[:, c] @ x[:, c].T for c in columns])
    shift = seed % w
    order = [(i + shift) % w for i in range(w)]  # time position i lives in slot order[i]
    grams = np.zeros_like(in_time)
    idx = np.asarray(order)
    grams[:, idx[:, None], idx[None, :]] = in_time
    return grams, order


KINDS = ["planted", "rank_deficient", "repeated", "degenerate", "graded", "zero"]


@needs_kernel
@pytest.mark.parametrize("w", [2, 3, 4, 5, 10, 17, 40, 64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_groups", [1, 3])
def test_compiled_eigen_stage_matches_lapack(w, kind, n_groups):
    grams, order = slot_grams(n_groups, w, kind, seed=w + n_groups)
    fast = window_spectra(
        grams, order, groups=True, half=True, kernel=kernel, grams_tensor=torch.from_numpy(grams)
    )
    ref = window_spectra_numpy(grams, order, groups=True, half=True)
    total = grams.sum(axis=0)[np.ix_(order, order)]
    scale = max(abs(ref.total[0]), 1e-300)
    # Eigenvalues: within a few ulps of λ_1, like any backward-stable solver.
    np.testing.assert_allclose(fast.total, ref.total, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(fast.groups, ref.groups, rtol=0, atol=1e-13 * scale)
    # Eigenvectors: orthonormal and G u_j = λ_j u_j (they are unique only up to sign and within
    # degenerate eigenspaces, so they are checked by their defining property).
    u = fast.vectors
    np.testing.assert_allclose(u.T @ u, np.eye(w), atol=1e-13)
    np.testing.assert_allclose(total @ u, u * np.asarray(fast.total), rtol=0, atol=1e-13 * scale)
    if w >= 4:
        for got, want in zip(fast.half[:2], ref.half[:2], strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * scale)
        # |u₁ᵀ G₁₂ u₂| is sign-free; where a half's eigenvalue is degenerate it is not unique, so compare
        # the alignment that the record reports, which zeroes round-off directions.
        np.testing.assert_allclose(
            np.abs(fast.half[2])[_simple(ref.half[0]) & _simple(ref.half[1])],
            np.abs(ref.half[2])[_simple(ref.half[0]) & _simple(ref.half[1])],
            rtol=0,
            atol=1e-12 * scale,
        )
    else:
        assert fast.half is None and ref.half is None


def _simple(lam: list[float]) -> np.ndarray:
    """Eigenvalues separated from their neighbours by more than 1e-6 of the largest (unique vectors)."""
    v = np.asarray(lam)
    gaps = np.minimum(np.abs(np.diff(v, prepend=np.inf)), np.abs(np.diff(v, append=-np.inf)))
    return gaps > 1e-6 * max(abs(v[0]), 1e-300)


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=needs_kernel), False])
@pytest.mark.parametrize("w", [4, 10, 17])
@pytest.mark.parametrize("kind", KINDS)
def test_eigen_stage_matches_a_dense_svd_of_the_window(compiled, w, kind):
    """Both eigen stages against the slowest, plainest reference: the eigenvalues of G = X Xᵀ and of each
    group's Gram are the squared singular values of X and of its column blocks (dense float64 SVDs)."""
    seed = w
    x = window_rows(w, kind, seed)
    grams, order = slot_grams(2, w, kind, seed)
    got = window_spectra(grams, order, groups=True, half=False, kernel=kernel if compiled else None)

    def squared_singular_values(block: np.ndarray) -> np.ndarray:
        s = np.linalg.svd(block, compute_uv=False)
        return np.concatenate([s**2, np.zeros(w - s.size)])

    scale = max(float(np.linalg.norm(x, 2)) ** 2, 1e-300)
    np.testing.assert_allclose(got.total, squared_singular_values(x), rtol=0, atol=1e-13 * scale)
    columns = np.array_split(np.arange(x.shape[1]), 2)
    for lam, cols in zip(got.groups, columns, strict=True):
        np.testing.assert_allclose(lam, squared_singular_values(x[:, cols]), rtol=0, atol=1e-13 * scale)


def test_numpy_eigen_stage_can_be_forced(monkeypatch):
    """SPECTRAL_EDGE_EIGEN=numpy gives the LAPACK eigen stage beside the fused push, read at every record so
    that the benchmark compares both on one window; a value other than 'auto' or 'numpy' is refused when
    a window is made."""
    win = UpdateWindow(20, window=3)
    assert win.kernel == ("fused" if kernel is not None else "torch")
    assert win.eigen == ("compiled" if kernel is not None else "numpy")
    monkeypatch.setenv("SPECTRAL_EDGE_EIGEN", "numpy")
    assert win.eigen == "numpy"
    assert UpdateWindow(20, window=3).eigen == "numpy"
    monkeypatch.setenv("SPECTRAL_EDGE_EIGEN", "auto")
    assert win.eigen == ("compiled" if kernel is not None else "numpy")
    assert UpdateWindow(20, window=3, kernel="torch").eigen == "numpy"
    monkeypatch.setenv("SPECTRAL_EDGE_EIGEN", "lapack")
    with pytest.raises(ValueError, match="SPECTRAL_EDGE_EIGEN must be 'auto' or 'numpy', got 'lapack'"):
        UpdateWindow(20, window=3)


@needs_kernel
@pytest.mark.parametrize("w", [10, 24, 32, 48, 64])
@pytest.mark.parametrize("kind", ["two_distinct", "sign_two_params", "sign_three_params"])
def test_compiled_eigen_stage_solves_grams_with_large_exact_null_spaces(w, kind):
    """Few distinct updates (two alternating, or ±η sign updates on a group of 2–3 parameters, as Lion or
    signSGD make) give a Gram with a large exact null space, whose Householder steps shrink towards
    subnormal numbers; the compiled solver must still converge (not decline to NumPy) and agree with it."""
    rng = np.random.default_rng(w)
    for _ in range(20):
        if kind == "two_distinct":
            base = rng.standard_normal((2, int(rng.integers(1, w))))
            x = base[rng.integers(0, 2, w)]
        else:
            x = np.sign(rng.standard_normal((w, 2 if kind == "sign_two_params" else 3))) * np.float32(1e-4)
        grams = (x @ x.T)[None].copy()
        order = list(range(w))
        fast = kernel.window_spectra(torch.from_numpy(grams), order, True, True)
        assert fast is not None
        ref = window_spectra_numpy(grams, order, groups=True, half=True)
        np.testing.assert_allclose(fast[0], ref.total, rtol=0, atol=1e-13 * ref.total[0])
        np.testing.assert_allclose(fast[3][:2], ref.half[:2], rtol=0, atol=1e-13 * ref.total[0])


@needs_kernel
def test_compiled_eigen_stage_declines_what_it_cannot_do():
    """A window of more than 64 updates or a non-finite Gram goes to the NumPy path, which answers or
    raises its own clear error."""
    grams, order = slot_grams(1, 70, "planted", seed=1)
    assert kernel.window_spectra(torch.from_numpy(grams), order, True, True) is None
    fast = window_spectra(grams, order, groups=False, half=False, kernel=kernel)  # makes its own view
    assert fast.total == window_spectra_numpy(grams, order, groups=False, half=False).total
    grams, order = slot_grams(2, 5, "planted", seed=2)
    grams[1, 0, 0] = np.nan
    assert kernel.window_spectra(torch.from_numpy(grams), order, True, True) is None
    with pytest.raises(ValueError, match="NaN or Inf"):
        window_spectra(
            grams, order, groups=True, half=True, kernel=kernel, grams_tensor=torch.from_numpy(grams)
        )


@pytest.mark.parametrize("kernel_name", ["fused", "torch"])
def test_a_records_spectra_equal_spectrum_functions_on_the_windows_gram(kernel_name):
    """The record's σ, gap, group σ and half-window α equal analyze_gram_with_parts and
    half_window_alignment of the window's own Grams (compiled eigen stage with the fused push, NumPy's
    with the torch path)."""
    if kernel_name == "fused" and kernel is None:
        pytest.skip("the compiled extension did not build here")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    mon = SpectralMonitor(model, window=6, lr=0.1, kernel=kernel_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(9):
        opt.zero_grad()
        model(torch.randn(8, 6)).pow(2).sum().backward()
        opt.step()
        rec = mon.step()
    assert rec is not None
    grams = mon._win.stacked_group_grams()
    spec, parts = analyze_gram_with_parts(grams.sum(axis=0), grams, rank_rtol=mon._win.rank_rtol)
    np.testing.assert_allclose(rec.singular_values, spec.singular_values, rtol=1e-12)
    assert (rec.k_star, rec.k95, rec.rank) == (spec.k_star, spec.k95, spec.rank)
    np.testing.assert_allclose(rec.gap_ratio, spec.gap_ratio, rtol=1e-12)
    for name, sigma in zip(mon._win.layout.group_names, parts, strict=True):
        np.testing.assert_allclose(rec.groups[name].singular_values, sigma, rtol=1e-12, atol=1e-14 * sigma[0])
    want = half_window_alignment(grams.sum(axis=0), rank_rtol=mon._win.rank_rtol)
    np.testing.assert_allclose(rec.alpha_half, want, rtol=1e-10, atol=1e-12)
