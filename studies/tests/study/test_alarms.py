"""Early-warning alarms: each rule on synthetic series with a known answer, causality, scoring, eq 86."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spectral_edge_studies.study import alarms
from spectral_edge_studies.study.alarms import (
    RECORD_PERSISTENCE,
    RECORD_SMOOTHING,
    RunSeries,
    evaluate_alarms,
    first_persistent,
    loss_gap_alarm,
    memorised_alarm,
    order_check,
    score,
    spectral_g23_alarm,
    spectral_k1_alarm,
    trailing_median,
    weight_norm_alarm,
    ww_alpha_alarm,
    ww_traps_alarm,
)


def test_constants_are_the_ones_fixed_in_the_docstring() -> None:
    """The rules were fixed before any suite outcome; changing one must be a visible, deliberate edit."""
    assert (RECORD_SMOOTHING, RECORD_PERSISTENCE) == (20, 10)
    assert (alarms.EVAL_SMOOTHING, alarms.EVAL_PERSISTENCE, alarms.CHECKPOINT_PERSISTENCE) == (3, 2, 1)
    assert (alarms.G23_FRACTION, alarms.K1_RISE, alarms.WEIGHT_NORM_FRACTION) == (0.5, 1.5, 0.9)
    assert (alarms.LOSS_GAP_MIN_PEAK, alarms.LOSS_GAP_FRACTION, alarms.WW_ALPHA_FRACTION) == (0.1, 0.8, 0.8)
    for name in alarms.ALARMS:
        assert f"``{name}``" in alarms.__doc__


def test_trailing_median_is_causal_and_ignores_nan() -> None:
    x = np.array([1.0, np.nan, 3.0, 100.0, 5.0])
    out = trailing_median(x, 3)
    assert out.tolist() == [1.0, 1.0, 2.0, 51.5, 5.0]
    assert np.isnan(trailing_median([np.nan], 3)[0])


def test_first_persistent_needs_consecutive_samples() -> None:
    assert first_persistent([1, 2, 3, 4], [True, False, True, True], 2) == 4
    assert first_persistent([1, 2, 3], [True, False, True], 2) is None
    assert first_persistent([5], [True], 1) == 5
    with pytest.raises(ValueError, match="persist"):
        first_persistent([1], [True], 0)


def test_g23_alarm_rings_at_a_halving_after_smoothing_and_persistence() -> None:
    steps = np.arange(0, 2000, 10)  # a record every 10 steps (monitor_interval = 10)
    g23 = np.where(steps < 1000, 2.0, 0.5)  # a 4× decline at step 1000
    # the 20-record median is ≤ 1.0 from the 11th low record (step 1100), then 10 records of persistence
    assert spectral_g23_alarm(steps, g23) == 1190
    assert spectral_g23_alarm(steps, np.where(steps < 1000, 2.0, 1.2)) is None  # a 1.7× decline: quiet
    # warm-up: a low start does not set the reference, the running peak does
    warm = np.concatenate([np.linspace(0.01, 2.0, 10), np.full(190, 2.0)])
    assert spectral_g23_alarm(steps, warm) is None


def test_g23_alarm_ignores_a_short_dip() -> None:
    steps = np.arange(200)
    g23 = np.ones(200)
    g23[100:110] = 0.01  # 10 records: the 20-record median never falls to 0.5
    assert spectral_g23_alarm(steps, g23) is None
    g23[100:115] = 0.01  # 15 records: below for 14 records (≥ 10), so it rings
    assert spectral_g23_alarm(steps, g23) == 119


def test_k1_alarm_needs_k_star_1_and_a_rise() -> None:
    steps = np.arange(200)
    ratio = np.where(steps < 100, 1.6, 4.0)
    assert spectral_k1_alarm(steps, np.ones(200, int), ratio) == 118  # median ≥ 2.4 from 109, +9
    assert spectral_k1_alarm(steps, np.full(200, 2), ratio) is None  # the rise is not at k* = 1
    assert spectral_k1_alarm(steps, np.ones(200, int), np.full(200, 3.0)) is None  # high but flat


def test_weight_norm_alarm() -> None:
    steps = np.arange(0, 100, 10)
    norm = np.array([10, 11, 12, 12, 11.5, 11, 10.5, 10.0, 9.5, 9.0])
    # median of 3: 12 at 30 and 40 (the peak), then 11.5, 11, 10.5 (70), 10 (80): ≤ 10.8 at 70 and 80
    assert weight_norm_alarm(steps, norm) == 80
    assert weight_norm_alarm(steps, np.linspace(10, 20, 10)) is None  # without weight decay it grows


def test_loss_gap_alarm_needs_an_opened_gap() -> None:
    steps = np.arange(8)
    train = np.array([4.6, 2.0, 0.5, 0.05, 0.01, 0.01, 0.01, 0.01])
    test = np.array([4.6, 4.8, 5.5, 6.0, 6.0, 4.0, 3.0, 2.0])
    assert loss_gap_alarm(steps, train, test) == 7
    flat = np.full(8, 1.0)
    assert loss_gap_alarm(steps, flat, flat + 0.05) is None  # the gap never reached 0.1 nats
    assert loss_gap_alarm(steps, train, test + np.arange(8.0)) is None  # the gap keeps growing


def test_checkpoint_alarms() -> None:
    assert ww_alpha_alarm([0, 100, 200], [5.0, 4.5, 3.9]) == 200
    assert ww_alpha_alarm([0, 100], [5.0, 4.1]) is None
    assert ww_traps_alarm([0, 100, 200], [0, 0, 1]) == 200
    assert ww_traps_alarm([0, 100], [np.nan, 3]) is None  # no reference: never rings
    assert ww_traps_alarm([], []) is None
    assert memorised_alarm([0, 10], [0.5, 0.99]) == 10


@pytest.mark.parametrize(
    "rule, arrays",
    [
        (spectral_g23_alarm, lambda rng: (np.exp(-np.linspace(0, 3, 300)) + 0.05 * rng.random(300),)),
        (spectral_k1_alarm, lambda rng: (np.ones(300, int), 1 + np.linspace(0, 5, 300) + rng.random(300))),
        (weight_norm_alarm, lambda rng: (10 + np.cumsum(rng.normal(0, 0.3, 300)),)),
        (loss_gap_alarm, lambda rng: (rng.random(300), 3 * rng.random(300))),
    ],
)
def test_alarms_are_online(rule, arrays) -> None:
    """An alarm step depends only on the samples up to it: truncating the run right after it (or anywhere
    before it) gives the same answer, which is what makes it an alarm a monitor could have rung."""
    rng = np.random.default_rng(0)
    columns = arrays(rng)
    steps = np.arange(300) * 10
    step = rule(steps, *columns)
    assert step is not None
    i = int(np.flatnonzero(steps == step)[0])
    assert rule(steps[: i + 1], *(c[: i + 1] for c in columns)) == step
    assert rule(steps[:i], *(c[:i] for c in columns)) is None


def test_score() -> None:
    assert score(900, 1000) == ("hit", 100)
    assert score(1000, 1000) == ("late", None)
    assert score(None, 1000) == ("miss", None)
    assert score(10, None) == ("false_alarm", None)
    assert score(None, None) == ("quiet", None)
    assert score(10, 1000, available=False) == ("n/a", None)


def _series(**overrides) -> RunSeries:
    steps = np.arange(0, 1000, 10)
    fields = dict(
        record_steps=steps,
        g23=np.where(steps < 300, 1.0, 0.1),
        k_star=np.where(steps < 600, 2, 1),
        ratio12=np.where(steps < 600, 1.5, 6.0),
        eval_steps={"wq0_ratio": steps[::5], "train_acc": steps[::5]},
        evals={
            "wq0_ratio": np.where(steps[::5] < 800, 1.05, 2.0),
            "train_acc": np.where(steps[::5] < 200, 0.5, 1.0),
        },
        events=(
            {"step": 100, "kind": "gap_opening"},  # early training: not the delayed opening
            {"step": 400, "kind": "gap_collapse"},
            {"step": 700, "kind": "gap_opening"},
        ),
    )
    fields.update(overrides)
    return RunSeries(**fields)


def test_evaluate_alarms_flags_what_a_run_lacks() -> None:
    fired = evaluate_alarms(_series())
    assert set(fired) == set(alarms.ALARMS)
    assert fired["spectral_g23"].step == 490 and fired["spectral_k1"].step == 780
    assert fired["memorised"].step == 200
    assert not fired["weight_norm"].available and "weight_norm" in fired["weight_norm"].note
    assert not fired["ww_alpha"].available and not fired["ww_traps"].available
    empty = evaluate_alarms(_series(record_steps=np.empty(0, int), g23=np.empty(0), k_star=np.empty(0, int)))
    assert not empty["spectral_g23"].available and empty["spectral_g23"].note == "no spectral records"


def test_order_check_reads_eq86() -> None:
    check = order_check(_series(), grok_step=850)
    assert check.steps == {"g23_decline": 490, "k_star_to_1": 780, "wq_ratio_rise": 900, "gap_opening": 700}
    assert check.precedes("g23_decline") and check.precedes("gap_opening")
    assert check.precedes("wq_ratio_rise") is False  # the evaluation after grokking
    assert check.eq86_order is True
    assert order_check(_series(), grok_step=500).eq86_order is False  # k* → 1 after grokking
    assert order_check(_series(), grok_step=None).precedes("g23_decline") is None


def test_load_series_reads_a_real_run(tmp_path) -> None:
    import torch

    from spectral_edge import SpectralMonitor

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    with SpectralMonitor(model, window=10, store=tmp_path / "run") as mon:
        for step in range(1, 31):
            with torch.no_grad():
                model.weight += 0.01 * torch.randn(8, 8)
            mon.step(step=step)
            if step % 10 == 0:
                mon.log_eval(
                    step,
                    train_loss=1.0 / step,
                    test_loss=2.0,
                    weight_norm=float(model.weight.detach().norm()),
                )
    series = alarms.load_series(tmp_path / "run")
    assert series.record_steps.tolist() == list(range(10, 31))
    assert series.g23.shape == series.ratio12.shape == series.k_star.shape == (21,)
    assert np.all(series.g23 > 0) and np.all(series.ratio12 >= 1)
    assert series.eval_steps["test_loss"].tolist() == [10, 20, 30]
    fired = evaluate_alarms(series)
    assert fired["loss_gap"].available and fired["weight_norm"].available and not fired["memorised"].available


def test_weightwatcher_on_checkpoints(tmp_path) -> None:
    """α and traps from real WeightWatcher on saved state dicts; cached, and traps stop once they rang."""
    pytest.importorskip("weightwatcher")
    import torch

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    rank_one = torch.outer(torch.randn(48, generator=gen), torch.randn(32, generator=gen))
    for i, step in enumerate((0, 50, 100)):
        noise = torch.randn(48, 32, generator=gen) / 6
        # a growing rank-one signal: a trap (a spike of the shuffled matrix) shows up only at strength
        state = {"w": noise + (0.0, 0.0, 3.0)[i] * rank_one, "bias": torch.zeros(48)}
        torch.save(state, folder / f"step_{step}.pt")
    result = alarms.weightwatcher_series(tmp_path / "run")
    checkpoints = result["checkpoints"]
    assert sorted(checkpoints, key=int) == ["0", "50", "100"]
    assert set(checkpoints["0"]["alphas"]) == {"w"}  # 2-D tensors only, under their own names
    assert all(c["alpha_mean"] > 0 for c in checkpoints.values())
    assert checkpoints["0"]["traps"] == 0 and checkpoints["100"]["traps"] >= 1
    cached = json.loads((tmp_path / "run" / alarms.WW_CACHE).read_text())
    assert cached["checkpoints"] == checkpoints
    steps = np.array([0, 50, 100])
    assert ww_traps_alarm(steps, [checkpoints[str(s)]["traps"] for s in steps]) == 100


def test_weightwatcher_without_checkpoints(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    assert alarms.weightwatcher_series(tmp_path / "run")["note"] == "no checkpoints saved"
