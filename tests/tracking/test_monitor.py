"""SpectralMonitor on small real models, against analyze_window of parameter snapshots taken by the test.

The reference never touches the monitor's window: the test copies every trainable parameter after each
step (in float64, flattened in the monitor's layout order), takes the deltas itself, and runs the batch
function ``spectral_edge.spectrum.analyze_window`` (a dense float64 X Xᵀ) on the last W of them.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge.errors import NonFiniteUpdateError, ParameterLayoutError, SpectrumWarning
from spectral_edge.spectrum import analyze_window
from spectral_edge.tracking import SpectralMonitor, SpectralRecord
from tests.sqlite_checks import integrity

N_DATA = 64
BATCH = 8


class MLP(nn.Module):
    """Three named submodules, so the default ``groups="top"`` gives three groups."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(6, 12)
        self.hidden = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.tanh(self.hidden(torch.tanh(self.encoder(x)))))
        if hasattr(self, "extra"):  # a module added after the monitor started
            out = out + self.extra(x)
        return out


def make_batches(
    n_steps: int, seed: int = 1, n_in: int = 6, n_out: int = 3
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_DATA, n_in, generator=g)
    y = torch.randn(N_DATA, n_out, generator=g)
    out = []
    for _ in range(n_steps):
        idx = torch.randint(0, N_DATA, (BATCH,), generator=g)
        out.append((x[idx], y[idx]))
    return out


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch) -> float:
    x, y = batch
    opt.zero_grad()
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()
    return loss.detach().item()


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def flat(model: nn.Module, names) -> np.ndarray:
    """All monitored parameters, float64, flattened in the given (layout) order."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).to(torch.float64) for n in names]).numpy()


def group_columns(mon: SpectralMonitor) -> dict[str, np.ndarray]:
    layout = mon.tracker.layout
    cols: dict[str, list[int]] = {g: [] for g in layout.group_names}
    offset = 0
    for group, numel in zip(layout.groups, layout.numels, strict=True):
        cols[group].extend(range(offset, offset + numel))
        offset += numel
    return {g: np.asarray(c) for g, c in cols.items()}


def dense_delta_c(a: np.ndarray, b: np.ndarray | None) -> float:
    """‖a aᵀ − b bᵀ‖_F from the dense P × P matrix (P is small here)."""
    dc = np.outer(a, a)
    if b is not None:
        dc = dc - np.outer(b, b)
    return float(np.linalg.norm(dc, "fro"))


def assert_sigma_close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Singular values equal up to rtol relative to σ_1 (the error of a Gram-based σ_j scales with λ_1)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * float(expected[0]))


def assert_matches_reference(
    rec: SpectralRecord,
    rows: np.ndarray,
    cols: dict[str, np.ndarray],
    *,
    dropped: np.ndarray | None,
    lr: float | None,
    sigma_rtol: float,
    scalar_rtol: float,
) -> None:
    """One record against analyze_window of the W reference deltas ``rows`` (time order)."""
    w = rows.shape[0]
    ref = analyze_window(rows)
    assert rec.window == w
    assert_sigma_close(rec.singular_values, ref.singular_values, sigma_rtol)
    assert rec.k_star == ref.k_star
    assert rec.rank == ref.rank
    assert rec.k95 == ref.k95
    assert rec.gap_ratio == pytest.approx(ref.gap_ratio, rel=scalar_rtol)
    assert rec.gap == pytest.approx(ref.gap, rel=scalar_rtol)
    assert rec.update_norm == pytest.approx(np.linalg.norm(rows[-1]), rel=scalar_rtol)
    dc = dense_delta_c(rows[-1], dropped)
    assert rec.delta_c_fro == pytest.approx(dc, rel=scalar_rtol)
    assert rec.lr == lr
    if lr is None:
        assert rec.adiabatic is None and rec.regime is None
    else:
        assert rec.adiabatic == pytest.approx(dc / (lr * ref.gap**2), rel=scalar_rtol)
        assert rec.regime in ("plateau", "transition", "forgetting")
    if len(cols) > 1:
        assert set(rec.groups) == set(cols)
        for name, idx in cols.items():
            part = analyze_window(rows[:, idx])
            assert rec.groups[name].k_star == part.k_star, name
            assert rec.groups[name].gap_ratio == pytest.approx(part.gap_ratio, rel=scalar_rtol), name
            assert_sigma_close(rec.groups[name].singular_values, part.singular_values, sigma_rtol)
    else:
        assert rec.groups == {}


def assert_no_nan(rec: SpectralRecord) -> None:
    for key, value in vars(rec).items():
        if isinstance(value, float):
            assert not math.isnan(value), key
        elif isinstance(value, np.ndarray):
            assert not np.any(np.isnan(value)), key
    for name, g in rec.groups.items():
        assert not math.isnan(g.gap_ratio), name
        assert not np.any(np.isnan(g.singular_values)), name


class ReferenceMonitor:
    """The documented monitor semantics, in float64 on snapshots the test takes itself.

    A zero update is not pushed; if the window was full it loses its oldest update. A non-finite update
    empties the window (the next record holds only updates after it), and the next call only takes a new
    snapshot.
    """

    def __init__(self, theta0: np.ndarray, window: int) -> None:
        self.prev = theta0.copy()
        self.window = window
        self.rows: list[np.ndarray] = []
        self.dropped: np.ndarray | None = None
        self.needs_snapshot = False

    def step(self, theta: np.ndarray) -> str:
        if self.needs_snapshot:
            self.prev, self.needs_snapshot = theta.copy(), False
            return "snapshot"
        delta, self.prev = theta - self.prev, theta.copy()
        full = len(self.rows) == self.window
        if not np.all(np.isfinite(delta)) or not np.any(delta):
            self.needs_snapshot = not np.all(np.isfinite(delta))
            if self.needs_snapshot:
                self.rows.clear()
            elif full:
                self.rows.pop(0)
            return "nonfinite" if self.needs_snapshot else "zero"
        self.dropped = self.rows.pop(0) if full else None
        self.rows.append(delta)
        return "record" if len(self.rows) == self.window else "pushed"

    @property
    def x(self) -> np.ndarray:
        return np.asarray(self.rows)


# ------------------------------------------------------------------ records == batch reference


@pytest.mark.parametrize(
    "dtype, sigma_rtol, scalar_rtol",
    [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-10, 1e-9)],
    ids=["float32", "float64"],
)
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_records_match_analyze_window_of_snapshots(opt_name, dtype, sigma_rtol, scalar_rtol):
    window, n_steps = 5, 16
    model = MLP()
    opt = make_optimizer(opt_name, model)
    lr = opt.param_groups[0]["lr"]
    mon = SpectralMonitor(model, window=window, lr=lr, storage_dtype=dtype, chunk_size=50)
    names = mon.tracker.layout.names
    assert set(names) == {n for n, _ in model.named_parameters()}
    assert mon.n_params == sum(p.numel() for p in model.parameters())
    cols = group_columns(mon)
    assert set(cols) == {"encoder", "hidden", "head"}
    ref = ReferenceMonitor(flat(model, names), window)

    records = []
    for step, batch in enumerate(make_batches(n_steps), start=1):
        train_step(model, opt, batch)
        rec = mon.step()
        status = ref.step(flat(model, names))
        if status != "record":
            assert rec is None
            continue
        assert rec is not None and rec.step == step
        assert_matches_reference(
            rec, ref.x, cols, dropped=ref.dropped, lr=lr, sigma_rtol=sigma_rtol, scalar_rtol=scalar_rtol
        )
        assert_no_nan(rec)
        records.append(rec)
    assert [r.step for r in records] == list(range(window, n_steps + 1))
    assert list(mon.records) == records
    assert mon.last_record is records[-1]
    assert mon.events == [] or all(
        e.kind in ("gap_opening", "gap_collapse", "k_star_shift", "regime_change") for e in mon.events
    )


def test_bfloat16_storage_matches_the_rounded_reference():
    """bf16 storage: the records are those of the bf16-rounded deltas (Gram accumulated in float32)."""
    window = 4
    model = MLP()
    opt = make_optimizer("adamw", model)
    mon = SpectralMonitor(model, window=window, lr=1e-2, storage_dtype=torch.bfloat16)
    assert mon.tracker.window.nbytes == window * mon.n_params * 2
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    n = 0
    for batch in make_batches(9):
        train_step(model, opt, batch)
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            rows = torch.from_numpy(ref.x).to(torch.bfloat16).to(torch.float64).numpy()
            dropped = (
                None
                if ref.dropped is None
                else (torch.from_numpy(ref.dropped).to(torch.bfloat16).to(torch.float64).numpy())
            )
            assert_matches_reference(
                rec, rows, cols, dropped=dropped, lr=1e-2, sigma_rtol=1e-6, scalar_rtol=1e-5
            )
            n += 1
    assert n == 6


@pytest.mark.parametrize(
    "groups, expected",
    [
        (2, {"encoder.weight", "encoder.bias", "hidden.weight", "hidden.bias", "head.weight", "head.bias"}),
        ({"body": ["encoder", "hidden."]}, {"body", "other"}),
        (lambda name: name.rsplit(".", 1)[1], {"weight", "bias"}),
    ],
    ids=["depth", "prefixes", "callable"],
)
def test_other_groupings(groups, expected):
    window = 3
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, groups=groups, storage_dtype=torch.float64)
    cols = group_columns(mon)
    assert set(cols) == expected
    names = mon.tracker.layout.names
    ref = ReferenceMonitor(flat(model, names), window)
    n = 0
    for batch in make_batches(5):
        train_step(model, opt, batch)
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=None, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
            n += 1
    assert n == 3


def test_float64_model_with_default_float32_storage():
    """A float64 model with a small learning rate: the float32 window must hold the updates' rounding only.

    Fails through the bug described in tests/tracking/test_window.py::
    test_float64_parameters_are_subtracted_before_rounding: the monitor's window rounds θ and θ_prev to
    float32 before subtracting, so updates of 1e-5 on weights of 0.3 keep only about two significant digits.
    """
    window = 4
    model = MLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    mon = SpectralMonitor(model, window=window, lr=1e-4)  # storage float32, the default
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    n = 0
    for x, y in make_batches(8):
        train_step(model, opt, (x.double(), y.double()))
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=1e-4, sigma_rtol=1e-5, scalar_rtol=1e-4
            )
            n += 1
    assert n == 5


def test_interval_takes_deltas_between_snapshots_interval_steps_apart():
    window, interval, n_steps = 3, 3, 20
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, interval=interval, lr=0.05, storage_dtype=torch.float64)
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    snaps = {0: flat(model, names)}
    got = {}
    for step, batch in enumerate(make_batches(n_steps), start=1):
        train_step(model, opt, batch)
        snaps[step] = flat(model, names)
        rec = mon.step(loss=float(step))
        if rec is not None:
            got[step] = rec
    # Records every `interval` steps, once W deltas (3W steps) are in.
    assert sorted(got) == [9, 12, 15, 18]
    for step, rec in got.items():
        pts = [step - interval * i for i in range(window, -1, -1)]  # W + 1 snapshots, 3 steps apart
        rows = np.diff(np.asarray([snaps[p] for p in pts]), axis=0)
        dropped = snaps[pts[0]] - snaps[pts[0] - interval] if pts[0] - interval >= 0 else None
        assert_matches_reference(
            rec, rows, cols, dropped=dropped, lr=0.05, sigma_rtol=1e-10, scalar_rtol=1e-9
        )
        # Only the metrics of the step that took the update.
        assert dict(rec.metrics) == {"loss": float(step)}


def test_learning_rate_from_optimizer_scheduler_and_callable():
    window, n_steps = 3, 10
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.8**s)
    mon = SpectralMonitor(model, window=window, lr=opt, storage_dtype=torch.float64)
    box = {"lr": 0.5}
    shadow = SpectralMonitor(model, window=window, lr=lambda: box["lr"], storage_dtype=torch.float64)
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    seen_lrs = []
    for step, batch in enumerate(make_batches(n_steps), start=1):
        train_step(model, opt, batch)
        used_lr = opt.param_groups[0]["lr"]
        box["lr"] = 0.5 / step
        rec = mon.step()
        rec_shadow = shadow.step()
        sched.step()
        if ref.step(flat(model, names)) == "record":
            assert rec.lr == used_lr
            seen_lrs.append(rec.lr)
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=used_lr, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
            assert rec_shadow.lr == 0.5 / step
            assert rec_shadow.adiabatic == pytest.approx(rec.adiabatic * used_lr / (0.5 / step), rel=1e-12)
    assert len(set(seen_lrs)) == len(seen_lrs) > 1  # the schedule is visible in the records


def test_no_learning_rate_gives_no_adiabatic_parameter():
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=2, groups=None)
    recs = []
    for batch in make_batches(4):
        train_step(model, opt, batch)
        recs.append(mon.step())
    assert all(r.adiabatic is None and r.regime is None and r.lr is None for r in recs[1:])
    assert all(r.groups == {} for r in recs[1:])


@pytest.mark.parametrize("rate", [None, float("nan"), 0.0])
def test_a_learning_rate_callable_without_a_rate_gives_records_without_adiabatic_parameter(rate):
    """A callable lr that has no rate yet (None, NaN, 0) must not cost the record, only 𝒜."""
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=2, groups=None, lr=lambda: rate, strict=True)
    recs = []
    for batch in make_batches(4):
        train_step(model, opt, batch)
        recs.append(mon.step())
    assert all(r is not None and r.adiabatic is None and r.lr is None for r in recs[1:])


def test_metrics_land_in_the_record():
    model = MLP()
    opt = make_optimizer("adamw", model)
    mon = SpectralMonitor(model, window=2)
    for step, batch in enumerate(make_batches(5), start=1):
        loss = train_step(model, opt, batch)
        rec = mon.step(loss=loss, accuracy=step / 10)
        if step >= 2:
            assert dict(rec.metrics) == {"loss": loss, "accuracy": step / 10}
            assert all(type(v) is float for v in rec.metrics.values())


def test_record_arrays_are_read_only():
    """A record's arrays cannot be changed after the fact (a write-behind store encodes it later)."""
    model = MLP()
    opt = make_optimizer("adamw", model)
    mon = SpectralMonitor(model, window=4)
    for batch in make_batches(5):
        train_step(model, opt, batch)
        rec = mon.step()
    arrays = [rec.singular_values, rec.ratios, rec.alpha, rec.alpha_half]
    arrays += [group.singular_values for group in rec.groups.values()]
    assert rec.groups and all(not a.flags.writeable for a in arrays)


def test_explicit_step_numbers():
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=2)
    steps = []
    for i, batch in enumerate(make_batches(4)):
        train_step(model, opt, batch)
        rec = mon.step(step=1000 + 10 * i)
        if rec is not None:
            steps.append(rec.step)
    assert steps == [1010, 1020, 1030]


def test_attach_gives_one_record_per_optimizer_step_and_log_metrics_reach_the_next_record():
    window, n_steps = 3, 9
    model = MLP()
    opt = make_optimizer("adamw", model)
    mon = SpectralMonitor(model, window=window, lr=opt, storage_dtype=torch.float64)
    handle = mon.attach(opt)
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    for step, batch in enumerate(make_batches(n_steps), start=1):
        mon.log_metrics(tag=float(step))  # before optimizer.step(): the hook files it with this step
        train_step(model, opt, batch)
        assert mon.step_count == step
        if ref.step(flat(model, names)) == "record":
            rec = mon.last_record
            assert rec.step == step
            assert dict(rec.metrics) == {"tag": float(step)}
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=1e-2, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
    assert len(mon.records) == n_steps - window + 1
    # log_metrics after the step: they appear in the next record.
    mon.log_metrics(late=1.0)
    train_step(model, opt, make_batches(1, seed=9)[0])
    assert dict(mon.last_record.metrics) == {"late": 1.0}

    mon.detach()
    count = len(mon.records)
    train_step(model, opt, make_batches(1, seed=10)[0])
    assert len(mon.records) == count and mon.step_count == n_steps + 1
    handle.remove()  # removing twice is harmless


# ------------------------------------------------------------------ bad updates


def test_nonfinite_update_is_skipped_with_one_event_and_one_warning_and_monitoring_recovers():
    window = 4
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, lr=0.05, storage_dtype=torch.float64)
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    batches = iter(make_batches(30))
    step = 0

    def advance(train=True):
        nonlocal step
        step += 1
        if train:
            train_step(model, opt, next(batches))
        rec = mon.step()
        status = ref.step(flat(model, names))
        if status == "record":
            assert rec is not None and rec.step == step
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=0.05, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
            assert_no_nan(rec)
        else:
            assert rec is None
        return status

    for _ in range(6):
        advance()
    assert len(mon.records) == 3

    weight = model.hidden.weight
    saved = weight.detach().clone()
    with pytest.warns(SpectrumWarning, match="NaN or Inf") as caught:
        train_step(model, opt, next(batches))
        with torch.no_grad():
            weight[2, 3] = float("nan")
        assert advance(train=False) == "nonfinite"
        assert advance(train=False) == "snapshot"  # the parameter is still NaN: a NaN snapshot
        with torch.no_grad():
            weight[0, 0] = float("inf")
        assert advance(train=False) == "nonfinite"
        with torch.no_grad():
            weight.copy_(saved)
    assert sum(issubclass(w.category, SpectrumWarning) for w in caught) == 1
    events = [e for e in mon.events if e.kind == "nonfinite_update"]
    assert len(events) == 1 and events[0].step == 7
    assert "NaN or Inf" in events[0].message
    # Regression: the message says the window restarts, but the window kept its W - 1 older updates and
    # the first record after the NaN mixed them with new ones. Now it restarts empty.
    assert mon.tracker.window.count == len(ref.rows) == 0

    statuses = [advance() for _ in range(8)]
    assert statuses[:5] == ["snapshot", "pushed", "pushed", "pushed", "record"]
    assert statuses[5:] == ["record"] * 3
    assert len(mon.records) == 3 + 4

    # A second burst later gets its own event (the warning is not repeated).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            weight[1, 1] = float("nan")
        assert advance(train=False) == "nonfinite"
        with torch.no_grad():
            weight.copy_(saved)
    assert len([e for e in mon.events if e.kind == "nonfinite_update"]) == 2


def test_nonfinite_update_raises_in_strict_mode():
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=3, strict=True)
    train_step(model, opt, make_batches(1)[0])
    mon.step()
    with torch.no_grad():
        model.head.bias[0] = float("inf")
    with pytest.raises(NonFiniteUpdateError, match="NaN or Inf"):
        mon.step()
    assert issubclass(NonFiniteUpdateError, FloatingPointError)


def test_zero_update_gives_an_event_and_a_warning():
    window = 3
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, storage_dtype=torch.float64)
    names = mon.tracker.layout.names
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    batches = iter(make_batches(10))
    for _ in range(4):
        train_step(model, opt, next(batches))
        mon.step()
        ref.step(flat(model, names))
    with pytest.warns(SpectrumWarning, match="no monitored parameter moved") as caught:
        assert mon.step() is None  # nothing moved since the last call
        assert mon.step() is None
    assert ref.step(flat(model, names)) == "zero"
    assert ref.step(flat(model, names)) == "zero"
    assert sum(issubclass(w.category, SpectrumWarning) for w in caught) == 1
    zero_events = [e for e in mon.events if e.kind == "zero_update"]
    assert [e.step for e in zero_events] == [5]
    for _ in range(3):
        train_step(model, opt, next(batches))
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=None, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
        else:
            assert rec is None
    assert len(mon.records) == 2 + 3  # the zero update cost the full window its oldest row only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 1}, "window must be an int >= 2, got 1"),
        ({"window": 2.5}, "window must be an int >= 2"),
        ({"interval": 0}, "interval must be an int >= 1, got 0"),
        ({"interval": -2}, "interval must be an int >= 1"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be > 0"),
        ({"groups": "bogus"}, "groups must be"),
        ({"groups": 0}, "group depth must be >= 1"),
        ({"gap_units": "nats"}, "gap_units"),
        ({"k95_threshold": 0.0}, "k95_threshold"),
        ({"storage_dtype": torch.float16}, "storage_dtype"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralMonitor(MLP(), **kwargs)


def test_nothing_trainable_raises():
    model = nn.Linear(2, 2)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to monitor"):
        SpectralMonitor(model, window=3)


# ------------------------------------------------------------------ degenerate and changing models


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("n_in", [1, 3])
def test_model_smaller_than_the_window(n_in, dtype):
    """P < W: the window has rank ≤ P; records exist, hold no NaN, and need no warning.

    Regression: with float32 storage (the default) the Gram is accumulated in float32, so its "zero"
    eigenvalues are round-off of order 1e-8·λ_1. With the float64 tolerance ``rank_rtol=1e-13`` they
    counted as directions (rank 5–6 for P = 1, σ_2 ≈ 1e-4 σ_1, gap_ratio ≈ 8e3 instead of inf) and each
    record clipped a negative eigenvalue with a SpectrumWarning. The monitor must use a tolerance that
    matches the dtype the Gram was accumulated in.
    """
    window = 10
    torch.manual_seed(0)
    model = nn.Linear(n_in, 1, bias=False)
    p = n_in
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, window=window, lr=0.1, storage_dtype=dtype)
    names = mon.tracker.layout.names
    ref = ReferenceMonitor(flat(model, names), window)
    records = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in make_batches(15, n_in=n_in, n_out=1):
            train_step(model, opt, batch)
            rec = mon.step()
            if ref.step(flat(model, names)) == "record":
                assert rec is not None
                records.append((rec, ref.x.copy()))
    assert [str(w.message) for w in caught] == []
    assert len(records) == 6
    for rec, rows in records:
        assert_no_nan(rec)
        expected = analyze_window(rows)
        assert expected.rank == p
        assert rec.rank == p, f"rank {rec.rank} > P = {p}; σ = {rec.singular_values}"
        assert np.all(rec.singular_values[p:] == 0.0)
        assert rec.k_star == expected.k_star
        assert rec.gap_ratio == expected.gap_ratio or rec.gap_ratio == pytest.approx(
            expected.gap_ratio, rel=1e-5
        )
        sigma_rtol = 1e-10 if dtype == torch.float64 else 1e-6
        assert_sigma_close(rec.singular_values, expected.singular_values, sigma_rtol)


def test_frozen_parameters_are_excluded():
    window = 3
    model = MLP()
    model.encoder.weight.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    mon = SpectralMonitor(model, window=window, lr=0.05, storage_dtype=torch.float64)
    frozen = "frozen (requires_grad=False)"
    assert mon.excluded == {"encoder.weight": frozen, "head.bias": frozen}
    names = mon.tracker.layout.names
    assert set(names) == {"encoder.bias", "hidden.weight", "hidden.bias", "head.weight"}
    assert mon.n_params == 12 + 144 + 12 + 36
    assert mon.config()["excluded"] == mon.excluded
    cols = group_columns(mon)
    ref = ReferenceMonitor(flat(model, names), window)
    n = 0
    for batch in make_batches(6):
        train_step(model, opt, batch)
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=0.05, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
            n += 1
    assert n == 4


def _add_extra(model: MLP, opt: torch.optim.Optimizer) -> None:
    torch.manual_seed(5)
    model.extra = nn.Linear(6, 3)
    opt.add_param_group({"params": list(model.extra.parameters())})


def test_parameter_added_after_start_restarts_the_window_on_the_new_set():
    window = 3
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, lr=0.05, storage_dtype=torch.float64)
    p_before = mon.n_params
    batches = iter(make_batches(12))
    for _ in range(5):
        train_step(model, opt, next(batches))
        mon.step()
    assert len(mon.records) == 3

    _add_extra(model, opt)
    train_step(model, opt, next(batches))
    with pytest.warns(SpectrumWarning, match="monitored parameters changed") as caught:
        assert mon.step() is None
    assert sum(issubclass(w.category, SpectrumWarning) for w in caught) == 1
    changed = [e for e in mon.events if e.kind == "parameters_changed"]
    assert len(changed) == 1 and changed[0].step == 6
    assert mon.n_params == p_before + 6 * 3 + 3
    names = mon.tracker.layout.names
    assert {"extra.weight", "extra.bias"} <= set(names)
    assert mon.tracker.window.count == 0

    cols = group_columns(mon)
    assert set(cols) == {"encoder", "hidden", "head", "extra"}
    ref = ReferenceMonitor(flat(model, names), window)  # the new snapshot is taken at step 6
    got = []
    for step in range(7, 13):
        train_step(model, opt, next(batches))
        rec = mon.step()
        if ref.step(flat(model, names)) == "record":
            assert rec.step == step
            assert_matches_reference(
                rec, ref.x, cols, dropped=ref.dropped, lr=0.05, sigma_rtol=1e-10, scalar_rtol=1e-9
            )
            got.append(step)
        else:
            assert rec is None
    assert got == [9, 10, 11, 12]


def test_parameter_added_in_strict_mode_raises():
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=3, strict=True)
    train_step(model, opt, make_batches(1)[0])
    mon.step()
    _add_extra(model, opt)
    with pytest.raises(ParameterLayoutError, match="monitored parameters changed"):
        mon.step()


# ------------------------------------------------------------------ resuming


def _save(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("interval, stop", [(1, 7), (3, 10), (3, 12)])
def test_resumed_monitor_gives_the_same_records(interval, stop):
    """Stop after ``stop`` steps, rebuild model, optimizer and monitor from saved state, carry on."""
    window, n_steps = 4, 20
    batches = make_batches(n_steps)

    def fresh():
        model = MLP(seed=3)
        opt = make_optimizer("adamw", model)
        mon = SpectralMonitor(model, window=window, interval=interval, lr=opt, storage_dtype=torch.float64)
        return model, opt, mon

    model, opt, mon = fresh()
    straight = {}
    for step, batch in enumerate(batches, start=1):
        train_step(model, opt, batch)
        rec = mon.step(loss=float(step))
        if rec is not None:
            straight[rec.step] = rec

    model, opt, mon = fresh()
    for batch in batches[:stop]:
        train_step(model, opt, batch)
        mon.step()
    saved = _save({"model": model.state_dict(), "opt": opt.state_dict(), "monitor": mon.state_dict()})
    del model, opt, mon

    state = torch.load(saved, weights_only=True)
    model, opt, mon = fresh()  # a new model object, initialised differently, then loaded
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    mon.load_state_dict(state["monitor"])
    assert mon.step_count == stop
    resumed = {}
    for step, batch in enumerate(batches[stop:], start=stop + 1):
        train_step(model, opt, batch)
        rec = mon.step(loss=float(step))
        if rec is not None:
            resumed[rec.step] = rec

    after = {s: r for s, r in straight.items() if s > stop}
    assert sorted(resumed) == sorted(after) and after
    for step, rec in resumed.items():
        ref = after[step]
        np.testing.assert_allclose(rec.singular_values, ref.singular_values, rtol=1e-12, atol=0)
        assert rec.k_star == ref.k_star
        assert rec.delta_c_fro == pytest.approx(ref.delta_c_fro, rel=1e-12)
        assert rec.adiabatic == pytest.approx(ref.adiabatic, rel=1e-12)
        assert rec.metrics == ref.metrics
        for name in ref.groups:
            assert rec.groups[name].k_star == ref.groups[name].k_star


def test_one_saved_state_resumes_two_monitors_alike():
    """The same in-memory monitor state, loaded twice (e.g. a retried resume), gives the same records.

    Bug: ``UpdateWindow.load_state_dict`` keeps the state's own ``prev`` tensors as its snapshot
    (``p.to(device)`` is a no-op on the same device and dtype), and each push refreshes the snapshot in
    place with ``old.copy_(theta)``. So the first resumed monitor overwrites
    ``state["window"]["prev"]``, and the second one starts from the first one's last parameters: its first
    update is wrong. Fix: clone in ``load_state_dict`` (``p.to(device, copy=True)`` or ``.clone()``).
    """
    window = 3
    batches = make_batches(10)
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, storage_dtype=torch.float64)
    for batch in batches[:5]:
        train_step(model, opt, batch)
        mon.step()
    state = mon.state_dict()
    weights = copy.deepcopy(model.state_dict())

    runs = []
    for _ in range(2):
        resumed_model = MLP(seed=7)
        resumed_model.load_state_dict(weights)
        resumed_opt = make_optimizer("sgd", resumed_model)
        resumed = SpectralMonitor(resumed_model, window=window, storage_dtype=torch.float64)
        resumed.load_state_dict(state)
        recs = []
        for batch in batches[5:]:
            train_step(resumed_model, resumed_opt, batch)
            recs.append(resumed.step())
        runs.append(recs)
    first, second = runs
    assert [r.step for r in first] == [r.step for r in second] == list(range(6, 11))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(b.singular_values, a.singular_values, rtol=1e-12)


def test_resumed_without_window_refills_first():
    window = 3
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window)
    for batch in make_batches(5):
        train_step(model, opt, batch)
        mon.step()
    state = mon.state_dict(include_window=False)
    again = SpectralMonitor(model, window=window)
    again.load_state_dict(copy.deepcopy(state))
    assert again.tracker.window.count == 0
    out = []
    for batch in make_batches(4, seed=2):
        train_step(model, opt, batch)
        out.append(again.step())
    assert [r is not None for r in out] == [False, False, True, True]
    assert out[2].step == 8
    with pytest.raises(ValueError, match="version"):
        again.load_state_dict({"version": 99})


# ------------------------------------------------------------------ run store


def test_records_and_events_reach_the_run_store(tmp_path):
    store_module = pytest.importorskip("spectral_edge.store")
    window = 3
    model = MLP()
    opt = make_optimizer("sgd", model)
    mon = SpectralMonitor(model, window=window, lr=opt, store=tmp_path / "run", storage_dtype=torch.float64)
    batches = iter(make_batches(8))
    for _ in range(5):
        loss = train_step(model, opt, next(batches))
        mon.step(loss=loss)
    with pytest.warns(SpectrumWarning, match="no monitored parameter moved"):
        mon.step()
    for _ in range(3):
        train_step(model, opt, next(batches))
        mon.step()
    records = list(mon.records)
    events = list(mon.events)
    mon.close()

    store = store_module.RunStore(tmp_path / "run", mode="r")
    try:
        assert len(store) == len(records) == 3 + 3
        rows = store.records()
        assert [r["step"] for r in rows] == [r.step for r in records]
        for row, rec in zip(rows, records, strict=True):
            np.testing.assert_allclose(row["singular_values"], rec.singular_values, rtol=1e-15)
            assert row["k_star"] == rec.k_star
        stored_events = store.events()
        assert [(e.kind, e.step) for e in stored_events] == [(e.kind, e.step) for e in events]
        assert ("zero_update", 6) in [(e.kind, e.step) for e in stored_events]
        assert store.config()["monitor"]["window"] == window
    finally:
        store.close()


def test_interval_counts_calls_whatever_the_step_numbers():
    # Regression: with 0-based step numbers the first call returned early, so the first window row
    # spanned two optimizer steps. The interval now counts calls; step= only labels the record.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(3))
    mon = SpectralMonitor([p], window=2, storage_dtype=torch.float64)
    for step, delta in enumerate([[1.0, 0, 0], [0, 2.0, 0]]):
        with torch.no_grad():
            p.add_(torch.tensor(delta))
        record = mon.step(step=step)
    assert record is not None and record.step == 1
    np.testing.assert_array_equal(mon.tracker.window.updates().numpy(), [[1.0, 0, 0], [0, 2.0, 0]])


def test_reshaped_tensor_list_restarts_without_raising():
    # Regression: a monitor built from a list of tensors raised ParameterLayoutError into training
    # when a tensor changed shape, even with strict=False.
    p = torch.nn.Parameter(torch.zeros(2, 3))
    mon = SpectralMonitor([p], window=2)
    p.data = torch.zeros(3, 2)
    mon.recheck_parameters()  # what torch's registration hooks do for a module
    with pytest.warns(SpectrumWarning, match="changed"):
        assert mon.step() is None
    assert mon.events[-1].kind == "parameters_changed"


def test_a_failing_store_never_reaches_training(tmp_path):
    from spectral_edge import RunStore

    store = RunStore(tmp_path / "run", mode="w")
    p = torch.nn.Parameter(torch.zeros(4))
    mon = SpectralMonitor([p], window=2, store=store)
    store.close()  # every later write fails
    with pytest.warns(SpectrumWarning, match="failed"):
        for _ in range(3):
            with torch.no_grad():
                p.add_(torch.randn(4))
            mon.step()
        mon.log_eval(3, acc=1.0)
    assert len(mon.records) == 2  # kept in memory


_FULL_DISK_TRAINING = """
import json, os, resource, signal, sys, warnings
import torch
from spectral_edge import RunStore, SpectralMonitor, StoreWriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
run, limit, recover = sys.argv[1], sys.argv[2], sys.argv[3] == "recover"
torch.manual_seed(0)
p = torch.nn.Parameter(torch.zeros(6))
mon = SpectralMonitor([p], window=2, store=run, history=50)


def train(n):
    for _ in range(n):
        with torch.no_grad():
            p.add_(torch.randn(6))
        mon.step()


train(11)  # 10 records
mon.store.flush()
wal = os.path.getsize(os.path.join(run, "run.db-wal"))
# "full": no file may grow (a full disk); "readonly": no byte may be written at all.
resource.setrlimit(resource.RLIMIT_FSIZE, (wal if limit == "full" else 0, resource.RLIM_INFINITY))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    train(1100)
    try:
        mon.store.flush()  # the last record's write is refused before the limit goes, if it does
    except StoreWriteError:
        pass
    held = mon.store.backlog().n_held
    if recover:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report = mon.close()
print(json.dumps({
    "warnings": [str(w.message) for w in caught],
    "events": [(e.step, e.kind, e.message) for e in mon.events],
    "held_before_close": held,
    "records_in_memory": len(mon.records),
    "report": {"held": report.held, "lost": report.lost},
    "unwritten_is_report": mon.unwritten is report,
}))
"""


@pytest.mark.parametrize(("limit", "recover"), [("full", "stay"), ("readonly", "stay"), ("full", "recover")])
def test_a_full_disk_is_reported_honestly_and_never_stops_training(tmp_path, limit, recover):
    """Regression (issue 14, item 4): on a full disk the monitor's one warning said records "stay in
    memory" while all but the last `history` were gone, and no event said so. Now the store holds up to
    1000 refused writes and retries them; an event and a warning come when writes start failing and when
    they start being lost, with the store's counts, and close() returns what never reached the file.

    RLIMIT_FSIZE makes the kernel refuse the writes (EFBIG), for a non-root and a root user alike: at the
    WAL's size no file may grow (a full disk); at 0 no byte may be written (a read-only store)."""
    import json
    import os
    import subprocess
    import sys

    from spectral_edge import RunStore

    pytest.importorskip("resource", reason="RLIMIT_FSIZE is POSIX")
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_TRAINING, str(run), limit, recover],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    store_events = [
        (step, kind, message) for step, kind, message in out["events"] if kind.startswith("store_")
    ]
    assert [kind for _, kind, _ in store_events] == ["store_write_failed", "store_writes_lost"]
    failed, lost = (message for _, _, message in store_events)
    assert "held for retry: 1 record; lost: none" in failed and "up to 1000 writes" in failed
    assert "holds 1000 unwritten writes, its limit" in lost and "lost: 1 " in lost
    warned = out["warnings"]
    assert warned[:2] == ["spectral-edge: " + failed, "spectral-edge: " + lost] and len(warned) == 3
    assert out["held_before_close"] == 1000 and out["records_in_memory"] == 50
    assert out["unwritten_is_report"] and out["report"]["held"] == {}
    # Refused: the 1100 records after the limit and every event filed with them (spectral ones too).
    n_events = sum(step >= 12 for step, _, _ in out["events"])
    n_lost = sum(out["report"]["lost"].values())
    if recover == "recover":  # close() wrote the 1000 held writes: only the overflow is lost
        assert n_lost == 1100 + n_events - 1000
        assert f"closed without storing {out['report']['lost']['record']} records" in warned[2]
    else:
        assert out["report"]["lost"] == {"record": 1100, "event": n_events}
        assert f"closed without storing 1100 records, {n_events} events" in warned[2]
    assert "mon.records keeps the latest 50 records" in warned[2]

    assert integrity(run / "run.db") == "ok"
    with RunStore(run, mode="r") as store:
        steps = [row["step"] for row in store.records()]
        assert steps[:10] == list(range(2, 12))  # everything committed before the failure
        stored_events = len(store.events())
        if recover == "recover":  # the held ones in the order they were filed
            assert len(steps) + stored_events == 10 + sum(step < 12 for step, _, _ in out["events"]) + 1000
            assert steps == sorted(steps) and steps[10] == 12
        else:
            assert len(steps) == 10


def test_a_second_monitor_on_the_same_store_is_refused_and_the_first_loses_nothing(tmp_path):
    """Regression (issue 14, item 3): a second SpectralMonitor(store=path) opened before the first had
    written a record deleted run.db under the first, which wrote on into the deleted file."""
    from spectral_edge import RunStore
    from spectral_edge.errors import RunStoreError

    p, q = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    first = SpectralMonitor([p], window=2, store=tmp_path / "run")
    with pytest.raises(
        RunStoreError, match=r"already open for writing by another SpectralMonitor or RunStore"
    ):
        SpectralMonitor([q], window=2, store=tmp_path / "run")
    for _ in range(37):
        with torch.no_grad():
            p.add_(torch.randn(4))
        first.step()
    assert first.close().n_lost == 0
    with RunStore(tmp_path / "run") as store:
        assert [row["step"] for row in store.records()] == list(range(2, 38))


def _run_steps(mon: SpectralMonitor, p: torch.nn.Parameter, n: int) -> None:
    for _ in range(n):
        with torch.no_grad():
            p.add_(torch.randn(p.shape))
        mon.step()


def test_store_path_with_records_names_resume_and_overwrite_and_each_works(tmp_path):
    """Issue 17: SpectralMonitor(store=path) on an existing run pointed to mode='a' / overwrite=True,
    which only RunStore takes; the monitor now takes resume= and overwrite= and its error names them."""
    from spectral_edge import RunStore
    from spectral_edge.errors import RunStoreError

    p = torch.nn.Parameter(torch.zeros(4))
    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", kernel="torch")
    _run_steps(mon, p, 5)
    mon.close()

    with pytest.raises(RunStoreError, match=r"4 records.*resume=True to append.*overwrite=True to replace"):
        SpectralMonitor([p], window=2, store=tmp_path / "run", kernel="torch")
    with RunStore(tmp_path / "run") as store:
        assert len(store) == 4  # the refusal touched nothing

    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", resume=True, kernel="torch")
    _run_steps(mon, p, 3)
    mon.close()
    with RunStore(tmp_path / "run") as store:
        assert [row["step"] for row in store.records()] == [2, 3, 4, 5, 2, 3]  # appended

    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", overwrite=True, kernel="torch")
    _run_steps(mon, p, 3)
    mon.close()
    with RunStore(tmp_path / "run") as store:
        assert [row["step"] for row in store.records()] == [2, 3]  # replaced


def test_resume_and_overwrite_are_checked(tmp_path):
    from spectral_edge import RunStore

    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="resume=True .* or overwrite=True .*, not both"):
        SpectralMonitor([p], window=2, store=tmp_path / "run", resume=True, overwrite=True)
    with (
        RunStore(tmp_path / "other", mode="w") as store,
        pytest.raises(ValueError, match=r"resume=True applies to a store given as a path.*mode='a'"),
    ):
        SpectralMonitor([p], window=2, store=store, resume=True)
    with pytest.raises(ValueError, match="overwrite must be True or False, got 'yes'"):
        SpectralMonitor([p], window=2, store=tmp_path / "run", overwrite="yes")
    assert not (tmp_path / "run").exists()


def test_close_marks_the_run_finished_and_resuming_unmarks_it(tmp_path):
    from spectral_edge import RunStore

    p = torch.nn.Parameter(torch.zeros(4))
    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", kernel="torch")
    _run_steps(mon, p, 3)
    with RunStore(tmp_path / "run") as store:
        assert "finished_at" not in store.meta()  # still training
    mon.close()
    with RunStore(tmp_path / "run") as store:
        finished = store.meta()["finished_at"]
    assert finished.endswith("+00:00")
    mon = SpectralMonitor([p], window=2, store=tmp_path / "run", resume=True, kernel="torch")
    with RunStore(tmp_path / "run") as store:
        assert "finished_at" not in store.meta()
    mon.close()
