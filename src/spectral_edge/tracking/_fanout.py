"""The one fan-out: every record, event, evaluation and config goes to each sink, the run store first.

Each delivery runs through the one :class:`~spectral_edge.tracking._guard.Guard`, so a failing store and a
failing sink cost one warning each and never stop training (``strict`` raises). A store's refused writes
(:class:`~spectral_edge.errors.StoreWriteError`) get their own report: an event and a warning when writes
start failing and when the first is lost, with the store's counts, not one per step.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spectral_edge.errors import SpectrumWarning, StoreWriteError
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

if TYPE_CHECKING:  # sinks are adapters above tracking/: the fan-out only calls the Sink interface
    from spectral_edge.sinks.base import Sink

__all__ = ["FanOut"]


class FanOut:
    """Delivers to an ordered list of sinks through one guard; keeps every event in memory first.

    Args:
        sinks: :class:`~spectral_edge.sinks.base.Sink` objects, the run store's first.
        guard: the guard every delivery runs through.
        kept: what is kept in memory whatever the store does, for the store's warnings
            ("mon.records keeps the latest 1000 records in memory whatever happens").
        counts: where the final counts of a closed store are to be read ("SpectralMonitor.unwritten").
    """

    def __init__(self, sinks: Sequence[Sink], *, guard: Guard, kept: str, counts: str) -> None:
        self.sinks = list(sinks)
        self.guard = guard
        self.kept = kept
        self.counts = counts
        self.events: list[SpectralEvent] = []  # every event handed over, in order
        self.step = 0  # the step of the latest delivery, named in the store's reports

    def remove(self, sink: Sink) -> None:
        """Stop delivering to ``sink`` (its owner closed it)."""
        self.sinks = [s for s in self.sinks if s is not sink]

    def config(self, document: Mapping[str, Any], *, check: bool = False) -> None:
        """Hand the run's config to every sink.

        With ``check`` (at construction) the run store's failure is raised: a config that cannot be
        stored is the caller's error, said before training starts. Every other sink goes through the
        guard as always: a tracking server that does not answer must not stop the monitor being built.
        """
        for sink in self.sinks:
            if check and sink.checks_config:
                sink.write_config(document)
            else:
                self._deliver(sink, functools.partial(sink.write_config, document))

    def record(self, record: SpectralRecord) -> None:
        self.step = record.step
        for sink in self.sinks:
            self._deliver(sink, functools.partial(sink.write_record, record))

    def emit(self, events: Iterable[SpectralEvent]) -> None:
        for event in events:
            self.events.append(event)  # in memory first: a failing store must not lose it
            self.step = event.step
            for sink in self.sinks:
                self._deliver(sink, functools.partial(sink.write_event, event))

    def eval(self, step: int, values: Mapping[str, float]) -> None:
        self.step = step
        for sink in self.sinks:
            self._deliver(sink, functools.partial(sink.write_eval, step, values))

    def close(self) -> None:
        """Close every sink, the run store last, whatever the others do; in strict mode the first
        failure is raised once all are closed."""
        first: BaseException | None = None
        for sink in reversed(self.sinks):
            try:
                self._deliver(sink, sink.close)
            except BaseException as exc:  # strict: close the others all the same
                first = first or exc
        if first is not None:
            raise first

    def _deliver(self, sink: Sink, action: Callable[[], object]) -> None:
        self.guard(
            sink.label, action, handlers={StoreWriteError: functools.partial(self._store_failed, sink)}
        )

    def _store_failed(self, sink: Sink, exc: Exception) -> None:
        """A store refused a write: an event and a warning with the store's counts when writes start
        failing and when the first is lost, not one per step (the store raises at every refused write)."""
        assert isinstance(exc, StoreWriteError)  # the only exception type this handler is given
        backlog = exc.backlog
        if exc.closed:  # the store is closed: no event can reach it
            warnings.warn(
                f"spectral-edge: {exc} {self.kept}; {self.counts} has the counts.",
                SpectrumWarning,
                stacklevel=5,
            )
            return
        if exc.started:
            kind = "store_write_failed"
            message = (
                f"{sink.label} refuses writes ({backlog.error}; noticed at step {self.step}). The store holds "
                f"what it could not write in memory, up to {backlog.max_held} writes, and retries them before "
                f"each later write and at close; beyond that they are lost. Now {backlog.describe()}. Free "
                f"disk space and they are written; {self.kept}."
            )
        elif exc.first_loss:
            kind = "store_writes_lost"
            message = (
                f"{sink.label} holds {backlog.max_held} unwritten writes, its limit, so records are being "
                f"lost (noticed at step {self.step}; {backlog.describe()}). Free disk space and the held ones "
                f"are written; {self.kept}."
            )
        else:
            return
        warnings.warn("spectral-edge: " + message, SpectrumWarning, stacklevel=5)
        # Its own write may be refused too: it is then held like the rest, and raises nothing new here.
        self.emit([SpectralEvent(step=self.step, kind=kind, message=message)])
