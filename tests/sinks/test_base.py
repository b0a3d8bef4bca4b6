"""The Sink interface and how SpectralMonitor feeds sinks: every record, event and eval, close(), failures."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

from spectral_edge.errors import SpectrumWarning
from spectral_edge.sinks import Sink
from spectral_edge.tracking import SpectralMonitor


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.records, self.events, self.evals, self.closed = [], [], [], 0

    def write_record(self, record):
        self.records.append(record)

    def write_event(self, event):
        self.events.append(event)

    def write_eval(self, step, metrics):
        self.evals.append((step, dict(metrics)))

    def close(self):
        self.closed += 1


class DuckSink:
    """Not a Sink subclass: the monitor takes any object with the four methods."""

    def __init__(self) -> None:
        self.records = []

    def write_record(self, record):
        self.records.append(record)

    def write_event(self, event):
        pass

    def write_eval(self, step, metrics):
        pass

    def close(self):
        pass


class BrokenSink(Sink):
    """Raises from every method, as a sink whose backend went away would."""

    def write_record(self, record):
        raise RuntimeError("backend gone")

    def write_event(self, event):
        raise RuntimeError("backend gone")

    def write_eval(self, step, metrics):
        raise RuntimeError("backend gone")

    def close(self):
        raise RuntimeError("backend gone")


def test_the_training_run_reaches_every_case(train):
    # The sink tests rely on this run: records, events of several kinds, evals and a non-finite value.
    run = train([])
    assert len(run.records) == 37  # 40 steps, the first record once W = 4 updates are in
    assert {e.kind for e in run.events} >= {"gap_opening", "k_star_shift"}
    assert len(run.evals) == 4
    assert all(math.isinf(r.log_scalars()["spectral/group/bias/gap_ratio"]) for r in run.records)


def test_the_monitor_feeds_every_sink_everything_then_closes_it(train):
    sink, duck = RecordingSink(), DuckSink()
    run = train([sink, duck])
    assert sink.records == run.records and duck.records == run.records  # the very objects step() returned
    assert sink.events == run.events
    assert sink.evals == run.evals
    assert sink.closed == 1


def test_a_sink_that_raises_never_breaks_step(train):
    healthy = RecordingSink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train([BrokenSink(), healthy])
    assert len(run.records) == 37  # step() kept returning records
    assert healthy.records == run.records and healthy.events == run.events and healthy.evals == run.evals
    assert healthy.closed == 1  # closed although the sink before it raised in close()
    messages = [str(w.message) for w in caught if issubclass(w.category, SpectrumWarning)]
    assert len(messages) == 1, messages  # once, not once per record
    assert "the sink BrokenSink failed" in messages[0] and "backend gone" in messages[0]


def test_strict_mode_raises_a_sinks_error():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, window=2, sinks=[BrokenSink()], strict=True)
    with pytest.raises(RuntimeError, match="backend gone"):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            opt.step()
            mon.step()
    with pytest.raises(RuntimeError, match="backend gone"):
        mon.close()


def test_a_sink_without_the_methods_is_refused_at_construction():
    with pytest.raises(TypeError, match="without write_event, write_eval, close"):
        SpectralMonitor(torch.nn.Linear(2, 1), window=2, sinks=[type("Half", (), {"write_record": print})()])


def test_sink_defaults_are_no_ops_and_it_is_a_context_manager():
    class Minimal(Sink):
        def write_record(self, record):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Sink()
    with Minimal() as sink:
        sink.write_event(None)
        sink.write_eval(1, {"acc": 1.0})


def test_importing_sinks_imports_no_backend():
    code = (
        "import sys, spectral_edge.sinks\n"
        "print([m for m in ('tensorboard', 'torch.utils.tensorboard', 'wandb', 'mlflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
