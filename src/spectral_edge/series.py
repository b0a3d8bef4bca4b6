"""A run's spectral series over time: gap–loss lag correlation, the three-phase pattern, and gap flow.

Pure functions of NumPy arrays, plus :func:`aligned_series` to read them from a run store:

- :func:`lag_correlation`: the Test 4 protocol (§24): detrend both series against normalised time, then
  r(lag) for lag in −5…5, where lag > 0 means the first series leads (corr(x[:-lag], y[lag:])).
- :func:`three_phases`: rise / plateau / collapse of the gap ratio (§33) by the rule documented there.
- :func:`gap_flow_terms` and :func:`gap_flow_check`: the three terms of the gap-flow equation (Thm 14.2,
  eq 68) from measured curvatures h_j and gradient projections G_j, and how much of the measured dg/dt
  they explain.
- :func:`eigenvalue_change_stability` and :func:`run_stability`: the stability coefficients α_j (Def 16.1,
  eq 77) of every record, in the paper's form (the exact ‖ΔC‖_F the monitor stored) or in the author's
  harness form (the change of the eigenvalues between consecutive records), computed after the run from
  the stored spectra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spectral_edge.spectrum.stability import eigenvalue_change_norm, stability_coefficients


@dataclass(frozen=True)
class LagCorrelation:
    """Pearson r between two detrended series at each lag (lag > 0: the first series leads)."""

    lags: np.ndarray  # (n_lags,) ints
    r: np.ndarray  # (n_lags,) NaN where fewer than 3 pairs overlap or a series is constant
    zero_lag_r: float
    best_lag: int  # the lag of the largest |r|
    best_r: float
    n: int  # length of the series


def detrend(y: np.ndarray, order: int | None = 1) -> np.ndarray:
    """The series y minus its least-squares polynomial of ``order`` in normalised time t ∈ [0, 1].

    ``order=1`` is the thesis harness's linear detrend, ``3`` the SED scripts' cubic one, ``0`` removes
    the mean, None leaves y unchanged. Non-finite samples keep their place as NaN and are left out of
    the fit (t still runs over all n samples).

    Example:
        >>> detrend(np.array([1.0, 2.0, 3.0, 4.0])).round(12).tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    y = np.asarray(y, dtype=np.float64)
    if order is not None and order < 0:
        raise ValueError(f"detrend order must be >= 0 or None, got {order}")
    keep = np.isfinite(y)
    out = np.where(keep, y, np.nan)
    if order is None or not keep.any():
        return out
    t = np.linspace(0.0, 1.0, y.size) if y.size > 1 else np.zeros(1)
    coef = np.polynomial.polynomial.polyfit(t[keep], y[keep], min(order, int(keep.sum()) - 1))
    out[keep] = y[keep] - np.polynomial.polynomial.polyval(t[keep], coef)
    return out


def lag_correlation(
    x: Iterable[float],
    y: Iterable[float],
    *,
    max_lag: int = 5,
    detrend_order: int | None = 1,
    missing: Literal["raise", "pairwise"] = "raise",
) -> LagCorrelation:
    """r(lag) between x and y for lag in −max_lag…max_lag, after detrending each (Test 4, §24).

    lag > 0 pairs x[i] with y[i + lag] (x leads y by ``lag`` samples); lag < 0 pairs x[i − lag] with
    y[i] (y leads). The thesis reports the zero-lag |r| and the best |r| with its lag (Table 4).

    ``missing="pairwise"`` accepts non-finite samples (an evaluation that did not happen, a window not
    yet full): the series keep their positions, each is detrended on its finite samples, shifted, and
    only then are the pairs with a non-finite member dropped, lag by lag, so that a lag of ℓ samples
    still pairs samples ℓ apart. ``n`` is then the number of finite pairs at lag 0. With every sample
    finite both policies give the same result.

    Example:
        >>> t = np.arange(40.0)
        >>> lead = lag_correlation(np.sin(t / 3), np.sin((t - 2) / 3), detrend_order=None)
        >>> lead.best_lag, round(lead.best_r, 6)
        (2, 1.0)
    """
    xs = np.asarray(list(x), dtype=np.float64)
    ys = np.asarray(list(y), dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D series of one length, got {xs.shape} and {ys.shape}")
    if missing not in ("raise", "pairwise"):
        raise ValueError(f"missing must be 'raise' or 'pairwise', got {missing!r}")
    both = np.isfinite(xs) & np.isfinite(ys)
    if missing == "raise" and not both.all():
        raise ValueError("the series hold NaN or Inf; drop or clip those samples, or pass missing='pairwise'")
    n = int(both.sum())
    if n < 3 + max_lag:
        raise ValueError(f"need at least max_lag + 3 = {max_lag + 3} finite pairs, got {n}")
    xd, yd = detrend(xs, detrend_order), detrend(ys, detrend_order)
    lags = np.arange(-max_lag, max_lag + 1)
    r = np.array([pearson(*_finite_pairs(*_shifted(xd, yd, int(lag)))) for lag in lags])
    finite = np.where(np.isfinite(r), np.abs(r), -1.0)
    best = int(np.argmax(finite))
    return LagCorrelation(
        lags=lags,
        r=r,
        zero_lag_r=float(r[max_lag]),
        best_lag=int(lags[best]),
        best_r=float(r[best]),
        n=n,
    )


@dataclass(frozen=True)
class ThreePhases:
    """The rise / plateau / collapse segmentation of a gap-ratio series (§33); steps are inclusive.

    ``collapse`` and ``collapse_onset`` are None when the ratio never falls below the threshold after
    its peak (grokking runs show "rise-only" dynamics, §33).
    """

    peak_step: int
    peak_ratio: float  # of the smoothed series
    rise: tuple[int, int]
    plateau: tuple[int, int]
    collapse: tuple[int, int] | None
    collapse_onset: int | None


def three_phases(
    steps: Iterable[int],
    ratio: Iterable[float],
    *,
    smoothing: int = 5,
    plateau_level: float = 0.75,
    collapse_threshold: float = 1.20,
) -> ThreePhases:
    """Segment a gap-ratio series R(t) into rise, plateau and collapse (§33, Remark 33.2).

    The rule, applied to the centred running median ``s`` of R over ``smoothing`` records (odd):

    1. the peak is the first maximum of ``s``;
    2. the plateau is the longest run of records around the peak where the excess over 1 (R = 1 means
       no gap) stays at least ``plateau_level`` of the peak's: ``s − 1 ≥ plateau_level (s_peak − 1)``;
    3. the rise is everything before the plateau;
    4. the collapse onset is the first record after the peak with ``s < collapse_threshold`` (the SED
       code's rule with τ = 1.20, formulas.md §16); the collapse runs from the end of the plateau to
       the last record. With no onset there is no collapse.

    Example:
        >>> r = [1.1, 1.5, 2.0, 3.0, 3.1, 3.0, 2.9, 2.0, 1.3, 1.1, 1.05]
        >>> p = three_phases(range(11), r, smoothing=1)
        >>> p.rise, p.plateau, p.collapse, p.collapse_onset
        ((0, 2), (3, 6), (7, 10), 9)
    """
    st = np.asarray(list(steps), dtype=np.int64)
    rr = np.asarray(list(ratio), dtype=np.float64)
    if st.shape != rr.shape or st.ndim != 1 or st.size < 3:
        raise ValueError(f"steps and ratio must be 1-D of one length >= 3, got {st.shape} and {rr.shape}")
    if smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"smoothing must be an odd int >= 1, got {smoothing}")
    if not 0.0 < plateau_level <= 1.0:
        raise ValueError(f"plateau_level must be in (0, 1], got {plateau_level}")
    rr = np.where(np.isfinite(rr), rr, np.nan)
    s = _running_median(rr, smoothing)
    peak = int(np.nanargmax(s))
    level = 1.0 + plateau_level * (s[peak] - 1.0)
    a = peak
    while a > 0 and s[a - 1] >= level:
        a -= 1
    b = peak
    while b < s.size - 1 and s[b + 1] >= level:
        b += 1
    below = np.nonzero(s[peak + 1 :] < collapse_threshold)[0]
    onset = peak + 1 + int(below[0]) if below.size else None
    rise = (int(st[0]), int(st[a - 1])) if a > 0 else (int(st[0]), int(st[0]))
    collapse = (int(st[min(b + 1, s.size - 1)]), int(st[-1])) if onset is not None else None
    return ThreePhases(
        peak_step=int(st[peak]),
        peak_ratio=float(s[peak]),
        rise=rise,
        plateau=(int(st[a]), int(st[b])),
        collapse=collapse,
        collapse_onset=int(st[onset]) if onset is not None else None,
    )


@dataclass(frozen=True)
class GapFlowTerms:
    """The three terms of dg/dt in eq 68, per sample (σ units, per step)."""

    curvature_asymmetry: np.ndarray  # −η (h_k* − h_k*+1) d̄: can only close the gap
    damping: np.ndarray  # −η (h̄ + ω) g: can only close the gap
    driving_asymmetry: np.ndarray  # η W (|G_k*|²/d_k* − |G_k*+1|²/d_k*+1): can open it

    @property
    def total(self) -> np.ndarray:
        """The whole right-hand side: the sum of the three terms, step by step."""
        return self.curvature_asymmetry + self.damping + self.driving_asymmetry


def gap_flow_terms(
    *,
    lr: float | np.ndarray,
    weight_decay: float,
    window: int,
    h: np.ndarray,
    grad_proj: np.ndarray,
    sigma: np.ndarray,
) -> GapFlowTerms:
    """Predicted dg/dt from eq 68, term by term, for the pair of modes (k*, k*+1).

    Args:
        lr: η (a scalar, or one per sample).
        weight_decay: ω.
        window: W.
        h: (n, 2) curvatures h_k*, h_k*+1 (v_jᵀ H v_j along the trajectory's directions).
        grad_proj: (n, 2) gradient projections G_k*, G_k*+1 (⟨v_j, ∇L⟩).
        sigma: (n, 2) signal strengths d_k* = σ_k*, d_k*+1 = σ_k*+1; the gap is g = d_k* − d_k*+1.

    Example:
        >>> t = gap_flow_terms(lr=0.1, weight_decay=0.0, window=10, h=np.array([[2.0, 1.0]]),
        ...                    grad_proj=np.array([[1.0, 1.0]]), sigma=np.array([[2.0, 1.0]]))
        >>> [round(float(x[0]), 12) for x in (t.curvature_asymmetry, t.damping, t.driving_asymmetry)]
        [-0.15, -0.15, -0.5]
    """
    h, gp, d = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (h, grad_proj, sigma))
    if not (h.shape == gp.shape == d.shape and h.shape[1] == 2):
        raise ValueError(f"h, grad_proj and sigma must all be (n, 2), got {h.shape}, {gp.shape}, {d.shape}")
    if np.any(d <= 0):
        raise ValueError("sigma must be > 0: eq 68 divides by d_k* and d_k*+1")
    eta = np.asarray(lr, dtype=np.float64)
    d_bar, h_bar, g = d.mean(axis=1), h.mean(axis=1), d[:, 0] - d[:, 1]
    return GapFlowTerms(
        curvature_asymmetry=-eta * (h[:, 0] - h[:, 1]) * d_bar,
        damping=-eta * (h_bar + weight_decay) * g,
        driving_asymmetry=eta * window * (gp[:, 0] ** 2 / d[:, 0] - gp[:, 1] ** 2 / d[:, 1]),
    )


@dataclass(frozen=True)
class GapFlowCheck:
    """How well eq 68 predicts the measured dg/dt (on the interior samples, where centred differences exist)."""

    steps: np.ndarray  # (n − 2,)
    measured: np.ndarray  # centred differences (g_{i+1} − g_{i−1}) / (t_{i+1} − t_{i−1})
    predicted: np.ndarray
    r_squared: float  # 1 − SS_res / SS_tot of measured against predicted (can be negative)
    correlation: float  # Pearson r of measured and predicted
    shares: dict[str, float]  # each term's mean |value| over the sum of the three


def gap_flow_check(steps: np.ndarray, gap: np.ndarray, terms: GapFlowTerms) -> GapFlowCheck:
    """Compare eq 68's prediction with dg/dt measured by centred differences (the §26 protocol).

    Example:
        >>> steps = np.arange(6.0); gap = 10 - 0.5 * steps
        >>> flat = GapFlowTerms(np.zeros(6), np.full(6, -0.5), np.zeros(6))
        >>> round(gap_flow_check(steps, gap, flat).r_squared, 6), gap_flow_check(steps, gap, flat).shares["damping"]
        (1.0, 1.0)
    """
    t = np.asarray(steps, dtype=np.float64)
    g = np.asarray(gap, dtype=np.float64)
    if t.shape != g.shape or t.ndim != 1 or t.size < 3 or terms.total.shape != t.shape:
        raise ValueError("steps, gap and the terms must be 1-D of one length >= 3")
    measured = (g[2:] - g[:-2]) / (t[2:] - t[:-2])
    predicted = terms.total[1:-1]
    ss_tot = float(np.sum((measured - measured.mean()) ** 2))
    ss_res = float(np.sum((measured - predicted) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("-inf"))
    parts = {
        "curvature_asymmetry": terms.curvature_asymmetry[1:-1],
        "damping": terms.damping[1:-1],
        "driving_asymmetry": terms.driving_asymmetry[1:-1],
    }
    sizes = {name: float(np.mean(np.abs(v))) for name, v in parts.items()}
    total = sum(sizes.values())
    return GapFlowCheck(
        steps=t[1:-1],
        measured=measured,
        predicted=predicted,
        r_squared=r2,
        correlation=pearson(measured, predicted),
        shares={name: (v / total if total > 0 else 0.0) for name, v in sizes.items()},
    )


def aligned_series(
    run: str | Path | Any, record_field: str, eval_metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A record field and an evaluation metric of a run, at the evaluation steps.

    Each evaluation at step t is paired with the latest record at or before t (evaluations before the
    first record are dropped), so ``lag_correlation(x, y)`` runs on the windows the thesis used.

    Args:
        run: a run directory, its ``run.db``, or an open :class:`~spectral_edge.store.RunStore`.
        record_field: a scalar column of the records, e.g. ``"gap_ratio"`` or ``"g23"``, or
            ``"ratio_j"`` for σ_j/σ_{j+1} (1-based j).
        eval_metric: the name of a metric logged with ``log_eval``, e.g. ``"val_loss"``.

    Returns:
        ``(steps, x, y)``: the evaluation steps, the record field there, the metric there.
    """
    from spectral_edge.store import RunStore

    store = run if isinstance(run, RunStore) else RunStore(run, mode="r")
    try:
        arrays = store.record_arrays()
        evals = store.evals()
    finally:
        if store is not run:
            store.close()
    if eval_metric not in evals:
        raise ValueError(f"the run logged no evaluation metric {eval_metric!r}; it has {sorted(evals)}")
    if len(arrays.get("step", ())) == 0:
        raise ValueError("the run has no records yet")
    rec_steps = np.asarray(arrays["step"], dtype=np.int64)
    if record_field.startswith("ratio_"):
        j = int(record_field.split("_", 1)[1])
        field = np.asarray(arrays["ratios"], dtype=np.float64)[:, j - 1]
    elif record_field in arrays:
        field = np.asarray(arrays[record_field], dtype=np.float64)
    else:
        raise ValueError(f"records have no field {record_field!r}")
    eval_steps, values = (np.asarray(a) for a in evals[eval_metric])
    idx = np.searchsorted(rec_steps, eval_steps, side="right") - 1
    keep = idx >= 0
    return eval_steps[keep].astype(np.int64), field[idx[keep]], values[keep].astype(np.float64)


#: The two forms of α_j that :func:`run_stability` computes: the paper's (eq 77 with the exact ‖ΔC‖_F of
#: the step, Prop 11.1) and the author's harness's (eq 77 with the eigenvalue change ‖Δλ‖ between
#: consecutive windows, formulas.md §6 and §11).
StabilityForm = Literal["delta_c", "eigenvalue_change"]
STABILITY_FORMS: tuple[str, ...] = ("delta_c", "eigenvalue_change")


@dataclass(frozen=True)
class StabilitySeries:
    """α_j at every record of a run, in one form (see :func:`run_stability`)."""

    steps: np.ndarray  # (n,) record steps
    alpha: np.ndarray  # (n, W) α_j; NaN rows where the form is undefined (no previous window)
    perturbation: np.ndarray  # (n,) the ‖ΔG‖_F stand-in used: ‖ΔC‖_F or ‖Δλ‖; NaN where undefined
    form: str  # "delta_c" or "eigenvalue_change"
    c: float  # the Davis–Kahan constant used


def eigenvalue_change_stability(
    singular_values: Any, *, c: float = 1.0, chain_starts: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """α_j from the eigenvalues of consecutive windows, as the author's harness computes them (eq 77).

    Row i uses λ(t) = σ_i² and λ(t−1) = σ_{i−1}²: ‖Δλ‖ = √(Σ_j (λ_j(t) − λ_j(t−1))²) stands in for ‖ΔG‖_F
    and α_j = max(0, 1 − c ‖Δλ‖²/δ_j²) with δ_j the nearest-neighbour gap of λ(t)
    (:func:`~spectral_edge.spectrum.stability.stability_coefficients_from_eigenvalue_change`). Consecutive
    records of the monitor are one update apart, the same step whose exact ‖ΔC‖_F the record stores.

    Args:
        singular_values: (n, W) descending σ of consecutive windows (the records' ``singular_values``).
        c: the Davis–Kahan constant, > 0 (the harness: 1.0).
        chain_starts: optional (n,) booleans, True where a row has no valid predecessor (the window
            restarted before it); row 0 never has one.

    Returns:
        ``(alpha, change)``: (n, W) α_j and (n,) ‖Δλ‖, NaN on row 0, on chain starts and where either
        row holds a non-finite value or the two windows differ in W (NaN padding).

    Example:
        >>> alpha, change = eigenvalue_change_stability(np.sqrt([[9.0, 4.0, 2.0], [10.0, 4.0, 1.0]]))
        >>> change.round(4).tolist(), alpha[1].round(4).tolist()
        ([nan, 1.4142], [0.9444, 0.7778, 0.7778])
    """
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c!r}")
    sigma = np.asarray(singular_values, dtype=np.float64)
    if sigma.ndim != 2 or sigma.shape[1] < 2:
        raise ValueError(f"singular_values must be (n, W) with W >= 2, got shape {sigma.shape}")
    n, w = sigma.shape
    starts = np.zeros(n, dtype=bool) if chain_starts is None else np.asarray(chain_starts, dtype=bool)
    if starts.shape != (n,):
        raise ValueError(f"chain_starts must have one flag per row ({n}), got shape {starts.shape}")
    lam = sigma**2
    alpha = np.full((n, w), np.nan)
    change = np.full(n, np.nan)
    for i in range(1, n):
        if starts[i] or not (np.all(np.isfinite(lam[i])) and np.all(np.isfinite(lam[i - 1]))):
            continue
        change[i] = eigenvalue_change_norm(lam[i], lam[i - 1])
        alpha[i] = stability_coefficients(lam[i], change[i], c)
    return alpha, change


def run_stability(
    run: str | Path | Any, *, form: StabilityForm = "delta_c", c: float = 1.0
) -> StabilitySeries:
    """α_j at every stored record of a run, in the paper's form or the author's (Def 16.1, eq 77).

    * ``form="delta_c"`` (default, the paper's): α_j = max(0, 1 − c ‖ΔC‖_F²/δ_j²) with the exact ‖ΔC‖_F
      of the step's rank-two update (Prop 11.1), as the monitor stored it; with the monitor's c this is
      the stored ``alpha`` column.
    * ``form="eigenvalue_change"`` (the author's harness, ``theory_experiment_match.py``): ‖ΔC‖_F replaced
      by the change of the eigenvalues between consecutive records, ‖Δλ‖ ≤ ‖ΔC‖_F, so α is never lower
      (:func:`eigenvalue_change_stability`). Undefined (NaN) on the first record and on the first record
      after a ``parameters_changed`` event, where the window restarted. A run resumed without its saved
      window refills it silently: split such a run at the resume step yourself.

    Nothing here touches the monitor: both forms are computed from the stored singular values.

    Args:
        run: a run directory, its ``run.db``, or an open :class:`~spectral_edge.store.RunStore`.
        form: "delta_c" or "eigenvalue_change".
        c: the Davis–Kahan constant, > 0 (the paper and the harness: 1).

    Returns:
        A :class:`StabilitySeries`.

    Example:
        >>> import tempfile, torch
        >>> from spectral_edge import SpectralMonitor
        >>> tmp = tempfile.TemporaryDirectory()
        >>> theta = torch.zeros(50, dtype=torch.float64)
        >>> mon = SpectralMonitor([theta], window=4, store=tmp.name + "/run", storage_dtype=torch.float64)
        >>> gen = torch.Generator().manual_seed(0)
        >>> for _ in range(8):
        ...     theta += torch.randn(50, generator=gen, dtype=torch.float64)
        ...     _ = mon.step()
        >>> _ = mon.close()
        >>> paper, author = run_stability(tmp.name + "/run"), run_stability(tmp.name + "/run", form="eigenvalue_change")
        >>> bool(np.all(author.perturbation[1:] <= paper.perturbation[1:])), bool(np.isnan(author.alpha[0]).all())
        (True, True)
        >>> tmp.cleanup()
    """
    from spectral_edge.store import RunStore

    if form not in STABILITY_FORMS:
        raise ValueError(f"form must be one of {STABILITY_FORMS}, got {form!r}")
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c!r}")
    store = run if isinstance(run, RunStore) else RunStore(run, mode="r")
    try:
        arrays = store.record_arrays()
        restarts = [e.step for e in store.events() if e.kind == "parameters_changed"]
    finally:
        if store is not run:
            store.close()
    steps = np.asarray(arrays.get("step", np.empty(0)), dtype=np.int64)
    if steps.size == 0:
        raise ValueError("the run has no records yet")
    sigma = np.asarray(arrays["singular_values"], dtype=np.float64)
    if form == "eigenvalue_change":
        previous = np.concatenate([[np.iinfo(np.int64).min], steps[:-1]])
        starts = np.array(
            [any(before < s <= now for s in restarts) for before, now in zip(previous, steps, strict=True)],
            dtype=bool,
        )
        alpha, change = eigenvalue_change_stability(sigma, c=c, chain_starts=starts)
        return StabilitySeries(steps=steps, alpha=alpha, perturbation=change, form=form, c=float(c))
    delta_c = np.asarray(arrays["delta_c_fro"], dtype=np.float64)
    alpha = np.full(sigma.shape, np.nan)
    for i, (row, dc) in enumerate(zip(sigma, delta_c, strict=True)):
        keep = np.isfinite(row)  # a shorter window is NaN-padded in record_arrays
        if keep.sum() >= 2 and math.isfinite(dc):
            alpha[i, keep] = stability_coefficients(row[keep] ** 2, float(dc), c)
    return StabilitySeries(steps=steps, alpha=alpha, perturbation=delta_c, form=form, c=float(c))


def _shifted(x: np.ndarray, y: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    if lag > 0:
        return x[:-lag], y[lag:]
    if lag < 0:
        return x[-lag:], y[:lag]
    return x, y


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return (x, y) if keep.all() else (x[keep], y[keep])


def pearson(a: Any, b: Any) -> float:
    """Pearson's r of two equal-length samples; NaN with fewer than 3 pairs or a constant sample.

    Example:
        >>> pearson([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]) > 0.99
        True
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def _running_median(x: np.ndarray, width: int) -> np.ndarray:
    """Centred running median over ``width`` samples, narrowing at the ends; NaNs are ignored."""
    half = width // 2
    out = np.empty_like(x)
    for i in range(x.size):
        window = x[max(0, i - half) : i + half + 1]
        out[i] = np.nanmedian(window) if np.any(np.isfinite(window)) else np.nan
    return out
