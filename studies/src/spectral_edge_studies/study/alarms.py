"""Early-warning alarms for grokking, fixed before any suite outcome was seen (issue 3, thesis §27, eq 86).

The thesis reads grokking as a delayed gap opening (Remark 10.8) preceded by a decline of the
sub-leading gap g23 = λ2 − λ3 (Table 7) and ordered as in eq 86::

    g23↓ → (σ1 ≈ σ2, mode competition) → D_SGD↑ → ‖[W_Q, W_K]‖_F peak → σ1/σ2↑ (k* → 1) → grok

This module turns that reading into *online alarms*: rules that look only at what a run had logged up to
a step, so each could have rung during training. The same rules are applied, on the same runs, to three
alternatives, so the comparison in the suite summary is like for like:

==================  ==========================================================================  ============
alarm               fires at the first sample where …                                           samples
==================  ==========================================================================  ============
``spectral_g23``    the trailing median of g23 (20 records) has stayed ≤ 0.5 × its running      records
                    peak for 10 consecutive records                                              (W = 10)
``spectral_k1``     k* = 1 and the trailing median of σ1/σ2 (20 records) is ≥ 1.5 × its          records
                    running minimum, for 10 consecutive records
``weight_norm``     the trailing median of ‖θ‖ (3 evals) has stayed ≤ 0.9 × its running peak      evaluations
                    for 2 consecutive evaluations
``loss_gap``        the trailing median of test_loss − train_loss (3 evals) has a running peak    evaluations
                    ≥ 0.1 nats and has stayed ≤ 0.8 × that peak for 2 consecutive evaluations
``ww_alpha``        the mean WeightWatcher layer α is ≤ 0.8 × its running peak                   checkpoints
``ww_traps``        WeightWatcher's total count of correlation traps exceeds its count at the    4 evenly
                    first checkpoint                                                             spaced
                                                                                                 checkpoints
``memorised``       train accuracy ≥ 0.99 (a reference, not an alarm: "grokking follows           evaluations
                    memorisation")
==================  ==========================================================================  ============

Why these constants (all chosen from the paper, the author's replication code and the demo run in the
README, none from a suite outcome):

* ``spectral_g23``: Table 7's decline g23_early/g23_grok is 4.2×–8.4× at grokking in all twelve runs;
  the alarm rings at a 2× decline (half the smallest decline in log scale), so on the paper's runs it
  would ring before grokking if g23 falls steadily. The author's replication counts a decline > 1.5× as
  "declined"; 2× is a little stricter because one window of W = 10 noisy Adam updates can halve g23.
  The reference is the running peak of the smoothed g23 (the replication's g23_early is the pre-grok
  peak), so the learning-rate warm-up cannot set a low reference.
* ``spectral_k1``: eq 86's last spectral step, "σ1/σ2↑ (k* → 1)", read on the update Gram (σ of the
  trajectory matrix X, Def 6.1). In the demo σ1/σ2 sits at 1.5–2.5 on the plateau and reaches 8–18 after
  grokking; a 1.5× rise over the running minimum is the earliest clear departure from the plateau band.
* Smoothing and persistence for records: the trailing median spans 2W = 20 records (two windows that
  share no update) and the condition must hold for W = 10 records (one full turnover of the window),
  so one outlying update cannot ring the alarm. Evaluations are sparser (tens per run): a median of 3
  and a persistence of 2. Checkpoints are sparser still (about 16 per run): no smoothing, persistence 1.
* ``weight_norm``: weight decay shrinks ‖θ‖ while the memorising solution is replaced by the
  generalising one; a 10% fall from the peak is well above the evaluation-to-evaluation jitter.
* ``loss_gap``: the test loss turns down before the test accuracy crosses 0.95; the gap must first have
  opened (≥ 0.1 nats, memorisation) and then closed by 20% from its peak.
* ``ww_alpha`` / ``ww_traps`` (Martin & Mahoney's heavy-tailed self-regularisation, the
  ``weightwatcher`` package, an optional extra): a layer's power-law exponent α falls as the layer
  learns correlations (α ≈ 2 is read as well trained); a 20% fall of the mean α from its peak marks
  that change. Correlation traps (spikes above the Marchenko–Pastur bulk of the element-shuffled
  matrix) are read in HTSR as a sign of over-fitting; the alarm asks whether their appearance precedes
  grokking. Both use ``WeightWatcher.analyze`` with the package's defaults on every 2-D weight of the
  saved checkpoints (about 16 a run, plus the grokking and last steps): α at every checkpoint, the traps
  (``randomize=True``, about a second per layer) at 4 of them evenly spaced, the first and last
  included, which is what the suite's time budget allows (see :func:`weightwatcher_series`). That subset
  is the one change made after a run was seen: the first smoke run spent 270 s per run counting traps at
  all 16 checkpoints, more than its training; the rules and thresholds were not touched.

Scoring (:func:`score`): on a run that grokked (test accuracy ≥ 0.95, §27) an alarm is a *hit* when it
fired strictly before the grokking step (lead time = grok step − alarm step), *late* when it fired at or
after it, a *miss* when it never fired. On a run that did not grok it is a *false alarm* when it fired at
all (the weight-decay-0 controls are where the thesis says no grokking, hence no alarm, should happen).
An alarm step is the step of the sample at which its condition had held long enough: the earliest step
at which an online monitor could have rung.

The two spectral alarms read the update Gram of every trainable parameter by default. The author's
grokking scripts build X from the attention weights W_Q, W_K, W_V, W_O alone; the study records that Gram
too, as a monitor group, and :func:`load_series` reads it with ``parameters="attention"``. The rules are
the same for both readings; the suite summary reports both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spectral_edge.spectrum import spectrum_from_eigen
from spectral_edge_studies._imports import require
from spectral_edge_studies.atomic import write_json
from spectral_edge_studies.study.common import (
    ATTENTION_GROUP,
    CHECKPOINT_DIR,
    MEMORIZE_ACC,
    PARAMETERS,
    WINDOW,
)

# -- the fixed constants (see the module docstring) -------------------------------------------------------

#: Trailing-median width and persistence on the monitor's records: 2W and W records.
RECORD_SMOOTHING, RECORD_PERSISTENCE = 2 * WINDOW, WINDOW
#: Trailing-median width and persistence on evaluations.
EVAL_SMOOTHING, EVAL_PERSISTENCE = 3, 2
#: Persistence on checkpoints (no smoothing).
CHECKPOINT_PERSISTENCE = 1
#: spectral_g23: smoothed g23 at or below this fraction of its running peak.
G23_FRACTION = 0.5
#: spectral_k1: smoothed σ1/σ2 at or above this multiple of its running minimum, with k* = 1.
K1_RISE = 1.5
#: weight_norm: smoothed ‖θ‖ at or below this fraction of its running peak.
WEIGHT_NORM_FRACTION = 0.9
#: loss_gap: the smoothed gap's running peak must reach this many nats, then fall to this fraction of it.
LOSS_GAP_MIN_PEAK, LOSS_GAP_FRACTION = 0.1, 0.8
#: ww_alpha: mean layer α at or below this fraction of its running peak.
WW_ALPHA_FRACTION = 0.8
#: ww_traps: checkpoints whose traps are counted (evenly spaced, first and last included). Counting them
#: (``analyze(randomize=True)``) costs about a second per layer on the 2-core reference machine: 15 s a
#: checkpoint for the modular model, 270 s for 18 checkpoints of one run, more than its training. α alone
#: (``randomize=False``) takes a fraction of a second, so α is read at every checkpoint.
WW_TRAP_CHECKPOINTS = 4

#: Alarm names, in the order the summary prints them (``memorised`` last: it is a reference).
ALARMS = ("spectral_g23", "spectral_k1", "weight_norm", "loss_gap", "ww_alpha", "ww_traps", "memorised")
#: What each alarm watches, for tables.
ALARM_LABELS = {
    "spectral_g23": "g23 collapse (update Gram, Table 7)",
    "spectral_k1": "k* → 1 with rising σ1/σ2 (update Gram, eq 86)",
    "weight_norm": "weight-norm decline",
    "loss_gap": "train–test loss gap closing",
    "ww_alpha": "WeightWatcher mean layer α drop",
    "ww_traps": "WeightWatcher correlation traps",
    "memorised": "memorisation (train acc ≥ 0.99), reference",
}

#: File, inside a run directory, caching the WeightWatcher analysis of its checkpoints.
WW_CACHE = Path("analysis") / "weightwatcher.json"
_WW_CACHE_FORMAT = 1

Outcome = Literal["hit", "late", "miss", "false_alarm", "quiet", "n/a"]


@dataclass(frozen=True)
class Alarm:
    """When one alarm rang on one run: ``step`` is None when it never did, ``available`` False when the
    run lacks what the alarm reads (e.g. no checkpoints, or the ``weightwatcher`` extra missing)."""

    name: str
    step: int | None
    available: bool = True
    note: str = ""


@dataclass(frozen=True)
class RunSeries:
    """What the alarms read from one run, as arrays ordered by step.

    Records (one per full window of the monitor): ``record_steps``, ``g23`` (λ2 − λ3), ``k_star``,
    ``ratio12`` (σ1/σ2 of the update Gram), ``k_star_weighted`` (argmax_j (σ_j/Σσ)(σ_j/σ_j+1), the author's
    replication's k*; None when the records lack it), all from the X named by ``parameters``
    (:data:`~.common.PARAMETERS`). Evaluations: ``eval_steps`` and ``evals`` by name
    (``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``, ``weight_norm``, ``wq0_ratio`` …).
    Checkpoints (WeightWatcher): ``ww_steps``, ``ww_alpha`` (mean layer α), ``ww_traps`` (total traps,
    NaN where not analysed), or None when there was no analysis.
    """

    record_steps: np.ndarray
    g23: np.ndarray
    k_star: np.ndarray
    ratio12: np.ndarray
    eval_steps: Mapping[str, np.ndarray]
    evals: Mapping[str, np.ndarray]
    events: tuple[Mapping[str, Any], ...] = ()
    ww_steps: np.ndarray | None = None
    ww_alpha: np.ndarray | None = None
    ww_traps: np.ndarray | None = None
    ww_note: str = ""
    k_star_weighted: np.ndarray | None = None
    parameters: str = "all"

    def eval(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, values) of an evaluation metric, or None when the run did not log it."""
        if name not in self.evals:
            return None
        return self.eval_steps[name], self.evals[name]


# -- primitives -------------------------------------------------------------------------------------------


def trailing_median(x: Sequence[float] | np.ndarray, width: int) -> np.ndarray:
    """Median of the last ``width`` samples at each position (fewer at the start), ignoring NaN.

    Causal: position i uses samples ``max(0, i − width + 1) … i`` only.

    Example:
        >>> trailing_median([1.0, 5.0, 2.0, 8.0], 3).tolist()
        [1.0, 3.0, 2.0, 5.0]
    """
    values = np.asarray(x, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    for i in range(values.size):
        window = values[max(0, i - width + 1) : i + 1]
        window = window[~np.isnan(window)]
        if window.size:
            out[i] = float(np.median(window))
    return out


def first_persistent(
    steps: Sequence[int] | np.ndarray, condition: Sequence[bool], persist: int
) -> int | None:
    """Step of the first sample at which ``condition`` has held for ``persist`` consecutive samples.

    Example:
        >>> first_persistent([10, 20, 30, 40, 50], [True, False, True, True, True], 2)
        40
        >>> first_persistent([10, 20], [True, False], 2) is None
        True
    """
    if persist < 1:
        raise ValueError(f"persist must be an int >= 1, got {persist!r}")
    run = 0
    for step, ok in zip(np.asarray(steps).tolist(), np.asarray(condition, dtype=bool).tolist(), strict=True):
        run = run + 1 if ok else 0
        if run >= persist:
            return int(step)
    return None


def _running_max(x: np.ndarray) -> np.ndarray:
    return np.fmax.accumulate(x) if x.size else x  # fmax skips NaN


def _running_min(x: np.ndarray) -> np.ndarray:
    return np.fmin.accumulate(x) if x.size else x


def _fraction_of_peak(
    steps: np.ndarray, x: np.ndarray, fraction: float, width: int, persist: int
) -> int | None:
    smooth = trailing_median(x, width)
    with np.errstate(invalid="ignore"):
        condition = smooth <= fraction * _running_max(smooth)
    return first_persistent(steps, condition, persist)


# -- the alarms -------------------------------------------------------------------------------------------


def spectral_g23_alarm(steps: Sequence[int] | np.ndarray, g23: Sequence[float] | np.ndarray) -> int | None:
    """g23 collapse: the first record where the smoothed g23 has stayed ≤ 0.5 × its running peak for W records.

    g23 = λ2 − λ3 of the update Gram (Table 7's dynamical signal). The smoothing is a trailing median over
    2W = 20 records; the running peak is that of the smoothed series.

    Example:
        >>> steps = np.arange(100)
        >>> g23 = np.where(steps < 50, 1.0, 0.2)   # falls 5× at step 50
        >>> spectral_g23_alarm(steps, g23)  # the median crosses 0.5 at 60, then 10 records of persistence
        69
    """
    return _fraction_of_peak(
        np.asarray(steps),
        np.asarray(g23, dtype=np.float64),
        G23_FRACTION,
        RECORD_SMOOTHING,
        RECORD_PERSISTENCE,
    )


def spectral_k1_alarm(
    steps: Sequence[int] | np.ndarray,
    k_star: Sequence[int] | np.ndarray,
    ratio12: Sequence[float] | np.ndarray,
) -> int | None:
    """k* → 1 with a rising ratio (eq 86): k* = 1 and smoothed σ1/σ2 ≥ 1.5 × its running minimum, W records.

    σ1/σ2 is the update Gram's first ratio; the trailing median spans 2W = 20 records.

    Example:
        >>> steps = np.arange(100)
        >>> k = np.where(steps < 50, 2, 1)
        >>> r = np.where(steps < 50, 1.6, 4.0)
        >>> spectral_k1_alarm(steps, k, r)  # median ≥ 2.4 from 59 (10 of 20 at 4.0), then 10 records
        68
    """
    st = np.asarray(steps)
    smooth = trailing_median(ratio12, RECORD_SMOOTHING)
    with np.errstate(invalid="ignore"):
        condition = (np.asarray(k_star) == 1) & (smooth >= K1_RISE * _running_min(smooth))
    return first_persistent(st, condition, RECORD_PERSISTENCE)


def weight_norm_alarm(
    steps: Sequence[int] | np.ndarray, weight_norm: Sequence[float] | np.ndarray
) -> int | None:
    """Weight-norm decline: smoothed ‖θ‖ (median of 3 evals) ≤ 0.9 × its running peak for 2 evaluations.

    Example:
        >>> weight_norm_alarm([0, 10, 20, 30, 40, 50], [10, 12, 12, 10, 9, 9])
        50
    """
    return _fraction_of_peak(
        np.asarray(steps),
        np.asarray(weight_norm, dtype=np.float64),
        WEIGHT_NORM_FRACTION,
        EVAL_SMOOTHING,
        EVAL_PERSISTENCE,
    )


def loss_gap_alarm(
    steps: Sequence[int] | np.ndarray,
    train_loss: Sequence[float] | np.ndarray,
    test_loss: Sequence[float] | np.ndarray,
) -> int | None:
    """Train–test loss gap closing: smoothed gap's peak ≥ 0.1 nats, then ≤ 0.8 × peak for 2 evaluations.

    The gap is test_loss − train_loss, smoothed by a trailing median over 3 evaluations.

    Example:
        >>> train = [4.6, 1.0, 0.1, 0.01, 0.01, 0.01, 0.01]
        >>> test = [4.6, 5.0, 6.0, 6.0, 4.0, 2.0, 1.0]
        >>> loss_gap_alarm([0, 1, 2, 3, 4, 5, 6], train, test)
        6
    """
    gap = np.asarray(test_loss, dtype=np.float64) - np.asarray(train_loss, dtype=np.float64)
    smooth = trailing_median(gap, EVAL_SMOOTHING)
    peak = _running_max(smooth)
    with np.errstate(invalid="ignore"):
        condition = (peak >= LOSS_GAP_MIN_PEAK) & (smooth <= LOSS_GAP_FRACTION * peak)
    return first_persistent(np.asarray(steps), condition, EVAL_PERSISTENCE)


def ww_alpha_alarm(steps: Sequence[int] | np.ndarray, alpha_mean: Sequence[float] | np.ndarray) -> int | None:
    """WeightWatcher α drop: mean layer α ≤ 0.8 × its running peak (checkpoints, no smoothing).

    Example:
        >>> ww_alpha_alarm([0, 100, 200, 300], [6.0, 6.5, 5.5, 5.0])
        300
    """
    return _fraction_of_peak(
        np.asarray(steps),
        np.asarray(alpha_mean, dtype=np.float64),
        WW_ALPHA_FRACTION,
        1,
        CHECKPOINT_PERSISTENCE,
    )


def ww_traps_alarm(steps: Sequence[int] | np.ndarray, traps: Sequence[float] | np.ndarray) -> int | None:
    """WeightWatcher correlation traps: the total over layers exceeds its value at the first checkpoint.

    NaN (a checkpoint not analysed) never rings.

    Example:
        >>> ww_traps_alarm([0, 100, 200], [1, 1, 2])
        200
        >>> ww_traps_alarm([0, 100], [0, 0]) is None
        True
    """
    values = np.asarray(traps, dtype=np.float64)
    if values.size == 0 or np.isnan(values[0]):
        return None
    with np.errstate(invalid="ignore"):
        return first_persistent(np.asarray(steps), values > values[0], CHECKPOINT_PERSISTENCE)


def memorised_alarm(steps: Sequence[int] | np.ndarray, train_acc: Sequence[float] | np.ndarray) -> int | None:
    """The reference: the first evaluation with train accuracy ≥ 0.99 (the run's memorisation step).

    Example:
        >>> memorised_alarm([0, 10, 20], [0.1, 0.995, 1.0])
        10
    """
    return first_persistent(np.asarray(steps), np.asarray(train_acc, dtype=np.float64) >= MEMORIZE_ACC, 1)


def evaluate_alarms(series: RunSeries) -> dict[str, Alarm]:
    """Every alarm of :data:`ALARMS` on one run (an :class:`Alarm` per name, unavailable ones flagged).

    Example:
        >>> steps = np.arange(0, 200, 10)
        >>> s = RunSeries(record_steps=steps, g23=np.ones(20), k_star=np.ones(20, int), ratio12=np.ones(20),
        ...               eval_steps={"train_acc": steps}, evals={"train_acc": np.linspace(0, 1, 20)})
        >>> a = evaluate_alarms(s)
        >>> a["spectral_g23"].step, a["memorised"].step, a["weight_norm"].available
        (None, 190, False)
    """
    out: dict[str, Alarm] = {}
    has_records = series.record_steps.size > 0
    note = "" if has_records else "no spectral records"
    out["spectral_g23"] = Alarm(
        "spectral_g23",
        spectral_g23_alarm(series.record_steps, series.g23) if has_records else None,
        has_records,
        note,
    )
    out["spectral_k1"] = Alarm(
        "spectral_k1",
        spectral_k1_alarm(series.record_steps, series.k_star, series.ratio12) if has_records else None,
        has_records,
        note,
    )
    out["weight_norm"] = _eval_alarm(series, "weight_norm", ("weight_norm",), weight_norm_alarm)
    out["loss_gap"] = _eval_alarm(series, "loss_gap", ("train_loss", "test_loss"), loss_gap_alarm)
    if series.ww_steps is None or series.ww_steps.size == 0:
        why = series.ww_note or "no WeightWatcher analysis"
        out["ww_alpha"] = Alarm("ww_alpha", None, False, why)
        out["ww_traps"] = Alarm("ww_traps", None, False, why)
    else:
        out["ww_alpha"] = Alarm(
            "ww_alpha", ww_alpha_alarm(series.ww_steps, series.ww_alpha), True, series.ww_note
        )
        out["ww_traps"] = Alarm(
            "ww_traps", ww_traps_alarm(series.ww_steps, series.ww_traps), True, series.ww_note
        )
    out["memorised"] = _eval_alarm(series, "memorised", ("train_acc",), memorised_alarm)
    return out


def _eval_alarm(
    series: RunSeries, name: str, needs: tuple[str, ...], rule: Callable[..., int | None]
) -> Alarm:
    missing = [metric for metric in needs if metric not in series.evals]
    if missing:
        return Alarm(name, None, False, f"the run logged no {', '.join(missing)}")
    steps = series.eval_steps[needs[0]]
    columns = [series.evals[metric] for metric in needs]
    if any(len(c) != len(steps) for c in columns):  # logged at different steps: align on the first one's
        columns = [_at_steps(series.eval_steps[m], series.evals[m], steps) for m in needs]
    return Alarm(name, rule(steps, *columns))


def _at_steps(steps: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    lookup = dict(zip(steps.tolist(), values.tolist(), strict=True))
    return np.asarray([lookup.get(s, math.nan) for s in wanted.tolist()], dtype=np.float64)


def score(
    alarm_step: int | None, grok_step: int | None, *, available: bool = True
) -> tuple[Outcome, int | None]:
    """(outcome, lead time in steps) of one alarm on one run; the lead is set for hits only.

    Example:
        >>> score(800, 1000), score(1000, 1000), score(None, 1000), score(50, None), score(None, None)
        (('hit', 200), ('late', None), ('miss', None), ('false_alarm', None), ('quiet', None))
    """
    if not available:
        return "n/a", None
    if grok_step is None:
        return ("quiet", None) if alarm_step is None else ("false_alarm", None)
    if alarm_step is None:
        return "miss", None
    if alarm_step < grok_step:
        return "hit", int(grok_step - alarm_step)
    return "late", None


# -- reading a run ----------------------------------------------------------------------------------------


def load_series(
    run_dir: str | os.PathLike[str], *, ww: Mapping[str, Any] | None = None, parameters: str = "all"
) -> RunSeries:
    """Read a run directory's store into a :class:`RunSeries` (WeightWatcher values from ``ww``, the
    dict :func:`weightwatcher_series` returns, when given).

    Args:
        run_dir: a study run directory.
        ww: a WeightWatcher analysis, or None.
        parameters: the X the spectral series come from (:data:`~.common.PARAMETERS`). ``"all"``
            (default): the records themselves, X over every trainable parameter. ``"attention"``: the
            singular values the records hold for the ``attention`` group (W_Q, W_K, W_V, W_O of every
            layer, the author's X), turned into g23, k*, weighted k* and σ1/σ2 by the library's own
            spectrum code (:func:`~spectral_edge.spectrum.window.spectrum_from_eigen`). Evaluations,
            events and WeightWatcher values are the same for both.

    Raises:
        ValueError: ``parameters`` is not one of :data:`~.common.PARAMETERS`, or it is ``"attention"`` and
            the run's records hold no attention group (recorded before the study monitored it).
    """
    from spectral_edge import RunStore

    if parameters not in PARAMETERS:
        raise ValueError(f"parameters must be one of {PARAMETERS}, got {parameters!r}")
    with RunStore(run_dir, mode="r") as store:
        arrays = store.record_arrays()
        rows = store.records() if parameters == ATTENTION_GROUP else None
        evals = store.evals()
        events = tuple(e.to_dict() for e in store.events())
    n = len(arrays.get("step", ()))
    if rows is not None:
        g23, k_star, k_star_weighted, ratio12 = _group_gap_series(rows, ATTENTION_GROUP, run_dir)
    else:
        ratios = np.asarray(arrays.get("ratios", np.empty((n, 0))), dtype=np.float64)
        stored_g23, weighted = arrays.get("g23"), arrays.get("k_star_weighted")
        g23 = np.asarray(stored_g23 if stored_g23 is not None else np.full(n, np.nan), dtype=np.float64)
        k_star = np.asarray(arrays.get("k_star", np.zeros(n)), dtype=np.int64)
        k_star_weighted = None if weighted is None else np.asarray(weighted, dtype=np.int64)
        ratio12 = ratios[:, 0] if ratios.ndim == 2 and ratios.shape[1] else np.full(n, np.nan)
    series = RunSeries(
        record_steps=np.asarray(arrays.get("step", np.empty(0)), dtype=np.int64),
        g23=g23,
        k_star=k_star,
        ratio12=ratio12,
        eval_steps={name: s for name, (s, _) in evals.items()},
        evals={name: v for name, (_, v) in evals.items()},
        events=events,
        k_star_weighted=k_star_weighted,
        parameters=parameters,
    )
    if ww is None:
        return series
    checkpoints = ww.get("checkpoints", {})
    steps = sorted(int(s) for s in checkpoints)
    return dataclasses.replace(
        series,
        ww_steps=np.asarray(steps, dtype=np.int64),
        ww_alpha=np.asarray([_nan(checkpoints[str(s)].get("alpha_mean")) for s in steps], dtype=np.float64),
        ww_traps=np.asarray([_nan(checkpoints[str(s)].get("traps")) for s in steps], dtype=np.float64),
        ww_note=str(ww.get("note", "")),
    )


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _group_gap_series(
    rows: Sequence[Mapping[str, Any]], group: str, run_dir: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(g23, k*, weighted k*, σ1/σ2) of one monitor group at every record, from its stored singular values.

    The group's σ are turned back into eigenvalues and through the same spectrum code as the total's, so
    k*, the weighted k* and g23 follow the records' own definitions (Def 6.1, formulas.md §5, Table 7).
    """
    n = len(rows)
    g23, ratio12 = np.full(n, np.nan), np.full(n, np.nan)
    k_star, k_star_weighted = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    found = 0
    identity: np.ndarray | None = None
    for i, row in enumerate(rows):
        spectrum = (row.get("groups") or {}).get(group)
        if spectrum is None:
            continue
        sigma = np.asarray(spectrum["singular_values"], dtype=np.float64)
        if identity is None or identity.shape[0] != sigma.size:
            identity = np.eye(sigma.size)
        spec, _ = spectrum_from_eigen(sigma**2, identity)
        found += 1
        g23[i] = math.nan if spec.g23 is None else spec.g23
        k_star[i], k_star_weighted[i] = spec.k_star, spec.k_star_weighted
        ratio12[i] = spec.ratios[0]
    if n and not found:
        raise ValueError(
            f"the records of {run_dir} hold no {group!r} group: the run was recorded before the study "
            f"monitored the attention weights as their own group; rerun it, or read it with parameters='all'"
        )
    return g23, k_star, k_star_weighted, ratio12


# -- WeightWatcher on the checkpoints ---------------------------------------------------------------------


def checkpoint_files(run_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """step -> checkpoint file (``checkpoints/step_<n>.safetensors`` or ``.pt``) of a study run."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for path in folder.iterdir():
        stem, suffix = path.stem, path.suffix
        if stem.startswith("step_") and suffix in (".safetensors", ".pt") and stem[5:].isdigit():
            out[int(stem[5:])] = path
    return dict(sorted(out.items()))


def weightwatcher_available() -> bool:
    """Whether the optional ``weightwatcher`` extra is importable (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("weightwatcher") is not None


def weightwatcher_series(
    run_dir: str | os.PathLike[str], *, cache: bool = True, stop_traps_at_alarm: bool = True
) -> dict[str, Any]:
    """WeightWatcher's mean layer α and total correlation traps at every checkpoint of a run.

    Each checkpoint's 2-D tensors are analysed as the weights of ``nn.Linear`` layers (so any family's
    model works without importing it) by ``WeightWatcher.analyze(randomize=True)`` with the package's
    defaults: α is the power-law exponent of each layer's empirical spectral density (``alpha``), the
    traps are the spikes out of the Marchenko–Pastur bulk of the element-shuffled matrix
    (``num_traps``). The mean α is over layers with a finite, positive fit.

    Checkpoints are analysed in step order, α at every one (``randomize=False``: a fraction of a second).
    The traps (``randomize=True``) cost about a second per layer, so they are counted only at the
    checkpoints of :func:`trap_checkpoints`, and with ``stop_traps_at_alarm`` not after
    :func:`ww_traps_alarm` has rung (an online monitor would not look further; the alarm step is
    unchanged). BLAS is held to one thread during the analysis (on a shared 2-core machine SciPy's SVD
    oversubscribed is 100× slower).

    The result is cached in ``<run_dir>/analysis/weightwatcher.json`` and extended checkpoint by
    checkpoint, so an interrupted analysis resumes.

    Returns:
        ``{"checkpoints": {"<step>": {"alpha_mean", "alphas", "traps"}}, "seconds", "version", "note"}``;
        ``traps`` is None where not analysed. Without checkpoints, ``checkpoints`` is empty and ``note``
        says so.

    Raises:
        MissingExtraError: ``weightwatcher`` is not installed (``pip install -e 'studies[weightwatcher]'``).
    """
    run_dir = Path(run_dir)
    files = checkpoint_files(run_dir)
    cache_path = run_dir / WW_CACHE
    result: dict[str, Any] = {"format": _WW_CACHE_FORMAT, "checkpoints": {}, "seconds": 0.0, "note": ""}
    if cache and cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text(encoding="utf-8"))
            if cached.get("format") == _WW_CACHE_FORMAT:
                result = cached
        except (OSError, ValueError):
            pass  # a torn cache is recomputed
    if not files:
        result["note"] = "no checkpoints saved"
        return result
    todo = [s for s in files if str(s) not in result["checkpoints"]]
    if not todo:
        return result
    trap_steps = trap_checkpoints(list(files))
    with _quiet_weightwatcher():  # it prints about CUDA and its SVD back end on import
        ww = require("weightwatcher", "the WeightWatcher alarms")
    result["version"] = getattr(ww, "__version__", "unknown")
    done = result["checkpoints"]
    start = time.perf_counter()
    for step in todo:
        traps_so_far = [done[str(s)]["traps"] for s in trap_steps if str(s) in done and s < step]
        rang = stop_traps_at_alarm and _traps_rang(traps_so_far)
        done[str(step)] = _analyze_checkpoint(ww, files[step], randomize=step in trap_steps and not rang)
        result["seconds"] = float(result.get("seconds", 0.0)) + (time.perf_counter() - start)
        start = time.perf_counter()
        if cache:
            write_json(cache_path, result, indent=1)
    return result


def trap_checkpoints(steps: Sequence[int]) -> list[int]:
    """The checkpoints whose correlation traps are counted: at most :data:`WW_TRAP_CHECKPOINTS`, evenly
    spaced in step order, the first (the reference) and the last included.

    Example:
        >>> trap_checkpoints([0, 100, 200, 300, 400, 500, 600, 700, 800, 900]), trap_checkpoints([0, 50])
        ([0, 300, 600, 900], [0, 50])
    """
    ordered = sorted(int(s) for s in steps)
    if len(ordered) <= WW_TRAP_CHECKPOINTS:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, WW_TRAP_CHECKPOINTS).round().astype(int)
    return [ordered[i] for i in sorted(set(picks.tolist()))]


def _traps_rang(traps: list[int | None]) -> bool:
    values = [math.nan if t is None else float(t) for t in traps]
    return bool(values) and ww_traps_alarm(np.arange(len(values)), values) is not None


def _analyze_checkpoint(ww: Any, path: Path, *, randomize: bool) -> dict[str, Any]:
    import torch
    from torch import nn

    state = _load_state(path)
    layers = nn.ModuleList()
    names = []
    for name, tensor in state.items():
        if tensor.dim() == 2 and min(tensor.shape) >= 2 and tensor.is_floating_point():
            linear = nn.Linear(tensor.shape[1], tensor.shape[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(tensor.float())
            layers.append(linear)
            names.append(name)
    if not names:
        return {"alpha_mean": None, "alphas": {}, "traps": None}
    with _quiet_weightwatcher(), _one_blas_thread(), _fixed_numpy_seed(0):
        details = ww.WeightWatcher(model=nn.Sequential(*layers)).analyze(randomize=randomize)
    alphas: dict[str, float] = {}
    traps = 0
    for row in details.to_dict("records"):
        key = str(row.get("name"))  # the child's name in the Sequential: its index in ``names``
        name = names[int(key)] if key.isdigit() and int(key) < len(names) else key
        alpha = _nan(row.get("alpha"))
        if math.isfinite(alpha) and alpha > 0:
            alphas[name] = alpha
        if randomize:
            count = _nan(row.get("num_traps"))
            traps += int(count) if math.isfinite(count) and count > 0 else 0
    return {
        "alpha_mean": float(np.mean(list(alphas.values()))) if alphas else None,
        "alphas": alphas,
        "traps": traps if randomize else None,
    }


def _load_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _quiet_weightwatcher():
    """WeightWatcher prints to stdout, logs at INFO and raises pandas deprecation warnings: keep them out."""
    logger = logging.getLogger("weightwatcher")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except (
        ImportError
    ):  # pragma: no cover - threadpoolctl comes with scikit-learn, a weightwatcher dependency
        yield
        return
    with threadpool_limits(limits=1):
        yield


@contextlib.contextmanager
def _fixed_numpy_seed(seed: int):
    """WeightWatcher shuffles with NumPy's global generator; fix it for reproducible traps, then restore it."""
    state = np.random.get_state()  # noqa: NPY002 - the package draws from the global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


@dataclass(frozen=True)
class OrderCheck:
    """Eq 86 on one run: the step of each spectral event the data allows, and whether it precedes grok.

    Events: ``g23_decline`` (:func:`spectral_g23_alarm`), ``k_star_to_1`` (:func:`spectral_k1_alarm`),
    ``wq_ratio_rise`` (Table 6's W_Q σ1/σ2 of layer 0: smoothed over 3 evaluations, ≥ 1.25 × its running
    minimum for 2 evaluations), ``gap_opening`` (the monitor's first gap-opening event after a gap
    collapse: Remark 10.8's delayed opening).
    """

    grok_step: int | None
    steps: Mapping[str, int | None] = field(default_factory=dict)

    def precedes(self, event: str) -> bool | None:
        """Whether ``event`` came strictly before grokking (None when either is missing)."""
        step = self.steps.get(event)
        if step is None or self.grok_step is None:
            return None
        return step < self.grok_step

    @property
    def eq86_order(self) -> bool | None:
        """g23↓ before σ1/σ2↑ (k* → 1) before grok, as eq 86 orders them (None when an event is missing)."""
        g23, k1 = self.steps.get("g23_decline"), self.steps.get("k_star_to_1")
        if g23 is None or k1 is None or self.grok_step is None:
            return None
        return g23 <= k1 < self.grok_step


#: W_Q σ1/σ2 rise used by the order check: smoothed ratio ≥ this multiple of its running minimum.
WQ_RISE = 1.25
ORDER_EVENTS = ("g23_decline", "k_star_to_1", "wq_ratio_rise", "gap_opening")


def order_check(
    series: RunSeries, grok_step: int | None, alarms: Mapping[str, Alarm] | None = None
) -> OrderCheck:
    """The eq-86 temporal order on one run (see :class:`OrderCheck`).

    Example:
        >>> steps = np.arange(100)
        >>> s = RunSeries(record_steps=steps, g23=np.where(steps < 40, 1.0, 0.1), k_star=np.where(steps < 70, 2, 1),
        ...               ratio12=np.where(steps < 70, 1.5, 5.0), eval_steps={}, evals={})
        >>> check = order_check(s, grok_step=95)
        >>> check.steps["g23_decline"], check.steps["k_star_to_1"], check.eq86_order
        (59, 88, True)
    """
    alarms = alarms if alarms is not None else evaluate_alarms(series)
    steps: dict[str, int | None] = {
        "g23_decline": alarms["spectral_g23"].step,
        "k_star_to_1": alarms["spectral_k1"].step,
    }
    wq = series.eval("wq0_ratio")
    if wq is not None:
        smooth = trailing_median(wq[1], EVAL_SMOOTHING)
        with np.errstate(invalid="ignore"):
            steps["wq_ratio_rise"] = first_persistent(
                wq[0], smooth >= WQ_RISE * _running_min(smooth), EVAL_PERSISTENCE
            )
    else:
        steps["wq_ratio_rise"] = None
    opening = None
    collapsed = False
    for event in series.events:
        if event.get("kind") == "gap_collapse":
            collapsed = True
        elif event.get("kind") == "gap_opening" and collapsed:
            opening = int(event["step"])
            break
    steps["gap_opening"] = opening
    return OrderCheck(grok_step=grok_step, steps=steps)


__all__ = [
    "ALARMS",
    "ALARM_LABELS",
    "ORDER_EVENTS",
    "WW_CACHE",
    "Alarm",
    "OrderCheck",
    "RunSeries",
    "checkpoint_files",
    "evaluate_alarms",
    "trap_checkpoints",
    "first_persistent",
    "load_series",
    "loss_gap_alarm",
    "memorised_alarm",
    "order_check",
    "score",
    "spectral_g23_alarm",
    "spectral_k1_alarm",
    "trailing_median",
    "weight_norm_alarm",
    "weightwatcher_available",
    "weightwatcher_series",
    "ww_alpha_alarm",
    "ww_traps_alarm",
]
