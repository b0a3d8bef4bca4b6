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
* :func:`krylov_test` (Test 3, Prop 5.5, §23): k* against the number of Hessian eigenvalues above 1/(ηW);
* :func:`gap_loss_test` (Test 4, Thm 17.1, §24, Remark 33.2): the lagged correlation of R with the
  validation loss for each monitored W, and the lag flip between W = 10 and W = 20;
* :func:`hierarchy_test` (Test 5, Def 16.1, Remark 16.3, §25): mean α_j above, at and below the gap;
* :func:`gap_flow_test` (Test 6, Thm 14.2 eq 68, §26): the measured dg/dt against eq 68's three terms, and
  the paper's own damping test;
* :func:`phase_test` (§33): rise / plateau / collapse of R and the share of the loss improvement in the rise;
* :func:`shift_test` (§22.1): k* before and after the change of corpus;
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

from spectral_edge.experiments.lmstudy.train import LMOutcome, load_outcome
from spectral_edge.series import aligned_series, gap_flow_check, gap_flow_terms, lag_correlation, three_phases
from spectral_edge.spectrum.null import adam_noise_level, bbp_ratio, krylov_bound, null_max_ratio_quantile
from spectral_edge.store import DB_NAME, RunStore

__all__ = [
    "BBP_CONFIRM_MIN",
    "MAX_LAG",
    "NO_SPREAD",
    "PHASE_PARAMS",
    "BBPResult",
    "DampingTest",
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
    "ShiftResult",
    "Spread",
    "as_dict",
    "bbp_test",
    "finetune_test",
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
#: plateau where R − 1 stays ≥ 75% of the peak's, collapse onset at the first post-peak R < 1.20 (the SED
#: code's τ, formulas.md §5).
PHASE_PARAMS: Mapping[str, float] = {"smoothing": 5, "plateau_level": 0.75, "collapse_threshold": 1.20}


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


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 3:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else math.nan


def _nearest(steps: np.ndarray, step: int) -> int:
    """Index of the record nearest ``step`` (the earlier one on a tie)."""
    return int(np.argmin(np.abs(steps.astype(np.int64) - int(step))))


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


def _lag(x: np.ndarray, y: np.ndarray, detrend_order: int | None) -> tuple[Any, str | None]:
    """lag_correlation on the finite pairs, or (None, why) when it cannot be computed."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < MAX_LAG + 3:
        return None, f"{x.size} paired evaluations; lags ±{MAX_LAG} need at least {MAX_LAG + 3}"
    lc = lag_correlation(x, y, max_lag=MAX_LAG, detrend_order=detrend_order)
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
    lr: float  # η there (the ``hessian_lr`` evaluation)
    eigenvalues: tuple[float, ...]  # top Hessian eigenvalues, descending
    k_star: int | None  # of the record nearest the step
    record_step: int | None
    threshold: float = math.nan  # 1/(ηW), the paper's threshold (Table 3: 1/(1e-3 · 10) = 100)
    count: int = 0  # #{j : h_j ≥ 1/(ηW)}
    threshold_interval: float = math.nan  # 1/(η W interval): a window spans W · interval optimizer steps
    count_interval: int = 0
    satisfied: bool | None = None  # k* ≤ count; None without η
    satisfied_interval: bool | None = None  # k* ≤ count_interval


@dataclass(frozen=True)
class KrylovResult:
    """Test 3 (Prop 5.5, §23): k* ≤ #{h_j ≳ 1/(ηW)} at every step with a Lanczos run.

    The paper's Table 3 uses 1/(ηW) with W the number of window rows (η = 1e-3, W = 10 → 100) although
    its rows are checkpoints 200 steps apart; the mode-j factor (1 − ηh_j)^s varies over the window when
    ηh_j · (steps the window spans) ≳ 1, so ``threshold_interval`` = 1/(η W interval) is given too.
    ``lanczos_k`` bounds the count: with all kept eigenvalues above threshold, the true count may be higher.
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
    out = []
    for step, row in zip(steps.tolist(), values, strict=True):
        eig = np.sort(row[np.isfinite(row)])[::-1]
        lr = _eval_at(run, "hessian_lr", step)
        k = rec = None
        if run.n:
            i = _nearest(run.steps, step)
            k, rec = int(run.k_star[i]), int(run.steps[i])
        if not (math.isfinite(lr) and lr > 0) or run.window < 2:
            out.append(KrylovStep(int(step), lr, tuple(float(e) for e in eig), k, rec))
            continue
        paper = krylov_bound(eig, lr, run.window, k)
        spanned = krylov_bound(eig, lr, run.window * run.interval, k)
        out.append(
            KrylovStep(
                step=int(step),
                lr=lr,
                eigenvalues=tuple(float(e) for e in eig),
                k_star=k,
                record_step=rec,
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
        reason = "no Lanczos step has both a learning rate (hessian_lr) and a record nearby"
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
    """r(R, val_loss) at lags −5…5 for one monitor; lag > 0: R leads the loss (the thesis harness's convention)."""

    window: int
    n: int = 0  # paired evaluations used
    zero_lag_r: float = math.nan
    best_lag: int | None = None
    best_r: float = math.nan
    r_by_lag: Mapping[int, float] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class GapLossResult:
    """Test 4 (Thm 17.1, §24) for every monitor of a run, and the lag flip of Remark 33.2.

    Both series are detrended linearly against normalised time (the thesis harness, §24), then
    r(lag) = corr(R[:-lag], L[lag:]) for lag > 0 (R leads) and corr(R[-lag:], L[:lag]) for lag < 0 (the loss
    leads), as :func:`~spectral_edge.series.lag_correlation` defines it. The paper's TinyStories best lag −5
    means the loss leads. ``lag_flip`` compares the smallest and the largest W (W = 10 and 20): True iff
    their best lags are non-zero and of opposite signs (the paper: −1 at W = 10, +1 at W = 20).
    """

    main_window: int
    by_window: Mapping[int, LagResult]
    lag_flip: bool | None
    flip_windows: tuple[int, int] | None
    convention: str = "lag > 0: the gap ratio leads the validation loss; lag < 0: the loss leads"
    reason: str | None = None


def _lag_result(store: Path | RunSeries, *, detrend_order: int | None) -> LagResult:
    run = read_run(store)
    if "val_loss" not in run.evals:
        return LagResult(run.window, reason="no val_loss evaluations")
    if run.n == 0:
        return LagResult(run.window, reason="no windows recorded")
    _, x, y = aligned_series(run.path, "gap_ratio", "val_loss")
    lc, why = _lag(x, y, detrend_order)
    if lc is None:
        n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
        return LagResult(run.window, n, reason=why)
    return LagResult(
        window=run.window,
        n=lc.n,
        zero_lag_r=lc.zero_lag_r,
        best_lag=lc.best_lag,
        best_r=lc.best_r,
        r_by_lag={int(k): float(v) for k, v in zip(lc.lags, lc.r, strict=True)},
    )


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
    flip = pair = None
    if len(by_window) >= 2:
        lo, hi = min(by_window), max(by_window)
        pair = (lo, hi)
        a, b = by_window[lo].best_lag, by_window[hi].best_lag
        if a is not None and b is not None:
            flip = bool(a * b < 0)
    reason = None if len(by_window) >= 2 else "one monitor only: no lag flip to compare"
    return GapLossResult(
        main_window=main, by_window=by_window, lag_flip=flip, flip_windows=pair, reason=reason
    )


# -- Test 5: the stability hierarchy (§25) -------------------------------------------------------------------


@dataclass(frozen=True)
class RegionMeans:
    """Mean α over the windows and the positions of each region (NaN for an empty or unmeasured region)."""

    dominant: float  # j < m
    at_gap: float  # j ∈ {m, m+1}
    subdominant: float  # j > m + 1
    holds: bool | None  # dominant > at_gap > subdominant, or at_gap > subdominant with no dominant tier


@dataclass(frozen=True)
class HierarchyResult:
    """Test 5 (Def 16.1, Remark 16.3, §25, Remark 25.1): α above, at and below the gap.

    m is the mode of k*; positions are 1-based: dominant j < m, at gap j ∈ {m, m+1}, subdominant j > m+1
    (up to W). ``alpha`` is the stored α_j = max(0, 1 − c‖ΔC‖²_F/δ_j²) (Def 16.1, eq 77, what the paper's
    Test 5 used); ``alpha_half`` is the half-window alignment |⟨v_j⁽¹⁾, v_j⁽²⁾⟩| of §28, which exists for
    j ≤ W//2 only, so its subdominant tier is cut there. With an empty dominant tier (m = 1) the test is
    at_gap > subdominant (Remark 25.1).
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
    if not (math.isfinite(gap) and math.isfinite(sub)):
        holds = None
    elif m > 1 and math.isfinite(dom):
        holds = bool(dom > gap > sub)
    else:
        holds = bool(gap > sub)
    return RegionMeans(dom, gap, sub, holds)


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
    if alpha.holds is None:
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
class GapFlowResult:
    """Test 6 (Thm 14.2, eq 68, §26).

    At each probe step (arrays ``probe_h``, ``probe_grad``, ``probe_sigma``: h_j, G_j, σ_j along the window's
    top directions, descending σ), k* is the nearest record's; the pair (k*, k*+1) gives h, G and d, η is the
    ``probe_lr`` evaluation there, ω the config's weight decay and W the main window.
    :func:`~spectral_edge.series.gap_flow_terms` predicts dg/dt term by term and
    :func:`~spectral_edge.series.gap_flow_check` compares it with the centred difference of g = d_k* − d_k*+1
    over the probe steps. The check needs at least 3 usable probes (one centred difference); R² and the
    correlation need 3 centred differences (5 probes). With fewer, those fields are None and ``reason``
    says so. Probes where k* + 1 exceeds the number of probed directions, or with σ ≤ 0, are skipped. When
    k* changes between probes g jumps to another pair, which is not a flow: read ``k_changes`` beside R².
    ``damping`` is the paper's own test, which needs records only.
    """

    n_probes: int = 0
    n_used: int = 0
    steps: tuple[int, ...] = ()
    k_star: tuple[int, ...] = ()
    k_changes: int = 0  # times k* differs between consecutive used probes
    r_squared: float | None = None
    correlation: float | None = None
    slope: float | None = None  # least-squares measured ≈ slope · predicted (1 if eq 68 has the right scale)
    shares: Mapping[str, float] | None = None  # each term's mean |value| over the sum of the three
    measured: tuple[float, ...] = ()
    predicted: tuple[float, ...] = ()
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
    r = _pearson(gi, dg)
    if not math.isfinite(r):
        return DampingTest(int(gi.size), reason="g or dg/dt is constant: no correlation")
    a, b = np.polyfit(gi, dg, 1)
    resid = dg - (a * gi + b)
    ss_tot = float(np.sum((dg - dg.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else None
    return DampingTest(int(gi.size), r, float(a), float(b), r2)


def gap_flow_test(run: str | os.PathLike[str] | RunSeries) -> GapFlowResult:
    """Test 6: eq 68's prediction of dg/dt from measured h_j and G_j, and the paper's damping test (§26).

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> r = gap_flow_test(tmp.name)
        >>> r.r_squared, r.reason
        (None, 'no probe arrays (probe_h, probe_grad, probe_sigma): the run had no direction probes')
        >>> tmp.cleanup()
    """
    run = read_run(run)
    damping = _damping(run)
    names = ("probe_h", "probe_grad", "probe_sigma")
    if not all(n in run.arrays for n in names):
        why = "no probe arrays (probe_h, probe_grad, probe_sigma): the run had no direction probes"
        return GapFlowResult(damping=damping, reason=why)
    (steps, h), (_, grad), (_, sigma) = (run.arrays[n] for n in names)
    n_probes = int(steps.size)
    if run.n == 0:
        return GapFlowResult(
            n_probes, damping=damping, reason="no windows recorded: k* at the probes is unknown"
        )
    omega = float(run.run_config.get("weight_decay", 0.0) or 0.0)
    window = int((run.run_config.get("windows") or [run.window])[0])
    used_steps, used_k, hh, gg, dd, lrs = [], [], [], [], [], []
    for i, step in enumerate(steps.tolist()):
        k = int(run.k_star[_nearest(run.steps, step)])
        width = int(np.count_nonzero(np.isfinite(sigma[i])))
        lr = _eval_at(run, "probe_lr", step)
        if k < 1 or k + 1 > width or not (math.isfinite(lr) and lr > 0):
            continue
        cols = [k - 1, k]
        d = sigma[i, cols]
        if np.any(d <= 0) or not np.all(np.isfinite(np.concatenate([h[i, cols], grad[i, cols]]))):
            continue
        used_steps.append(int(step))
        used_k.append(k)
        hh.append(h[i, cols])
        gg.append(grad[i, cols])
        dd.append(d)
        lrs.append(lr)
    used = {
        "n_probes": n_probes,
        "n_used": len(used_steps),
        "steps": tuple(used_steps),
        "k_star": tuple(used_k),
        "k_changes": int(np.count_nonzero(np.diff(used_k))) if used_k else 0,
        "damping": damping,
    }
    if len(used_steps) < 3:
        why = (
            f"{len(used_steps)} usable probe samples; eq 68's check needs at least 3 (centred differences "
            "lose the first and the last)"
        )
        return GapFlowResult(**used, reason=why)
    d = np.asarray(dd)
    terms = gap_flow_terms(
        lr=np.asarray(lrs),
        weight_decay=omega,
        window=window,
        h=np.asarray(hh),
        grad_proj=np.asarray(gg),
        sigma=d,
    )
    check = gap_flow_check(np.asarray(used_steps, dtype=np.float64), d[:, 0] - d[:, 1], terms)
    pred, meas = check.predicted, check.measured
    denom = float(np.dot(pred, pred))
    enough = meas.size >= 3
    return GapFlowResult(
        **used,
        r_squared=check.r_squared if enough and math.isfinite(check.r_squared) else None,
        correlation=check.correlation if enough and math.isfinite(check.correlation) else None,
        slope=float(np.dot(pred, meas) / denom) if denom > 0 else None,
        shares=dict(check.shares),
        measured=tuple(float(x) for x in meas),
        predicted=tuple(float(x) for x in pred),
        reason=None
        if enough
        else f"{meas.size} centred differences; R² and the correlation need 3 (5 probes)",
    )


# -- §33: the three-phase pattern ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    """§33 on one run: :func:`~spectral_edge.series.three_phases` on the main monitor's R(t), with
    :data:`PHASE_PARAMS`, and the validation loss over each phase.

    ``onset_fraction`` = (collapse onset − first_step + 1) / steps, the share of the run's optimizer steps
    before the collapse (the paper: 7500 of 10K = 0.75). ``rise_loss_fraction`` is the share of the
    validation-loss improvement over the monitored span (first aligned evaluation to the last) achieved
    from there to the end of the rise: the paper's rise (steps 1000–5000) starts at its first windows, so
    the drop before the first window is not counted (paper: 70–80%).
    """

    params: Mapping[str, float]
    n_windows: int
    first_step: int
    steps_total: int
    peak_step: int | None = None
    peak_ratio: float = math.nan
    rise: tuple[int, int] | None = None
    plateau: tuple[int, int] | None = None
    collapse: tuple[int, int] | None = None
    collapse_onset: int | None = None
    onset_fraction: float = math.nan
    rise_loss_fraction: float = math.nan
    reason: str | None = None


def phase_test(run: str | os.PathLike[str] | RunSeries) -> PhaseResult:
    """§33: segment R(t) into rise, plateau and collapse; the onset as a fraction of the run.

    Example:
        >>> import tempfile
        >>> from spectral_edge.store import RunStore
        >>> tmp = tempfile.TemporaryDirectory()
        >>> RunStore(tmp.name, mode="w").close()
        >>> phase_test(tmp.name).reason
        '0 windows with a finite gap ratio; the segmentation needs at least 3'
        >>> tmp.cleanup()
    """
    run = read_run(run)
    first = run.outcome.first_step if run.outcome else 1
    total = int(run.outcome.steps if run.outcome else run.run_config.get("max_steps", 0) or 0)
    r = run.column("gap_ratio")
    n_finite = int(np.count_nonzero(np.isfinite(r)))
    params = dict(PHASE_PARAMS)
    if n_finite < 3:
        why = f"{n_finite} windows with a finite gap ratio; the segmentation needs at least 3"
        return PhaseResult(params, run.n, first, total, reason=why)
    p = three_phases(
        run.steps,
        r,
        smoothing=int(params["smoothing"]),
        plateau_level=params["plateau_level"],
        collapse_threshold=params["collapse_threshold"],
    )
    onset_fraction = (
        (p.collapse_onset - first + 1) / total if p.collapse_onset is not None and total else math.nan
    )
    rise_fraction, reason = math.nan, None
    if p.collapse_onset is None:
        reason = f"R never falls below {params['collapse_threshold']} after its peak: no collapse"
    if "val_loss" in run.evals:
        ev_steps, _, loss = aligned_series(run.path, "gap_ratio", "val_loss")
        keep = np.isfinite(loss)
        ev_steps, loss = ev_steps[keep], loss[keep]
        at_rise_end = np.flatnonzero(ev_steps <= p.rise[1])
        if ev_steps.size >= 2 and at_rise_end.size:
            improvement = float(loss[0] - loss[-1])
            if improvement > 0:
                rise_fraction = float(loss[0] - loss[at_rise_end[-1]]) / improvement
            else:
                reason = (
                    reason + "; " if reason else ""
                ) + "the validation loss did not improve over the windows"
    return PhaseResult(
        params=params,
        n_windows=run.n,
        first_step=first,
        steps_total=total,
        peak_step=p.peak_step,
        peak_ratio=p.peak_ratio,
        rise=p.rise,
        plateau=p.plateau,
        collapse=p.collapse,
        collapse_onset=p.collapse_onset,
        onset_fraction=float(onset_fraction),
        rise_loss_fraction=rise_fraction,
        reason=reason,
    )


# -- §22.1: the distribution shift ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftResult:
    """§22.1 on the shift run: k* before (the last ``tail`` records of the run it continued) and after.

    ``shift_step`` is the first record step of the shift run from which k* equals the post-shift mode for
    at least ``stable`` consecutive records; None when the post-shift mode is the pre-shift one (no shift)
    or never holds that long. ``window_span`` = W · interval optimizer steps: the first records of the
    shift run still hold pre-shift updates, so a shift shows up within about that many steps.
    """

    parent: str | None
    tail: int
    stable: int
    pre_mode: int | None
    pre_frequency: float
    pre_n: int
    post_mode: int | None
    post_frequency: float
    post_n: int
    first_step: int | None
    shift_step: int | None
    steps_after_shift: int | None  # shift_step − first_step
    window_span: int
    shifted: bool | None  # post mode ≠ pre mode and a stable shift step exists
    reason: str | None = None


def shift_test(
    shift_dir: str | os.PathLike[str],
    parent_dir: str | os.PathLike[str] | None = None,
    *,
    tail: int = 10,
    stable: int = 5,
) -> ShiftResult:
    """§22.1: does k* move to a new position after the change of corpus, and when?

    Args:
        shift_dir: the shift run's directory.
        parent_dir: the run it continued; default ``<suite>/<init_from>`` from the shift run's config.
        tail: records at the end of the parent that define the pre-shift mode.
        stable: consecutive records at the new mode that count as a shift.
    """
    run = read_run(shift_dir)
    parent_name = run.run_config.get("init_from")
    if parent_dir is None and parent_name:
        parent_dir = Path(shift_dir).parent / str(parent_name)
    first = run.outcome.first_step if run.outcome else (int(run.steps[0]) if run.n else None)
    span = run.window * run.interval
    post_mode, post_freq, _ = _mode(run.k_star)
    base = dict(
        parent=str(parent_name) if parent_name else None,
        tail=tail,
        stable=stable,
        post_mode=post_mode,
        post_frequency=post_freq,
        post_n=run.n,
        first_step=first,
        window_span=span,
    )
    if parent_dir is None or not (Path(parent_dir) / DB_NAME).is_file():
        return ShiftResult(
            **base,
            pre_mode=None,
            pre_frequency=math.nan,
            pre_n=0,
            shift_step=None,
            steps_after_shift=None,
            shifted=None,
            reason=f"the run it continued ({parent_dir}) has no run store",
        )
    parent = read_run(parent_dir)
    pre = parent.k_star[-tail:] if parent.n else np.zeros(0, dtype=np.int64)
    pre_mode, pre_freq, _ = _mode(pre)
    base.update(pre_mode=pre_mode, pre_frequency=pre_freq, pre_n=int(pre.size))
    if pre_mode is None or post_mode is None:
        return ShiftResult(
            **base,
            shift_step=None,
            steps_after_shift=None,
            shifted=None,
            reason="no records before or after the shift",
        )
    if post_mode == pre_mode:
        return ShiftResult(
            **base,
            shift_step=None,
            steps_after_shift=None,
            shifted=False,
            reason=f"k* mode {post_mode} is the same before and after the shift",
        )
    k = run.k_star
    shift_step = None
    for i in range(0, k.size - stable + 1):
        if np.all(k[i : i + stable] == post_mode):
            shift_step = int(run.steps[i])
            break
    reason = None
    if shift_step is None:
        reason = f"k* never stays at {post_mode} for {stable} consecutive records"
    return ShiftResult(
        **base,
        shift_step=shift_step,
        steps_after_shift=None if shift_step is None or first is None else shift_step - first,
        shifted=shift_step is not None,
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
    R weaker, comparable validation loss."""

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
