"""The one fan-out: the run store is a sink like the others, behind the same guard.

A failing store and a failing sink each cost one warning and never stop training; the store gets each
record before the other sinks; close() closes every sink, the store last, even when one of them fails.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.errors import SpectrumWarning
from spectral_edge.sinks import Sink, StoreSink
from spectral_edge.tracking._fanout import FanOut
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking.record import SpectralEvent
from tests.sinks.test_base import BrokenSink


class Log(Sink):
    """Notes each call (and, for records, how many records the store held at that moment)."""

    def __init__(
        self, name: str, calls: list, store: RunStore | None = None, fail_close: bool = False
    ) -> None:
        self.name, self.calls, self.store, self.fail_close = name, calls, store, fail_close

    def write_record(self, record):
        self.calls.append((self.name, "record", None if self.store is None else len(self.store)))

    def close(self):
        self.calls.append((self.name, "close", None))
        if self.fail_close:
            raise OSError(f"{self.name} cannot close")


def moving(n: int, size: int = 4):
    p = torch.nn.Parameter(torch.zeros(size))
    g = torch.Generator().manual_seed(0)

    def step(mon: SpectralMonitor) -> None:
        for _ in range(n):
            with torch.no_grad():
                p.add_(torch.randn(size, generator=g))
            mon.step()

    return p, step


def test_a_failing_store_and_a_failing_sink_keep_training_alive_with_one_warning_each(tmp_path):
    store = RunStore(tmp_path / "run", mode="w")
    p, train = moving(6)
    mon = SpectralMonitor([p], window=2, store=store, sinks=[BrokenSink()])
    store.close()  # every later write to the store fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(mon)
        mon.log_eval(6, acc=1.0)
        mon.close()
    assert len(mon.records) == 5  # every record, kept in memory and returned
    messages = [str(w.message) for w in caught if issubclass(w.category, SpectrumWarning)]
    assert len(messages) == 2, messages
    store_warning = next(m for m in messages if "the run store" in m)
    sink_warning = next(m for m in messages if "the sink BrokenSink" in m)
    assert str(store.path) in store_warning and "training continues" in store_warning
    assert "backend gone" in sink_warning and "training continues" in sink_warning
    assert "mon.records keeps the latest 1000 records" in store_warning  # the monitor's note, both times
    assert "mon.records keeps the latest 1000 records" in sink_warning


def test_the_store_is_the_first_sink_and_closed_last(tmp_path):
    calls: list = []
    p, train = moving(3)
    store = RunStore(tmp_path / "run", mode="w")  # no writer thread: a write is committed when it returns
    mon = SpectralMonitor([p], window=2, store=store, sinks=[Log("a", calls, store), Log("b", calls, store)])
    train(mon)
    assert [c for c in calls if c[1] == "record"] == [("a", "record", 1), ("b", "record", 1)] + [
        ("a", "record", 2),
        ("b", "record", 2),
    ]  # each sink sees a record the store already holds
    mon.close()
    assert [c[0] for c in calls if c[1] == "close"] == ["b", "a"]
    store.close()


def test_close_closes_every_sink_even_when_one_fails_and_strict_raises_the_first_after():
    calls: list = []
    out = FanOut(
        [Log("store", calls), Log("a", calls, fail_close=True), Log("b", calls, fail_close=True)],
        guard=Guard(strict=True),
        kept="k",
        counts="c",
    )
    with pytest.raises(OSError, match="b cannot close"):  # b is closed first, a after, the store last
        out.close()
    assert [c[0] for c in calls] == ["b", "a", "store"]


def test_events_are_kept_in_memory_before_any_sink_sees_them():
    out = FanOut([BrokenSink()], guard=Guard(strict=False), kept="k", counts="c")
    event = SpectralEvent(step=3, kind="zero_update", message="m")
    with pytest.warns(SpectrumWarning, match="the sink BrokenSink failed"):
        out.emit([event])
    assert out.events == [event]
    out.remove(out.sinks[0])
    out.emit([event])  # no sink left: nothing to fail
    assert out.events == [event, event]


def test_detach_store_stops_writing_without_closing_it(tmp_path):
    p, train = moving(3)
    store = RunStore(tmp_path / "run", mode="w")
    mon = SpectralMonitor([p], window=2, store=store)
    train(mon)
    sink = mon.detach_store()
    assert isinstance(sink, StoreSink) and sink.store is store and not sink.owned and mon.store is None
    train(mon)
    assert len(store) == 2 and len(mon.records) == 5  # the store kept what it had; memory goes on
    assert mon.close() is None  # no store left to report on
    store.add_eval(1, {"loss": 0.5})  # still open: its owner closes it
    store.close()


def test_a_sink_that_refuses_the_config_does_not_stop_the_monitor_being_built(tmp_path):
    # A tracking server that does not answer when the monitor starts: one warning, and the run goes on
    # with the store and the other sinks. Only the store's refusal is raised at construction.
    class NoConfig(BrokenSink):
        def write_config(self, config):
            raise ConnectionError("tracking server unreachable")

    p, step = moving(6)
    with pytest.warns(SpectrumWarning, match="unreachable"):
        mon = SpectralMonitor([p], window=3, store=tmp_path / "run", sinks=[NoConfig()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)  # the broken sink's record writes
        step(mon)
        mon.close()
    assert len(RunStore(tmp_path / "run").records()) == 6 - 3 + 1
