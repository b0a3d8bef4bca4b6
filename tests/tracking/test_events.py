"""EventDetector on synthetic record streams: hysteresis, persistence, silent first state, resuming."""

from __future__ import annotations

import copy
import io
import math
from types import SimpleNamespace

import pytest
import torch

from spectral_edge.tracking.events import EventDetector, EventThresholds

# These tests fix their own cut-offs: open when R >= 1.5, collapsed when R < 1.2, in between no
# evidence (the state is kept). The library's defaults are checked in test_default_thresholds.
OPEN, BAND, SHUT = 2.0, 1.35, 1.05


def T(**kwargs) -> EventThresholds:  # noqa: N802 - reads as a constructor
    return EventThresholds(**{"open_ratio": 1.5, "collapse_ratio": 1.2, **kwargs})


def stream(ratios, *, k=1, regime=None, start=0, step=10):
    """Records with the three fields the detector reads (plus step), steps start, start+step, …"""
    ks = k if isinstance(k, list) else [k] * len(ratios)
    regimes = regime if isinstance(regime, list) else [regime] * len(ratios)
    return [
        SimpleNamespace(step=start + step * i, gap_ratio=r, k_star=kk, regime=rg)
        for i, (r, kk, rg) in enumerate(zip(ratios, ks, regimes, strict=True))
    ]


def feed(detector, records):
    """All events, each with the index of the record that completed it."""
    out = []
    for i, rec in enumerate(records):
        for event in detector.update(rec):
            out.append((i, event))
    return out


def kinds(events):
    return [e.kind for _, e in events]


# ------------------------------------------------------------------ gap opening / collapse


def test_gap_opening_then_collapse_fire_once_each_with_their_values():
    det = EventDetector(T(persistence=3, k_star_persistence=100))
    ratios = [1.10, 1.00, 1.15, 1.12] + [1.60, 1.70, 1.80, 1.90, 2.00] + [1.10, 1.05, 1.00, 1.02]
    ks = [3, 3, 3, 2] + [2, 2, 2, 2, 2] + [4, 4, 4, 4]
    records = stream(ratios, k=ks)
    events = feed(det, records)
    assert kinds(events) == ["gap_opening", "gap_collapse"]

    (i_open, opening), (i_close, collapse) = events
    # Opening: the third consecutive open record completes it.
    assert i_open == 6
    assert opening.step == records[6].step == 60
    assert opening.ratio_before == 1.12  # the last ratio while the gap was (stably) collapsed
    assert opening.ratio_after == 1.80
    assert opening.k_before == 2  # k* at that last collapsed record
    assert opening.k_after == 2
    assert "1.12" in opening.message and "1.8" in opening.message

    assert i_close == 11
    assert collapse.step == 110
    assert collapse.ratio_before == 2.00
    assert collapse.ratio_after == 1.00  # the record that completed the collapse
    assert collapse.k_before == 2 and collapse.k_after == 4


def test_first_state_is_learned_silently():
    for ratios in ([OPEN] * 10, [SHUT] * 10, [BAND] * 10, [OPEN, BAND, OPEN, OPEN, BAND, OPEN]):
        det = EventDetector(T(persistence=3, k_star_persistence=5))
        assert feed(det, stream(ratios, k=2, regime="plateau")) == []
    # ... including when the first records disagree before settling.
    det = EventDetector(T(persistence=3))
    assert feed(det, stream([OPEN, SHUT, OPEN, OPEN, SHUT, SHUT, SHUT, SHUT])) == []


def test_oscillation_inside_the_hysteresis_band_does_not_fire():
    det = EventDetector(T(persistence=1, k_star_persistence=1))
    # R moves between 1.21 and 1.49: never beyond either threshold.
    ratios = [SHUT] + [1.21, 1.49, 1.30, 1.45, 1.25, 1.49999, 1.2] * 4
    assert feed(det, stream(ratios)) == []
    # Crossing the far threshold does fire, even with persistence 1.
    events = feed(det, stream([1.5]))
    assert kinds(events) == ["gap_opening"]
    # And coming back into the band keeps the state: no collapse until R < 1.2.
    assert feed(det, stream([1.3, 1.2, 1.45])) == []
    assert kinds(feed(det, stream([1.19]))) == ["gap_collapse"]


@pytest.mark.parametrize("persistence", [2, 3, 5])
def test_flicker_shorter_than_persistence_does_not_fire(persistence):
    det = EventDetector(T(persistence=persistence, k_star_persistence=100))
    ratios = [SHUT] * persistence
    burst = [OPEN] * (persistence - 1)
    for _ in range(5):
        ratios += burst + [SHUT]
    assert feed(det, stream(ratios)) == []
    # One more open record than the flickers had: it fires exactly once.
    events = feed(det, stream([OPEN] * persistence + [OPEN] * 3))
    assert kinds(events) == ["gap_opening"]
    assert events[0][0] == persistence - 1


def test_band_records_neither_confirm_nor_break_a_candidate():
    """Inside the band there is no evidence: the run of open records continues across it."""
    det = EventDetector(T(persistence=3, k_star_persistence=100))
    feed(det, stream([SHUT] * 3))
    events = feed(det, stream([OPEN, BAND, OPEN, BAND, BAND, OPEN]))
    assert [(i, e.kind) for i, e in events] == [(5, "gap_opening")]


def test_infinite_ratio_counts_as_open_and_nan_as_no_evidence():
    det = EventDetector(T(persistence=2, k_star_persistence=100))
    feed(det, stream([SHUT, SHUT]))
    assert feed(det, stream([math.nan, math.inf, math.nan])) == []
    events = feed(det, stream([math.inf]))
    assert kinds(events) == ["gap_opening"]
    assert events[0][1].ratio_after == math.inf


# ------------------------------------------------------------------ k* shifts


def test_k_star_shift_needs_k_star_persistence_records():
    det = EventDetector(T(persistence=3, k_star_persistence=5))
    ratios = [OPEN] * 30  # the gap state never changes
    ks = [1] * 5 + [2] * 4 + [1] + [2] * 4 + [3] + [2] * 5 + [2] * 3 + [3] * 5 + [3] * 2
    records = stream(ratios, k=ks, start=100, step=1)
    events = feed(det, records)
    assert kinds(events) == ["k_star_shift", "k_star_shift"]
    (i1, e1), (i2, e2) = events
    assert i1 == 19 and e1.step == 119
    assert (e1.k_before, e1.k_after) == (1, 2)
    assert e1.ratio_before == OPEN and e1.ratio_after == OPEN
    assert "from 1 to 2" in e1.message
    assert i2 == 27 and (e2.k_before, e2.k_after) == (2, 3)


def test_k_star_shift_with_persistence_one_fires_on_every_change():
    det = EventDetector(T(persistence=1, k_star_persistence=1))
    events = feed(det, stream([OPEN] * 5, k=[1, 2, 2, 1, 3]))
    assert [(e.k_before, e.k_after) for _, e in events] == [(1, 2), (2, 1), (1, 3)]


# ------------------------------------------------------------------ regimes


def test_regime_changes():
    det = EventDetector(T(persistence=2, k_star_persistence=100))
    regimes = (
        ["plateau"] * 3 + ["transition"] + ["plateau"] + ["transition"] * 3 + [None] * 2 + ["forgetting"] * 2
    )
    events = feed(det, stream([OPEN] * len(regimes), regime=regimes))
    assert kinds(events) == ["regime_change", "regime_change"]
    (i1, e1), (i2, e2) = events
    assert i1 == 6 and "plateau → transition" in e1.message
    assert e1.k_before is None and e1.k_after == 1
    # None (no learning rate) is no evidence: it neither confirms nor breaks the run.
    assert i2 == 11 and "transition → forgetting" in e2.message


def test_all_detectors_can_fire_on_the_same_record():
    det = EventDetector(T(persistence=1, k_star_persistence=1))
    feed(det, stream([SHUT], k=1, regime="plateau"))
    events = feed(det, stream([OPEN], k=2, regime="transition"))
    assert sorted(kinds(events)) == ["gap_opening", "k_star_shift", "regime_change"]


# ------------------------------------------------------------------ persistence of the detector


@pytest.mark.parametrize("cut", [2, 4, 5, 7, 9, 12, 16])
@pytest.mark.parametrize("via_file", [False, True])
def test_state_dict_round_trip_continues_the_stream(cut, via_file):
    """Cut anywhere (mid-candidate included): the resumed detector emits what the straight one would."""
    thresholds = T(persistence=3, k_star_persistence=4)
    ratios = [SHUT] * 3 + [OPEN, OPEN, BAND, OPEN, OPEN] + [SHUT] * 4 + [OPEN] * 2 + [SHUT] * 3 + [OPEN] * 7
    ks = [1] * 6 + [2] * 8 + [3] * 6 + [1] * 4
    regimes = ["plateau"] * 9 + ["transition"] * 10 + ["forgetting"] * 5
    records = stream(ratios, k=ks, regime=regimes)

    straight = EventDetector(thresholds)
    expected = feed(straight, records)
    assert len(expected) >= 4

    first = EventDetector(thresholds)
    before = feed(first, records[:cut])
    state = first.state_dict()
    if via_file:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    else:
        state = copy.deepcopy(state)
    resumed = EventDetector(thresholds)
    resumed.load_state_dict(state)
    after = [(i + cut, e) for i, e in feed(resumed, records[cut:])]
    assert before + after == expected


def test_state_dict_is_a_snapshot():
    det = EventDetector(T(persistence=2))
    feed(det, stream([SHUT, SHUT, OPEN]))
    state = det.state_dict()
    frozen = copy.deepcopy(state)
    feed(det, stream([OPEN, OPEN, SHUT]))
    assert state == frozen


# ------------------------------------------------------------------ thresholds


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"open_ratio": 1.2, "collapse_ratio": 1.2}, "collapse_ratio < open_ratio"),
        ({"open_ratio": 1.1, "collapse_ratio": 1.3}, "collapse_ratio < open_ratio"),
        ({"collapse_ratio": 0.9}, "1 <= collapse_ratio"),
        ({"persistence": 0}, "persistence values must be >= 1, got 0"),
        ({"k_star_persistence": 0}, "persistence values must be >= 1"),
    ],
)
def test_bad_thresholds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EventThresholds(**kwargs)


def test_default_thresholds():
    t = EventThresholds()
    assert (t.open_ratio, t.collapse_ratio, t.persistence, t.k_star_persistence) == (3.0, 1.5, 5, 10)
    assert (t.k_star_margin, t.regime_margin, t.regime_smoothing) == (0.02, 2.0, 50)
    assert EventDetector().thresholds == t


def test_loaded_state_does_not_override_the_configured_persistence():
    """Resuming with new thresholds: the detector must follow its own thresholds, or refuse the state.

    Bug: ``_Debounced.state_dict`` returns ``dict(self.__dict__)``, which includes ``persistence``, and
    ``load_state_dict`` does ``self.__dict__.update(state)``. A detector built with
    ``EventThresholds(persistence=5)`` that loads a state saved under ``persistence=1`` then fires after one
    record while ``detector.thresholds`` still says 5 (the ratio thresholds, read from ``thresholds``,
    do follow the new config: a mix of both). Fix: leave ``persistence`` out of the debouncer's state
    (save only stable/stable_ratio/candidate/count), or raise ValueError when it differs.
    """
    old = EventDetector(T(persistence=1, k_star_persistence=1))
    feed(old, stream([SHUT, SHUT]))
    new = EventDetector(T(persistence=5, k_star_persistence=5))
    try:
        new.load_state_dict(old.state_dict())
    except ValueError:
        return
    assert new.thresholds.persistence == 5
    events = feed(new, stream([OPEN] * 5))
    assert [i for i, _ in events] == [4], "the gap opening must need 5 records, as configured"


def _rec(step, k, ratios, adiabatic=None, lr=None, regime=None):
    return SimpleNamespace(
        step=step, k_star=k, gap_ratio=ratios[k - 1], ratios=ratios, adiabatic=adiabatic, lr=lr, regime=regime
    )


def test_k_star_needs_to_beat_the_current_position_by_the_margin():
    det = EventDetector(T(k_star_persistence=2, k_star_margin=0.1))
    start = [_rec(i, 1, [1.8, 1.3, 1.1]) for i in range(3)]  # k* = 1 learned silently
    near = [_rec(10 + i, 2, [1.60, 1.65, 1.1]) for i in range(5)]  # argmax 2, but only 3% above position 1
    far = [_rec(20 + i, 2, [1.40, 1.80, 1.1]) for i in range(3)]  # 29% above: a real shift
    events = feed(det, start + near + far)
    assert [(i, e.kind, e.k_before, e.k_after) for i, e in events if e.kind == "k_star_shift"] == [
        (len(start) + len(near) + 1, "k_star_shift", 1, 2)
    ]


def test_regime_needs_to_cross_its_cut_off_by_the_margin():
    # Default cut-offs 0.1 and 10 on η·𝒜 with margin 2: entering "forgetting" from "transition" needs
    # η𝒜 > 20, leaving it needs η𝒜 < 5.
    det = EventDetector(T(persistence=2, regime_margin=2.0, regime_smoothing=1))
    lr = 1e-3

    def at(step, eta_a):
        return _rec(step, 1, [2.0, 1.1], adiabatic=eta_a / lr, lr=lr, regime="unused")

    values = [1.0] * 3 + [12.0, 15.0, 18.0] * 2 + [30.0] * 2 + [7.0] * 3 + [4.0] * 2
    events = [e for _, e in feed(det, [at(i, v) for i, v in enumerate(values)]) if e.kind == "regime_change"]
    assert [e.message.split(" (")[0] for e in events] == [
        "adiabatic regime transition → forgetting",
        "adiabatic regime forgetting → transition",
    ]
    assert events[0].ratio_after == 30.0  # regime events carry the smoothed η𝒜, not gap ratios
    assert [e.step for e in events] == [10, 15]


def test_regime_reads_the_median_over_recent_records():
    # Isolated spikes of η𝒜 (the gap touching zero for one step) do not move a smoothed regime.
    det = EventDetector(T(persistence=1, regime_smoothing=5))
    lr = 1e-3
    values = [1.0] * 10 + [500.0, 1.0, 1.0, 800.0, 1.0, 1.0] * 3 + [500.0] * 6
    records = [_rec(i, 1, [2.0, 1.1], adiabatic=v / lr, lr=lr) for i, v in enumerate(values)]
    events = [e for _, e in feed(det, records) if e.kind == "regime_change"]
    # At step 29 the last five values are 800, 1, 1, 500, 500: the median reaches the spikes.
    assert [(e.step, e.message) for e in events] == [
        (29, "adiabatic regime transition → forgetting (median η𝒜 500)")
    ]


def test_a_run_that_starts_inside_the_band_reports_its_first_opening():
    # Regression: R stayed in the hysteresis band for the whole start, so the first clear state was
    # taken silently as the starting state and the opening went unreported.
    det = EventDetector(T(persistence=3, k_star_persistence=100))
    events = feed(det, stream([BAND] * 200 + [OPEN] * 5 + [SHUT] * 5))
    assert kinds(events) == ["gap_opening", "gap_collapse"]


def test_the_regime_smoothing_and_the_reports_trailing_median_are_one_function():
    """The detector's median of recent η𝒜 is trailing_median's last value (report/data.py reuses it)."""
    import numpy as np

    from spectral_edge.report.data import trailing_median as report_median
    from spectral_edge.spectrum.stability import AdiabaticRegimes
    from spectral_edge.tracking.events import TrailingMedian, trailing_median

    assert report_median is trailing_median
    rng = np.random.default_rng(3)
    values = rng.lognormal(size=80)
    values[rng.choice(80, 10, replace=False)] = np.nan
    smoothing = 7
    det = EventDetector(EventThresholds(regime_smoothing=smoothing), AdiabaticRegimes(scale="none"))
    online = []
    for step, v in enumerate(values):
        adiabatic = None if np.isnan(v) else float(v)
        record = SimpleNamespace(
            step=step, k_star=1, gap_ratio=2.0, ratios=None, adiabatic=adiabatic, lr=0.1, regime=None
        )
        det.update(record)
        online.append(det.state_dict()["recent_adiabatic"])
    column = trailing_median(values, smoothing)
    for i, recent in enumerate(online):
        if not np.isnan(values[i]):
            assert column[i] == np.median(recent[-smoothing:])
    median = TrailingMedian(smoothing)
    median.load(online[-1])
    assert median.value == column[~np.isnan(column)][-1]
