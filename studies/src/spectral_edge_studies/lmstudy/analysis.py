"""The language-model study's tests, computed from one run directory (thesis Part VIII, §21–§26, §22.1, §33, §44.9).

Every function here is pure: it reads a run directory written by :func:`~.train.run` (see that module's
docstring for what the directory holds) or a :class:`RunSeries` already read from it, and returns a frozen
dataclass of plain floats, ints and tuples. None of them raises on a short run (the ``smoke`` suite has a
handful of windows): a test that cannot be computed returns NaN/None in its numbers and says why in its
``reason`` field.

* :func:`bbp_test` (Test 1, Prop 4.1, §21): σ_W / d_crit over the windows, with the data-driven noise level
  and with Adam's ν = η/√B, for d_crit = ν (PW)^{1/4} and the author's ν (P(W−1))^{1/4};
* :func:`k_star_test` (Test 2, Def 6.1, Prop 6.4, §22, Remark 22.1): the distribution of the argmax k*, the
  gap ratio against the null, and the cross-correlation k*;
* :func:`krylov_test` (Test 3, Prop 5.5, §23): k* against the number of Ritz values of the raw Hessian above
  1/(ηW) (η the AdamW rate, as the paper), with how many Ritz values converged;
* :func:`gap_loss_test` (Test 4, Thm 17.1, §24, Remark 33.2): the lagged correlation of R with the
  validation loss for each monitored W (lags in evaluations and in steps), and the direction of the lag
  flip between W = 10 and W = 20;
* :func:`hierarchy_test` (Test 5, Def 16.1, Remark 16.3, §25): mean α_j above, at and below the gap, and
  α_{m+1} alone against the subdominant mean;
* :func:`gap_flow_test` (Test 6, Thm 14.2 eq 68, §26): the measured dg/dt against eq 68's three terms, raw
  (SGD's p = 1) and with Adam's preconditioning p_j, and the paper's own damping test;
* :func:`phase_test` (§33): rise / plateau / collapse of σ2/σ3 (R secondary) and the share of the loss
  improvement in the rise;
* :func:`shift_test` (§22.1): k* before and after the change of corpus, against a same-corpus control;
* :func:`optimizer_comparison` (§44.9): Muon against AdamW on the same seed;
* :func:`finetune_test`: Tests 1, 2, 4, 5 on the SmolLM2 fine-tune, with the monitor's cost.

:func:`as_dict` turns any result into JSON-ready values (NaN as None, ±inf as the strings "inf"/"-inf").
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectral_edge import RunStore, adam_noise_level, bbp_ratio, krylov_bound, null_max_ratio_quantile
from spectral_edge.series import (
    LagCorrelation,
    aligned_series,
    gap_flow_terms,
    lag_correlation,
    pearson,
    three_phases,
)
from spectral_edge.store import DB_NAME
from spectral_edge_studies.lmstudy.train import LMOutcome, load_outcome

__all__ = [
    "BBP_CONFIRM_MIN",
    "FLIP_NONE",
    "FLIP_PAPER",
    "FLIP_REVERSE",
    "MAX_LAG",
    "NO_SPREAD",
    "PHASE_PARAMS",
    "PHASE_SECONDARY",
    "PHASE_SERIES",
    "RITZ_TOL",
    "BBPResult",
    "DampingTest",
    "Eq68Fit",
    "FinetuneResult",
    "GapFlowResult",
    "GapLossResult",
    "HierarchyResult",
    "KStarResult",
    "KrylovResult",
    "KrylovStep",
    "LagResult",
    "OptimizerComparison",
    "OptimizerSide",
    "PhaseResult",
    "RegionMeans",
    "RunSeries",
    "Segmentation",
    "ShiftResult",
    "ShiftSide",
    "Spread",
    "as_dict",
    "bbp_test",
    "finetune_test",
    "flip_direction",
    "gap_flow_test",
    "gap_loss_test",
    "hierarchy_test",
    "k_star_test",
    "krylov_test",
    "optimizer_comparison",
    "phase_test",
    "read_run",
    "shift_test",
    "window_stores",
]

#: The author's criterion for Test 1 (``test_bbp_vacuous``): BBP is vacuous iff min σ_W/d_crit > 5.
BBP_CONFIRM_MIN = 5.0
#: Lags of Test 4 and Remark 22.1: −MAX_LAG … MAX_LAG evaluation samples (the thesis harness uses 5).
MAX_LAG = 5
#: Parameters of :func:`~spectral_edge.series.three_phases` used for §33: a 5-record running median, the
#: plateau where the ratio − 1 stays ≥ 75% of the peak's, collapse onset at the first post-peak ratio < 1.20
#: (the SED code's τ on σ2/σ3, formulas.md §14).
PHASE_PARAMS: Mapping[str, float] = {"smoothing": 5, "plateau_level": 0.75, "collapse_threshold": 1.20}
#: Test 3: a Ritz value θ with Lanczos residual ‖Hy − θy‖ > RITZ_TOL · |θ| is not converged.
RITZ_TOL = 0.1


# -- reading a run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSeries:
    """One run store's records, evaluations and arrays, read once (see :func:`read_run`).

    ``records`` is :meth:`RunStore.record_arrays` (``step``, ``k_star``, ``gap_ratio``, ``gap``,
    ``singular_values`` (n, W), ``ratios`` (n, W−1), ``alpha`` (n, W), ``alpha_half`` (n, W//2), ...),
    ``evals`` is :meth:`RunStore.evals`, ``arrays`` is :meth:`RunStore.arrays`.
    """

    path: Path  # the store's directory (it holds run.db)
    window: int  # W of this monitor
    interval: int  # optimizer steps between the updates a window holds
    n_params: int  # P monitored
    bbp_variant: str  # the variant of d_crit the monitor stored in ``bbp_ratio``
    run_config: Mapping[str, Any]  # the LMConfig of the run as a dict ({} when the store has none)
    records: Mapping[str, np.ndarray]
    evals: Mapping[str, tuple[np.ndarray, np.ndarray]]
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]]
    outcome: LMOutcome | None = None  # outcome.json of the run directory, when complete

    @property
    def n(self) -> int:
        """Number of records (windows)."""
        return int(len(self.records.get("step", ())))

    @property
    def steps(self) -> np.ndarray:
        """(n,) int64 record steps."""
        return np.asarray(self.records.get("step", np.zeros(0)), dtype=np.int64)

    @property
    def k_star(self) -> np.ndarray:
        """(n,) int64 argmax k* of each window (0 where a record lacks it)."""
        k = np.asarray(self.records.get("k_star", np.zeros(0)), dtype=np.float64)
        return np.where(np.isfinite(k), k, 0).astype(np.int64)

    def column(self, name: str) -> np.ndarray:
        """A scalar record column as float64, (n,); NaN where a record lacks it (all NaN for an unknown name)."""
        return np.asarray(self.records.get(name, np.full(self.n, np.nan)), dtype=np.float64)

    def block(self, name: str) -> np.ndarray:
        """An array record column, (n, width) float64; (n, 0) when absent."""
        value = self.records.get(name)
        if value is None or np.size(value) == 0:
            return np.zeros((self.n, 0))
        return np.asarray(value, dtype=np.float64).reshape(self.n, -1)


def read_run(path: str | os.PathLike[str] | RunSeries) -> RunSeries:
    """Read a run store (a run directory, a ``w<W>`` sub-directory, or its ``run.db``) into a :class:`RunSeries`.

    The monitor's settings (W, interval, P, bbp_variant) come from the store's saved config; the run's
    :class:`~.recipes.LMConfig` from the ``user.run`` entry train.py saves beside them; the outcome from
    ``outcome.json`` when the directory holds one.
    """
    if isinstance(path, RunSeries):
        return path
    path = Path(path)
    directory = path.parent if path.name == DB_NAME else path
    with RunStore(directory, mode="r") as store:
        config = store.config()
        records = store.record_arrays()
        evals = store.evals()
        arrays = store.arrays()
    monitor = config.get("monitor", {}) if isinstance(config, Mapping) else {}
    user = config.get("user", {}) if isinstance(config, Mapping) else {}
    run_config = user.get("run", {}) if isinstance(user, Mapping) else {}
    window = monitor.get("window")
    if window is None:
        sv = records.get("singular_values")
        window = int(sv.shape[1]) if sv is not None and sv.ndim == 2 else 0
    return RunSeries(
        path=directory,
        window=int(window),
        interval=int(monitor.get("interval", 1) or 1),
        n_params=int(monitor.get("n_params", 0) or 0),
        bbp_variant=str(monitor.get("bbp_variant", "PW")),
        run_config=dict(run_config) if isinstance(run_config, Mapping) else {},
        records=records,
        evals=evals,
        arrays=arrays,
        outcome=load_outcome(directory),
    )


def window_stores(run_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """W -> store directory for every monitor of a run: the main ``run.db`` and each ``w<W>/run.db``."""
    run_dir = Path(run_dir)
    out: dict[int, Path] = {}
    candidates = [run_dir] + sorted(p for p in run_dir.glob("w*") if p.is_dir())
    for directory in candidates:
        if not (directory / DB_NAME).is_file():
            continue
        try:
            with RunStore(directory, mode="r") as store:
                window = store.config().get("monitor", {}).get("window")
        except Exception:  # a half-written side store must not hide the main one
            continue
        if window is not None and int(window) not in out:
            out[int(window)] = directory
    return out


# -- small helpers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """min / median / max of the finite values of a series, with how many there were."""

    min: float
    median: float
    max: float
    n: int


#: The spread of an empty series.
NO_SPREAD = Spread(math.nan, math.nan, math.nan, 0)


def _spread(values: np.ndarray) -> Spread:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return NO_SPREAD
    return Spread(float(v.min()), float(np.median(v)), float(v.max()), int(v.size))


def _mean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _mode(values: np.ndarray) -> tuple[int | None, float, dict[int, int]]:
    """Most frequent value (ties: the smallest), its frequency, and the histogram (value -> count)."""
    ints = [int(v) for v in np.asarray(values).tolist() if v is not None and v > 0]
    if not ints:
        return None, math.nan, {}
    counts = Counter(ints)
    top = max(counts.values())
    mode = min(k for k, c in counts.items() if c == top)
    return mode, top / len(ints), dict(sorted(counts.items()))


def _at_or_before(steps: np.ndarray, step: int) -> int | None:
    """Index of the latest record at or before ``step`` (the window a probe at ``step`` saw), None if none.

    Example:
        >>> _at_or_before(np.array([10, 20, 30]), 25), _at_or_before(np.array([10, 20]), 5)
        (1, None)
    """
    i = int(np.searchsorted(np.asarray(steps, dtype=np.int64), int(step), side="right")) - 1
    return i if i >= 0 else None


def _by_step(run: RunSeries, name: str) -> dict[int, np.ndarray]:
    """An array's rows keyed by step (the last row where a step was logged twice); {} when absent."""
    if name not in run.arrays:
        return {}
    steps, values = run.arrays[name]
    return {
        int(s): np.asarray(v, dtype=np.float64)
        for s, v in zip(np.asarray(steps).tolist(), values, strict=True)
    }


def _eval_at(run: RunSeries, name: str, step: int) -> float:
    """The evaluation ``name`` logged at exactly ``step`` (the last one if logged twice), NaN if none."""
    if name not in run.evals:
        return math.nan
    steps, values = run.evals[name]
    hit = np.flatnonzero(steps == step)
    return float(values[hit[-1]]) if hit.size else math.nan


def as_dict(result: Any) -> Any:
    """A result (dataclass, mapping, sequence, NumPy value) as JSON-ready values: NaN → None, ±inf → "inf"/"-inf".

    Example:
        >>> as_dict(Spread(min=1.0, median=float("nan"), max=float("inf"), n=2))
        {'min': 1.0, 'median': None, 'max': 'inf', 'n': 2}
    """
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: as_dict(getattr(result, f.name)) for f in dataclasses.fields(result)}
    if isinstance(result, (np.bool_, bool)):
        return bool(result)
    if isinstance(result, (np.integer, int)):
        return int(result)
    if isinstance(result, (np.floating, float)):
        x = float(result)
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    if isinstance(result, np.ndarray):
        return [as_dict(x) for x in result.tolist()]
    if isinstance(result, Mapping):
        return {str(k): as_dict(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [as_dict(x) for x in result]
    if isinstance(result, Path):
        return str(result)
    return result


# -- Test 1: BBP is vacuous (Prop 4.1, §21) ------------------------------------------------------------------


@dataclass(frozen=True)
class BBPResult:
    """Test 1 (Prop 4.1, eqs 4–6, §21): σ_W / d_crit over the windows of one run.

    ``data_*`` use the data-driven ν² = mean(bottom half of λ)/P that the monitor stores as ``noise_level``
    (the author's ``test_bbp_vacuous``); ``adam_*`` use ν = η/√B (eq 5) with η the record's learning rate
    and B the config's batch size. ``*_pw`` take d_crit = ν (PW)^{1/4} (the thesis proof), ``*_pw1`` take
    ν (P(W−1))^{1/4} (the author's code). ``stored`` is the monitor's own ``bbp_ratio`` column (variant
    ``stored_variant``). With ``interval`` > 1 each update sums ``interval`` optimizer steps, so its Adam noise
    per coordinate is about η√interval/√B: ``adam_pw1_interval`` uses that.
    """

    n_windows: int
    window: int
    n_params: int
    batch_size: int | None
    interval: int
    stored_variant: str
    stored: Spread = NO_SPREAD
    data_pw: Spread = NO_SPREAD
    data_pw1: Spread = NO_SPREAD
    adam_pw: Spread = NO_SPREAD
    adam_pw1: Spread = NO_SPREAD
    adam_pw1_interval: Spread = NO_SPREAD
    confirmed: bool | None = (
        None  # data_pw1.min > BBP_CONFIRM_MIN (the author's criterion); None without windows
    )
    reason: str | None = None


def bbp_test(run: str | os.PathLike[str] | RunSeries) -> BBPResult:
    """Test 1: is every window far above the BBP threshold (Prop 4.1, eq 6)?

    "Confirmed" follows the author's ``test_bbp_vacuous``: the minimum over windows of σ_W/d_crit, with the
    data-driven ν and d_crit = ν (P(W−1))^{1/4}, exceeds 5.

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> r = bbp_test(tmp.name)
        >>> r.n_windows, r.confirmed, r.reason
        (0, None, 'no windows recorded')
        >>> tmp.cleanup()
    """
    run = read_run(run)
    batch = run.run_config.get("batch_size")
    batch = int(batch) if batch else None
    if run.n == 0 or run.window < 2 or run.n_params < 1:
        why = "no windows recorded" if run.n == 0 else f"unusable store (W={run.window}, P={run.n_params})"
        return BBPResult(
            n_windows=run.n,
            window=run.window,
            n_params=run.n_params,
            batch_size=batch,
            interval=run.interval,
            stored_variant=run.bbp_variant,
            reason=why,
        )
    sv = run.block("singular_values")  # (n, W)
    nu = run.column("noise_level")
    lr = run.column("lr")
    p = run.n_params
    data = {v: np.full(run.n, np.nan) for v in ("PW", "P(W-1)")}
    adam = {v: np.full(run.n, np.nan) for v in ("PW", "P(W-1)", "interval")}
    for i in range(run.n):
        s = sv[i][np.isfinite(sv[i])]
        if s.size < 2:
            continue
        if math.isfinite(nu[i]):
            for v in ("PW", "P(W-1)"):
                data[v][i] = bbp_ratio(s, float(nu[i]), p, v)  # type: ignore[arg-type]
        if batch and math.isfinite(lr[i]) and lr[i] > 0:
            nu_adam = adam_noise_level(float(lr[i]), batch)
            adam["PW"][i] = bbp_ratio(s, nu_adam, p, "PW")
            adam["P(W-1)"][i] = bbp_ratio(s, nu_adam, p, "P(W-1)")
            adam["interval"][i] = bbp_ratio(s, nu_adam * math.sqrt(run.interval), p, "P(W-1)")
    pw1 = _spread(data["P(W-1)"])
    reason = None
    if pw1.n == 0:
        reason = "no window has a finite noise level"
    elif batch is None:
        reason = "the run config has no batch_size: Adam's ν = η/√B not computed"
    return BBPResult(
        n_windows=run.n,
        window=run.window,
        n_params=p,
        batch_size=batch,
        interval=run.interval,
        stored_variant=run.bbp_variant,
        stored=_spread(run.column("bbp_ratio")),
        data_pw=_spread(data["PW"]),
        data_pw1=pw1,
        adam_pw=_spread(adam["PW"]),
        adam_pw1=_spread(adam["P(W-1)"]),
        adam_pw1_interval=_spread(adam["interval"]),
        confirmed=None if pw1.n == 0 else bool(pw1.min > BBP_CONFIRM_MIN),
        reason=reason,
    )


# -- Test 2: k* = argmax, the null, and the cross-correlation k* (§22, Remark 22.1) ---------------------------


@dataclass(frozen=True)
class KStarResult:
    """Test 2 (Def 6.1, Def 6.3, Prop 6.4, §22) and Remark 22.1 on one run.

    ``mode`` is the most frequent argmax k* (ties: the smaller), ``frequency`` its share of the windows.
    R statistics are over the finite gap ratios (``n_infinite`` windows sat at a rank edge, R = inf).
    ``null_q95`` is the 0.95 quantile of max_j σ_j/σ_{j+1} for isotropic noise of the same (W, P)
    (:func:`~spectral_edge.spectrum.null.null_max_ratio_quantile`); ``frac_above_null`` the share of windows
    whose R exceeds it. ``cross_corr_k`` is the position j whose ratio σ_j/σ_{j+1}, paired with the
    validation loss at the evaluation steps (:func:`~spectral_edge.series.aligned_series`) and detrended
    (order ``detrend_order``), has the largest |r| over lags −5…5; ``cross_corr_by_j`` maps each j to its
    (best r, best lag).
    """

    n_windows: int
    window: int
    n_params: int
    mode: int | None = None
    frequency: float = math.nan
    histogram: Mapping[int, int] = field(default_factory=dict)
    mean_ratio: float = math.nan
    median_ratio: float = math.nan
    peak_ratio: float = math.nan
    n_infinite: int = 0
    null_q95: float = math.nan
    frac_above_null: float = math.nan
    cross_corr_k: int | None = None
    cross_corr_r: float = math.nan
    cross_corr_lag: int | None = None
    cross_corr_by_j: Mapping[int, tuple[float, int]] = field(default_factory=dict)
    detrend_order: int | None = 1
    reason: str | None = None


def _lag(x: np.ndarray, y: np.ndarray, detrend_order: int | None) -> tuple[LagCorrelation | None, str | None]:
    """r(lag) of x against y for lags −MAX_LAG…MAX_LAG (lag > 0: x leads), or (None, why).

    :func:`~spectral_edge.series.lag_correlation` with ``missing="pairwise"``: the series keep their
    evaluation positions, and pairs with a non-finite member are dropped lag by lag, after shifting.
    ``n`` is the number of finite pairs at lag 0; at least MAX_LAG + 3 are needed.

    Example:
        >>> t = np.arange(40.0)
        >>> x, y = np.sin(t / 3), np.sin((t - 2) / 3)
        >>> x[7] = np.nan
        >>> lc, why = _lag(x, y, None)
        >>> lc.best_lag, round(lc.best_r, 6), lc.n, why
        (2, 1.0, 39, None)
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    if n < MAX_LAG + 3:
        return None, f"{n} paired evaluations; lags ±{MAX_LAG} need at least {MAX_LAG + 3}"
    lc = lag_correlation(x, y, max_lag=MAX_LAG, detrend_order=detrend_order, missing="pairwise")
    if not np.any(np.isfinite(lc.r)):
        return None, "a series is constant after detrending: no correlation is defined"
    return lc, None


def k_star_test(run: str | os.PathLike[str] | RunSeries, *, detrend_order: int | None = 1) -> KStarResult:
    """Test 2: the argmax k* over windows, R against the null, and the cross-correlation k* (Remark 22.1).

    The thesis harness detrends linearly (``detrend_order=1``); the SED scripts that gave Remark 22.1's
    |r| = 0.870 used a cubic detrend (3).

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> k_star_test(tmp.name).reason
        'no windows recorded'
        >>> tmp.cleanup()
    """
    run = read_run(run)
    if run.n == 0 or run.window < 2:
        return KStarResult(
            n_windows=run.n,
            window=run.window,
            n_params=run.n_params,
            detrend_order=detrend_order,
            reason="no windows recorded",
        )
    mode, freq, hist = _mode(run.k_star)
    r = run.column("gap_ratio")
    finite = r[np.isfinite(r)]
    q95 = null_max_ratio_quantile(run.window, run.n_params, 0.95) if run.n_params >= 1 else math.nan
    above = float(np.mean(r > q95)) if math.isfinite(q95) else math.nan  # inf counts as above
    by_j: dict[int, tuple[float, int]] = {}
    reason = None
    if "val_loss" not in run.evals:
        reason = "no val_loss evaluations: cross-correlation k* not computed"
    else:
        why = None
        for j in range(1, run.window):
            try:
                _, x, y = aligned_series(run.path, f"ratio_{j}", "val_loss")
            except (ValueError, IndexError) as exc:
                why = str(exc)
                break
            lc, why = _lag(x, y, detrend_order)
            if lc is not None and math.isfinite(lc.best_r):
                by_j[j] = (float(lc.best_r), int(lc.best_lag))
        if not by_j:
            reason = f"cross-correlation k* not computed: {why}"
    best_j = max(by_j, key=lambda j: abs(by_j[j][0])) if by_j else None
    return KStarResult(
        n_windows=run.n,
        window=run.window,
        n_params=run.n_params,
        mode=mode,
        frequency=freq,
        histogram=hist,
        mean_ratio=float(finite.mean()) if finite.size else math.nan,
        median_ratio=float(np.median(finite)) if finite.size else math.nan,
        peak_ratio=float(np.max(r[~np.isnan(r)])) if np.any(~np.isnan(r)) else math.nan,
        n_infinite=int(np.count_nonzero(np.isinf(r))),
        null_q95=q95,
        frac_above_null=above,
        cross_corr_k=best_j,
        cross_corr_r=by_j[best_j][0] if best_j else math.nan,
        cross_corr_lag=by_j[best_j][1] if best_j else None,
        cross_corr_by_j=by_j,
        detrend_order=detrend_order,
        reason=reason,
    )


# -- Test 3: the Krylov bound (Prop 5.5, §23) ----------------------------------------------------------------


@dataclass(frozen=True)
class KrylovStep:
    """The Krylov bound at one Lanczos step (Prop 5.5, eq 12)."""

    step: int
    lr: float  # η there (the ``hessian_lr`` evaluation): the AdamW rate, as the paper used
    eigenvalues: tuple[float, ...]  # top Ritz values of the raw Hessian, descending
    k_star: int | None  # of the latest record at or before the step (the window the probe saw)
    record_step: int | None
    threshold: float = math.nan  # 1/(ηW), the paper's threshold (Table 3: 1/(1e-3 · 10) = 100)
    count: int = 0  # #{j : h_j ≥ 1/(ηW)}
    threshold_interval: float = math.nan  # 1/(η W interval): a window spans W · interval optimizer steps
    count_interval: int = 0
    satisfied: bool | None = None  # k* ≤ count; None without η or a record
    satisfied_interval: bool | None = None  # k* ≤ count_interval
    converged: tuple[bool, ...] | None = None  # residual/|θ| ≤ RITZ_TOL per value; None: no residuals
    n_converged: int | None = None


@dataclass(frozen=True)
class KrylovResult:
    """Test 3 (Prop 5.5, §23): k* ≤ #{h_j ≳ 1/(ηW)} at every step with a Lanczos run.

    As the paper did (Table 3), Lanczos runs on the raw Hessian H of the training loss (one fixed batch),
    not on Adam's preconditioned PH, and the threshold is 1/(ηW) with η the AdamW learning rate at that
    step. The paper's W is the number of window rows (η = 1e-3, W = 10 → 100) although its rows are
    checkpoints 200 steps apart; the mode-j factor (1 − ηh_j)^s varies over the window when
    ηh_j · (steps the window spans) ≳ 1, so ``threshold_interval`` = 1/(η W interval) is given too.

    Ritz values are lower bounds on the top eigenvalues (θ_j ≤ λ_j, by interlacing), so the count of Ritz
    values above the threshold never exceeds the true count: a satisfied bound is reliable, a violated one
    may come from an eigenvalue Lanczos has not resolved. A Ritz value whose residual ‖Hy − θy‖ exceeds
    :data:`RITZ_TOL` · |θ| (array ``hessian_residuals``) is not converged; ``n_converged`` says how many
    are. ``lanczos_k`` caps the count: with all kept eigenvalues above threshold the true count may be higher.
    """

    window: int
    interval: int
    lanczos_k: int = 0
    steps: tuple[KrylovStep, ...] = ()
    all_satisfied: bool | None = None
    all_satisfied_interval: bool | None = None
    reason: str | None = None


def krylov_test(run: str | os.PathLike[str] | RunSeries) -> KrylovResult:
    """Test 3: the Krylov bound k* ≤ #{j : h_j ≥ 1/(ηW)} at each ``hessian_top`` step (Prop 5.5, eq 12).

    k* is that of the latest record at or before the Lanczos step, the window the trajectory had then.

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> krylov_test(tmp.name).reason
        'no hessian_top arrays (the run had no Lanczos steps)'
        >>> tmp.cleanup()
    """
    run = read_run(run)
    if "hessian_top" not in run.arrays:
        return KrylovResult(
            run.window, run.interval, reason="no hessian_top arrays (the run had no Lanczos steps)"
        )
    steps, values = run.arrays["hessian_top"]
    residuals = _by_step(run, "hessian_residuals")
    out = []
    for step, row in zip(steps.tolist(), values, strict=True):
        res = residuals.get(int(step))
        keep = np.isfinite(row)
        order = np.argsort(row[keep])[::-1]
        eig = row[keep][order]
        converged = None
        if res is not None and res.shape == row.shape:
            rel = np.abs(res[keep][order]) / np.maximum(np.abs(eig), np.finfo(np.float64).tiny)
            converged = tuple(bool(c) for c in (np.isfinite(rel) & (rel <= RITZ_TOL)))
        lr = _eval_at(run, "hessian_lr", step)
        k = rec = None
        i = _at_or_before(run.steps, step) if run.n else None
        if i is not None:
            k, rec = int(run.k_star[i]), int(run.steps[i])
        base = dict(
            step=int(step),
            lr=lr,
            eigenvalues=tuple(float(e) for e in eig),
            k_star=k,
            record_step=rec,
            converged=converged,
            n_converged=None if converged is None else int(sum(converged)),
        )
        if not (math.isfinite(lr) and lr > 0) or run.window < 2:
            out.append(KrylovStep(**base))
            continue
        paper = krylov_bound(eig, lr, run.window, k)
        spanned = krylov_bound(eig, lr, run.window * run.interval, k)
        out.append(
            KrylovStep(
                **base,
                threshold=paper.threshold,
                count=paper.active_modes,
                threshold_interval=spanned.threshold,
                count_interval=spanned.active_modes,
                satisfied=paper.satisfied,
                satisfied_interval=spanned.satisfied,
            )
        )
    judged = [s.satisfied for s in out if s.satisfied is not None]
    judged_i = [s.satisfied_interval for s in out if s.satisfied_interval is not None]
    reason = None
    if not judged:
        reason = "no Lanczos step has both a learning rate (hessian_lr) and a record at or before it"
    return KrylovResult(
        window=run.window,
        interval=run.interval,
        lanczos_k=int(values.shape[1]) if values.ndim == 2 else 0,
        steps=tuple(out),
        all_satisfied=all(judged) if judged else None,
        all_satisfied_interval=all(judged_i) if judged_i else None,
        reason=reason,
    )


# -- Test 4: gap ratio against validation loss (§24, Remark 33.2) --------------------------------------------


@dataclass(frozen=True)
class LagResult:
    """r(R, val_loss) at lags −5…5 for one monitor; lag > 0: R leads the loss (the thesis harness's convention).

    Lags count evaluations; ``eval_spacing`` is the optimizer steps between two (the median spacing), so a
    lag of ℓ is ℓ · eval_spacing steps (``best_lag_steps``). With evaluations at every record
    (eval_every = monitor_interval) one lag is one window step, the paper's unit (its checkpoints).
    """

    window: int
    n: int = 0  # paired evaluations used (finite pairs at lag 0)
    zero_lag_r: float = math.nan
    best_lag: int | None = None
    best_r: float = math.nan
    r_by_lag: Mapping[int, float] = field(default_factory=dict)
    eval_spacing: int | None = None  # optimizer steps between evaluations
    interval: int = 1  # optimizer steps between window updates (one record)
    best_lag_steps: int | None = None  # best_lag · eval_spacing
    reason: str | None = None


#: Test 4's lag-flip directions: the paper's (W = 10 best lag < 0, W = 20 best lag > 0), the reverse, none.
FLIP_PAPER, FLIP_REVERSE, FLIP_NONE = "paper's direction", "reverse", "none"


@dataclass(frozen=True)
class GapLossResult:
    """Test 4 (Thm 17.1, §24) for every monitor of a run, and the lag flip of Remark 33.2.

    Both series are detrended linearly against normalised time (the thesis harness, §24), then
    r(lag) = corr(R[:-lag], L[lag:]) for lag > 0 (R leads) and corr(R[-lag:], L[:lag]) for lag < 0 (the loss
    leads), as :func:`~spectral_edge.series.lag_correlation` defines it. The paper's TinyStories best lag −5
    means the loss leads. The lag flip is directional: it compares the smallest and the largest W (W = 10
    and 20); ``flip_direction`` is "paper's direction" when the small W's best lag is < 0 and the large W's
    is > 0 (the paper: −1 at W = 10, +1 at W = 20), "reverse" for the opposite signs, "none" otherwise.
    ``lag_flip`` is True only in the paper's direction.
    """

    main_window: int
    by_window: Mapping[int, LagResult]
    lag_flip: bool | None
    flip_windows: tuple[int, int] | None
    flip_direction: str | None = None  # FLIP_PAPER, FLIP_REVERSE or FLIP_NONE; None when not computable
    convention: str = "lag > 0: the gap ratio leads the validation loss; lag < 0: the loss leads"
    reason: str | None = None


def _lag_result(store: Path | RunSeries, *, detrend_order: int | None) -> LagResult:
    run = read_run(store)
    if "val_loss" not in run.evals:
        return LagResult(run.window, interval=run.interval, reason="no val_loss evaluations")
    if run.n == 0:
        return LagResult(run.window, interval=run.interval, reason="no windows recorded")
    ev_steps, x, y = aligned_series(run.path, "gap_ratio", "val_loss")
    spacing = int(np.median(np.diff(ev_steps))) if ev_steps.size >= 2 else None
    lc, why = _lag(x, y, detrend_order)
    if lc is None:
        n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
        return LagResult(run.window, n, eval_spacing=spacing, interval=run.interval, reason=why)
    return LagResult(
        window=run.window,
        n=lc.n,
        zero_lag_r=lc.zero_lag_r,
        best_lag=lc.best_lag,
        best_r=lc.best_r,
        r_by_lag={int(k): float(v) for k, v in zip(lc.lags, lc.r, strict=True)},
        eval_spacing=spacing,
        interval=run.interval,
        best_lag_steps=None if spacing is None else int(lc.best_lag) * spacing,
    )


def flip_direction(small_w_lag: int | None, large_w_lag: int | None) -> str | None:
    """The lag flip's direction from the best lags at the small and the large W (Remark 33.2).

    Example:
        >>> flip_direction(-1, 1), flip_direction(2, -3), flip_direction(-1, -2), flip_direction(None, 1)
        ("paper's direction", 'reverse', 'none', None)
    """
    if small_w_lag is None or large_w_lag is None:
        return None
    if small_w_lag < 0 < large_w_lag:
        return FLIP_PAPER
    if large_w_lag < 0 < small_w_lag:
        return FLIP_REVERSE
    return FLIP_NONE


def gap_loss_test(run_dir: str | os.PathLike[str], *, detrend_order: int | None = 1) -> GapLossResult:
    """Test 4: lagged correlation of R with the validation loss for each W, and the lag flip (Remark 33.2).

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with RunStore(tmp.name, mode="w") as s:
        ...     s.write_config({"monitor": {"window": 10}})
        >>> r = gap_loss_test(tmp.name)
        >>> r.by_window[10].reason, r.lag_flip
        ('no val_loss evaluations', None)
        >>> tmp.cleanup()
    """
    run_dir = Path(run_dir.path if isinstance(run_dir, RunSeries) else run_dir)
    stores = window_stores(run_dir)
    if not stores:
        return GapLossResult(0, {}, lag_flip=None, flip_windows=None, reason=f"no run store under {run_dir}")
    main = next((w for w, p in stores.items() if p == run_dir), min(stores))
    by_window = {w: _lag_result(path, detrend_order=detrend_order) for w, path in sorted(stores.items())}
    direction = pair = None
    if len(by_window) >= 2:
        lo, hi = min(by_window), max(by_window)
        pair = (lo, hi)
        direction = flip_direction(by_window[lo].best_lag, by_window[hi].best_lag)
    reason = None if len(by_window) >= 2 else "one monitor only: no lag flip to compare"
    return GapLossResult(
        main_window=main,
        by_window=by_window,
        lag_flip=None if direction is None else direction == FLIP_PAPER,
        flip_windows=pair,
        flip_direction=direction,
        reason=reason,
    )


# -- Test 5: the stability hierarchy (§25) -------------------------------------------------------------------


@dataclass(frozen=True)
class RegionMeans:
    """Mean α over the windows and the positions of each region (NaN for an empty or unmeasured region).

    ``holds`` is None (inconclusive) when a region needed is unmeasured, or when every α is 0: then no
    direction is stable at all and the ordering says nothing (0 > 0 is False, but that is not a
    disagreement with the hierarchy).
    """

    dominant: float  # j < m
    at_gap: float  # j ∈ {m, m+1}
    subdominant: float  # j > m + 1
    holds: bool | None  # dominant > at_gap > subdominant, or at_gap > subdominant with no dominant tier
    next_to_gap: float = math.nan  # α_{m+1} alone, the direction just below the gap
    next_above_sub: bool | None = None  # α_{m+1} > subdominant mean: the sharper test when m = 1
    all_zero: bool = False  # every finite α is 0


@dataclass(frozen=True)
class HierarchyResult:
    """Test 5 (Def 16.1, Remark 16.3, §25, Remark 25.1): α above, at and below the gap.

    m is the mode of k*; positions are 1-based: dominant j < m, at gap j ∈ {m, m+1}, subdominant j > m+1
    (up to W). ``alpha`` is the stored α_j = max(0, 1 − c‖ΔC‖²_F/δ_j²) (Def 16.1, eq 77, what the paper's
    Test 5 used); ``alpha_half`` is the half-window alignment |⟨v_j⁽¹⁾, v_j⁽²⁾⟩| of §28, which exists for
    j ≤ W//2 only, so its subdominant tier is cut there. With an empty dominant tier (m = 1) the test is
    at_gap > subdominant (Remark 25.1); since "at gap" then includes α_1, each region also reports α_{m+1}
    alone against the subdominant mean (``next_to_gap``, ``next_above_sub``). Every α = 0 is inconclusive.
    """

    m: int | None
    window: int
    n_windows: int
    alpha: RegionMeans
    alpha_half: RegionMeans
    reason: str | None = None


def _regions(block: np.ndarray, m: int, window: int) -> RegionMeans:
    width = block.shape[1] if block.ndim == 2 else 0
    j = np.arange(1, min(width, window) + 1)

    def mean_of(mask: np.ndarray) -> float:
        cols = j[mask] - 1
        return _mean(block[:, cols]) if cols.size else math.nan

    dom, gap, sub = mean_of(j < m), mean_of((j == m) | (j == m + 1)), mean_of(j > m + 1)
    nxt = mean_of(j == m + 1)
    values = block[:, : j.size] if j.size else np.zeros(0)
    finite = values[np.isfinite(values)]
    all_zero = bool(finite.size and np.all(finite == 0))
    if all_zero or not (math.isfinite(gap) and math.isfinite(sub)):
        holds = None
    elif m > 1 and math.isfinite(dom):
        holds = bool(dom > gap > sub)
    else:
        holds = bool(gap > sub)
    next_above = None if all_zero or not (math.isfinite(nxt) and math.isfinite(sub)) else bool(nxt > sub)
    return RegionMeans(dom, gap, sub, holds, nxt, next_above, all_zero)


def hierarchy_test(run: str | os.PathLike[str] | RunSeries) -> HierarchyResult:
    """Test 5: mean α_j in the dominant, at-gap and subdominant regions around m = mode of k* (§25).

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> hierarchy_test(tmp.name).reason
        'no windows recorded'
        >>> tmp.cleanup()
    """
    run = read_run(run)
    m, _, _ = _mode(run.k_star)
    if run.n == 0 or m is None:
        empty = RegionMeans(math.nan, math.nan, math.nan, None)
        return HierarchyResult(None, run.window, run.n, empty, empty, reason="no windows recorded")
    alpha = _regions(run.block("alpha"), m, run.window)
    half = _regions(run.block("alpha_half"), m, run.window)
    reason = None
    if alpha.all_zero:
        reason = "every α is 0: no direction is stable, so the hierarchy cannot be judged"
    elif alpha.holds is None:
        reason = f"m = {m} leaves no subdominant positions inside W = {run.window}"
    return HierarchyResult(m, run.window, run.n, alpha, half, reason=reason)


# -- Test 6: the gap flow (Thm 14.2, eq 68, §26) -------------------------------------------------------------


@dataclass(frozen=True)
class DampingTest:
    """The paper's own gap-flow test (§26, the author's harness) on the record series g(t) (the stored ``gap``).

    dg/dt by centred differences (g_{i+1} − g_{i−1})/(t_{i+1} − t_{i−1}), then corr(g, dg/dt) (negative means
    the gap is damped) and the least-squares line dg/dt = a·g + b. The paper found r ≈ 0, R² ≈ 0 for GPT-2.
    """

    n: int = 0  # interior records (centred differences)
    corr: float | None = None
    a: float | None = None
    b: float | None = None
    r_squared: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Eq68Fit:
    """Eq 68's predicted dg/dt at the used centres under one reading of h and G, against the measured one."""

    reading: str  # "raw" (h_j, G_j as measured: SGD's eq 68, p = 1) or "preconditioned" (p_j h_j, p_j G_j)
    predicted: tuple[float, ...] = ()
    r_squared: float | None = None  # 1 − SS_res/SS_tot of measured against predicted (can be negative)
    correlation: float | None = None  # Pearson r of predicted and measured
    slope: float | None = None  # least-squares measured ≈ slope · predicted (1 if eq 68 has the right scale)
    shares: Mapping[str, float] | None = None  # each term's mean |value| over the sum of the three


@dataclass(frozen=True)
class GapFlowResult:
    """Test 6 (Thm 14.2, eq 68, §26).

    Inputs, at each probe step (arrays ``probe_h``, ``probe_grad``, ``probe_sigma``, ``probe_precond``): h_j,
    G_j, σ_j and Adam's p_j = Σ_i v_ji²/(√v̂_i + ε) along the window's top directions (descending σ); η is
    the ``probe_lr`` evaluation there, ω the config's weight decay and W the main window.

    Measured dg/dt: at each interior probe (a centre i), k = k* of the latest record at or before it, and
    g = σ_k − σ_k+1 is read at the probes on either side from *their* ``probe_sigma`` columns k and k+1, so
    one centred difference (g_{i+1} − g_{i−1})/(t_{i+1} − t_{i−1}) always follows one pair of positions
    even when k* moves between probes (``k_changes`` counts such moves). A centre is skipped when k + 1
    exceeds the directions probed at i−1, i or i+1 (``n_skipped_width``) or when its numbers are not finite.

    Predicted dg/dt: :func:`~spectral_edge.series.gap_flow_terms` at the centre, twice:

    * ``raw``: h and G as measured. The paper writes eq 68 for SGD, i.e. with preconditioner p = 1;
    * ``preconditioned``: h → p h and G → p G. Eq 9 defines Adam's effective curvature h_eff = p h (+ ω;
      AdamW's decay is decoupled, so ω stays as it is), and Adam's step along v_j is η p_j G_j. It is None
      for a run without ``probe_precond`` (recorded before it existed) or when any p_j used is not finite
      (directions touching parameters not under Adam, e.g. Muon's matrices): ``precond_reason`` says which.

    ``basis`` names the reading the verdict uses: "preconditioned" when available, else "raw". G_j is the
    gradient of one fixed probe batch, so |G_j|² carries the batch noise along v_j (E|G_batch|² = |G|² + noise
    variance): the driving term is biased upward. R² and the correlation need 3 centres (5 probes); with
    fewer those fields are None and ``reason`` says so. ``damping`` is the paper's own test on the records.
    """

    n_probes: int = 0
    n_centres: int = 0  # interior probes (n_probes − 2)
    n_used: int = 0  # centres with a measured and a predicted dg/dt
    n_skipped_width: int = 0  # centres where k* + 1 exceeds the probed directions
    steps: tuple[int, ...] = ()  # of the used centres
    k_star: tuple[int, ...] = ()  # k* at each used centre
    k_changes: int = 0  # times k* differs between consecutive used centres
    measured: tuple[float, ...] = ()
    raw: Eq68Fit | None = None
    preconditioned: Eq68Fit | None = None
    precond_reason: str | None = None
    basis: str | None = None  # "preconditioned" or "raw": the fit the verdict reads
    damping: DampingTest = DampingTest()
    reason: str | None = None


def _damping(run: RunSeries) -> DampingTest:
    t = run.steps.astype(np.float64)
    g = run.column("gap")
    keep = np.isfinite(g)
    t, g = t[keep], g[keep]
    if t.size < 5:
        why = f"{t.size} records with a finite gap; corr(g, dg/dt) needs 5 (3 centred differences)"
        return DampingTest(max(t.size - 2, 0), reason=why)
    dg = (g[2:] - g[:-2]) / (t[2:] - t[:-2])
    gi = g[1:-1]
    r = pearson(gi, dg)
    if not math.isfinite(r):
        return DampingTest(int(gi.size), reason="g or dg/dt is constant: no correlation")
    a, b = np.polyfit(gi, dg, 1)
    resid = dg - (a * gi + b)
    ss_tot = float(np.sum((dg - dg.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else None
    return DampingTest(int(gi.size), r, float(a), float(b), r2)


def _centred_gap_rates(
    steps: np.ndarray, k: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Measured dg/dt at each centre i from the same pair (k_i, k_i + 1) at probes i − 1 and i + 1.

    Args:
        steps: (n,) probe steps, increasing.
        k: (n,) k* at each probe (< 1: unknown).
        sigma: (n, width) σ_j of each probe's window, descending, NaN-padded.

    Returns:
        ``(centres, rates, n_skipped_width)``: indices i of the centres with a rate, the rates
        (σ_k(i+1) − σ_k+1(i+1) − σ_k(i−1) + σ_k+1(i−1)) / (t_{i+1} − t_{i−1}) with k = k_i, and how many centres
        were skipped because k_i + 1 exceeds the directions probed at i − 1, i or i + 1.

    Example:
        >>> sig = np.array([[5.0, 4.0, 1.0], [6.0, 3.0, 2.0], [9.0, 6.0, 2.0], [9.0, 5.0, np.nan]])
        >>> _centred_gap_rates(np.array([0, 1, 2, 3]), np.array([1, 2, 2, 1]), sig)
        (array([1]), array([0.5]), 1)
    """
    t = np.asarray(steps, dtype=np.float64)
    d = np.asarray(sigma, dtype=np.float64)
    width = np.array([int(np.argmin(np.append(np.isfinite(row), False))) for row in d])  # leading finite
    centres, rates, skipped = [], [], 0
    for i in range(1, t.size - 1):
        ki = int(k[i])
        if ki < 1:
            continue
        if ki + 1 > min(width[i - 1], width[i], width[i + 1]):
            skipped += 1
            continue
        before = d[i - 1, ki - 1] - d[i - 1, ki]
        after = d[i + 1, ki - 1] - d[i + 1, ki]
        rate = (after - before) / (t[i + 1] - t[i - 1])
        if math.isfinite(rate):
            centres.append(i)
            rates.append(rate)
    return np.asarray(centres, dtype=np.int64), np.asarray(rates, dtype=np.float64), skipped


def _eq68_fit(reading: str, measured: np.ndarray, terms: Any) -> Eq68Fit:
    """R², correlation, slope and term shares of eq 68's ``terms`` against ``measured`` (both (n,))."""
    pred = np.asarray(terms.total, dtype=np.float64)
    parts = {
        "curvature_asymmetry": terms.curvature_asymmetry,
        "damping": terms.damping,
        "driving_asymmetry": terms.driving_asymmetry,
    }
    sizes = {name: float(np.mean(np.abs(v))) for name, v in parts.items()}
    total = sum(sizes.values())
    shares = {name: (v / total if total > 0 else 0.0) for name, v in sizes.items()}
    denom = float(np.dot(pred, pred))
    slope = float(np.dot(pred, measured) / denom) if denom > 0 else None
    r2 = corr = None
    if measured.size >= 3:
        ss_tot = float(np.sum((measured - measured.mean()) ** 2))
        ss_res = float(np.sum((measured - pred) ** 2))
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
        c = pearson(pred, measured)
        corr = c if math.isfinite(c) else None
    return Eq68Fit(reading, tuple(float(x) for x in pred), r2, corr, slope, shares)


def gap_flow_test(run: str | os.PathLike[str] | RunSeries) -> GapFlowResult:
    """Test 6: eq 68's prediction of dg/dt from measured h_j and G_j, raw and with Adam's preconditioning,
    and the paper's damping test (§26).

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> r = gap_flow_test(tmp.name)
        >>> r.raw, r.reason
        (None, 'no probe arrays (probe_h, probe_grad, probe_sigma): the run had no direction probes')
        >>> tmp.cleanup()
    """
    run = read_run(run)
    damping = _damping(run)
    names = ("probe_h", "probe_grad", "probe_sigma")
    if not all(n in run.arrays for n in names):
        why = "no probe arrays (probe_h, probe_grad, probe_sigma): the run had no direction probes"
        return GapFlowResult(damping=damping, reason=why)
    h_rows, g_rows, s_rows = (_by_step(run, n) for n in names)
    p_rows = _by_step(run, "probe_precond")
    steps = np.asarray(sorted(set(h_rows) & set(g_rows) & set(s_rows)), dtype=np.int64)  # a failed probe
    n_probes = int(steps.size)  # may have logged some arrays only
    n_centres = max(n_probes - 2, 0)
    if n_probes < 3:
        why = (
            f"{n_probes} complete probes; eq 68's check needs at least 3 (a centred difference needs a "
            "probe on each side)"
        )
        return GapFlowResult(n_probes, n_centres, damping=damping, reason=why)
    if run.n == 0:
        return GapFlowResult(
            n_probes, n_centres, damping=damping, reason="no windows recorded: k* at the probes is unknown"
        )
    k_all = np.zeros(n_probes, dtype=np.int64)
    for i, step in enumerate(steps.tolist()):
        rec = _at_or_before(run.steps, step)
        k_all[i] = int(run.k_star[rec]) if rec is not None else 0
    width = max(row.size for row in s_rows.values())
    sigma = np.full((n_probes, width), np.nan)
    for i, step in enumerate(steps.tolist()):
        sigma[i, : s_rows[step].size] = s_rows[step]
    centres, rates, skipped = _centred_gap_rates(steps, k_all, sigma)
    omega = float(run.run_config.get("weight_decay", 0.0) or 0.0)
    window = int((run.run_config.get("windows") or [run.window])[0])
    used, meas, hh, gg, dd, pp, lrs = [], [], [], [], [], [], []
    for i, rate in zip(centres.tolist(), rates.tolist(), strict=True):
        step, k = int(steps[i]), int(k_all[i])
        cols = [k - 1, k]
        lr = _eval_at(run, "probe_lr", step)
        h, g, d = h_rows[step], g_rows[step], sigma[i, cols]
        if not (math.isfinite(lr) and lr > 0) or h.size <= k or g.size <= k or np.any(d <= 0):
            continue
        if not np.all(np.isfinite(np.concatenate([h[cols], g[cols], d]))):
            continue
        p = p_rows.get(step)
        used.append(i)
        meas.append(rate)
        hh.append(h[cols])
        gg.append(g[cols])
        dd.append(d)
        pp.append(p[cols] if p is not None and p.size > k else np.full(2, np.nan))
        lrs.append(lr)
    base = dict(
        n_probes=n_probes,
        n_centres=n_centres,
        n_used=len(used),
        n_skipped_width=skipped,
        steps=tuple(int(steps[i]) for i in used),
        k_star=tuple(int(k_all[i]) for i in used),
        k_changes=int(np.count_nonzero(np.diff(k_all[used]))) if used else 0,
        measured=tuple(float(x) for x in meas),
        damping=damping,
    )
    if not used:
        why = (
            f"no usable centre among {n_centres}: {skipped} with k* + 1 above the probed directions, the "
            "rest without k*, η, or finite positive σ, h and G"
        )
        return GapFlowResult(**base, reason=why)
    measured = np.asarray(meas)
    h_arr, g_arr, d_arr, p_arr = (np.asarray(x) for x in (hh, gg, dd, pp))
    common = dict(lr=np.asarray(lrs), weight_decay=omega, window=window, sigma=d_arr)
    raw = _eq68_fit("raw", measured, gap_flow_terms(h=h_arr, grad_proj=g_arr, **common))
    pre, pre_why = None, None
    if not p_rows:
        pre_why = "no probe_precond arrays (a run recorded before they existed): raw h and G only"
    elif not np.all(np.isfinite(p_arr) & (p_arr > 0)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(p_arr) & (p_arr > 0), axis=1)))
        pre_why = (
            f"p_j is not finite at {bad} of {len(used)} centres (directions touching parameters not under "
            "Adam, e.g. Muon's matrices): raw h and G only"
        )
    else:
        pre = _eq68_fit(
            "preconditioned", measured, gap_flow_terms(h=p_arr * h_arr, grad_proj=p_arr * g_arr, **common)
        )
    reason = None
    if measured.size < 3:
        reason = f"{measured.size} centred differences; R² and the correlation need 3 (5 probes)"
    return GapFlowResult(
        **base,
        raw=raw,
        preconditioned=pre,
        precond_reason=pre_why,
        basis="preconditioned" if pre is not None else "raw",
        reason=reason,
    )


# -- §33: the three-phase pattern ----------------------------------------------------------------------------


#: §33's series: the primary one the SED code segments (σ2/σ3, ``ratios`` column index 1), and R.
PHASE_SERIES, PHASE_SECONDARY = "σ2/σ3", "R = max_j σ_j/σ_{j+1}"


@dataclass(frozen=True)
class Segmentation:
    """Rise / plateau / collapse of one ratio series (steps inclusive; see :class:`PhaseResult`)."""

    series: str
    peak_step: int | None = None
    peak_ratio: float = math.nan
    rise: tuple[int, int] | None = None  # None when the plateau starts at the first record
    plateau: tuple[int, int] | None = None
    collapse: tuple[int, int] | None = None
    collapse_onset: int | None = None
    onset_fraction: float = math.nan
    rise_loss_fraction: float | None = None  # None with no rise or no loss improvement
    reason: str | None = None


@dataclass(frozen=True)
class PhaseResult:
    """§33 on one run: :func:`~spectral_edge.series.three_phases` with :data:`PHASE_PARAMS` on the main
    monitor's σ2/σ3 (the SED code's series: collapse onset = first post-peak σ2/σ3 < 1.20), and the
    validation loss over each phase. The same segmentation of R = max_j σ_j/σ_{j+1} is kept as a secondary
    column (``max_ratio``); where the edge sits at k* = 2 the two agree.

    ``onset_fraction`` = (collapse onset − first_step + 1) / steps, the share of the run's optimizer steps
    before the collapse (the paper: 7500 of 10K = 0.75). ``rise_loss_fraction`` is the share of the
    validation-loss improvement over the monitored span (first aligned evaluation to the last) achieved
    from there to the end of the rise: the paper's rise (steps 1000–5000) starts at its first windows, so
    the drop before the first window is not counted (paper: 70–80%). When the plateau starts at the first
    record there is no rise: ``rise`` and ``rise_loss_fraction`` are None (not 0%).
    """

    params: Mapping[str, float]
    n_windows: int
    first_step: int
    steps_total: int
    series: str = PHASE_SERIES
    peak_step: int | None = None
    peak_ratio: float = math.nan
    rise: tuple[int, int] | None = None
    plateau: tuple[int, int] | None = None
    collapse: tuple[int, int] | None = None
    collapse_onset: int | None = None
    onset_fraction: float = math.nan
    rise_loss_fraction: float | None = None
    max_ratio: Segmentation | None = None  # the secondary segmentation, of R
    reason: str | None = None


def _segment(
    run: RunSeries, values: np.ndarray, field_name: str, label: str, first: int, total: int
) -> Segmentation:
    """three_phases on one ratio series, with the loss share of the rise (``field_name`` for aligned_series)."""
    params = PHASE_PARAMS
    n_finite = int(np.count_nonzero(np.isfinite(values)))
    if n_finite < 3:
        why = f"{n_finite} windows with a finite {label}; the segmentation needs at least 3"
        return Segmentation(label, reason=why)
    p = three_phases(
        run.steps,
        values,
        smoothing=int(params["smoothing"]),
        plateau_level=params["plateau_level"],
        collapse_threshold=params["collapse_threshold"],
    )
    onset_fraction = (
        (p.collapse_onset - first + 1) / total if p.collapse_onset is not None and total else math.nan
    )
    rise = None if p.plateau[0] <= int(run.steps[0]) else p.rise
    reasons = []
    if p.collapse_onset is None:
        reasons.append(
            f"{label} never falls below {params['collapse_threshold']} after its peak: no collapse"
        )
    rise_fraction = None
    if rise is None:
        reasons.append("the plateau starts at the first record: no rise")
    elif "val_loss" in run.evals:
        ev_steps, _, loss = aligned_series(run.path, field_name, "val_loss")
        keep = np.isfinite(loss)
        ev_steps, loss = ev_steps[keep], loss[keep]
        at_rise_end = np.flatnonzero(ev_steps <= rise[1])
        if ev_steps.size >= 2 and at_rise_end.size:
            improvement = float(loss[0] - loss[-1])
            if improvement > 0:
                rise_fraction = float(loss[0] - loss[at_rise_end[-1]]) / improvement
            else:
                reasons.append("the validation loss did not improve over the windows")
    return Segmentation(
        series=label,
        peak_step=p.peak_step,
        peak_ratio=p.peak_ratio,
        rise=rise,
        plateau=p.plateau,
        collapse=p.collapse,
        collapse_onset=p.collapse_onset,
        onset_fraction=float(onset_fraction),
        rise_loss_fraction=rise_fraction,
        reason="; ".join(reasons) or None,
    )


def phase_test(run: str | os.PathLike[str] | RunSeries) -> PhaseResult:
    """§33: segment σ2/σ3 (and, secondary, R) into rise, plateau and collapse; the onset as a fraction of the run.

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> phase_test(tmp.name).reason
        '0 windows with a finite σ2/σ3; the segmentation needs at least 3'
        >>> tmp.cleanup()
    """
    run = read_run(run)
    first = run.outcome.first_step if run.outcome else 1
    total = int(run.outcome.steps if run.outcome else run.run_config.get("max_steps", 0) or 0)
    ratios = run.block("ratios")  # (n, W − 1)
    r23 = ratios[:, 1] if ratios.shape[1] >= 2 else np.full(run.n, np.nan)
    primary = _segment(run, r23, "ratio_2", PHASE_SERIES, first, total)
    secondary = _segment(run, run.column("gap_ratio"), "gap_ratio", PHASE_SECONDARY, first, total)
    fields = {f.name: getattr(primary, f.name) for f in dataclasses.fields(Segmentation)}
    return PhaseResult(
        params=dict(PHASE_PARAMS),
        n_windows=run.n,
        first_step=first,
        steps_total=total,
        max_ratio=secondary,
        **fields,
    )


# -- §22.1: the distribution shift ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftSide:
    """k* after the continuation point in one continued run (the shift, or the same-corpus control).

    The first ``excluded`` records (W of them) hold windows that straddle the continuation point, so the
    post-shift statistics (``post_*``, ``changed``) use the records after them only. ``shift_step`` is the
    first record step (any record) from which k* equals the post mode for ``stable`` consecutive records.
    """

    name: str
    corpus: str | None
    n_records: int
    excluded: int  # leading records left out of the post statistics (their windows straddle the shift)
    post_n: int
    post_mode: int | None
    post_frequency: float
    first_step: int | None
    shift_step: int | None = None
    steps_after_shift: int | None = None  # shift_step − first_step
    changed: bool | None = None  # post mode ≠ the parent's pre-shift mode; None when either is unknown


@dataclass(frozen=True)
class ShiftResult:
    """§22.1: k* before (the last ``tail`` records of the run both continue) and after, in the shift run
    and in the control run, which continues the same state on the same corpus with the identical schedule.

    A change of k*'s mode in the shift run alone could come from the schedule (the learning-rate warm-up and
    decay of the continuation); the control separates the corpus from that. ``shifted`` is True when the
    shift run's post mode differs from the pre mode and holds for ``stable`` records; ``control_changed``
    whether the control's post mode differs too. ``window_span`` = W · interval optimizer steps: the first W
    records of each continued run straddle the shift and are excluded from the post statistics.
    """

    parent: str | None
    parent_corpus: str | None
    tail: int
    stable: int
    window: int
    window_span: int
    pre_mode: int | None
    pre_frequency: float
    pre_n: int
    shift: ShiftSide | None
    control: ShiftSide | None = None
    shifted: bool | None = None
    control_changed: bool | None = None
    reason: str | None = None
    control_reason: str | None = None


def _shift_side(run: RunSeries, pre_mode: int | None, stable: int) -> ShiftSide:
    excluded = min(run.window, run.n)
    post = run.k_star[excluded:]
    mode, freq, _ = _mode(post)
    first = run.outcome.first_step if run.outcome else (int(run.steps[0]) if run.n else None)
    changed = None if mode is None or pre_mode is None else bool(mode != pre_mode)
    shift_step = None
    if changed:
        k = run.k_star
        for i in range(0, k.size - stable + 1):
            if np.all(k[i : i + stable] == mode):
                shift_step = int(run.steps[i])
                break
    return ShiftSide(
        name=run.path.name,
        corpus=run.run_config.get("corpus"),
        n_records=run.n,
        excluded=excluded,
        post_n=int(post.size),
        post_mode=mode,
        post_frequency=freq,
        first_step=first,
        shift_step=shift_step,
        steps_after_shift=None if shift_step is None or first is None else shift_step - first,
        changed=changed,
    )


def shift_test(
    shift_dir: str | os.PathLike[str],
    parent_dir: str | os.PathLike[str] | None = None,
    *,
    control_dir: str | os.PathLike[str] | None = None,
    tail: int = 10,
    stable: int = 5,
) -> ShiftResult:
    """§22.1: does k* move to a new position after the change of corpus, when, and does a control move too?

    Args:
        shift_dir: the shift run's directory (``shift-milton-seed42``).
        parent_dir: the run it continued; default ``<suite>/<init_from>`` from the shift run's config.
        control_dir: the control (``continue-shakespeare-seed42``: same state, corpus and schedule); None
            when the suite has none (``control_reason`` says so).
        tail: records at the end of the parent that define the pre-shift mode.
        stable: consecutive records at the new mode that count as a shift.
    """
    run = read_run(shift_dir)
    parent_name = run.run_config.get("init_from")
    if parent_dir is None and parent_name:
        parent_dir = Path(shift_dir).parent / str(parent_name)
    control_run = None
    control_why = "no control run (same state, corpus and schedule) in this suite"
    if control_dir is not None:
        if (Path(control_dir) / DB_NAME).is_file():
            control_run, control_why = read_run(control_dir), None
        else:
            control_why = f"the control run ({control_dir}) has no run store"
    base = dict(
        parent=str(parent_name) if parent_name else None,
        parent_corpus=None,
        tail=tail,
        stable=stable,
        window=run.window,
        window_span=run.window * run.interval,
        control_reason=control_why,
    )
    if parent_dir is None or not (Path(parent_dir) / DB_NAME).is_file():
        return ShiftResult(
            **base,
            pre_mode=None,
            pre_frequency=math.nan,
            pre_n=0,
            shift=_shift_side(run, None, stable),
            control=None if control_run is None else _shift_side(control_run, None, stable),
            reason=f"the run it continued ({parent_dir}) has no run store",
        )
    parent = read_run(parent_dir)
    base["parent_corpus"] = parent.run_config.get("corpus")
    pre = parent.k_star[-tail:] if parent.n else np.zeros(0, dtype=np.int64)
    pre_mode, pre_freq, _ = _mode(pre)
    side = _shift_side(run, pre_mode, stable)
    control = None if control_run is None else _shift_side(control_run, pre_mode, stable)
    if control is not None and control.changed is None:
        control_why = f"the control has {control.post_n} records after its first {control.excluded}"
    reason = None
    if pre_mode is None or side.post_mode is None:
        reason = (
            f"no records before the shift or after the first W = {run.window} of the shift run "
            f"({run.n} records)"
        )
    elif not side.changed:
        reason = f"k* mode {side.post_mode} is the same before and after the shift"
    elif side.shift_step is None:
        reason = f"k* never stays at {side.post_mode} for {stable} consecutive records"
    return ShiftResult(
        **{**base, "control_reason": control_why},
        pre_mode=pre_mode,
        pre_frequency=pre_freq,
        pre_n=int(pre.size),
        shift=side,
        control=control,
        shifted=None if side.changed is None else bool(side.changed and side.shift_step is not None),
        control_changed=None if control is None else control.changed,
        reason=reason,
    )


# -- §44.9: Muon against AdamW -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSide:
    """One optimizer's spectral edge: k* (argmax mode and cross-correlation), R's range, final val loss."""

    name: str
    mode: int | None
    frequency: float
    cross_corr_k: int | None
    ratio_min: float
    ratio_p5: float
    ratio_median: float
    ratio_p95: float
    ratio_max: float
    final_val_loss: float


@dataclass(frozen=True)
class OptimizerComparison:
    """§44.9 (open problem 9): Muon against AdamW on the same seed. The paper: Muon k* = 1, AdamW k* = 2, Muon's
    R weaker, comparable validation loss. AdamW's k* = 2 is the cross-correlation k* (its argmax mode on
    TinyStories is 1; formulas.md §13), so the comparison is made on ``cross_corr_k``; the argmax mode is
    reported beside it."""

    adamw: OptimizerSide | None
    muon: OptimizerSide | None
    reason: str | None = None


def _side(run_dir: str | os.PathLike[str]) -> OptimizerSide:
    run = read_run(run_dir)
    k = k_star_test(run)
    r = run.column("gap_ratio")
    r = r[np.isfinite(r)]
    q = np.percentile(r, [0, 5, 50, 95, 100]) if r.size else np.full(5, np.nan)
    final = run.outcome.final_val_loss if run.outcome else math.nan
    if not math.isfinite(final) and "val_loss" in run.evals and run.evals["val_loss"][1].size:
        final = float(run.evals["val_loss"][1][-1])
    return OptimizerSide(
        Path(run_dir).name, k.mode, k.frequency, k.cross_corr_k, *(float(x) for x in q), final
    )


def optimizer_comparison(
    adamw_dir: str | os.PathLike[str] | None, muon_dir: str | os.PathLike[str] | None
) -> OptimizerComparison:
    """§44.9: k* mode, R's range (min, 5th/50th/95th percentiles, max) and final val loss of both runs."""
    sides = []
    for d in (adamw_dir, muon_dir):
        sides.append(_side(d) if d is not None and (Path(d) / DB_NAME).is_file() else None)
    reason = None
    if None in sides:
        reason = "the AdamW or the Muon run is missing"
    return OptimizerComparison(sides[0], sides[1], reason)


# -- the fine-tune -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneResult:
    """Tests 1, 2, 4, 5 on the SmolLM2-135M fine-tune, with what the monitor cost.

    ``monitor_overhead`` = monitor time / training-step time (outcome.monitor_s / train_s);
    ``train_ms_per_step`` and ``monitor_ms_per_step`` divide by the run's steps; ``window_bytes`` is W -> bytes
    of each monitor's window, ``memory`` the outcome's ``extra`` (window bytes and measured RSS growth for
    float32 and bfloat16 storage).
    """

    n_params: int
    steps: int
    bbp: BBPResult
    k_star: KStarResult
    gap_loss: GapLossResult
    hierarchy: HierarchyResult
    monitor_overhead: float
    train_ms_per_step: float
    monitor_ms_per_step: float
    window_bytes: Mapping[str, int]
    memory: Mapping[str, Any]
    reason: str | None = None


def finetune_test(run_dir: str | os.PathLike[str]) -> FinetuneResult:
    """Tests 1, 2, 4, 5 and the monitor's overhead, per-step time and window memory on the fine-tune."""
    run = read_run(run_dir)
    out = run.outcome
    steps = int(out.steps) if out else 0
    return FinetuneResult(
        n_params=int(out.n_params) if out else run.n_params,
        steps=steps,
        bbp=bbp_test(run),
        k_star=k_star_test(run),
        gap_loss=gap_loss_test(run_dir),
        hierarchy=hierarchy_test(run),
        monitor_overhead=out.monitor_overhead if out else math.nan,
        train_ms_per_step=1000 * out.train_s / steps if out and steps else math.nan,
        monitor_ms_per_step=1000 * out.monitor_s / steps if out and steps else math.nan,
        window_bytes=dict(out.window_bytes) if out else {},
        memory=dict(out.extra) if out else {},
        reason=None if out else "no outcome.json: timing and memory unknown",
    )
