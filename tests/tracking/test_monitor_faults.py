"""The monitor under faults a training loop meets: never hang, never lose, never mislead (issue 14).

Each test states the mechanism of the bug it pins:

* parameter sets that change mid-run (items 2, 6): ``requires_grad_()`` fires no torch hook and the
  parameter set was re-read only every 50 pushes, so an unfrozen layer was left out of up to 49 records;
  complex and meta-device parameters were dropped as if frozen, with an info log at most;
* warnings under ``-W error`` (item 5): a monitoring warning became an exception in the training loop;
* non-finite updates (item 6): the window kept its older updates though the message said it restarts;
* learning rates (item 8): ``lr=optimizer`` read only its first group, and ``attach()`` neither supplied
  the rate nor recognised a second, manual ``step()``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge.errors import NonFiniteUpdateError, SpectrumWarning
from spectral_edge.spectrum import analyze_window
from spectral_edge.tracking import SpectralMonitor
from tests.tracking.test_monitor import MLP


def batches(n: int, seed: int = 1, n_in: int = 6, n_out: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, n_in, generator=g), torch.randn(8, n_out, generator=g)) for _ in range(n)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch) -> None:
    x, y = batch
    opt.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    opt.step()


def flat(model: nn.Module, names) -> np.ndarray:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).to(torch.float64) for n in names]).numpy().copy()


def changes(mon: SpectralMonitor) -> list:
    return [e for e in mon.events if e.kind == "parameters_changed"]


# ------------------------------------------------------------------ item 2: the set re-read every step


def test_a_layer_unfrozen_mid_run_is_monitored_from_the_next_step():
    """Regression: requires_grad_(True) fires no hook and the layout was checked every 50 pushes, so the
    records left the unfrozen layer out (update norm 0.0130 against a true 0.0178) for up to 49 steps."""
    window = 3
    model = MLP()
    model.encoder.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # SGD skips parameters without a gradient
    mon = SpectralMonitor(model, window=window, lr=0.05, storage_dtype=torch.float64)
    assert set(mon.excluded) == {"encoder.weight", "encoder.bias"}
    data = iter(batches(20))
    for _ in range(4):
        train_step(model, opt, next(data))
        mon.step()
    assert len(mon.records) == 2

    model.encoder.requires_grad_(True)  # progressive unfreezing
    train_step(model, opt, next(data))
    with pytest.warns(SpectrumWarning, match="monitored parameters changed at step 5") as caught:
        assert mon.step() is None  # the window restarts on the new set at once
    assert sum(issubclass(w.category, SpectrumWarning) for w in caught) == 1
    message = str(caught[0].message)
    assert "encoder.weight now monitored (was frozen (requires_grad=False))" in message
    assert len(changes(mon)) == 1 and changes(mon)[0].step == 5
    assert mon.excluded == {}
    names = mon.tracker.layout.names
    assert {"encoder.weight", "encoder.bias"} <= set(names)

    thetas = [flat(model, names)]
    for _ in range(window):
        train_step(model, opt, next(data))
        rec = mon.step()
        thetas.append(flat(model, names))
    expected = analyze_window(np.diff(np.asarray(thetas), axis=0))
    np.testing.assert_allclose(rec.singular_values, expected.singular_values, rtol=1e-10)
    assert rec.update_norm == pytest.approx(float(np.linalg.norm(thetas[-1] - thetas[-2])), rel=1e-12)


def test_a_layer_frozen_mid_run_leaves_the_records_at_once_and_each_change_warns_once():
    window = 2
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = SpectralMonitor(model, window=window, storage_dtype=torch.float64)
    data = iter(batches(20))
    for _ in range(3):
        train_step(model, opt, next(data))
        mon.step()

    model.head.requires_grad_(False)
    train_step(model, opt, next(data))
    with pytest.warns(SpectrumWarning, match=r"head.weight left out \(frozen"):
        assert mon.step() is None
    assert mon.excluded == {
        "head.weight": "frozen (requires_grad=False)",
        "head.bias": "frozen (requires_grad=False)",
    }
    assert not {"head.weight", "head.bias"} & set(mon.tracker.layout.names)
    assert mon.config()["excluded"] == mon.excluded

    model.head.requires_grad_(True)
    with pytest.warns(SpectrumWarning, match="head.weight now monitored"):
        mon.step()
    # The same changes again: an event each time, the warning once per distinct change.
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        for trainable in (False, True, False):
            model.head.requires_grad_(trainable)
            train_step(model, opt, next(data))
            mon.step()
    assert len(changes(mon)) == 5
    assert not again


def test_freezing_every_parameter_pauses_monitoring_until_one_is_trainable_again():
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = SpectralMonitor(model, window=2)
    data = iter(batches(20))
    train_step(model, opt, next(data))
    mon.step()
    model.requires_grad_(False)
    with pytest.warns(SpectrumWarning, match="monitoring pauses"):
        assert mon.step() is None
    assert mon.step() is None and mon.monitored_parameters() == []
    model.hidden.requires_grad_(True)
    with pytest.warns(SpectrumWarning, match="hidden.weight now monitored"):
        assert mon.step() is None
    assert set(mon.tracker.layout.names) == {"hidden.weight", "hidden.bias"}
    for _ in range(2):
        train_step(model, opt, next(data))
        rec = mon.step()
    assert rec is not None and mon.n_params == 12 * 12 + 12


def test_a_tied_model_unfrozen_mid_run_still_counts_the_tied_weight_once():
    """The per-step re-read goes through the same merge of tensors sharing memory (count_once)."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.mix = nn.Linear(4, 4)
            self.lm_head = nn.Linear(4, 7, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.lm_head(torch.tanh(self.mix(self.embed(idx))))

    torch.manual_seed(0)
    model = Tied()
    model.mix.requires_grad_(False)
    mon = SpectralMonitor(model, window=2)
    assert mon.merged == {"lm_head.weight": "embed.weight"} and mon.n_params == 28
    model.mix.requires_grad_(True)
    with pytest.warns(SpectrumWarning, match="mix.weight now monitored"):
        mon.step()
    assert mon.merged == {"lm_head.weight": "embed.weight"}
    assert mon.n_params == 28 + 16 + 4  # the embedding once


def test_a_parameter_of_a_tensor_list_frozen_mid_run_is_seen_at_once():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    mon = SpectralMonitor([("a", a), ("b", b)], window=2)
    b.requires_grad_(False)
    with pytest.warns(SpectrumWarning, match=r"b left out \(frozen"):
        mon.step()
    assert list(mon.tracker.layout.names) == ["a"] and mon.excluded == {"b": "frozen (requires_grad=False)"}


def test_a_parameter_deleted_mid_run_is_seen_at_the_next_step(monkeypatch):
    import spectral_edge.tracking.monitor as monitor_module

    model = MLP()
    mon = SpectralMonitor(model, window=2)
    # The periodic full re-read must not be what finds it.
    monkeypatch.setattr(monitor_module, "LAYOUT_CHECK_EVERY", 10**9)
    del model.head.bias  # no torch hook sees a deletion
    with pytest.warns(SpectrumWarning, match=r"head.bias left out \(no longer in the model\)"):
        mon.step()
    assert "head.bias" not in mon.tracker.layout.names


# ------------------------------------------------------------------ item 6: nothing left out silently


def test_complex_and_integer_parameters_are_named_with_their_reason_and_complex_ones_warned_about():
    model = MLP()
    model.phase = nn.Parameter(torch.zeros(4, dtype=torch.complex64))
    model.codes = nn.Parameter(torch.zeros(4, dtype=torch.int64), requires_grad=False)
    model.encoder.requires_grad_(False)
    with pytest.warns(SpectrumWarning, match="1 parameter tensor is not monitored") as caught:
        mon = SpectralMonitor(model, window=2)
    assert sum(issubclass(w.category, SpectrumWarning) for w in caught) == 1
    message = str(caught[0].message)
    assert "'phase' (complex dtype torch.complex64" in message and "view_as_real" in message
    assert mon.excluded["phase"].startswith("complex dtype torch.complex64")
    assert mon.excluded["codes"] == "not floating point (torch.int64)"
    assert mon.excluded["encoder.weight"] == "frozen (requires_grad=False)"
    assert mon.config()["excluded"] == mon.excluded


def test_a_meta_device_model_is_an_error_that_names_the_parameters_and_the_fix():
    """Regression: a model on the meta device was accepted and no step ever produced a record (every push
    failed with "Cannot copy out of meta tensor", one warning about an internal error)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to("meta")
    with pytest.raises(ValueError, match="hold no data") as info:
        SpectralMonitor(model, window=2)
    message = str(info.value)
    assert "'0.weight' (on the meta device" in message and "'1.bias'" in message
    assert "to_empty" in message


def test_a_partly_meta_model_leaves_those_parameters_out_with_a_warning():
    model = MLP()
    model.extra = nn.Linear(2, 2, device="meta")
    with pytest.warns(SpectrumWarning, match="2 parameter tensors are not monitored"):
        mon = SpectralMonitor(model, window=2)
    assert mon.excluded == {
        "extra.weight": "on the meta device: it holds no data",
        "extra.bias": "on the meta device: it holds no data",
    }


def test_a_lazy_module_is_monitored_once_its_first_forward_pass_initialises_it():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.LazyLinear(2))
    with pytest.warns(SpectrumWarning, match="uninitialized"):
        mon = SpectralMonitor(model, window=2)
    assert set(mon.excluded) == {"2.weight", "2.bias"}
    model(torch.randn(5, 3))  # materialises the lazy layer in place: same objects, no torch hook
    with pytest.warns(SpectrumWarning, match="2.weight now monitored"):
        mon.step()
    assert mon.excluded == {} and mon.n_params == 3 * 4 + 4 + 4 * 2 + 2
    with pytest.raises(ValueError, match="forward pass"):
        SpectralMonitor(nn.LazyLinear(2), window=2)


def test_a_finite_update_near_1e19_is_pushed_not_called_nan():
    """Float32 accumulation overflowed ‖δ‖² for P = 300 updates of 1e19 and reported them as NaN;
    the float64 accumulation pushes them."""
    p = nn.Parameter(torch.zeros(300))
    mon = SpectralMonitor([p], window=2)
    for scale in (1e19, -2e19):
        with torch.no_grad():
            p.add_(scale)
        rec = mon.step()
    assert not [e for e in mon.events if e.kind == "nonfinite_update"]
    assert rec is not None and rec.update_norm == pytest.approx(2e19 * 300**0.5, rel=1e-6)
    assert rec.singular_values[0] == pytest.approx(np.sqrt(5 * 300) * 1e19, rel=1e-6)


def test_after_a_nonfinite_update_the_next_record_holds_only_later_updates():
    """Regression: "the window restarts", said the warning, but the next record held W - 1 updates from
    before the NaN: a record spanning the divergence."""
    window = 3
    p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    mon = SpectralMonitor([p], window=window, storage_dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(12, 4, generator=g, dtype=torch.float64)

    def move(i):
        with torch.no_grad():
            p.add_(deltas[i])
        return mon.step()

    for i in range(4):
        move(i)
    saved = p.detach().clone()
    with torch.no_grad():
        p[1] = float("nan")
    with pytest.warns(SpectrumWarning, match="the window restarts"):
        assert mon.step() is None
    with torch.no_grad():
        p.copy_(saved)
    assert mon.step() is None  # the fresh snapshot
    assert [move(i) for i in (4, 5)] == [None, None]
    rec = move(6)
    expected = analyze_window(deltas[4:7].numpy())
    np.testing.assert_allclose(rec.singular_values, expected.singular_values, rtol=1e-12)


# ------------------------------------------------------------------ item 5: no warning escapes


@pytest.fixture
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _nan(p: torch.Tensor) -> None:
    with torch.no_grad():
        p.view(-1)[0] = float("nan")


def test_warnings_as_errors_never_escape_step(warnings_are_errors, caplog):
    """Regression: under python -W error one NaN update raised SpectrumWarning out of step()."""
    p = nn.Parameter(torch.zeros(3))
    mon = SpectralMonitor([p], window=2)
    _nan(p)
    with caplog.at_level(logging.WARNING, logger="spectral_edge"):
        assert mon.step() is None
    assert [e.kind for e in mon.events] == ["nonfinite_update"]
    assert any("NaN or Inf" in r.getMessage() and "SpectrumWarning" in r.getMessage() for r in caplog.records)


def test_warnings_as_errors_never_escape_the_attach_hook_log_metrics_or_close(warnings_are_errors, caplog):
    class WarningSink:
        """A sink whose every call warns (a logging library's deprecation notice) and whose close fails."""

        def write_record(self, record):
            warnings.warn("write_record is deprecated", DeprecationWarning, stacklevel=1)

        def write_event(self, event):
            warnings.warn("write_event is deprecated", DeprecationWarning, stacklevel=1)

        def write_eval(self, step, values):
            pass

        def close(self):
            raise OSError("disk gone")

    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sink = WarningSink()
    mon = SpectralMonitor(model, window=2, sinks=[sink])
    mon.attach(opt)
    with caplog.at_level(logging.WARNING, logger="spectral_edge"):
        for batch in batches(3):
            mon.log_metrics(loss=1.0)
            train_step(model, opt, batch)  # the hook runs step(): the sink warns inside it
        _nan(model.head.bias)
        mon.log_metrics(loss=float("nan"))
        opt.step()  # no gradients changed: step() runs on the NaN update
        mon.close()
    assert len(mon.records) == 2  # the warning inside the sink did not cost the records
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "write_record is deprecated" in logged and "NaN or Inf" in logged and "disk gone" in logged


def test_strict_mode_still_raises_its_errors_under_warnings_as_errors(warnings_are_errors):
    p = nn.Parameter(torch.zeros(3))
    mon = SpectralMonitor([p], window=2, strict=True)
    _nan(p)
    with pytest.raises(NonFiniteUpdateError):
        mon.step()


def test_warnings_still_reach_ordinary_filters():
    p = nn.Parameter(torch.zeros(3))
    mon = SpectralMonitor([p], window=2)
    _nan(p)
    with pytest.warns(SpectrumWarning, match="NaN or Inf"):
        mon.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _nan(p)
        mon.step()  # ignored: neither shown nor logged


# ------------------------------------------------------------------ item 8: learning rates


def _two_groups(model: MLP, rates: tuple[float, float]) -> torch.optim.Optimizer:
    body = [*model.encoder.parameters(), *model.hidden.parameters()]  # 84 + 156 = 240 scalars
    return torch.optim.SGD(
        [{"params": body, "lr": rates[0]}, {"params": list(model.head.parameters()), "lr": rates[1]}]
    )


def _records(model, opt, mon, n=3):
    for batch in batches(n):
        train_step(model, opt, batch)
        rec = mon.step()
    return rec


def test_groups_at_different_rates_give_the_rate_weighted_by_monitored_scalars_with_one_warning():
    """Regression: lr=optimizer read only param_groups[0] (0.1 here, 1e-4 elsewhere), silently."""
    model = MLP()
    opt = _two_groups(model, (1e-4, 0.1))
    mon = SpectralMonitor(model, window=2, lr=opt)
    with pytest.warns(SpectrumWarning, match="different learning rates") as caught:
        rec = _records(model, opt, mon)
    message = str(caught[0].message)
    assert "group 0: lr 0.0001 over 240 monitored scalars" in message
    assert "group 1: lr 0.1 over 39 monitored scalars" in message
    assert rec.lr == pytest.approx((240 * 1e-4 + 39 * 0.1) / 279, rel=1e-12)
    assert rec.adiabatic is not None


def test_a_group_at_lr_zero_is_left_out_of_the_rate_with_a_warning():
    """Regression: the first group at lr 0 made 𝒜 None for the whole run, without a word."""
    model = MLP()
    opt = _two_groups(model, (0.0, 0.05))
    mon = SpectralMonitor(model, window=2, lr=opt)
    with pytest.warns(
        SpectrumWarning, match=r"groups at lr 0 at step 2 \(group 0: lr 0 over 240 monitored scalars\)"
    ):
        rec = _records(model, opt, mon)
    assert rec.lr == 0.05 and rec.adiabatic is not None


def test_every_group_at_lr_zero_gives_no_adiabatic_parameter_and_says_why():
    model = MLP()
    opt = _two_groups(model, (0.0, 0.0))
    mon = SpectralMonitor(model, window=2, lr=opt)
    with pytest.warns(SpectrumWarning, match="every parameter group of the optimizer has lr 0"):
        for _ in range(3):
            with torch.no_grad():
                model.head.bias.add_(0.1)
            rec = mon.step()
    assert rec.adiabatic is None and rec.lr is None and rec.regime is None


def test_attach_supplies_the_rate_when_lr_is_none():
    """Regression: lr=None with attach(optimizer) left 𝒜 None though the optimizer was right there."""
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = SpectralMonitor(model, window=2)
    mon.attach(opt)
    for batch in batches(3):
        train_step(model, opt, batch)
    rec = mon.last_record
    assert rec.lr == 0.05 and rec.adiabatic is not None and rec.regime is not None
    assert mon.lr is None and mon.config()["lr"] == "SGD (attach)"
    mon.detach()
    assert mon.config()["lr"] is None


def test_a_manual_step_after_attach_is_named_not_taken_for_gradient_accumulation():
    """Regression: the hook took the update, the user's own step() then found nothing moved: every call
    returned None with a warning about gradient accumulation."""
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = SpectralMonitor(model, window=2, lr=opt)
    mon.attach(opt)
    returned = []
    with pytest.warns(SpectrumWarning) as caught:
        for batch in batches(4):
            train_step(model, opt, batch)
            returned.append(mon.step(loss=1.0))
    messages = [str(w.message) for w in caught if issubclass(w.category, SpectrumWarning)]
    assert len(messages) == 1
    assert (
        "step() was called by the optimizer hook and again by you at step 1; with attach() do not call "
        "step() yourself" in messages[0]
    )
    assert "metrics (loss) were not recorded" in messages[0]
    assert not [e for e in mon.events if e.kind == "zero_update"]
    assert mon.step_count == 4 and len(mon.records) == 3
    assert returned[0] is None and returned[1:] == list(mon.records)


def test_a_monitor_whose_config_cannot_be_stored_leaves_its_store_unlocked(tmp_path):
    """The constructor fails after opening the store (a config that is not JSON): the store it opened is
    closed, so a corrected retry on the same path works."""
    from spectral_edge import RunStore

    params = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(TypeError):
        SpectralMonitor(params, window=2, store=tmp_path / "run", groups=None, config={"bad": object()})
    with RunStore(tmp_path / "run", mode="a") as store:
        assert len(store) == 0
