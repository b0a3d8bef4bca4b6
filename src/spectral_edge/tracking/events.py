"""Spectral events read from a stream of records: gap opening and collapse, k* shifts, 𝒜 regime changes.

Noise must not spam: each detector has hysteresis (two thresholds for the gap) and persistence (a new state
must hold for several consecutive records before it is reported). The state the stream starts in is
learned silently from its first records; only changes are events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spectral_edge.tracking.record import SpectralEvent, SpectralRecord


@dataclass(frozen=True)
class EventThresholds:
    """When the detectors fire. Defaults are documented in the README's event table.

    Attributes:
        open_ratio: the gap counts as open when R ≥ open_ratio (Def 10.6, gap opening). 1.5 sits above the
            noise floor 1 + 2W^{-2/3} ≈ 1.43 of the author's SED code at W = 10.
        collapse_ratio: the gap counts as collapsed when R < collapse_ratio (Def 10.4); 1.20 is the
            collapse threshold τ of the author's SED code. Between the two the state is kept (hysteresis).
        persistence: consecutive records a new gap state or regime must hold before it is reported.
        k_star_persistence: consecutive records a new k* must hold before a k* shift is reported.
    """

    open_ratio: float = 1.5
    collapse_ratio: float = 1.2
    persistence: int = 3
    k_star_persistence: int = 5

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


class _Debounced:
    """A value that changes only after a candidate has been seen ``persistence`` times in a row."""

    def __init__(self, persistence: int) -> None:
        self.persistence = persistence
        self.stable: Any = None
        self.stable_ratio: float | None = None
        self.candidate: Any = None
        self.count = 0

    def update(self, value: Any, ratio: float) -> tuple[Any, float | None] | None:
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
        >>> det = EventDetector(EventThresholds(persistence=1, k_star_persistence=1))
        >>> class R:  # a stand-in with the three fields the detector reads
        ...     def __init__(self, step, k, r): self.step, self.k_star, self.gap_ratio, self.regime = step, k, r, None
        >>> [e.kind for s, r in enumerate([1.1, 1.1, 2.0, 1.05]) for e in det.update(R(s, 1, r))]
        ['gap_opening', 'gap_collapse']
    """

    def __init__(self, thresholds: EventThresholds | None = None) -> None:
        self.thresholds = thresholds or EventThresholds()
        self._gap = _Debounced(self.thresholds.persistence)
        self._k_star = _Debounced(self.thresholds.k_star_persistence)
        self._regime = _Debounced(self.thresholds.persistence)
        self._k_at_gap_change: int | None = None

    def update(self, record: SpectralRecord) -> list[SpectralEvent]:
        """Feed the next record; return the events it completes (often none)."""
        t = self.thresholds
        r, k = record.gap_ratio, record.k_star
        events: list[SpectralEvent] = []

        if r >= t.open_ratio:
            gap_state: str | None = "open"
        elif r < t.collapse_ratio:
            gap_state = "collapsed"
        else:
            gap_state = None  # inside the hysteresis band: no evidence either way
        if gap_state is not None:
            change = self._gap.update(gap_state, r)
            if change is not None:
                kind = "gap_opening" if gap_state == "open" else "gap_collapse"
                events.append(
                    SpectralEvent(
                        step=record.step,
                        kind=kind,
                        k_before=self._k_at_gap_change,
                        k_after=k,
                        ratio_before=change[1],
                        ratio_after=r,
                        message=f"gap ratio {change[1]:.3g} → {r:.3g} at k* = {k}",
                    )
                )
            if self._gap.stable == gap_state:
                self._k_at_gap_change = k

        change = self._k_star.update(k, r)
        if change is not None:
            events.append(
                SpectralEvent(
                    step=record.step,
                    kind="k_star_shift",
                    k_before=change[0],
                    k_after=k,
                    ratio_before=change[1],
                    ratio_after=r,
                    message=f"k* moved from {change[0]} to {k}",
                )
            )

        change = self._regime.update(record.regime, r)
        if change is not None:
            events.append(
                SpectralEvent(
                    step=record.step,
                    kind="regime_change",
                    k_before=None,
                    k_after=k,
                    ratio_before=change[1],
                    ratio_after=r,
                    message=f"adiabatic regime {change[0]} → {record.regime}",
                )
            )
        return events

    def state_dict(self) -> dict[str, Any]:
        return {
            "gap": self._gap.state_dict(),
            "k_star": self._k_star.state_dict(),
            "regime": self._regime.state_dict(),
            "k_at_gap_change": self._k_at_gap_change,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gap.load_state_dict(state["gap"])
        self._k_star.load_state_dict(state["k_star"])
        self._regime.load_state_dict(state["regime"])
        self._k_at_gap_change = state["k_at_gap_change"]
