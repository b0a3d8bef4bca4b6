"""SpectralEdgeLightningCallback on two processes (gloo, CPU): DDPStrategy and FSDPStrategy.

Lightning runs inside the spawn harness (``tests/tracking/ranks.py`` with ``init=False``): each process
gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so Lightning sees an
externally launched job and initialises the process group itself. The reference is a single-process
tracker over the whole model's trajectory, gathered after every optimizer step by a second callback
(under FSDP1 with ``summon_full_params``, under FSDP2 with ``full_tensor``); every process's records must equal it to 1e-9 (float64 windows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from spectral_edge import RunStore  # noqa: E402
from spectral_edge.integrations import SpectralEdgeLightningCallback  # noqa: E402
from spectral_edge.tracking import MonitorConfig, SpectralTracker  # noqa: E402
from tests.tracking.ranks import run_ranks  # noqa: E402
from tests.tracking.test_distributed import _assert_close  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
    ),
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates (in this process: the one-process run).
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]

WINDOW = 3
STEPS = 7
SAVE_AT = 4
LR = 1e-2


class Net(pl.LightningModule):
    """Two top-level modules (two groups), AdamW at a constant rate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.1)


class ShardedNet(Net):
    """Net sharded in ``configure_model``: FSDP1 wrappers (for FSDPStrategy) or FSDP2 ``fully_shard`` on
    the data-parallel mesh (for ModelParallelStrategy)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def configure_model(self) -> None:
        if self.how == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for part in (self.encoder, self.head):
                fully_shard(part, mesh=mesh)
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        # Lightning's own wrapping passes device_id=None on CPU, which FSDP1 refuses; wrapped here with
        # the CPU as the device, the strategy leaves the model as it is.
        for name in ("encoder", "head"):
            part = FullyShardedDataParallel(
                getattr(self, name), use_orig_params=True, device_id=torch.device("cpu")
            )
            setattr(self, name, part)


class FullParameters(pl.Callback):
    """The reference trajectory: the whole model's parameters (float64) at the start and after each step."""

    def __init__(self) -> None:
        self.full: list[dict[str, torch.Tensor]] = []
        self.last_step = 0

    def _gather(self, trainer: Any, pl_module: Any) -> dict[str, torch.Tensor]:
        """Collective under FSDP: every process calls it."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        def full(p: torch.Tensor) -> torch.Tensor:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2's DTensor
            return whole.detach().double().clone()

        if not any(isinstance(m, FullyShardedDataParallel) for m in pl_module.modules()):
            return {n: full(p) for n, p in pl_module.named_parameters()}
        with FullyShardedDataParallel.summon_full_params(pl_module):
            return {n.replace("_fsdp_wrapped_module.", ""): full(p) for n, p in pl_module.named_parameters()}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.last_step = trainer.global_step
        self.full = [self._gather(trainer, pl_module)]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step != self.last_step:
            self.last_step = trainer.global_step
            self.full.append(self._gather(trainer, pl_module))


def fit(
    rank: int, world: int, folder: Path, *, strategy: str, ckpt: str | None = None, save_window: bool = True
) -> dict[str, Any]:
    """Train Net under ``strategy`` on this process; a checkpoint every SAVE_AT steps (but under
    FSDP1); resume from ``ckpt``."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

    module: Net = Net()
    if strategy == "ddp":
        chosen: Any = DDPStrategy(process_group_backend="gloo")
    elif strategy == "fsdp":
        # Lightning refuses FSDPStrategy itself on CPU (a check of the exact type, made for GPU users);
        # a subclass runs the same strategy code on gloo.
        cpu_fsdp = type("CPUFSDPStrategy", (FSDPStrategy,), {})
        chosen, module = cpu_fsdp(process_group_backend="gloo"), ShardedNet("fsdp1")
    else:
        chosen = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
        module = ShardedNet("fsdp2")
    callback = SpectralEdgeLightningCallback(
        window=WINDOW,
        storage_dtype=torch.float64,
        store=folder / "run",
        save_window=save_window,
        distributed_timeout=60.0,
    )
    reference = FullParameters()
    callbacks = [callback, reference]
    # No checkpoints under FSDP1 on CPU: FSDP1's full state_dict of CPU shards (what Lightning saves)
    # crashes the process (a segmentation fault inside torch's _full_post_state_dict_hook, torch 2.13).
    if strategy != "fsdp":
        callbacks.append(ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=SAVE_AT, save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        num_nodes=1,
        strategy=chosen,
        max_steps=STEPS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=strategy != "fsdp",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    g = torch.Generator().manual_seed(1)
    # 64 examples: 4 batches of 8 per process, so the checkpoint at step 4 ends an epoch (Lightning
    # restarts an epoch a checkpoint interrupted).
    data = torch.utils.data.TensorDataset(torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=ckpt)
    monitor = callback.monitor
    assert monitor is not None, f"rank {rank}: the callback is off"
    return {
        "records": [r.to_dict() for r in monitor.records],
        "full": reference.full if rank == 0 else None,
        "config": monitor.config(),
    }


def _results(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for rank, out in enumerate(outcomes):
        assert "result" in out, f"rank {rank} failed: {out.get('error', out)}"
    return [out["result"] for out in outcomes]


def _reference(full: list[dict[str, torch.Tensor]], first_step: int = 0) -> list[dict[str, Any]]:
    tracker = SpectralTracker(
        list(full[0].items()), config=MonitorConfig(window=WINDOW, storage_dtype=torch.float64)
    )
    records = []
    for step, params in enumerate(full[1:], start=first_step + 1):
        result = tracker.observe(params, step=step, lr=LR)
        if result.record is not None:
            records.append(result.record.to_dict())
    return records


def _check(results: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(results):
        got = result["records"]
        assert [r["step"] for r in got] == [r["step"] for r in want], f"rank {rank}"
        for a, b in zip(got, want, strict=True):
            _assert_close(a, b, f"rank {rank} step {b['step']}")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's own (no val loader, CPU FSDP, ...)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "model_parallel"])
def test_every_process_records_the_whole_model(tmp_path: Path, strategy: str) -> None:
    results = _results(run_ranks(fit, 2, tmp_path, limit=120, init=False, strategy=strategy))
    full = results[0]["full"]
    assert len(full) == STEPS + 1
    want = _reference(full)
    assert [r["step"] for r in want] == list(range(WINDOW, STEPS + 1))
    assert list(want[0]["groups"]) == ["encoder", "head"]
    _check(results, want)
    split = results[0]["config"]["distributed"]
    assert split["world_size"] == 2
    assert sum(split["process_params"]) == sum(t.numel() for t in full[0].values())
    if strategy != "ddp":  # the shards of FSDP1 (use_orig_params) or FSDP2
        assert split["parameters"] == {"sharded": 4, "replicated": 0}
    with RunStore(tmp_path / "run") as store:  # rank 0 alone wrote it, each record once
        assert [r["step"] for r in store.records()] == [r["step"] for r in want]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_ddp_run_resumed_from_a_checkpoint_continues_the_records(tmp_path: Path) -> None:
    first = _results(run_ranks(fit, 2, tmp_path / "a", limit=120, init=False, strategy="ddp"))
    (checkpoint,) = (tmp_path / "a" / "ckpt").glob(f"*step={SAVE_AT}.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    (state,) = [v for k, v in saved["callbacks"].items() if "SpectralEdge" in k]
    assert len(state["ranks"]) == 2  # every process's part, gathered to rank 0
    resumed = _results(
        run_ranks(fit, 2, tmp_path / "b", limit=120, init=False, strategy="ddp", ckpt=str(checkpoint))
    )
    full = {r["step"]: r for r in first[0]["records"]}
    want = [full[step] for step in range(SAVE_AT + 1, STEPS + 1)]
    _check(resumed, want)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_checkpoint_of_two_processes_resumed_on_one_refills_the_window(tmp_path: Path) -> None:
    from spectral_edge import SpectrumWarning

    _results(run_ranks(fit, 2, tmp_path / "a", limit=120, init=False, strategy="ddp"))
    (checkpoint,) = (tmp_path / "a" / "ckpt").glob(f"*step={SAVE_AT}.ckpt")
    callback = SpectralEdgeLightningCallback(window=WINDOW, storage_dtype=torch.float64)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g))
    with pytest.warns(SpectrumWarning, match="the states of 2 processes, not 1"):
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=checkpoint)
    assert callback.monitor is not None
    assert [r.step for r in callback.monitor.records] == list(range(SAVE_AT + WINDOW, STEPS + 1))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"distributed": True}, TypeError, "distributed_timeout="),
        ({"distributed_timeout": 0}, ValueError, "timeout must be a number of seconds > 0"),
    ],
)
def test_the_callback_sets_distributed_itself(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        SpectralEdgeLightningCallback(**kwargs)


def test_deepspeed_zero3_is_refused_with_what_it_needs() -> None:
    from types import SimpleNamespace

    from spectral_edge import SpectrumWarning

    callback = SpectralEdgeLightningCallback(window=WINDOW)
    trainer = SimpleNamespace(
        is_global_zero=True, global_step=0, strategy=SimpleNamespace(zero_stage_3=True), sanity_checking=False
    )
    with pytest.warns(SpectrumWarning, match="no data outside forward.*flat fp32 partitions"):
        callback.on_train_start(trainer, Net())
    assert callback.monitor is None
