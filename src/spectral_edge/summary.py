"""What a run came to, computed from its run store: the numbers ``spectral-edge summary``/``compare`` print.

:func:`summarize_run` reads a run store (read-only, so it works while training still writes) and returns a
:class:`RunSummary`: the config, how many records and over which steps, the distribution of k*, R's mean,
median and peak, the events, each evaluation metric's final and best value, and the grokking step when the
evaluations hold a test accuracy (thesis §27: the first evaluation with test accuracy ≥ 0.95).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spectral_edge.errors import RunStoreError
from spectral_edge.store import DB_NAME, RunStore

__all__ = [
    "GROK_METRICS",
    "GROK_THRESHOLD",
    "EvalSummary",
    "RunSummary",
    "metric_direction",
    "open_run",
    "summarize_run",
]

#: Test accuracy at which a run counts as grokked (thesis §27; the demo's ``GROK_ACC``).
GROK_THRESHOLD = 0.95
#: Evaluation names read as a held-out accuracy, in order of preference (the demo logs ``test_acc``;
#: HF Trainer logs ``eval_accuracy``).
GROK_METRICS = (
    "test_acc",
    "test_accuracy",
    "val_acc",
    "val_accuracy",
    "valid_acc",
    "validation_accuracy",
    "eval_acc",
    "eval_accuracy",
)

# Name tokens that say which way a metric improves; a metric matching neither has no "best" value.
_LOWER_IS_BETTER = frozenset(
    {"loss", "error", "err", "perplexity", "ppl", "mse", "mae", "rmse", "nll", "wer", "cer"}
)
_HIGHER_IS_BETTER = frozenset(
    {"acc", "accuracy", "f1", "auc", "precision", "recall", "score", "bleu", "rouge"}
)


@dataclass(frozen=True)
class EvalSummary:
    """One evaluation metric over a run; ``best`` is ``None`` when the name does not say which way is better."""

    name: str
    n: int  # evaluations logged
    final: float  # value at the last evaluation (highest step)
    final_step: int
    best: float | None  # min or max over the finite values, following ``direction``
    best_step: int | None
    direction: Literal["min", "max"] | None  # see :func:`metric_direction`


@dataclass(frozen=True)
class RunSummary:
    """A run store reduced to the numbers a person compares runs by.

    R statistics are over the records with a finite R; a record at a rank edge has R = inf (docs/concepts.md,
    "rank-deficient windows") and is counted in ``n_infinite_gap_ratio`` instead, while ``gap_ratio_peak``
    may be inf.
    """

    path: str  # the run directory
    config: Mapping[str, Any]  # as stored (the monitor's settings under "monitor", the user's under "user")
    meta: Mapping[str, Any]  # format, schema version, creation time, library versions
    n_records: int
    first_step: int
    last_step: int
    duration_s: float  # wall time between the first and the last record
    window: int | None  # W (from the config, else the records)
    n_params: int | None  # P, the number of monitored scalars
    k_star_counts: Mapping[int, int]  # k* -> records, ascending k*
    k_star_mode: int
    k_star_mode_share: float  # share of records at the mode, in [0, 1]
    gap_ratio_mean: float  # over finite R; nan if none is finite
    gap_ratio_median: float
    gap_ratio_peak: float
    gap_ratio_peak_step: int
    n_infinite_gap_ratio: int
    regime_counts: Mapping[str, int]  # regime -> records (empty without a learning rate)
    last: Mapping[str, Any]  # the latest record's step, k_star, gap_ratio, regime
    events: tuple[Mapping[str, Any], ...]  # each event's step, kind, message, ...
    evals: Mapping[str, EvalSummary] = field(default_factory=dict)
    grok_metric: str | None = None  # the eval read as test accuracy, None if there is none
    grok_threshold: float = GROK_THRESHOLD
    grok_step: int | None = None  # first eval step with grok_metric ≥ grok_threshold

    @property
    def name(self) -> str:
        """The run directory's name."""
        return Path(self.path).name

    @property
    def event_counts(self) -> dict[str, int]:
        """Each event kind -> its number of events, in order of first occurrence."""
        return dict(Counter(e["kind"] for e in self.events))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for ``json.dumps(..., allow_nan=False)``: non-finite floats become strings."""
        return _json_ready(
            {
                "path": self.path,
                "config": self.config,
                "meta": self.meta,
                "n_records": self.n_records,
                "first_step": self.first_step,
                "last_step": self.last_step,
                "duration_s": self.duration_s,
                "window": self.window,
                "n_params": self.n_params,
                "k_star": {
                    "mode": self.k_star_mode,
                    "mode_share": self.k_star_mode_share,
                    "counts": {str(k): v for k, v in self.k_star_counts.items()},
                },
                "gap_ratio": {
                    "mean": self.gap_ratio_mean,
                    "median": self.gap_ratio_median,
                    "peak": self.gap_ratio_peak,
                    "peak_step": self.gap_ratio_peak_step,
                    "n_infinite": self.n_infinite_gap_ratio,
                },
                "regime_counts": dict(self.regime_counts),
                "last": dict(self.last),
                "events": [dict(e) for e in self.events],
                "event_counts": self.event_counts,
                "evals": {
                    name: {
                        "n": e.n,
                        "final": e.final,
                        "final_step": e.final_step,
                        "best": e.best,
                        "best_step": e.best_step,
                        "direction": e.direction,
                    }
                    for name, e in self.evals.items()
                },
                "grok": {
                    "metric": self.grok_metric,
                    "threshold": self.grok_threshold,
                    "step": self.grok_step,
                },
            }
        )


def open_run(path: str | os.PathLike[str]) -> RunStore:
    """Open a run read-only, with an error that says what to point at when ``path`` is not a run.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunStoreError: ``path`` exists but is not a run (the message lists runs inside it, if any), or the
            run is half-written or from a newer schema (see :class:`~spectral_edge.store.RunStore`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no run at {path}: the path does not exist (expected a run directory holding {DB_NAME})"
        )
    if path.is_dir() and not (path / DB_NAME).exists():
        inside = sorted(p.name for p in path.iterdir() if (p / DB_NAME).is_file())
        hint = (
            f"it holds the runs {', '.join(inside[:8])}{' …' if len(inside) > 8 else ''}: pass one of them"
            if inside
            else "point at a directory written by SpectralMonitor(store=...) or RunStore(path, mode='w')"
        )
        raise RunStoreError(f"{path} is not a spectral-edge run (no {DB_NAME} in it); {hint}")
    return RunStore(path, mode="r")


def summarize_run(
    run: str | os.PathLike[str] | RunStore,
    *,
    grok_metric: str | None = None,
    grok_threshold: float = GROK_THRESHOLD,
) -> RunSummary:
    """Summarise a run store (a run directory, its ``run.db``, or an open :class:`RunStore`).

    Args:
        run: the run; a path is opened read-only and closed again.
        grok_metric: the evaluation to read as test accuracy; default the first of :data:`GROK_METRICS`
            the run logged.
        grok_threshold: accuracy at which the run counts as grokked.

    Raises:
        RunStoreError: the run holds no records yet (the monitor writes its config first and a record once
            W updates are in), or is not a run (see :func:`open_run`).
        ValueError: ``grok_metric`` names an evaluation the run did not log.

    Example:
        >>> import tempfile, torch
        >>> from spectral_edge import SpectralMonitor
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = torch.nn.Linear(3, 1)
        >>> with SpectralMonitor(model, window=2, store=f"{tmp.name}/run") as mon:
        ...     for step in range(1, 6):
        ...         with torch.no_grad():
        ...             model.weight += 0.1 * step * torch.randn(1, 3)
        ...         _ = mon.step()
        ...     mon.log_eval(5, test_acc=0.97)
        >>> s = summarize_run(f"{tmp.name}/run")
        >>> s.n_records, (s.first_step, s.last_step), s.window, s.grok_step
        (4, (2, 5), 2, 5)
        >>> tmp.cleanup()
    """
    if isinstance(run, RunStore):
        return _summarize(run, grok_metric, grok_threshold)
    with open_run(run) as store:
        return _summarize(store, grok_metric, grok_threshold)


def metric_direction(name: str) -> Literal["min", "max"] | None:
    """``"min"`` for losses and errors, ``"max"`` for accuracies and scores, ``None`` for other names.

    Example:
        >>> metric_direction("val_loss"), metric_direction("test_acc"), metric_direction("wq_sigma1")
        ('min', 'max', None)
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if any(t in _LOWER_IS_BETTER or t.startswith(("loss", "error")) for t in tokens):
        return "min"
    if any(t in _HIGHER_IS_BETTER or t.startswith("acc") for t in tokens):
        return "max"
    return None


# -- computation --------------------------------------------------------------------------------------


def _summarize(store: RunStore, grok_metric: str | None, grok_threshold: float) -> RunSummary:
    run_dir = store.path.parent if store.path.name == DB_NAME else store.path
    config = store.config()
    rows = store.records()
    if not rows:
        state = "its config is written" if config else "not even its config is written yet"
        raise RunStoreError(
            f"the run {run_dir} has no records yet ({state}): the monitor writes a record once its first "
            "window of W updates is full. Wait for training to get further, or follow it with "
            f"`spectral-edge watch {run_dir}`"
        )
    steps = np.asarray([r["step"] for r in rows], dtype=np.int64)
    k_stars = [int(r["k_star"]) for r in rows]
    ratios = np.asarray([_float(r.get("gap_ratio")) for r in rows], dtype=np.float64)
    finite = np.isfinite(ratios)
    counts = Counter(k_stars)
    mode, mode_n = max(sorted(counts.items()), key=lambda kv: kv[1])  # ties: the smaller k*
    peak_index = int(np.nanargmax(ratios)) if not np.all(np.isnan(ratios)) else 0
    wall = [r["wall_time"] for r in rows if r.get("wall_time") is not None]
    given = config.get("monitor")
    monitor: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    window = monitor.get("window", rows[-1].get("window"))
    last = rows[-1]
    evals = store.evals()
    return RunSummary(
        path=str(run_dir),
        config=config,
        meta=store.meta(),
        n_records=len(rows),
        first_step=int(steps.min()),
        last_step=int(steps.max()),
        duration_s=float(max(wall) - min(wall)) if wall else 0.0,
        window=None if window is None else int(window),
        n_params=None if monitor.get("n_params") is None else int(monitor["n_params"]),
        k_star_counts=dict(sorted(counts.items())),
        k_star_mode=mode,
        k_star_mode_share=mode_n / len(rows),
        gap_ratio_mean=float(np.mean(ratios[finite])) if finite.any() else math.nan,
        gap_ratio_median=float(np.median(ratios[finite])) if finite.any() else math.nan,
        gap_ratio_peak=float(ratios[peak_index]),
        gap_ratio_peak_step=int(steps[peak_index]),
        n_infinite_gap_ratio=int(np.isinf(ratios).sum()),
        regime_counts=dict(Counter(r["regime"] for r in rows if r.get("regime"))),
        last={
            "step": int(last["step"]),
            "k_star": int(last["k_star"]),
            "gap_ratio": _float(last.get("gap_ratio")),
            "regime": last.get("regime"),
        },
        events=tuple(
            {k: v for k, v in e.to_dict().items() if v is not None and v != ""} for e in store.events()
        ),
        evals={name: _eval_summary(name, s, v) for name, (s, v) in evals.items()},
        grok_metric=(metric := _grok_metric(evals, grok_metric)),
        grok_threshold=grok_threshold,
        grok_step=None if metric is None else _first_at_least(*evals[metric], grok_threshold),
    )


def _eval_summary(name: str, steps: np.ndarray, values: np.ndarray) -> EvalSummary:
    direction = metric_direction(name)
    best = best_step = None
    finite = np.isfinite(values)
    if direction is not None and finite.any():
        candidates = np.where(finite, values, np.inf if direction == "min" else -np.inf)
        i = int(np.argmin(candidates) if direction == "min" else np.argmax(candidates))  # first on ties
        best, best_step = float(values[i]), int(steps[i])
    return EvalSummary(
        name=name,
        n=len(values),
        final=float(values[-1]),
        final_step=int(steps[-1]),
        best=best,
        best_step=best_step,
        direction=direction,
    )


def _grok_metric(evals: Mapping[str, Any], wanted: str | None) -> str | None:
    if wanted is not None:
        if wanted not in evals:
            raise ValueError(
                f"the run logged no evaluation named {wanted!r}; it logged {sorted(evals) or 'none'}"
            )
        return wanted
    return next((name for name in GROK_METRICS if name in evals), None)


def _first_at_least(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    hits = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= threshold)
    return int(steps[hits[0]]) if hits.size else None


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.floating, np.integer)):
        return _json_ready(value.item())
    if isinstance(value, np.ndarray):
        return [_json_ready(x) for x in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(x) for x in value]
    return value
