"""Loading runs for the report: every quantity read once, η𝒜 as the regime detector reads it, thinning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectral_edge import RunStore, SpectralEvent
from spectral_edge.errors import RunStoreError
from spectral_edge.report.data import (
    load_run,
    load_runs,
    run_data_from_arrays,
    thin_indices,
    trailing_median,
)
from tests.report.conftest import EVAL_EVERY, STEPS, WINDOW


def test_load_run_reads_every_quantity_of_a_real_run(two_runs):
    run = load_run(two_runs[0])
    with RunStore(two_runs[0], mode="r") as store:
        arrays = store.record_arrays()
        events = store.events()
        evals = store.evals()
    n = STEPS - WINDOW + 1  # one record per step once the window is full
    assert run.name == "mlp-wd1" and run.n_records == n and run.stride == 1
    assert run.steps.tolist() == list(range(WINDOW, STEPS + 1))
    assert run.sigma.shape == run.alpha.shape == (n, WINDOW)
    np.testing.assert_array_equal(run.sigma, arrays["singular_values"])
    np.testing.assert_array_equal(run.gap_ratio, arrays["gap_ratio"])
    assert run.window == WINDOW and run.n_params == 8 * 16 + 16 + 16 + 1
    # The regimes' default scale is "lr": the classifier compares η·𝒜 with its cut-offs.
    assert run.regimes.scale == "lr"
    np.testing.assert_allclose(run.eta_adiabatic, arrays["adiabatic"] * arrays["lr"])
    np.testing.assert_allclose(run.lr, 0.05)
    assert set(run.groups) == {"hidden", "out"}
    np.testing.assert_array_equal(run.groups["out"][0], arrays["group.out.k_star"])
    assert set(run.metrics) == {"loss"} and len(run.metrics["loss"]) == n
    assert run.evals["val_loss"][0].tolist() == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert set(evals) == set(run.evals)
    assert list(run.events) == events and events, "the fixture's runs must report events"
    assert run.last["step"] == STEPS and run.last["k_star"] == arrays["k_star"][-1]
    assert run.config["user"]["weight_decay"] == 1.0 and run.meta["format"] == "spectral-edge run"


def test_smoothed_eta_adiabatic_is_what_the_regime_events_read(two_runs):
    """A regime event stores the detector's median η𝒜 (ratio_after); the report's median must match it."""
    checked = 0
    for path in two_runs:
        run = load_run(path)
        for event in run.events:
            if event.kind == "regime_change":
                at = int(np.searchsorted(run.steps, event.step))
                assert run.eta_adiabatic_median[at] == pytest.approx(event.ratio_after, rel=1e-12)
                checked += 1
    assert checked, "the fixture's runs should hold at least one regime change"


def test_thin_indices_rule():
    steps = np.arange(1000, 2000)
    assert thin_indices(steps, 1000).tolist() == list(range(1000))
    kept = thin_indices(steps, 100, keep_steps=[1234, 1999, 5000])
    stride = 10  # ceil(1000 / 100)
    assert set(range(0, 1000, stride)) <= set(kept.tolist())
    assert {234, 233, 999, 998} <= set(kept.tolist())  # each event's record and the one before it
    assert kept[-1] == 999 and np.all(np.diff(kept) > 0)
    assert len(kept) <= 100 + 2 * 3 + 1
    # An event between two records keeps the first record after it.
    assert 5 in thin_indices(np.arange(0, 100, 10), 2, keep_steps=[41]).tolist()
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="max_points must be an int >= 2"):
            thin_indices(steps, bad)


def test_a_thinned_run_keeps_its_events_and_summarises_all_records(two_runs):
    full = load_run(two_runs[1])
    thin = load_run(two_runs[1], max_points=30)
    assert thin.n_records == full.n_records and thin.stride == math.ceil(full.n_records / 30)
    assert len(thin.steps) <= 30 + 2 * len(thin.events) + 1
    assert {e.step for e in thin.events} <= set(thin.steps.tolist())
    assert thin.steps[0] == full.steps[0] and thin.steps[-1] == full.steps[-1]
    # The smoothed η𝒜 is computed on every record before thinning.
    at = np.searchsorted(full.steps, thin.steps)
    np.testing.assert_array_equal(thin.eta_adiabatic_median, full.eta_adiabatic_median[at])
    np.testing.assert_array_equal(thin.sigma, full.sigma[at])
    assert thin.last["step"] == full.last["step"] and thin.last["gap_ratio"] == full.last["gap_ratio"]


def test_trailing_median_against_a_loop():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=300)
    values[rng.choice(300, 40, replace=False)] = np.nan
    values[7] = np.inf
    window = 50
    expected = np.full(300, np.nan)
    seen: list[float] = []
    for i, v in enumerate(values):
        if not np.isnan(v):
            seen.append(v)
            expected[i] = np.median(seen[-window:])
    np.testing.assert_array_equal(trailing_median(values, window), expected)
    assert np.isnan(trailing_median(np.full(4, np.nan), 3)).all()


def test_run_names_come_from_directories_and_stay_distinct(tmp_path, two_runs):
    for parent in ("a", "b"):
        with RunStore(tmp_path / parent / "run", mode="w") as store:
            store.add_eval(1, {"acc": 0.5})
    runs = load_runs([tmp_path / "a" / "run", tmp_path / "b" / "run" / "run.db", two_runs[0], two_runs[0]])
    assert [r.name for r in runs] == ["a/run", "b/run", "mlp-wd1", "mlp-wd1 (2)"]
    with pytest.raises(ValueError, match="no runs given"):
        load_runs([])


def test_a_run_without_records_loads_empty(tmp_path):
    with RunStore(tmp_path / "fresh", mode="w") as store:
        store.write_config({"monitor": {"window": 10, "n_params": 5}})
    run = load_run(tmp_path / "fresh")
    assert not run.has_records and run.n_records == 0 and len(run.steps) == 0
    assert run.eta_adiabatic is None and run.groups == {} and run.last == {} and run.window == 10


def test_missing_and_half_written_runs_raise_run_store_errors(tmp_path):
    with pytest.raises(RunStoreError, match="no spectral-edge run"):
        load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.db").touch()
    with pytest.raises(RunStoreError, match="half-written"):
        load_run(tmp_path / "half")


def test_regime_spans_follow_the_regime_events():
    steps = np.arange(10, 101)
    arrays = {
        "step": steps,
        "singular_values": np.ones((len(steps), 3)),
        "gap_ratio": np.ones(len(steps)),
        "k_star": np.ones(len(steps), dtype=np.int64),
        "alpha": np.zeros((len(steps), 3)),
    }
    events = [
        SpectralEvent(
            step=40, kind="regime_change", message="adiabatic regime transition → plateau (median η𝒜 0.04)"
        ),
        SpectralEvent(step=60, kind="gap_opening", message="gap ratio 1.2 → 3.5 at k* = 1"),
        SpectralEvent(step=70, kind="regime_change", message="adiabatic regime plateau → forgetting"),
    ]
    run = run_data_from_arrays("r", "runs/r", arrays, events=events)
    assert run.regime_spans() == [(10, 40, "transition"), (40, 70, "plateau"), (70, 100, "forgetting")]
    assert run.eta_adiabatic is None and run.last["step"] == 100
    assert run_data_from_arrays("r", "runs/r", arrays).regime_spans() == []
