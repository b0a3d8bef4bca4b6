"""analyze_window / analyze_gram against a dense float64 SVD of the time-ordered X."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_edge.errors import NotPositiveSemidefiniteError, SpectrumWarning
from spectral_edge.spectrum.window import (
    analyze_gram,
    analyze_gram_with_parts,
    analyze_window,
    cumulative_variance_rank,
    descending_eigh,
    gap_positions,
    gap_statistics,
    gram_singular_values,
    spectrum_from_eigen,
)
from tests.spectrum.synthetic import planted_window, reference_singular_values

SHAPES = [(w, p) for w in (2, 3, 10, 40) for p in (max(w - 1, 1), w + 5, 1_000, 100_000)] + [(10, 1_000_000)]


def _reference_stats(s: np.ndarray):
    ratios = s[:-1] / s[1:]
    k = int(np.argmax(ratios)) + 1
    return ratios, k


@pytest.mark.parametrize(("w", "p"), [s for s in SHAPES if s[1] >= s[0]])
def test_random_window_matches_svd(w, p):
    rng = np.random.default_rng(w * 7919 + p)
    x = rng.standard_normal((w, p)) * rng.uniform(0.5, 2.0, size=(w, 1))
    spec = analyze_window(x)
    s = reference_singular_values(x)
    np.testing.assert_allclose(spec.singular_values, s, rtol=1e-10, atol=0)
    ratios, k = _reference_stats(s)
    np.testing.assert_allclose(spec.ratios, ratios, rtol=1e-10)
    assert spec.k_star == k
    assert spec.gap_ratio == pytest.approx(ratios[k - 1], rel=1e-10)
    assert spec.gap == pytest.approx(s[k - 1] - s[k], rel=1e-8, abs=1e-12 * s[0])
    assert spec.gap_lambda == pytest.approx(s[k - 1] ** 2 - s[k] ** 2, rel=1e-8, abs=1e-12 * s[0] ** 2)
    np.testing.assert_allclose(spec.eigenvalues, s**2, rtol=1e-10)
    if w >= 3:
        assert spec.g23 == pytest.approx(s[1] ** 2 - s[2] ** 2, rel=1e-8, abs=1e-12 * s[0] ** 2)
    else:
        assert spec.g23 is None
    assert spec.rank == w
    assert spec.total_variance == pytest.approx(np.sum(x * x), rel=1e-12)


@pytest.mark.parametrize("w", [2, 3, 10, 40])
@pytest.mark.parametrize("planted_k", [1, 2, "last"])
def test_planted_gap_is_found(w, planted_k):
    k = w - 1 if planted_k == "last" else min(planted_k, w - 1)
    # A smooth decay with one jump of 4× after position k: the planted k* is the only large ratio.
    d = np.concatenate([np.linspace(10.0, 9.0, k), np.linspace(2.0, 1.5, w - k)])
    x = planted_window(d, n_params=5 * w + 3, seed=w + k)
    spec = analyze_window(x)
    np.testing.assert_allclose(spec.singular_values, d, rtol=1e-10)
    assert spec.k_star == k
    assert spec.gap_ratio == pytest.approx(d[k - 1] / d[k], rel=1e-10)
    assert spec.gap == pytest.approx(d[k - 1] - d[k], rel=1e-9)


def test_weighted_k_star_and_k95_follow_their_definitions():
    d = np.array([10.0, 3.0, 2.9, 0.5, 0.49, 0.48])
    spec = analyze_window(planted_window(d, 50, seed=3))
    scores = (d[:-1] / d.sum()) * (d[:-1] / d[1:])
    assert spec.k_star_weighted == int(np.argmax(scores)) + 1
    assert spec.gap_ratio_weighted == pytest.approx(d[spec.k_star_weighted - 1] / d[spec.k_star_weighted])
    share = np.cumsum(d**2) / np.sum(d**2)
    assert spec.k95 == int(np.argmax(share >= 0.95)) + 1
    assert analyze_window(planted_window(d, 50, seed=3), k95_threshold=0.5).k95 == 1
    p = d**2 / np.sum(d**2)
    assert spec.effective_rank == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-10)


def test_torch_and_numpy_inputs_agree_and_gram_path_is_the_same():
    x = np.random.default_rng(1).standard_normal((10, 300))
    a = analyze_window(x)
    b = analyze_window(torch.from_numpy(x).float())
    c = analyze_gram(x @ x.T)
    np.testing.assert_allclose(b.singular_values, a.singular_values, rtol=1e-6)
    np.testing.assert_array_equal(c.singular_values, a.singular_values)
    assert a.k_star == b.k_star == c.k_star


@pytest.mark.parametrize(("w", "p"), [(10, 3), (40, 1), (3, 2), (2, 1)])
def test_fewer_parameters_than_updates_has_a_defined_answer(w, p):
    x = np.random.default_rng(w + p).standard_normal((w, p))
    with np.errstate(all="raise"):
        spec = analyze_window(x)
    s = reference_singular_values(x)
    np.testing.assert_allclose(spec.singular_values[:p], s[:p], rtol=1e-10)
    assert np.all(spec.singular_values[p:] == 0.0)
    assert spec.rank == p
    assert not np.any(np.isnan(spec.ratios))
    if p < w:
        assert spec.ratios[p - 1] == np.inf  # the rank edge
        assert np.all(spec.ratios[p:] == 1.0)  # between two zeros
    if p >= 2:
        ratios, k = _reference_stats(s[:p])
        assert spec.k_star == k and spec.gap_ratio == pytest.approx(ratios[k - 1])
        assert np.isfinite(spec.gap_ratio)
    else:
        assert (spec.k_star, spec.gap_ratio) == (1, np.inf)


def test_repeated_and_zero_updates():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 200))
    repeated = np.vstack([base[0], base[1], base[0], base[1], base[0]])  # rank 2
    with np.errstate(all="raise"):
        spec = analyze_window(repeated)
        zero = analyze_window(np.zeros((10, 100)))
    assert spec.rank == 2 and spec.k_star == 1 and np.isfinite(spec.gap_ratio)
    assert zero.rank == 0 and zero.k_star == 1 and zero.gap_ratio == 1.0 and zero.gap == 0.0
    assert zero.k95 == 1 and zero.effective_rank == 0.0
    assert np.all(zero.ratios == 1.0)


def test_clipping_of_negative_eigenvalues():
    x = np.random.default_rng(0).standard_normal((4, 50))
    g = x @ x.T
    shifted = g - 1e-7 * np.linalg.eigvalsh(g)[-1] * np.eye(4) - np.min(np.linalg.eigvalsh(g)) * np.eye(4)
    with pytest.warns(SpectrumWarning, match="clipped a negative eigenvalue"):
        spec = analyze_gram(shifted)
    assert spec.singular_values[-1] == 0.0
    with pytest.raises(NotPositiveSemidefiniteError, match="positive semi-definite"):
        analyze_gram(np.diag([1.0, -0.5]))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.ones((1, 5)), "at least 2 updates"),
        (np.ones((2, 3, 4)), "2-D"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or Inf"),
    ],
)
def test_bad_input_is_a_clear_error(value, match):
    with pytest.raises(ValueError, match=match):
        analyze_window(value) if value.ndim != 2 or value.shape[0] < 2 else analyze_gram(value)


def test_gram_must_be_square_and_thresholds_valid():
    with pytest.raises(ValueError, match="square"):
        analyze_gram(np.ones((2, 3)))
    with pytest.raises(ValueError, match="k95_threshold"):
        analyze_window(np.eye(3), k95_threshold=0.0)


def test_cumulative_variance_rank_edges():
    assert cumulative_variance_rank(np.array([1.0, 1.0]), 1.0) == 2
    assert cumulative_variance_rank(np.array([0.0, 0.0]), 0.95) == 1
    assert cumulative_variance_rank(np.array([95.0, 5.0]), 0.95) == 1


def test_stacked_group_spectra_match_one_gram_at_a_time():
    """The monitor's per-group path (gram_singular_values on a stack, then gap_statistics per row)
    against the single-matrix analysis, on full-rank, rank-deficient, rank-one and all-zero Grams."""
    rng = np.random.default_rng(5)
    w = 6
    grams = []
    for rank in (6, 4, 2, 1, 0):
        x = rng.standard_normal((w, 50)) * (np.arange(w) < rank)[:, None] * rng.uniform(0.5, 2.0, (w, 1))
        grams.append(x @ x.T)
    sigmas = gram_singular_values(np.stack(grams))
    gap_ratios = []
    for i, g in enumerate(grams):
        spec = analyze_gram(g)
        ratios, k_star, gap_ratio, rank = gap_statistics(sigmas[i])
        np.testing.assert_allclose(sigmas[i], spec.singular_values, rtol=1e-12, atol=0)
        assert rank == spec.rank == [6, 4, 2, 1, 0][i]
        assert k_star == spec.k_star
        assert gap_ratio == pytest.approx(spec.gap_ratio, rel=1e-12)
        np.testing.assert_allclose(ratios, spec.ratios, rtol=1e-12)
        # An independent reading of Def 6.1 on the non-zero singular values.
        s = sigmas[i][sigmas[i] > 0]
        expected_k = int(np.argmax(s[:-1] / s[1:])) + 1 if s.size >= 2 else 1
        assert k_star == expected_k
        gap_ratios.append(gap_ratio)
    assert gap_ratios[3] == np.inf and gap_ratios[4] == 1.0


def test_stacked_clipping_checks_every_matrix():
    """One non-Gram matrix in a stack is refused, as it would be alone."""
    good = np.diag([4.0, 1.0, 0.5])
    bad = np.diag([4.0, 1.0, -1.0])
    with pytest.raises(NotPositiveSemidefiniteError):
        gram_singular_values(np.stack([good, bad]))


def test_total_and_parts_in_one_call_match_separate_analyses():
    """analyze_gram_with_parts (the monitor's record: the total and its groups' Grams, one eigensolver
    call) against analyze_gram of the total and gram_singular_values of the parts, and against an SVD of
    each part's X; gap_positions against gap_statistics row by row."""
    rng = np.random.default_rng(11)
    w = 7
    xs = []
    for rank in (7, 3, 1, 0):  # full-rank, rank-deficient, rank-one and all-zero parts
        xs.append(
            rng.standard_normal((w, 40)) * (np.arange(w) < rank)[:, None] * rng.uniform(0.5, 2.0, (w, 1))
        )
    parts = np.stack([x @ x.T for x in xs])
    total = parts.sum(axis=0)
    spec, part_sigmas = analyze_gram_with_parts(total, parts)
    alone = analyze_gram(total)
    for name in ("singular_values", "ratios", "eigenvalues"):
        np.testing.assert_allclose(getattr(spec, name), getattr(alone, name), rtol=1e-12, atol=0)
    assert (spec.k_star, spec.k95, spec.rank) == (alone.k_star, alone.k95, alone.rank)
    np.testing.assert_allclose(part_sigmas, gram_singular_values(parts), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(spec.singular_values, reference_singular_values(np.hstack(xs)), rtol=1e-10)
    for x, sigma in zip(xs, part_sigmas, strict=True):
        np.testing.assert_allclose(
            sigma[: np.linalg.matrix_rank(x)],
            reference_singular_values(x)[: np.linalg.matrix_rank(x)],
            rtol=1e-10,
        )
    positions = gap_positions(part_sigmas)
    for sigma, (k, r) in zip(part_sigmas, positions, strict=True):
        _, k_ref, r_ref, _ = gap_statistics(sigma)
        assert (k, r) == (k_ref, r_ref)
    assert positions[2] == (1, np.inf) and positions[3] == (1, 1.0)
    assert analyze_gram_with_parts(total, None)[1] is None
    assert not spec.singular_values.flags.writeable and not spec.eigenvectors.flags.writeable


def test_parts_are_checked_like_the_total():
    good = np.diag([4.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"parts must be \(n, 3, 3\)"):
        analyze_gram_with_parts(good, np.stack([np.eye(2)]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        analyze_gram_with_parts(good, np.stack([np.full((3, 3), np.nan)]))
    with pytest.raises(NotPositiveSemidefiniteError):
        analyze_gram_with_parts(good, np.stack([good, np.diag([4.0, 1.0, -1.0])]))


def test_descending_eigh_orders_and_symmetrises():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 5, 5))
    lam, vec = descending_eigh(a)
    sym = 0.5 * (a + a.transpose(0, 2, 1))
    for i in range(2):
        assert np.all(np.diff(lam[i]) <= 0)
        np.testing.assert_allclose(vec[i] @ np.diag(lam[i]) @ vec[i].T, sym[i], atol=1e-12)
        np.testing.assert_allclose(lam[i], np.sort(np.linalg.eigvalsh(sym[i]))[::-1], rtol=1e-12)


def test_clipping_fast_path_keeps_the_refusal_and_the_sign_of_zero():
    """With rank_rtol above the refusal level a clearly negative eigenvalue is still refused, and an
    all-zero Gram (LAPACK may return −0.0) gives +0.0."""
    with pytest.raises(NotPositiveSemidefiniteError):
        analyze_gram(np.diag([1.0, 0.5, -0.005]), rank_rtol=0.01)
    sigma = analyze_gram(-0.0 * np.eye(3)).singular_values
    assert np.all(sigma == 0.0) and not np.any(np.signbit(sigma))
    assert analyze_gram(np.diag([1.0, 1e-320, 0.0]), rank_rtol=0.0).effective_rank == pytest.approx(1.0)


def test_float_stage_from_a_known_eigendecomposition_equals_analyze_gram_with_parts():
    """spectrum_from_eigen (what a caller with its own eigensolver uses) gives analyze_gram_with_parts's
    answer, and checks, clips, warns and refuses the same way."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)) * np.array([3.0, 1.0, 0.5, 0.1])  # rank 4 of 6: two round-off λ
    gram = x @ x.T
    parts = np.stack([gram / 4, 3 * gram / 4])
    lam, vec = descending_eigh(np.concatenate([gram[None], parts]))
    got, got_parts = spectrum_from_eigen(lam[0], vec[0], lam[1:])
    want, want_parts = analyze_gram_with_parts(gram, parts)
    for name in ("singular_values", "eigenvalues", "ratios", "eigenvectors"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    for name in ("k_star", "gap_ratio", "gap", "gap_lambda", "k95", "k_star_weighted", "g23", "rank"):
        assert getattr(got, name) == getattr(want, name)
    assert got.effective_rank == want.effective_rank and got.rank == 4
    np.testing.assert_array_equal(got_parts, want_parts)
    assert spectrum_from_eigen(lam[0], vec[0])[1] is None
    assert vec[0].flags.writeable  # the caller's eigenvectors are copied, not frozen
    with pytest.warns(SpectrumWarning, match="clipped a negative eigenvalue") as caught:
        spec, _ = spectrum_from_eigen([1.0, 0.5, -1e-8], np.eye(3), [[1.0, 0.5, -1e-8]])
    assert spec.eigenvalues[-1] == 0.0 and len(caught) == 1  # one warning for the total and its parts
    assert caught[0].filename == __file__
    with pytest.raises(NotPositiveSemidefiniteError):
        spectrum_from_eigen([1.0, 0.5], np.eye(2), [[1.0, -0.1]])
    for bad, message in [
        (([1.0], np.eye(1)), "at least 2 updates"),
        (([np.nan, 1.0, 0.5], np.eye(3)), "NaN or Inf"),
        (([0.5, 1.0], np.eye(2)), "descending"),
        (([1.0, 0.5, 0.1], np.eye(2)), r"\(3, 3\) eigenvectors"),
        (([1.0, 0.5], np.eye(2), [[1.0, 0.5, 0.0]]), "W=2 values"),
    ]:
        with pytest.raises(ValueError, match=message):
            spectrum_from_eigen(*bad)
