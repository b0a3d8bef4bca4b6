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
    if mode in ("fsdp1", "fsdp1_flat"):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(
            model,
            use_orig_params=mode == "fsdp1",
            device_id=torch.device("cpu"),
            auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
        )
    assert mode == "replicas"  # every process trains the same model on the same data, no collectives
    return model


def _full_parameters(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The whole model's parameters as float64 copies, by their unwrapped names (collective under FSDP)."""
    if mode == "ddp":
        return {n: p.detach().double().clone() for n, p in model.module.named_parameters()}
    if mode == "fsdp2":
        return {n: p.full_tensor().detach().double().clone() for n, p in model.named_parameters()}
    if mode in ("fsdp1", "fsdp1_flat"):
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


@pytest.mark.parametrize("mode", ["replicas", "ddp", "fsdp2", "fsdp1", "fsdp1_flat"])
def test_two_processes_equal_one(tmp_path: Path, mode: str) -> None:
    results = _results(run_ranks(train, 2, tmp_path, mode=mode))
    _check_against_one_process(results, tmp_path, 2)
    split = results[0]["config"]["distributed"]
    if mode in ("replicas", "ddp"):  # replicated scalars are cut into equal runs (± 1)
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
        assert "FSDP1 does not tell: use FSDP2 (fully_shard), DDP, or the exact window" in out["error"]
