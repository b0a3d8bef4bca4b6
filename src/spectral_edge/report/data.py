"""One or several runs loaded once into plain arrays, for the HTML report and the static figures alike.

A report reads each run store once (:func:`load_run`) and plots from :class:`RunData`, a frozen bundle of
NumPy arrays that knows nothing of plotting libraries. Long runs are thinned for plotting by the rule of
:func:`thin_indices`; every quantity that summarises a run (record count, final values, events, the
smoothed η𝒜 that the regime detector reads) is taken from all records before thinning.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectral_edge.spectrum.stability import AdiabaticRegimes
from spectral_edge.store import DB_NAME, RunStore
from spectral_edge.tracking.events import EventThresholds, trailing_median
from spectral_edge.tracking.record import SpectralEvent

__all__ = [
    "DEFAULT_MAX_POINTS",
    "RunData",
    "load_run",
    "load_runs",
    "run_data_from_arrays",
    "thin_indices",
    "trailing_median",
]

#: Records plotted per run before thinning starts (see :func:`thin_indices`). 4000 keeps the demo's
#: 3,500-step runs whole and a report of 10^5-record runs at about 1 MB of data per run.
DEFAULT_MAX_POINTS = 4000

_REGIME_MESSAGE = re.compile(r"regime (\w+) → (\w+)")


@dataclass(frozen=True)
class RunData:
    """What a report shows of one run: the plotted (possibly thinned) records as arrays, and the rest whole.

    Arrays indexed by record have length n = ``len(steps)``, the number of *plotted* records; ``n_records``
    is the number of records in the store. W is the widest window among the records.

    Attributes:
        name: label of the run in legends and tables (its directory name).
        path: the run directory.
        config: the run's stored configuration (``{"monitor": ..., "user": ...}`` for a monitored run).
        meta: format, creation time and library versions, as stored.
        n_records: records in the store.
        stride: plotted records are every ``stride``-th record (1: all), plus the kept ones of
            :func:`thin_indices`.
        steps: (n,) optimizer step of each plotted record.
        sigma: (n, W) singular values σ_j of the window, NaN where a record's window is shorter.
        gap_ratio: (n,) R = σ_k*/σ_k*+1; +inf at a rank edge.
        k_star: (n,) gap position k* (1-based).
        alpha: (n, W) stability coefficients α_j.
        eta_adiabatic: (n,) the value the regime classifier compares with its cut-offs: η𝒜 when the
            regimes' ``scale`` is "lr", 𝒜 itself when it is "none"; ``None`` when the run has no 𝒜
            (no learning rate was given to the monitor).
        eta_adiabatic_median: (n,) the trailing median of that value over the last ``regime_smoothing``
            records that have one, computed on all records (the event detector's smoothed η𝒜);
            ``None`` with ``eta_adiabatic``.
        lr: (n,) learning rate η of each record, or ``None`` when the run has none.
        regimes: the run's regime cut-offs (from its config; the defaults when it has none).
        regime_smoothing: records in the median the regime events read.
        event_thresholds: the run's event thresholds (gap opening/collapse ratios), for reference lines.
        groups: group name -> ((n,) k*, (n,) R) of the group's own Gram.
        metrics: name -> (n,) training metrics passed to ``step()``/``log_metrics()``.
        evals: name -> ((m,) steps, (m,) values) as logged with ``log_eval``.
        events: every event of the run, in order.
        last: the last record's scalars (``step``, ``k_star``, ``gap_ratio``, ``regime``, ``lr``, ...),
            its ``metrics`` and ``groups``; ``{}`` without records.
    """

    name: str
    path: Path
    config: Mapping[str, Any]
    meta: Mapping[str, Any]
    n_records: int
    stride: int
    steps: np.ndarray
    sigma: np.ndarray
    gap_ratio: np.ndarray
    k_star: np.ndarray
    alpha: np.ndarray
    eta_adiabatic: np.ndarray | None
    eta_adiabatic_median: np.ndarray | None
    lr: np.ndarray | None
    regimes: AdiabaticRegimes
    regime_smoothing: int
    event_thresholds: EventThresholds
    groups: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    metrics: Mapping[str, np.ndarray] = field(default_factory=dict)
    evals: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    events: Sequence[SpectralEvent] = ()
    last: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_records(self) -> bool:
        """Whether the run wrote any record (a run may hold only evaluations or only its config)."""
        return self.n_records > 0

    @property
    def window(self) -> int:
        """W: the monitor's window from the config, else the widest record (0 without either)."""
        w = self.monitor_config.get("window")
        return int(w) if isinstance(w, int) else int(self.sigma.shape[1])

    @property
    def n_params(self) -> int | None:
        """P, the number of monitored scalars, when the config holds it."""
        p = self.monitor_config.get("n_params")
        return int(p) if isinstance(p, int) else None

    @property
    def monitor_config(self) -> Mapping[str, Any]:
        """The monitor's settings as the run store saved them (empty for a store written without one)."""
        monitor = self.config.get("monitor")
        return monitor if isinstance(monitor, Mapping) else {}

    def regime_spans(self) -> list[tuple[int, int, str]]:
        """(first step, last step, regime) stretches as the regime events report them.

        The detector learns its first regime silently, so the stretch before the first regime change
        takes the regime that event names as the one left. Empty without regime events.
        """
        changes = []
        for event in self.events:
            if event.kind != "regime_change":
                continue
            match = _REGIME_MESSAGE.search(event.message)
            if match:
                changes.append((int(event.step), match[1], match[2]))
        if not changes or not self.has_records:
            return []
        start, end = self.first_step, int(self.last.get("step", self.steps[-1]))
        spans = []
        current, since = changes[0][1], start
        for step, _before, after in changes:
            spans.append((since, step, current))
            current, since = after, step
        spans.append((since, max(end, since), current))
        return [s for s in spans if s[2] in ("plateau", "transition", "forgetting")]

    @property
    def first_step(self) -> int:
        """The first record's step (the plotted records always include the first); 0 without records."""
        return int(self.steps[0]) if len(self.steps) else 0


def thin_indices(steps: np.ndarray, max_points: int, keep_steps: Sequence[int] = ()) -> np.ndarray:
    """Which records to plot: all of them up to ``max_points``, else every k-th plus the ones that matter.

    The rule: with n records and n > ``max_points``, keep every k-th record counting from the first,
    k = ⌈n / max_points⌉, plus the last record, plus, for each step in ``keep_steps`` (the events'
    steps), the first record at or after that step and the record just before it, so every event's jump
    is drawn where it happened. At most ``max_points + 2·len(keep_steps) + 1`` records.

    Args:
        steps: (n,) the records' steps, in store order.
        max_points: records to keep without thinning; ≥ 2.
        keep_steps: steps whose records must be kept.

    Returns:
        Sorted int64 indices into ``steps``.

    Example:
        >>> thin_indices(np.arange(100, 110), 4, keep_steps=[105]).tolist()
        [0, 3, 4, 5, 6, 9]
    """
    if not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 2:
        raise ValueError(f"max_points must be an int >= 2, got {max_points!r}")
    steps = np.asarray(steps)
    n = len(steps)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    stride = math.ceil(n / max_points)
    keep = np.zeros(n, dtype=bool)
    keep[::stride] = True
    keep[-1] = True
    for step in keep_steps:
        at = np.flatnonzero(steps >= step)
        if len(at):
            keep[at[0]] = True
            keep[max(at[0] - 1, 0)] = True
    return np.flatnonzero(keep).astype(np.int64)


def run_data_from_arrays(
    name: str,
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    *,
    config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    events: Sequence[SpectralEvent] = (),
    evals: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    last: Mapping[str, Any] | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> RunData:
    """Build :class:`RunData` from columns shaped as :meth:`RunStore.record_arrays` returns them.

    Args:
        name: the run's label.
        path: the run directory.
        arrays: ``step``, ``singular_values`` (n, W), ``gap_ratio``, ``k_star``, ``alpha`` (n, W),
            optionally ``adiabatic``, ``lr``, ``group.<name>.k_star``/``.gap_ratio``, ``metric.<name>``.
        config: as :meth:`RunStore.config` returns it.
        meta: as :meth:`RunStore.meta` returns it.
        events: as :meth:`RunStore.events` returns them.
        evals: as :meth:`RunStore.evals` returns them.
        last: the last record as :meth:`RunStore.last_record` returns it (default: built from the arrays).
        max_points: records plotted before thinning (:func:`thin_indices`).
    """
    config = dict(config or {})
    given = config.get("monitor")
    monitor: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    regimes = _regimes_of(monitor)
    thresholds = _thresholds_of(monitor)
    steps_all = np.asarray(arrays.get("step", np.zeros(0)), dtype=np.int64)
    n = len(steps_all)
    keep = thin_indices(steps_all, max_points, [e.step for e in events])
    stride = 1 if n <= max_points else math.ceil(n / max_points)

    def column(key: str, width: int | None = None) -> np.ndarray:
        if key in arrays:
            return np.asarray(arrays[key], dtype=np.float64)[keep]
        return np.full((len(keep), width or 0) if width is not None else len(keep), np.nan)

    sigma = column("singular_values", 0)
    alpha = column("alpha", sigma.shape[1])
    adiabatic_all = np.asarray(arrays.get("adiabatic", np.full(n, np.nan)), dtype=np.float64)
    lr_all = np.asarray(arrays.get("lr", np.full(n, np.nan)), dtype=np.float64)
    eta = eta_median = lr = None
    if n and np.any(~np.isnan(adiabatic_all)):
        if regimes.scale == "lr":
            eta_all = adiabatic_all * np.where(np.isnan(lr_all), 1.0, lr_all)
        else:
            eta_all = adiabatic_all
        eta = eta_all[keep]
        eta_median = trailing_median(eta_all, thresholds.regime_smoothing)[keep]
    if n and np.any(~np.isnan(lr_all)):
        lr = lr_all[keep]

    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    metrics: dict[str, np.ndarray] = {}
    for key in arrays:
        if key.startswith("group.") and key.endswith(".k_star"):
            group = key[len("group.") : -len(".k_star")]
            groups[group] = (column(key), column(f"group.{group}.gap_ratio"))
        elif key.startswith("metric."):
            metrics[key[len("metric.") :]] = column(key)

    if last is None:
        last = {}
        if n:
            flat = {k: _scalar(v[-1]) for k, v in arrays.items() if np.ndim(v) == 1}
            last = {k: v for k, v in flat.items() if "." not in k}
            last["metrics"] = {k[len("metric.") :]: v for k, v in flat.items() if k.startswith("metric.")}
    return RunData(
        name=name,
        path=Path(path),
        config=config,
        meta=dict(meta or {}),
        n_records=n,
        stride=stride,
        steps=steps_all[keep],
        sigma=sigma,
        gap_ratio=column("gap_ratio"),
        k_star=column("k_star"),
        alpha=alpha,
        eta_adiabatic=eta,
        eta_adiabatic_median=eta_median,
        lr=lr,
        regimes=regimes,
        regime_smoothing=thresholds.regime_smoothing,
        event_thresholds=thresholds,
        groups=groups,
        metrics=metrics,
        evals=dict(evals or {}),
        events=tuple(events),
        last=dict(last),
    )


def load_run(
    path: str | os.PathLike[str], *, name: str | None = None, max_points: int = DEFAULT_MAX_POINTS
) -> RunData:
    """Read one run store (read-only) into :class:`RunData`.

    Args:
        path: the run directory or its ``run.db``.
        name: label in legends and tables; default the run directory's name.
        max_points: records plotted before thinning (:func:`thin_indices`).

    Raises:
        RunStoreError: the run is missing, half-written or not a spectral-edge run.
    """
    with RunStore(path, mode="r") as store:
        run_dir = store.path.parent if store.path.name == DB_NAME else store.path
        arrays = store.record_arrays()
        data = run_data_from_arrays(
            name or run_dir.name,
            run_dir,
            arrays,
            config=store.config(),
            meta=store.meta(),
            events=store.events(),
            evals=store.evals(),
            last=store.last_record() or {},
            max_points=max_points,
        )
    return data


def load_runs(
    paths: Sequence[str | os.PathLike[str]], *, max_points: int = DEFAULT_MAX_POINTS
) -> list[RunData]:
    """Read several runs; each is named by its directory, with parent folders added until names differ.

    Raises:
        ValueError: ``paths`` is empty.
        RunStoreError: a run is missing, half-written or not a spectral-edge run.
    """
    if not paths:
        raise ValueError("no runs given: pass at least one run directory")
    dirs = [_run_dir(p) for p in paths]
    names = _unique_names(dirs)
    return [load_run(p, name=n, max_points=max_points) for p, n in zip(paths, names, strict=True)]


def _run_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path).absolute()
    return p.parent if p.name == DB_NAME or (p.suffix == ".db" and not p.is_dir()) else p


def _unique_names(dirs: Sequence[Path]) -> list[str]:
    """Directory names, lengthened with parent folders where two different runs would share a name."""
    depth = [1] * len(dirs)
    while True:
        names = ["/".join(d.parts[-k:]) for d, k in zip(dirs, depth, strict=True)]
        clash = False
        for i, name in enumerate(names):
            others = {dirs[j] for j, n in enumerate(names) if n == name and dirs[j] != dirs[i]}
            if others and depth[i] < len(dirs[i].parts):
                depth[i] += 1
                clash = True
        if not clash:
            break
    seen: dict[str, int] = {}
    out = []
    for name in names:  # the same run given twice: number the copies
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _regimes_of(monitor: Mapping[str, Any]) -> AdiabaticRegimes:
    saved = monitor.get("regimes")
    if isinstance(saved, Mapping):
        try:
            return AdiabaticRegimes(**{k: saved[k] for k in ("low", "high", "scale") if k in saved})
        except (TypeError, ValueError):
            pass  # a config from another version: the defaults still give a readable plot
    return AdiabaticRegimes()


def _thresholds_of(monitor: Mapping[str, Any]) -> EventThresholds:
    saved = monitor.get("events")
    if isinstance(saved, Mapping):
        names = set(EventThresholds.__dataclass_fields__)
        try:
            return EventThresholds(**{k: v for k, v in saved.items() if k in names})
        except (TypeError, ValueError):
            pass
    return EventThresholds()


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
