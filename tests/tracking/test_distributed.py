"""The monitor across processes (torch.distributed, gloo on loopback): DDP, FSDP1, FSDP2, and plain replicas.

Each process pushes its part of the parameters and one all-reduce per push completes the Gram row
(``tracking/distributed.py``). The reference is a single-process tracker over the same trajectory: rank 0
gathers the full parameters after every step, and the records every process made must equal the
reference's to 1e-9 (float64 windows), the same on every rank. A process that dies or stalls must make the
others raise DistributedMonitorError within the timeout, not hang.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge import RunStore
from spectral_edge.tracking import MonitorConfig, SpectralMonitor, SpectralTracker
from spectral_edge.tracking.distributed import Distributed
from tests.tracking.ranks import run_ranks

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)

WINDOW = 4
LR = 1e-2


class Net(nn.Module):
    """Three top-level modules, so that the default grouping ("top") gives three group spectra."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 24)
        self.body = nn.Sequential(nn.Tanh(), nn.Linear(24, 24), nn.Tanh())
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x)))


def _wrap(model: Net, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for part in (model.embed, model.body, model.head):
            fully_shard(part)
        return fully_shard(model)
    if mode in ("fsdp1", "fsdp1_flat", "fsdp1_noshard"):
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        no_shard = mode == "fsdp1_noshard"
        return FullyShardedDataParallel(
            model,
            use_orig_params=mode != "fsdp1_flat",
            device_id=torch.device("cpu"),
            auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
            sharding_strategy=ShardingStrategy.NO_SHARD if no_shard else ShardingStrategy.FULL_SHARD,
        )
    assert mode == "replicas"  # every process trains the same model on the same data, no collectives
    return model


def _full_parameters(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The whole model's parameters as float64 copies, by their unwrapped names (collective under FSDP)."""
    if mode == "ddp":
        return {n: p.detach().double().clone() for n, p in model.module.named_parameters()}
    if mode == "fsdp2":
        return {n: p.full_tensor().detach().double().clone() for n, p in model.named_parameters()}
    if mode in ("fsdp1", "fsdp1_flat", "fsdp1_noshard"):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model):
            inner = model.module
            return {
                n.replace("_fsdp_wrapped_module.", ""): p.detach().double().clone()
                for n, p in inner.named_parameters()
            }
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


def train(
    rank: int,
    world: int,
    folder: Path,
    *,
    mode: str,
    steps: int = 9,
    stop_at: int | None = None,
    how: str = "die",
    timeout: float = 30.0,
    sketch_dim: int | None = None,
) -> dict[str, Any]:
    """Train Net for ``steps`` steps under ``mode`` with a distributed monitor; rank 1 dies or stalls at
    ``stop_at`` right before the monitor's step."""
    torch.manual_seed(0)
    model = _wrap(Net(), mode)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    mon = SpectralMonitor(
        model,
        window=WINDOW,
        lr=opt,
        storage_dtype=torch.float64,
        distributed=Distributed(timeout=timeout),
        store=folder / "run",
        sketch_dim=sketch_dim,
    )
    # Each process sees its own data, except plain replicas, which must stay equal.
    gen = torch.Generator().manual_seed(100 + (0 if mode == "replicas" else rank))
    full = [_full_parameters(model, mode)]
    records = []
    for step in range(1, steps + 1):
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 1 and step == stop_at:
            if how == "die":
                os._exit(3)
            time.sleep(timeout + 20)  # alive, but no longer calling the monitor
            os._exit(4)
        record = mon.step(loss=loss.item())
        full.append(_full_parameters(model, mode))
        if record is not None:
            records.append(record.to_dict())
    config = mon.config()
    mon.close()
    return {"records": records, "full": full if rank == 0 else None, "config": config}


def _reference(full: list[dict[str, torch.Tensor]], sketch_dim: int | None = None) -> list[dict[str, Any]]:
    """The records of one process tracking the gathered whole-model trajectory."""
    config = MonitorConfig(window=WINDOW, storage_dtype=torch.float64, sketch_dim=sketch_dim)
    tracker = SpectralTracker(list(full[0].items()), config=config)
    records = []
    for step, params in enumerate(full[1:], start=1):
        result = tracker.observe(params, step=step, lr=LR)
        if result.record is not None:
            records.append(result.record.to_dict())
    return records


def _assert_close(got: Any, want: Any, where: str = "record") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple, np.ndarray)) or isinstance(want, float):
        np.testing.assert_allclose(
            np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-9, atol=1e-300, err_msg=where
        )
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _results(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for rank, out in enumerate(outcomes):
        assert "result" in out, f"rank {rank} failed: {out.get('error', out)}"
    return [out["result"] for out in outcomes]


def _check_against_one_process(
    results: list[dict[str, Any]], folder: Path, world: int, sketch_dim: int | None = None
) -> None:
    want = _reference(results[0]["full"], sketch_dim)
    assert len(want) == 9 - WINDOW + 1
    for rank, result in enumerate(results):
        got = result["records"]
        assert len(got) == len(want), f"rank {rank}"
        for a, b in zip(got, want, strict=True):
            assert a["metrics"].keys() == {"loss"}
            _assert_close({**a, "metrics": {}}, b, f"rank {rank} step {b['step']}")
        # Every process computes the same numbers from the same summed Gram (each has its own loss).
        assert [{**r, "metrics": {}} for r in got] == [{**r, "metrics": {}} for r in results[0]["records"]]
    assert len(want[0]["groups"]) == 3  # embed, body, head: the unwrapped model's groups
    split = results[0]["config"]["distributed"]
    p = sum(t.numel() for t in results[0]["full"][0].values())
    assert split["world_size"] == world and sum(split["process_params"]) == p
    assert results[0]["config"]["n_params"] == p
    with RunStore(folder / "run") as store:  # rank 0 alone wrote it
        assert [r["step"] for r in store.records()] == [r["step"] for r in want]


@pytest.mark.parametrize("mode", ["replicas", "ddp", "fsdp2", "fsdp1", "fsdp1_flat", "fsdp1_noshard"])
def test_two_processes_equal_one(tmp_path: Path, mode: str) -> None:
    results = _results(run_ranks(train, 2, tmp_path, mode=mode))
    _check_against_one_process(results, tmp_path, 2)
    split = results[0]["config"]["distributed"]
    if mode in ("replicas", "ddp", "fsdp1_noshard"):  # replicated scalars are cut into equal runs (± 1)
        assert max(split["process_params"]) - min(split["process_params"]) <= 1
        assert split["parameters"] == {"sharded": 0, "replicated": 6}
    else:
        assert split["parameters"] == {"sharded": 6 if mode != "fsdp1_flat" else 3, "replicated": 0}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp2", "fsdp1"])
def test_three_processes_equal_one(tmp_path: Path, mode: str) -> None:
    _check_against_one_process(_results(run_ranks(train, 3, tmp_path, mode=mode)), tmp_path, 3)


@pytest.mark.parametrize(("how", "timeout"), [("die", 30.0), ("stall", 4.0)])
def test_a_lost_process_is_a_clear_error_not_a_hang(tmp_path: Path, how: str, timeout: float) -> None:
    started = time.monotonic()
    outcomes = run_ranks(train, 2, tmp_path, mode="replicas", stop_at=6, how=how, timeout=timeout)
    assert outcomes[1] == {"exitcode": 3 if how == "die" else 4}
    assert outcomes[0].get("type") == "DistributedMonitorError", outcomes[0]
    assert "Another process died or stopped calling the monitor" in outcomes[0]["error"]
    assert time.monotonic() - started < 120
    with RunStore(tmp_path / "run") as store:  # what rank 0 wrote before is kept
        assert [r["step"] for r in store.records()] == [4, 5]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_sketched_windows_sum_over_processes(tmp_path: Path, mode: str) -> None:
    # Each process sketches its part with the hashes of the scalars' places in the whole model, and the
    # sketches of θ are summed: the records are those of one process sketching the whole trajectory.
    results = _results(run_ranks(train, 2, tmp_path, mode=mode, sketch_dim=64))
    _check_against_one_process(results, tmp_path, 2, sketch_dim=64)
    assert results[0]["config"]["kernel"].startswith("sketch")
    exact = _reference(results[0]["full"])
    sketched = results[0]["records"]
    assert exact[0]["singular_values"] != sketched[0]["singular_values"]  # a sketch of 64 rows is not exact


def test_a_sketch_under_fsdp1_says_what_to_use(tmp_path: Path) -> None:
    outcomes = run_ranks(train, 2, tmp_path, mode="fsdp1", sketch_dim=64)
    for out in outcomes:
        assert out.get("type") == "ValueError", out
        assert "which FSDP1 does not tell" in out["error"]


# ------------------------------------------------------------------ what one process alone sees or does


class ConvNet(nn.Module):
    """A channels_last convolution: its weight is not contiguous, so a run of it is a copy, not a view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def lone_events(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """Plain replicas of ConvNet (SGD, same data) through what one process meets alone: rank 0 asks for
    a re-read of the parameters (step 3); rank 1's push fails (step 6); every process freezes the head
    (step 9). Returns the records, the warnings and the full parameters after each step."""
    import warnings

    from spectral_edge.tracking.window import UpdateWindow

    torch.manual_seed(0)
    model = ConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = SpectralMonitor(
        model, window=WINDOW, storage_dtype=torch.float64, kernel="torch", distributed=Distributed(timeout=30)
    )
    gen = torch.Generator().manual_seed(7)
    full = [{n: p.detach().double().clone() for n, p in model.named_parameters()}]
    records, messages = [], []
    original = UpdateWindow._torch_pass
    for step in range(1, 16):
        x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randn(8, 2, generator=gen)
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        if step == 3 and rank == 0:
            mon.recheck_parameters()
        if step == 9:
            model.head.requires_grad_(False)
        if step == 6 and rank == 1:

            def broken(self: Any, *args: Any) -> Any:
                raise RuntimeError("out of memory (simulated)")

            UpdateWindow._torch_pass = broken  # type: ignore[method-assign]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = mon.step()
        UpdateWindow._torch_pass = original  # type: ignore[method-assign]
        messages += [str(w.message) for w in caught]
        full.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
        if record is not None:
            records.append(record.to_dict())
    return {"records": records, "full": full, "warnings": messages, "n_params": mon.n_params}


def test_what_one_process_meets_alone_keeps_every_process_in_step(tmp_path: Path) -> None:
    results = _results(run_ranks(lone_events, 2, tmp_path))
    # Identical records on both processes, whatever each met alone, and no hang.
    assert [{**r, "metrics": {}} for r in results[0]["records"]] == [
        {**r, "metrics": {}} for r in results[1]["records"]
    ]
    steps = [r["step"] for r in results[0]["records"]]
    # Step 6's update was skipped by both (rank 1's push failed) and the windows restarted.
    assert 6 not in steps and steps[0] == 4, steps
    assert any("push failed" in w for w in results[1]["warnings"]), results[1]["warnings"]
    # The head froze at step 9 on every process: they re-read the parameters together and went on with
    # the conv alone (a run of its channels_last weight is a copy made at every step).
    conv = {n: t for n, t in results[0]["full"][0].items() if n.startswith("conv")}
    assert results[0]["n_params"] == sum(t.numel() for t in conv.values())
    last = results[0]["records"][-1]
    trajectory = [{n: t for n, t in params.items() if n.startswith("conv")} for params in results[0]["full"]]
    start = last["step"] - WINDOW  # the conv's parameters WINDOW steps before the last record
    config = MonitorConfig(window=WINDOW, storage_dtype=torch.float64)
    tracker = SpectralTracker(list(trajectory[start].items()), config=config)
    for i in range(start + 1, last["step"] + 1):
        want = tracker.observe(trajectory[i], step=i).record
    assert want is not None
    np.testing.assert_allclose(last["singular_values"], want.singular_values, rtol=1e-9)


def load_wrong_state(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """Every process loads a saved window; rank 1's state is for another W."""
    torch.manual_seed(0)
    mon = SpectralMonitor(
        Net(), window=WINDOW, storage_dtype=torch.float64, distributed=Distributed(timeout=30)
    )
    state = mon.state_dict()
    if rank == 1:
        state["window"] = {**state["window"], "window": WINDOW + 1}
    try:
        mon.load_state_dict(state)
    except ValueError as exc:
        return {"raised": str(exc)}
    return {"raised": None}


def test_a_window_one_process_cannot_load_is_loaded_by_none(tmp_path: Path) -> None:
    results = _results(run_ranks(load_wrong_state, 2, tmp_path))
    assert "another process could not load" in results[0]["raised"]
    assert "state is for W=5" in results[1]["raised"]
