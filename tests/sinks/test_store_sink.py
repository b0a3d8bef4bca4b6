"""StoreSink: the run store behind the Sink interface, and the one place a store= argument is opened."""

from __future__ import annotations

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.errors import RunStoreError
from spectral_edge.sinks import Sink, StoreSink, as_sink
from spectral_edge.tracking.record import SpectralEvent


def test_open_gives_an_owned_sink_for_a_path_and_a_borrowed_one_for_a_store(tmp_path):
    assert StoreSink.open(None) is None
    owned = StoreSink.open(tmp_path / "a")
    assert isinstance(owned, Sink) and owned.owned and owned.label == f"the run store {owned.store.path}"
    assert StoreSink.open(owned) is owned
    with pytest.raises(RunStoreError, match="already open for writing"):  # one writer per path
        StoreSink.open(tmp_path / "a")
    owned.write_config({"monitor": {"window": 2}})
    owned.write_event(SpectralEvent(step=1, kind="zero_update", message="m"))
    owned.write_eval(1, {"loss": 0.5})
    owned.close()
    with RunStore(tmp_path / "a", mode="a") as store:
        borrowed = StoreSink.open(store)
        assert not borrowed.owned
        borrowed.close()  # not its to close
        assert store.config() == {"monitor": {"window": 2}} and [e.kind for e in store.events()] == [
            "zero_update"
        ]
        assert borrowed.backlog().n_lost == 0


def test_anything_else_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="store must be a run directory .* got dict: pass store="):
        StoreSink.open({"path": "x"})


def test_resuming_reopens_the_path_and_drops_the_rows_written_after_the_resume_step(tmp_path):
    p = torch.nn.Parameter(torch.zeros(3))
    # kernel="torch": this folder's HOME is a fresh tmp_path, where the C++ kernel would be built anew.
    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", kernel="torch")
    for _ in range(6):
        with torch.no_grad():
            p.add_(torch.randn(3))
        mon.step()
    mon.close()
    sink = StoreSink.open(tmp_path / "run", resume=True, resume_step=4)
    assert [row["step"] for row in sink.store.records()] == [2, 3, 4]
    sink.close()
    with pytest.raises(RunStoreError, match="would erase|holds"):  # a fresh run never overwrites one
        StoreSink.open(tmp_path / "run")


def test_as_sink_wraps_an_object_with_the_four_methods_and_names_what_another_lacks():
    class Duck:
        def __init__(self):
            self.configs = []

        def write_record(self, record):
            pass

        def write_event(self, event):
            pass

        def write_eval(self, step, metrics):
            pass

        def write_config(self, config):
            self.configs.append(config)

        def close(self):
            pass

    duck = Duck()
    sink = as_sink(duck)
    assert isinstance(sink, Sink) and sink.label == "the sink Duck" and as_sink(sink) is sink
    sink.write_config({"a": 1})
    assert duck.configs == [{"a": 1}]
    with pytest.raises(TypeError, match="got Half without write_event, write_eval, close"):
        as_sink(type("Half", (), {"write_record": print})())
