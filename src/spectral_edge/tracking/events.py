"""Spectral events read from a stream of records: gap opening and collapse, k* shifts, 𝒜 regime changes.

Noise must not spam: each detector has hysteresis (two thresholds for the gap) and persistence (a new state
must hold for several consecutive records before it is reported). The state the stream starts in is
learned silently from its first records; only changes are events.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectral_edge.spectrum.stability import AdiabaticRegimes
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord


@dataclass(frozen=True)
class EventThresholds:
    """When the detectors fire. Defaults are documented in docs/concepts.md's event table.

    The paper defines gap opening and collapse (Defs 10.4, 10.6) without numbers. The defaults were chosen
    by looking at the demo's grokking run (W = 10, AdamW): a noisy Adam trajectory keeps R between about
    1.5 and 2.8 for thousands of steps, so "open" means a gap well above that band (σ_k* ≥ 3 σ_k*+1, nine
    times the variance) and "collapsed" a ratio that no longer separates the directions. Set them for
    your setting; the author's SED code uses a collapse threshold τ = 1.20 for σ2/σ3 on TinyStories.

    Attributes:
        open_ratio: the gap counts as open when R ≥ open_ratio (Def 10.6, gap opening).
        collapse_ratio: the gap counts as collapsed when R < collapse_ratio (Def 10.4). Between the two
            the state is kept (hysteresis).
        persistence: consecutive records a new gap state or regime must hold before it is reported.
        k_star_persistence: consecutive records a new k* must hold before a k* shift is reported.
        k_star_margin: hysteresis of the argmax: a record counts for a new position k only if its ratio
            σ_k/σ_{k+1} beats the ratio at the current k* by this relative margin, so two nearly equal
            ratios trading places do not flicker.
        regime_margin: hysteresis of the adiabatic regimes, a factor in η𝒜: leaving a regime needs the
            value to cross the cut-off by this factor (e.g. plateau → transition above low·m, back below
            low/m).
        regime_smoothing: the regime is read from the median of 𝒜 over this many latest records (five
            windows at W = 10): 𝒜 of one step is heavy-tailed, shooting up whenever the gap g touches 0,
            while a regime is a property of a stretch of training.
    """

    open_ratio: float = 3.0
    collapse_ratio: float = 1.5
    persistence: int = 5
    k_star_persistence: int = 10
    k_star_margin: float = 0.02
    regime_margin: float = 2.0
    regime_smoothing: int = 50

    def __post_init__(self) -> None:
        if not 1.0 <= self.collapse_ratio < self.open_ratio:
            raise ValueError(
                f"need 1 <= collapse_ratio < open_ratio, got collapse_ratio={self.collapse_ratio}, "
                f"open_ratio={self.open_ratio}"
            )
        if self.persistence < 1 or self.k_star_persistence < 1:
            raise ValueError(
                f"persistence values must be >= 1, got {self.persistence} and {self.k_star_persistence}"
            )
        if self.regime_smoothing < 1:
            raise ValueError(f"regime_smoothing must be >= 1, got {self.regime_smoothing}")
        if self.k_star_margin < 0 or self.regime_margin < 1:
            raise ValueError(
                f"need k_star_margin >= 0 and regime_margin >= 1, got {self.k_star_margin} and {self.regime_margin}"
            )


class TrailingMedian:
    """The median of the last ``window`` values pushed, skipping missing ones (None, NaN).

    The regime detector reads η𝒜 through it (𝒜 of one step is heavy-tailed: it shoots up whenever the
    gap g of Def 8.1 touches 0, while a regime of Prop 34.3 is a property of a stretch of training), and
    :func:`trailing_median` runs it over a whole column, so the report's smoothed curve is the detector's.
    A sorted copy of the window makes each push O(window) and the median O(1).

    Example:
        >>> m = TrailingMedian(3)
        >>> [m.push(v) for v in (1.0, 3.0, None, 2.0, 10.0)]
        [1.0, 2.0, 2.0, 2.0, 3.0]
    """

    def __init__(self, window: int) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"a median window must be an int >= 1, got {window!r}")
        self.window = window
        self._recent: deque[float] = deque()  # oldest first
        self._sorted: list[float] = []

    @property
    def value(self) -> float | None:
        """The median of the values held (the mean of the two middle ones for an even count); None if none."""
        s, n = self._sorted, len(self._sorted)
        if not n:
            return None
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2

    def push(self, value: float | None) -> float | None:
        """Add ``value`` (None and NaN are skipped, not counted) and return the median now."""
        if value is not None and not math.isnan(value):
            value = float(value)
            self._recent.append(value)
            bisect.insort(self._sorted, value)
            if len(self._recent) > self.window:
                del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]
        return self.value

    def values(self) -> list[float]:
        """The values held, oldest first (what :meth:`load` takes back)."""
        return list(self._recent)

    def load(self, values: list[float]) -> None:
        """Replace the values held by ``values`` (oldest first; only the last ``window`` are kept)."""
        self._recent.clear()
        self._sorted.clear()
        for v in values:
            self.push(v)


def trailing_median(values: Any, window: int) -> np.ndarray:
    """Median of the last ``window`` non-NaN values up to each position; NaN where the value is NaN.

    This is the event detector's smoothing of η𝒜 applied to a whole column (records without 𝒜 are
    skipped, not counted): one :class:`TrailingMedian` fed the values in order.

    Example:
        >>> trailing_median(np.array([1.0, 3.0, np.nan, 2.0, 10.0]), 3).tolist()
        [1.0, 2.0, nan, 2.0, 3.0]
    """
    column = np.asarray(values, dtype=np.float64)
    out = np.full(column.shape, np.nan)
    median = TrailingMedian(window)
    for i, v in enumerate(column.tolist()):
        if not math.isnan(v):
            out[i] = median.push(v)
    return out


class _Debounced:
    """A value that changes only after a candidate has been seen ``persistence`` times in a row."""

    def __init__(self, persistence: int) -> None:
        self.persistence = persistence
        self.stable: Any = None
        self.stable_ratio: float | None = None
        self.candidate: Any = None
        self.count = 0

    def update(self, value: Any, ratio: float | None) -> tuple[Any, float | None] | None:
        """Feed one observation; return (previous stable value, its ratio) when the stable value changes."""
        if value is None:
            return None
        if value == self.stable:
            self.candidate, self.count = None, 0
            self.stable_ratio = ratio
            return None
        if value == self.candidate:
            self.count += 1
        else:
            self.candidate, self.count = value, 1
        if self.count < self.persistence:
            return None
        previous = (self.stable, self.stable_ratio)
        self.stable, self.stable_ratio = value, ratio
        self.candidate, self.count = None, 0
        return None if previous[0] is None else previous

    def state_dict(self) -> dict[str, Any]:
        # Settings (persistence) are not state: a resumed detector keeps its own configuration.
        return {k: v for k, v in self.__dict__.items() if k != "persistence"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k != "persistence"})


class EventDetector:
    """Turns a stream of :class:`SpectralRecord` into :class:`SpectralEvent` s.

    Example:
        >>> det = EventDetector(EventThresholds(open_ratio=1.5, collapse_ratio=1.2, persistence=1, k_star_persistence=1))
        >>> class R:  # a stand-in with the three fields the detector reads
        ...     def __init__(self, step, k, r): self.step, self.k_star, self.gap_ratio, self.regime = step, k, r, None
        >>> [e.kind for s, r in enumerate([1.1, 1.1, 2.0, 1.05]) for e in det.update(R(s, 1, r))]
        ['gap_opening', 'gap_collapse']
    """

    def __init__(
        self, thresholds: EventThresholds | None = None, regimes: AdiabaticRegimes | None = None
    ) -> None:
        self.thresholds = thresholds or EventThresholds()
        self.regimes = regimes or AdiabaticRegimes()
        self._gap = _Debounced(self.thresholds.persistence)
        self._k_star = _Debounced(self.thresholds.k_star_persistence)
        self._regime = _Debounced(self.thresholds.persistence)
        self._k_at_gap_change: int | None = None
        self._smoothed = TrailingMedian(self.thresholds.regime_smoothing)  # η𝒜 (or 𝒜) of recent records

    def update(self, record: SpectralRecord) -> list[SpectralEvent]:
        """Feed the next record; return the events it completes (often none)."""
        t = self.thresholds
        r, k = record.gap_ratio, record.k_star
        events: list[SpectralEvent] = []

        def event(kind: str, k_before: int | None, ratio_before: float | None, message: str) -> None:
            events.append(
                SpectralEvent(
                    step=record.step, kind=kind, k_before=k_before, k_after=k,
                    ratio_before=ratio_before, ratio_after=r, message=message,
                )
            )  # fmt: skip

        if r >= t.open_ratio:
            gap_state: str | None = "open"
        elif r < t.collapse_ratio:
            gap_state = "collapsed"
        elif self._gap.stable is None:
            # A run that starts inside the band starts "in between", so that its first clear opening
            # or collapse is reported rather than taken as the starting state.
            gap_state = "in_between"
        else:
            gap_state = None  # inside the hysteresis band: no evidence either way
        if gap_state is not None:
            change = self._gap.update(gap_state, r)
            if change is not None:
                kind = "gap_opening" if gap_state == "open" else "gap_collapse"
                event(
                    kind, self._k_at_gap_change, change[1], f"gap ratio {change[1]:.3g} → {r:.3g} at k* = {k}"
                )
            if self._gap.stable == gap_state:
                self._k_at_gap_change = k

        change = self._k_star.update(self._k_star_candidate(record), r)
        if change is not None:
            event("k_star_shift", change[0], change[1], f"k* moved from {change[0]} to {k}")

        adiabatic, lr = getattr(record, "adiabatic", None), getattr(record, "lr", None)
        if adiabatic is not None:
            self._smoothed.push(adiabatic * lr if self.regimes.scale == "lr" and lr else adiabatic)
        smoothed = self._smoothed.value
        regime = (
            record.regime if adiabatic is None or smoothed is None else self._regime_candidate(smoothed, lr)
        )
        change = self._regime.update(regime, smoothed)
        if change is not None:
            events.append(
                SpectralEvent(
                    step=record.step, kind="regime_change", k_before=None, k_after=k,
                    ratio_before=change[1], ratio_after=smoothed,
                    message=f"adiabatic regime {change[0]} → {self._regime.stable}"
                    + ("" if smoothed is None else f" (median η𝒜 {smoothed:.3g})"),
                )
            )  # fmt: skip
        return events

    def _k_star_candidate(self, record: SpectralRecord) -> int:
        """k* of the record, unless its ratio does not beat the current k*'s by the margin (hysteresis)."""
        stable = self._k_star.stable
        ratios = getattr(record, "ratios", None)
        if stable is None or ratios is None or record.k_star == stable or stable > len(ratios):
            return record.k_star
        if ratios[record.k_star - 1] >= (1.0 + self.thresholds.k_star_margin) * ratios[stable - 1]:
            return record.k_star
        return stable

    def _regime_candidate(self, value: float, lr: float | None) -> str:
        """The regime of the smoothed 𝒜 ``value``, with the cut-offs widened by the margin away from the
        current regime."""
        low, high, m = self.regimes.low, self.regimes.high, self.thresholds.regime_margin
        stable = self._regime.stable
        if stable == "plateau":
            return "plateau" if value <= low * m else ("forgetting" if value > high * m else "transition")
        if stable == "forgetting":
            return "forgetting" if value >= high / m else ("plateau" if value < low / m else "transition")
        if stable == "transition":
            return "plateau" if value < low / m else ("forgetting" if value > high * m else "transition")
        return (
            self.regimes.classify(value, None)
            if self.regimes.scale == "none" or not lr
            else (
                self.regimes.classify(value / lr, lr)  # nothing learned yet: the plain cut-offs
            )
        )

    def state_dict(self) -> dict[str, Any]:
        """The detector's state (the stable values, pending candidates, recent η𝒜), to resume exactly."""
        return {
            "gap": self._gap.state_dict(),
            "k_star": self._k_star.state_dict(),
            "regime": self._regime.state_dict(),
            "k_at_gap_change": self._k_at_gap_change,
            "recent_adiabatic": self._smoothed.values(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the thresholds stay this detector's own."""
        self._gap.load_state_dict(state["gap"])
        self._k_star.load_state_dict(state["k_star"])
        self._regime.load_state_dict(state["regime"])
        self._k_at_gap_change = state["k_at_gap_change"]
        self._smoothed.load(list(state.get("recent_adiabatic", [])))
