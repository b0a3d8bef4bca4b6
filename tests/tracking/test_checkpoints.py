"""analyze_checkpoints: records from saved checkpoints equal analyze_window of the deltas between them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge.errors import SpectrumWarning
from spectral_edge.spectrum import analyze_window
from spectral_edge.tracking import SpectralMonitor, analyze_checkpoints
from spectral_edge.tracking.checkpoints import load_state_dict, step_from_path

safetensors_torch = pytest.importorskip("safetensors.torch")

EVERY = 5  # training steps between checkpoints
LR = 0.1


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def train(n_checkpoints: int, seed: int = 0, model: nn.Module | None = None):
    """Train a tiny model; yield (step, state_dict copy) every EVERY steps, step 0 included."""
    model = model if model is not None else tiny_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 2, generator=g)
    out = [(0, {k: v.detach().clone() for k, v in model.state_dict().items()}, opt)]
    for step in range(1, EVERY * (n_checkpoints - 1) + 1):
        idx = torch.randint(0, 64, (8,), generator=g)
        opt.zero_grad()
        (model(x[idx]) - y[idx]).pow(2).mean().backward()
        opt.step()
        if step % EVERY == 0:
            out.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}, opt))
    return out


def save(fmt: str, directory: Path, step: int, state: dict, opt) -> Path:
    if fmt == "pt":
        path = directory / f"ckpt_step_{step}.pt"
        torch.save(state, path)
    elif fmt == "nested":
        path = directory / f"epoch=0-step={step}.pth"
        torch.save({"state_dict": state, "optimizer": opt.state_dict(), "global_step": step}, path)
    elif fmt == "safetensors":
        path = directory / f"model_{step:06d}.safetensors"
        safetensors_torch.save_file(state, str(path))
    elif fmt == "hf":
        folder = directory / f"checkpoint-{step}"
        folder.mkdir()
        safetensors_torch.save_file(state, str(folder / "model.safetensors"))
        path = folder
    else:
        raise AssertionError(fmt)
    return path


def flat(state: dict, names) -> np.ndarray:
    return torch.cat([state[n].reshape(-1).to(torch.float64) for n in names]).numpy()


def check_records(records, snapshots, window, *, sigma_rtol, scalar_rtol, lr=None):
    """Each record against analyze_window of the W deltas ending at its checkpoint."""
    names = sorted(snapshots[0][1])  # any fixed column order: σ and k* do not depend on it
    thetas = np.asarray([flat(s, names) for _, s, _ in snapshots])
    deltas = np.diff(thetas, axis=0)  # (n − 1, P)
    assert len(records) == len(snapshots) - window
    cols = {
        g: np.asarray([i for i, c in enumerate(_columns(snapshots[0][1], names)) if c == g])
        for g in ("0", "2")
    }
    for i, rec in enumerate(records):
        end = i + window  # deltas[i : i + W] end at checkpoint i + W
        rows = deltas[i:end]
        ref = analyze_window(rows)
        assert rec.step == snapshots[end][0]
        np.testing.assert_allclose(
            rec.singular_values, ref.singular_values, rtol=0, atol=sigma_rtol * ref.singular_values[0]
        )
        assert rec.k_star == ref.k_star
        assert rec.gap_ratio == pytest.approx(ref.gap_ratio, rel=scalar_rtol)
        dropped = deltas[i - 1] if i > 0 else None
        dc = np.outer(rows[-1], rows[-1]) - (np.outer(dropped, dropped) if dropped is not None else 0.0)
        assert rec.delta_c_fro == pytest.approx(np.linalg.norm(dc, "fro"), rel=scalar_rtol)
        if lr is not None:
            assert rec.adiabatic == pytest.approx(
                np.linalg.norm(dc, "fro") / (lr * ref.gap**2), rel=scalar_rtol
            )
        for g, idx in cols.items():
            part = analyze_window(rows[:, idx])
            assert rec.groups[g].k_star == part.k_star
            assert rec.groups[g].gap_ratio == pytest.approx(part.gap_ratio, rel=scalar_rtol)


def _columns(state, names):
    """The top-level group of every scalar, in the flattening order of ``names``."""
    out = []
    for n in names:
        out += [n.split(".")[0]] * state[n].numel()
    return out


@pytest.mark.parametrize("fmt", ["pt", "nested", "safetensors", "hf"])
def test_records_match_analyze_window_of_checkpoint_deltas(tmp_path, fmt):
    window, n = 4, 8
    snapshots = train(n)
    paths = [save(fmt, tmp_path, step, state, opt) for step, state, opt in snapshots]
    assert [step_from_path(p if fmt != "hf" else p / "model.safetensors") for p in paths] == [
        s for s, _, _ in snapshots
    ]
    records = analyze_checkpoints(paths, window=window, lr=LR)
    check_records(records, snapshots, window, sigma_rtol=1e-6, scalar_rtol=1e-5, lr=LR)
    assert [r.step for r in records] == [EVERY * i for i in range(window, n)]


def test_progress_is_reported_per_checkpoint_and_at_the_end(tmp_path):
    snapshots = train(6)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    calls = []
    records = analyze_checkpoints(paths, window=3, lr=LR, progress=lambda *a: calls.append(a))
    steps = [s for s, _, _ in snapshots]
    assert calls == [(i, 5, f"step {steps[i + 1]}") for i in range(5)] + [(5, 5, f"{len(records)} records")]


def test_the_progress_bar_draws_in_place_on_a_terminal_and_sparsely_in_a_log():
    import io

    from spectral_edge.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        bar = ProgressBar(stream)
        for done in range(101):
            bar(done, 100, "step")
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("100/100 [00:00<00:00] step\x1b[K\n")
    lines = log.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("100/100") and "\r" not in log.getvalue()


def test_float64_storage_and_mixed_formats(tmp_path):
    window, n = 3, 9
    snapshots = train(n, seed=4)
    fmts = ["pt", "nested", "safetensors", "hf"]
    paths = [save(fmts[i % 4], tmp_path, step, state, opt) for i, (step, state, opt) in enumerate(snapshots)]
    records = analyze_checkpoints([str(p) for p in paths], window=window, lr=LR, storage_dtype=torch.float64)
    check_records(records, snapshots, window, sigma_rtol=1e-10, scalar_rtol=1e-9, lr=LR)


def test_explicit_steps(tmp_path):
    window, n = 2, 5
    snapshots = train(n)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    records = analyze_checkpoints(paths, window=window, steps=[100, 200, 300, 400, 500])
    assert [r.step for r in records] == [300, 400, 500]
    with pytest.raises(ValueError, match="got 3 steps for 5 checkpoints"):
        analyze_checkpoints(paths, window=window, steps=[1, 2, 3])


def test_paths_without_step_numbers_keep_the_given_order(tmp_path):
    """Files named without a number, in a folder whose name holds one ("run7").

    Bug: ``step_from_path`` fell back to the *folder* name when the stem held no integer, so every
    checkpoint ``run7/first.pt``, ``run7/second.pt``, … was read as step 7. Only a checkpoint folder's
    standard file (``checkpoint-N/model.safetensors``) borrows its folder's step now; these name none, so
    they are taken in the order given and filed under 0, 1, 2, …
    """
    window, n = 2, 5
    snapshots = train(n)
    run = tmp_path / "run7"
    run.mkdir()
    words = ["first", "second", "third", "fourth", "fifth"]
    paths = []
    for word, (_, state, _) in zip(words, snapshots, strict=True):
        torch.save(state, run / f"{word}.pt")
        paths.append(run / f"{word}.pt")
    assert [step_from_path(p) for p in paths] == [None] * n
    records = analyze_checkpoints(paths, window=window)
    assert [r.step for r in records] == [2, 3, 4]
    positions = [(i, state, opt) for i, (_, state, opt) in enumerate(snapshots)]
    check_records(records, positions, window, sigma_rtol=1e-6, scalar_rtol=1e-5)


def test_step_from_path():
    assert step_from_path("runs/a/checkpoint-1200/model.safetensors") == 1200
    assert step_from_path("runs/a/checkpoint-1200") == 1200
    assert step_from_path("ckpt_step_400.pt") == 400
    assert step_from_path("epoch=3-step=9000.ckpt") == 9000
    assert step_from_path("ckpt-500.safetensors") == 500
    assert step_from_path("step_500_v2.pt") == 500  # the number after "step", not the last one
    assert step_from_path("model_000400.safetensors") == 400  # no step word: the last integer
    assert step_from_path("final.pt") is None
    assert step_from_path("run7/final.pt") is None  # a plain file never borrows its folder's number


def test_step_from_hf_trainer_state(tmp_path):
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 520, "epoch": 1.0}))
    assert step_from_path(folder) == step_from_path(folder / "model.safetensors") == 520
    (folder / "trainer_state.json").write_text("{}")  # no global_step: the folder's name
    assert step_from_path(folder) == 500


# ------------------------------------------------------------------ step order


def test_lexicographic_order_gives_the_records_of_the_step_order(tmp_path):
    """Regression: ``sorted(glob("out/checkpoint-*"))`` sorts names, not steps (checkpoint-10 before
    checkpoint-5), and the differences between checkpoints out of order are not updates: R came out 3-7
    times too large, without a warning. The checkpoints are now sorted by the step each one names."""
    window, n = 3, 10
    snapshots = train(n)
    for step, state, opt in snapshots:
        save("hf", tmp_path, step, state, opt)
    lexicographic = sorted(str(p) for p in tmp_path.glob("checkpoint-*"))
    assert [Path(p).name for p in lexicographic[:3]] == ["checkpoint-0", "checkpoint-10", "checkpoint-15"]
    by_step = [tmp_path / f"checkpoint-{step}" for step, _, _ in snapshots]
    records = analyze_checkpoints(lexicographic, window=window)
    reference = analyze_checkpoints(by_step, window=window)
    assert [r.step for r in records] == [r.step for r in reference] == [EVERY * i for i in range(window, n)]
    for got, want in zip(records, reference, strict=True):
        np.testing.assert_array_equal(got.singular_values, want.singular_values)
        assert got.gap_ratio == want.gap_ratio
    check_records(records, snapshots, window, sigma_rtol=1e-6, scalar_rtol=1e-5)


def test_hf_trainer_state_orders_folders_named_without_steps(tmp_path):
    window, n = 2, 5
    snapshots = train(n)
    paths = []
    for word, (step, state, _) in zip(["e", "d", "c", "b", "a"], snapshots, strict=True):
        folder = tmp_path / f"run-{word}"
        folder.mkdir()
        safetensors_torch.save_file(state, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        paths.append(folder)
    records = analyze_checkpoints(sorted(paths), window=window)  # run-a (the last) first
    assert [r.step for r in records] == [EVERY * i for i in range(window, n)]
    check_records(records, snapshots, window, sigma_rtol=1e-6, scalar_rtol=1e-5)


def test_steps_that_do_not_increase_are_refused_with_the_steps_in_the_message(tmp_path):
    snapshots = train(5)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    with pytest.raises(
        ValueError,
        match=r"steps must strictly increase, got 100, 300, 200, 400, 500: ckpt_step_5.pt \(step 300\) then "
        r"ckpt_step_10.pt \(step 200\); pass the paths in training order",
    ):
        analyze_checkpoints(paths, window=2, steps=[100, 300, 200, 400, 500])
    with pytest.raises(ValueError, match=r"got 0, 5, 5, 15, 20: .*\(step 5\) then .*\(step 5\)"):
        analyze_checkpoints(paths, window=2, steps=[0, 5, 5, 15, 20])
    with pytest.raises(ValueError, match="steps must be integers, got 2.5"):
        analyze_checkpoints(paths, window=2, steps=[0, 1, 2.5, 3, 4])


def test_a_step_named_twice_is_refused(tmp_path):
    snapshots = train(5)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    copy = tmp_path / "backup_step_10.pt"
    copy.write_bytes(paths[2].read_bytes())
    with pytest.raises(
        ValueError,
        match=r"got 0, 5, 10, 10, 15, 20: ckpt_step_10.pt \(step 10\) then backup_step_10.pt \(step 10\); "
        "keep one checkpoint per step",
    ):
        analyze_checkpoints([*paths, copy], window=2)


def test_some_paths_naming_a_step_and_others_none_is_refused(tmp_path):
    snapshots = train(5)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    final = tmp_path / "final.pt"
    final.write_bytes(paths[-1].read_bytes())
    with pytest.raises(ValueError, match=r"1 of 6 checkpoints name no step \(final.pt\).*Pass steps="):
        analyze_checkpoints([*paths, final], window=2)
    with pytest.warns(SpectrumWarning, match="no monitored parameter moved"):  # final.pt is the last again
        records = analyze_checkpoints([*paths, final], window=2, steps=[0, 5, 10, 15, 20, 25])
    assert [r.step for r in records] == [10, 15, 20]


@pytest.mark.parametrize("as_type", [str, Path])
def test_a_folder_gives_its_checkpoints_in_step_order(tmp_path, as_type):
    """Regression: a folder passed as a string was iterated character by character."""
    window, n = 3, 10
    snapshots = train(n)
    paths = [save("hf", tmp_path, step, state, opt) for step, state, opt in snapshots]
    records = analyze_checkpoints(as_type(tmp_path), window=window, lr=LR)
    reference = analyze_checkpoints(paths, window=window, lr=LR)
    assert [r.step for r in records] == [r.step for r in reference] == [EVERY * i for i in range(window, n)]
    for got, want in zip(records, reference, strict=True):
        np.testing.assert_array_equal(got.singular_values, want.singular_values)
    with pytest.raises(ValueError, match="steps= applies to a list of checkpoint paths, not to a folder"):
        analyze_checkpoints(as_type(tmp_path), window=window, steps=list(range(n)))
    single = save("pt", tmp_path, 999, snapshots[0][1], None)
    with pytest.raises(ValueError, match="ckpt_step_999.pt is one checkpoint file; pass the folder"):
        analyze_checkpoints(as_type(single), window=window)


def test_matches_the_online_monitor(tmp_path):
    """Checkpoints written every step give the online monitor's records (float64 storage)."""
    window, n = 3, 8
    model = tiny_model(2)
    mon = SpectralMonitor(model, window=window, lr=LR, storage_dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(3)
    paths = [tmp_path / "step_0.pt"]
    torch.save(model.state_dict(), paths[0])
    online = []
    for step in range(1, n):
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        rec = mon.step()
        if rec is not None:
            online.append(rec)
        paths.append(tmp_path / f"step_{step}.pt")
        torch.save(model.state_dict(), paths[-1])
    offline = analyze_checkpoints(paths, window=window, lr=LR, storage_dtype=torch.float64)
    assert [r.step for r in offline] == [r.step for r in online]
    for a, b in zip(offline, online, strict=True):
        np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-12)
        assert a.k_star == b.k_star
        assert a.adiabatic == pytest.approx(b.adiabatic, rel=1e-10)


def test_float_buffers_are_not_taken_for_parameters(tmp_path):
    """A model with BatchNorm: its checkpoints hold running statistics beside the parameters.

    Bug (a mismatch with the docstring "as the online monitor would have produced them"):
    ``load_state_dict`` keeps every floating-point tensor of a checkpoint, so ``analyze_checkpoints``
    puts the BatchNorm buffers ``running_mean``/``running_var`` into the window, while the online monitor
    watches parameters only. The buffers move every step, so σ, k* and ‖ΔC‖ differ from the online
    records. Fix: leave out buffers offline (at least the well-known ``running_mean``, ``running_var``,
    ``num_batches_tracked``), or accept ``names=``/``model=`` to say which tensors are parameters.
    """
    window, n = 3, 7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))
    mon = SpectralMonitor(model, window=window, storage_dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(3)
    paths = [tmp_path / "step_0.pt"]
    torch.save(model.state_dict(), paths[0])
    online = []
    for step in range(1, n):
        x, y = 3.0 + torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        online.append(mon.step())
        paths.append(tmp_path / f"step_{step}.pt")
        torch.save(model.state_dict(), paths[-1])
    online = [r for r in online if r is not None]
    offline = analyze_checkpoints(paths, window=window, storage_dtype=torch.float64)
    assert [r.step for r in offline] == [r.step for r in online]
    for a, b in zip(offline, online, strict=True):
        np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-10)


def test_too_few_checkpoints(tmp_path):
    snapshots = train(4)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    with pytest.raises(ValueError, match=r"W=4 updates needs at least 5 checkpoints, got 4"):
        analyze_checkpoints(paths, window=4)
    with pytest.raises(ValueError, match="at least 3 checkpoints, got 0"):
        analyze_checkpoints([], window=2)


def test_mismatched_tensor_names(tmp_path):
    snapshots = train(4)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    state = dict(snapshots[2][1])
    state["0.weight_renamed"] = state.pop("0.weight")
    torch.save(state, paths[2])
    with pytest.raises(
        ValueError,
        match=r"does not hold the same tensors as .*missing \['0.weight'\], "
        r"extra \['0.weight_renamed'\]",
    ):
        analyze_checkpoints(paths, window=2)


def test_mismatched_tensor_shapes(tmp_path):
    """Same names, different shapes: an error, even when the number of elements agrees.

    Bug: ``analyze_checkpoints`` compares only the set of names; ``UpdateWindow._flatten`` then checks the
    number of elements, not the shape. A checkpoint whose ``0.weight`` is (4, 8) instead of (8, 4) (another
    architecture with the same names) is flattened and subtracted element by element from a differently
    laid out tensor, without a word. Fix: compare ``tuple(state[n].shape)`` with the first checkpoint's
    shapes (``tracker.layout.shapes``) next to the name check and raise the same kind of ValueError.
    """
    snapshots = train(4)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    state = dict(snapshots[2][1])
    state["0.weight"] = state["0.weight"].T.contiguous()  # (4, 8): same numel
    torch.save(state, paths[2])
    with pytest.raises(ValueError, match="0.weight"):
        analyze_checkpoints(paths, window=2)

    state["0.weight"] = torch.zeros(3, 3)  # another numel
    torch.save(state, paths[2])
    with pytest.raises(ValueError, match="0.weight"):
        analyze_checkpoints(paths, window=2)


def test_interval_is_refused(tmp_path):
    snapshots = train(4)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    with pytest.raises(ValueError, match="interval does not apply"):
        analyze_checkpoints(paths, window=2, interval=2)


def test_identical_checkpoints_give_a_zero_update_warning(tmp_path):
    snapshots = train(5)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    paths.insert(3, paths[2])  # the same checkpoint twice: nothing moved between them
    with pytest.warns(SpectrumWarning, match="no monitored parameter moved"):
        records = analyze_checkpoints(paths, window=2, steps=list(range(len(paths))))
    assert len(records) == 3  # 4 real deltas and a zero one that costs the full window its oldest row


# ------------------------------------------------------------------ load_state_dict


def test_load_state_dict_formats_and_errors(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.randn(2), "count": torch.tensor(3)}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"model": state, "epoch": 1}, tmp_path / "nested.pt")
    safetensors_torch.save_file(state, str(tmp_path / "plain.safetensors"))
    for name in ("plain.pt", "nested.pt", "plain.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == {"w", "b"}  # integer tensors are left out
        assert torch.equal(loaded["w"], state["w"])

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint file in"):
        load_state_dict(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save({"count": torch.tensor(1)}, tmp_path / "ints.pt")
    with pytest.raises(ValueError, match="no floating-point tensors"):
        load_state_dict(tmp_path / "ints.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")


def test_the_first_checkpoint_is_the_snapshot_so_no_checkpoint_is_copied(tmp_path, monkeypatch):
    """Regression: the monitor's constructor snapshots with a copy, so building it from the first
    checkpoint briefly held two copies of it. The tracker is now given the loaded checkpoint's own
    tensors with ``copy=False``: they become the snapshot; the records are unchanged (the tests above)."""
    import spectral_edge.tracking.checkpoints as ckpt

    loaded, seen = [], []
    real_load = ckpt.load_state_dict

    def load(path):
        loaded.append(real_load(path))
        return loaded[-1]

    class Spy(ckpt.SpectralTracker):
        def __init__(self, named, **kwargs):
            seen.append((dict(named), kwargs["copy"]))
            super().__init__(named, **kwargs)

    monkeypatch.setattr(ckpt, "load_state_dict", load)
    monkeypatch.setattr(ckpt, "SpectralTracker", Spy)
    snapshots = train(4)
    paths = [save("pt", tmp_path, step, state, opt) for step, state, opt in snapshots]
    records = ckpt.analyze_checkpoints(paths, window=2)
    assert len(records) == 2
    assert len(seen) == 1 and seen[0][1] is False
    assert all(t is loaded[0][name] for name, t in seen[0][0].items())


def test_unreadable_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    for name in ("cut.pt", "cut.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"PK\x03\x04 not really a checkpoint")
        with pytest.raises(ValueError, match=f"cannot read the checkpoint .*{name}"):
            load_state_dict(path)


def test_sharded_checkpoint_folder_is_read_whole(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state = load_state_dict(tmp_path)
    assert sorted(state) == ["a", "b"] and state["b"].shape == (3,)
