"""SpectralTracker: the one engine behind the online monitor and the offline checkpoint analysis.

The monitor online and a bare tracker fed the same parameter snapshots offline must give the same
records, bit for bit, and the same events: both go through ``SpectralTracker.observe``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from spectral_edge import MonitorConfig, SpectralMonitor, SpectralTracker, TrackResult, analyze_window
from spectral_edge.errors import NonFiniteUpdateError, SpectrumWarning
from spectral_edge.tracking.events import EventThresholds
from tests.tracking.test_monitor import MLP, make_batches, make_optimizer, train_step

# Thresholds low enough that a short run of a small MLP has events to compare.
EVENTS = EventThresholds(open_ratio=1.6, collapse_ratio=1.3, persistence=1, k_star_persistence=1)


def assert_same_record(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "groups":
            assert list(x) == list(y)
            for name in x:
                assert x[name].k_star == y[name].k_star and x[name].gap_ratio == y[name].gap_ratio
                np.testing.assert_array_equal(x[name].singular_values, y[name].singular_values)
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y or (x != x and y != y), f.name  # NaN equals NaN here


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_tracker_offline_gives_the_monitors_records_online(dtype):
    model = MLP()
    opt = make_optimizer("adamw", model)
    config = MonitorConfig(window=4, lr=1e-2, storage_dtype=dtype, events=EVENTS)
    mon = SpectralMonitor(model, config=config)
    snapshots = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for batch in make_batches(30):
        loss = train_step(model, opt, batch)
        mon.step(loss=loss)
        snapshots.append(({n: p.detach().clone() for n, p in model.named_parameters()}, loss))
    mon.close()

    # copy=True as online: the window's copy=False path (analyze_checkpoints') may round float32
    # differently in the last bit, and is checked against the monitor with a tolerance there.
    tracker = SpectralTracker(list(snapshots[0].items()), config=config)
    offline, events = [], []
    for step, (state, loss) in enumerate(snapshots[1:], start=1):
        result = tracker.observe(state, step=step, lr=1e-2, metrics={"loss": loss})
        assert isinstance(result, TrackResult) and result.status == "pushed"
        if result.record is not None:
            offline.append(result.record)
        events.extend(result.events)

    assert len(offline) == len(mon.records) == 27
    for a, b in zip(offline, mon.records, strict=True):
        assert_same_record(a, b)
    assert events and events == mon.events


def test_observe_fills_the_window_then_reports_and_reset_restarts_it():
    w = torch.zeros(5, dtype=torch.float64)
    tracker = SpectralTracker({"w": w}, config=MonitorConfig(window=3, storage_dtype=torch.float64))
    deltas = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    statuses = []
    for step in range(1, 4):
        w += deltas[step - 1]
        result = tracker.observe({"w": w}, step=step)
        statuses.append(result.record is not None)
    assert statuses == [False, False, True]
    np.testing.assert_allclose(
        result.record.singular_values, analyze_window(deltas[:3].numpy()).singular_values, rtol=1e-12
    )
    assert result.record.adiabatic is None  # no learning rate given

    tracker.reset()
    w += deltas[3]
    assert tracker.observe([w], step=4).status == "snapshot"  # the values after a reset are θ_prev
    for step in (5, 6):
        w += deltas[step - 1]
        assert tracker.observe([w], step=step).record is None
    w += deltas[6]
    record = tracker.observe([w], step=7, lr=lambda: 0.5).record
    np.testing.assert_allclose(
        record.singular_values, analyze_window(deltas[4:7].numpy()).singular_values, rtol=1e-12
    )
    assert record.lr == 0.5 and record.adiabatic is not None


def test_skipped_updates_give_one_event_and_one_warning_per_run_of_them():
    w = torch.zeros(3)
    tracker = SpectralTracker([("w", w)], config=MonitorConfig(window=2))
    with pytest.warns(SpectrumWarning, match="no monitored parameter moved at step 1") as caught:
        first, second = tracker.observe([w], step=1), tracker.observe([w], step=2)
    assert len(caught) == 1
    assert [e.kind for e in first.events] == ["zero_update"] and second.events == ()
    assert first.status == second.status == "zero"
    w[0] = float("nan")
    with pytest.warns(SpectrumWarning, match="NaN or Inf"):
        result = tracker.observe([w], step=3)
    assert result.status == "nonfinite" and [e.kind for e in result.events] == ["nonfinite_update"]
    assert not tracker.window.has_snapshot and tracker.window.count == 0  # the window restarts

    strict = SpectralTracker([("w", torch.zeros(3))], config=MonitorConfig(window=2, strict=True))
    with pytest.raises(NonFiniteUpdateError):
        strict.observe([torch.full((3,), float("nan"))], step=1)


def test_state_dict_resumes_a_tracker_bit_for_bit():
    config = MonitorConfig(window=3, storage_dtype=torch.float64, events=EVENTS)
    g = torch.Generator().manual_seed(2)
    thetas = torch.randn(12, 6, generator=g, dtype=torch.float64).cumsum(0)
    a = SpectralTracker([("t", thetas[0])], config=config)
    for step in range(1, 6):
        a.observe([thetas[step]], step=step)
    b = SpectralTracker([("t", torch.zeros(6, dtype=torch.float64))], config=config)
    b.load_state_dict(a.state_dict())
    for step in range(6, 12):
        ra, rb = a.observe([thetas[step]], step=step), b.observe([thetas[step]], step=step)
        assert_same_record(ra.record, rb.record)
        assert ra.events == rb.events
    without = SpectralTracker([("t", thetas[0])], config=config)
    without.load_state_dict(a.state_dict(include_window=False))
    assert without.window.count == 0 and without.observe([thetas[0]], step=1).status == "snapshot"


def test_relayout_keeps_the_detector_and_describe_reports_the_window():
    tracker = SpectralTracker([("a", torch.zeros(4))], config=MonitorConfig(window=2, groups=None))
    detector = tracker.detector
    tracker.relayout([("a", torch.zeros(4)), ("b", torch.zeros(2))])
    assert tracker.detector is detector and tracker.n_params == 6 and tracker.layout.names == ("a", "b")
    described = tracker.describe()
    assert described["n_params"] == 6 and described["groups"] == {"all": 6} and described["window"] == 2
    assert described["window_bytes"] == tracker.window.nbytes
    with pytest.raises(ValueError, match="nothing to track"):
        tracker.relayout([])


def test_readings_under_a_bfloat16_floor_warn_once() -> None:
    # Planted updates with σ_j over four decades: a bfloat16 window resolves σ_j down to about
    # u·√W·σ_1 = 1.2e-2·σ_1 at W = 10 (storage_rank_rtol); below it σ_j read as 0, with one warning.

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4000, 10, generator=gen, dtype=torch.float64))
    rows = (q * torch.logspace(0, -4, 10, dtype=torch.float64)).T  # (W, P) with σ_j = 10^(-4(j-1)/9)
    for dtype, warns in ((torch.float32, False), (torch.bfloat16, True)):
        w = torch.zeros(4000)
        tracker = SpectralTracker([("w", w)], config=MonitorConfig(window=10, storage_dtype=dtype))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(20):
                w += rows[step % 10].float()
                result = tracker.observe([w], step=step + 1)
        floor = [
            c for c in caught if issubclass(c.category, SpectrumWarning) and "resolves" in str(c.message)
        ]
        assert len(floor) == (1 if warns else 0), [str(c.message) for c in caught]
        assert result.record is not None and (result.record.rank < 10) == warns
        if warns:
            assert "bfloat16 storage resolves (1.2e-02·σ_1)" in str(floor[0].message)
