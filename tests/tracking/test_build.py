"""build_record: a pure function of a full window, checked on fixed inputs against a dense float64 SVD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectral_edge import MonitorConfig, PushedWindow, analyze_window, build_record
from spectral_edge.spectrum import (
    AdiabaticRegimes,
    bbp_ratio,
    davis_kahan_bound,
    half_window_alignment,
    noise_level_from_spectrum,
    stability_coefficients,
)
from spectral_edge.tracking.window import ParameterLayout, UpdateWindow


def fixed_updates(w: int = 6, p: int = 40, seed: int = 0) -> np.ndarray:
    """A window with a clear two-direction structure plus noise: a gap at k* = 2."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((p, 2)))[0].T  # (2, P) orthonormal
    return rng.standard_normal((w, 2)) * [5.0, 3.0] @ basis + 0.05 * rng.standard_normal((w, p))


def test_the_record_is_the_spectrum_of_the_dense_svd():
    x = fixed_updates()
    dropped = np.random.default_rng(1).standard_normal(x.shape[1])
    rec = build_record(PushedWindow.from_updates(x, dropped=dropped), step=12, lr=0.01, metrics={"loss": 2})

    sigma = np.linalg.svd(x, compute_uv=False)  # the reference: no Gram matrix at all
    np.testing.assert_allclose(rec.singular_values, sigma, rtol=1e-12)
    ratios = sigma[:-1] / sigma[1:]
    k = int(np.argmax(ratios)) + 1
    assert (rec.k_star, rec.window, rec.step, rec.metrics) == (k, 6, 12, {"loss": 2.0})
    assert rec.gap_ratio == pytest.approx(ratios[k - 1], rel=1e-12)
    assert rec.gap == pytest.approx(sigma[k - 1] - sigma[k], rel=1e-12)
    spec = analyze_window(x)
    for name in ("k95", "rank", "effective_rank", "k_star_weighted", "gap_ratio_weighted", "gap_lambda"):
        assert getattr(rec, name) == pytest.approx(getattr(spec, name), rel=1e-10), name

    # ‖ΔC‖_F of the rank-two update, against the dense P × P difference a aᵀ − b bᵀ.
    a = x[-1]
    dense = np.linalg.norm(np.outer(a, a) - np.outer(dropped, dropped))
    assert rec.delta_c_fro == pytest.approx(dense, rel=1e-12)
    assert rec.update_norm == pytest.approx(np.linalg.norm(a), rel=1e-14)
    lam = sigma**2
    np.testing.assert_allclose(rec.alpha, stability_coefficients(lam, dense), rtol=1e-9, atol=1e-12)
    assert rec.davis_kahan == pytest.approx(davis_kahan_bound(dense, lam[k - 1] - lam[k]), rel=1e-9)
    gap = sigma[k - 1] - sigma[k]
    assert rec.adiabatic == pytest.approx(dense / (0.01 * gap**2), rel=1e-9)  # 𝒜 = ‖ΔC‖_F/(η g²)
    assert rec.regime == AdiabaticRegimes().classify(rec.adiabatic, 0.01) and rec.lr == 0.01
    nu = noise_level_from_spectrum(lam, x.shape[1])
    assert rec.noise_level == pytest.approx(nu, rel=1e-9)
    assert rec.bbp_ratio == pytest.approx(bbp_ratio(sigma, nu, x.shape[1]), rel=1e-9)
    np.testing.assert_allclose(rec.alpha_half, half_window_alignment(x @ x.T), atol=1e-10)
    assert not rec.singular_values.flags.writeable and not rec.alpha.flags.writeable


def test_group_spectra_are_the_svds_of_their_column_blocks():
    x = fixed_updates(w=5, p=30, seed=3)
    groups = {"body": slice(0, 20), "head": slice(20, 30)}
    rec = build_record(PushedWindow.from_updates(x, groups=groups), step=1)
    assert list(rec.groups) == ["body", "head"]
    for name, cols in groups.items():
        sigma = np.linalg.svd(x[:, cols], compute_uv=False)
        np.testing.assert_allclose(rec.groups[name].singular_values, sigma, rtol=1e-10, atol=1e-12)
        ratios = sigma[:-1] / sigma[1:]
        assert rec.groups[name].k_star == int(np.argmax(ratios)) + 1
    # The groups' Grams sum to the total: the total spectrum is that of the whole X.
    np.testing.assert_allclose(rec.singular_values, np.linalg.svd(x, compute_uv=False), rtol=1e-12)


def test_without_a_learning_rate_there_is_no_adiabatic_parameter_and_the_settings_are_read():
    x = fixed_updates(w=3, p=10)
    for lr in (None, 0.0, -1.0):
        rec = build_record(PushedWindow.from_updates(x), step=3, lr=lr)
        assert rec.adiabatic is None and rec.regime is None and rec.lr is None and rec.alpha_half is None
    config = MonitorConfig(alpha_c=4.0, k95_threshold=0.5, bbp_variant="P(W-1)")
    rec = build_record(PushedWindow.from_updates(x), step=3, config=config)
    lam = np.linalg.svd(x, compute_uv=False) ** 2
    np.testing.assert_allclose(rec.alpha, stability_coefficients(lam, rec.delta_c_fro, 4.0), atol=1e-12)
    assert rec.k95 == analyze_window(x, k95_threshold=0.5).k95


def test_a_live_window_gives_the_record_of_its_rows():
    """PushedWindow.read of an UpdateWindow (what the tracker calls) against the dense rows pushed."""
    x = fixed_updates(w=4, p=12, seed=5)
    extra = np.random.default_rng(9).standard_normal(12)
    layout, _ = ParameterLayout.build(["a", "b"], [(8,), (4,)], lambda name: name)
    win = UpdateWindow(layout, window=4, storage_dtype=torch.float64)
    for row in [extra, *x]:  # five pushes: the first leaves the window at the last one
        pushed = win.push_update(row)
    rec = build_record(PushedWindow.read(win, pushed), step=5, lr=0.1)
    want = build_record(
        PushedWindow.from_updates(x, dropped=extra, groups={"a": slice(0, 8), "b": slice(8, 12)}),
        step=5,
        lr=0.1,
    )
    np.testing.assert_allclose(rec.singular_values, np.linalg.svd(x, compute_uv=False), rtol=1e-12)
    for name in ("k_star", "gap_ratio", "delta_c_fro", "adiabatic", "update_norm", "noise_level", "k95"):
        assert getattr(rec, name) == pytest.approx(getattr(want, name), rel=1e-10), name
    np.testing.assert_allclose(rec.alpha_half, want.alpha_half, atol=1e-10)
    for name in ("a", "b"):
        np.testing.assert_allclose(
            rec.groups[name].singular_values, want.groups[name].singular_values, rtol=1e-10, atol=1e-12
        )


def test_a_window_that_is_not_full_has_no_record():
    win = UpdateWindow(3, window=3, storage_dtype=torch.float64)
    pushed = win.push_update([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs a full window"):
        PushedWindow.read(win, pushed)
    with pytest.raises(ValueError, match="W >= 2"):
        PushedWindow.from_updates(np.ones((1, 3)))


def test_a_rank_edge_gives_an_infinite_ratio_not_a_nan():
    x = np.zeros((3, 5))
    x[0, 0], x[1, 0], x[2, 1] = 2.0, 1.0, 0.5  # rank 2 in a window of 3
    rec = build_record(PushedWindow.from_updates(x), step=1)
    assert rec.rank == 2 and math.isinf(rec.ratios[-1]) and not np.isnan(rec.ratios).any()
