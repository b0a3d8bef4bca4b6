"""SpectralEdgeLightningCallback in a real ``lightning.pytorch.Trainer`` on a toy LightningModule.

The reference never touches the monitor: a second callback puts ``torch.optim.Optimizer`` step hooks on
the optimizer, copies every trainable parameter (float64) after each real step and notes the learning
rate before it; the test runs ``analyze_window`` on the last W differences of those copies.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

pytestmark = [
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
    # The resumed runs leave out the validation loader and the ModelCheckpoint that wrote the checkpoint.
    pytest.mark.filterwarnings(
        "ignore:You defined a `validation_step` but have no `val_dataloader`"
        ":lightning.fabric.utilities.warnings.PossibleUserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Be aware that when using `ckpt_path`, callbacks used to create:UserWarning"
    ),
]

from spectral_edge import RunStore, SpectrumWarning, analyze_window  # noqa: E402
from spectral_edge.integrations import SpectralEdgeLightningCallback  # noqa: E402

WINDOW = 4
MAX_STEPS = 12
ACCUMULATION = 2
BATCH = 8
N_DATA = 48  # 6 batches per epoch: 3 optimizer steps per epoch
SAVE_STEPS = 6


class ToyModule(pl.LightningModule):
    """Two named submodules (two monitor groups), SGD with momentum and a per-step learning-rate decay."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.1 * step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": decay, "interval": "step"}}


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(N_DATA, 6, generator=g), torch.randn(N_DATA, 3, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)


def make_trainer(callbacks, **overrides) -> pl.Trainer:
    settings = dict(
        max_steps=MAX_STEPS,
        accumulate_grad_batches=ACCUMULATION,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    settings.update(overrides)
    return pl.Trainer(callbacks=callbacks, **settings)


class OptimizerSnapshots(pl.Callback):
    """The reference: float64 parameter copies after each ``optimizer.step()``, and the lr it used."""

    def on_train_start(self, trainer, pl_module):
        self.module = pl_module
        self.first_step = trainer.global_step
        self.flat = [self._copy()]
        self.lrs: list[float] = []
        optimizer = trainer.optimizers[0]
        self.handles = [
            optimizer.register_step_pre_hook(lambda opt, a, k: self.lrs.append(opt.param_groups[0]["lr"])),
            optimizer.register_step_post_hook(lambda opt, a, k: self.flat.append(self._copy())),
        ]

    def on_train_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()

    def _copy(self) -> np.ndarray:
        params = [p.detach().reshape(-1).double() for p in self.module.parameters() if p.requires_grad]
        return torch.cat(params).numpy().copy()

    def window_at(self, step: int) -> np.ndarray:
        i = step - self.first_step
        return np.diff(np.stack(self.flat[i - WINDOW : i + 1]), axis=0)

    def lr_at(self, step: int) -> float:
        return self.lrs[step - self.first_step - 1]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 12-step run: checkpoints every 6 steps, a CSV logger, validation, a run store."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    root = tmp_path_factory.mktemp("lightning_full")
    callback = SpectralEdgeLightningCallback(window=WINDOW, storage_dtype=torch.float64, store=root / "store")
    snapshots = OptimizerSnapshots()
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=SAVE_STEPS, save_top_k=-1)
    trainer = make_trainer(
        [callback, snapshots, checkpoints],
        logger=CSVLogger(root / "logs", name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=True,
        limit_val_batches=1,
        check_val_every_n_epoch=2,
    )
    trainer.fit(ToyModule(), loader(), loader())
    return SimpleNamespace(root=root, callback=callback, snapshots=snapshots, trainer=trainer)


def test_one_record_per_optimizer_step_matching_independent_snapshots(full_run):
    records = list(full_run.callback.monitor.records)
    snapshots = full_run.snapshots
    assert len(snapshots.flat) == MAX_STEPS + 1  # accumulation: 24 batches, 12 optimizer steps
    assert [r.step for r in records] == list(range(WINDOW, MAX_STEPS + 1))
    for record in records:
        rows = snapshots.window_at(record.step)
        ref = analyze_window(rows)
        sigma = ref.singular_values
        np.testing.assert_allclose(record.singular_values, sigma, rtol=1e-9, atol=1e-12 * sigma[0])
        assert record.k_star == ref.k_star
        assert record.update_norm == pytest.approx(float(np.linalg.norm(rows[-1])), rel=1e-9)
        assert set(record.groups) == {"encoder", "head"}


def test_learning_rate_is_the_one_the_step_used(full_run):
    records = full_run.callback.monitor.records
    assert len({r.lr for r in records}) == len(records)  # the schedule moves at every optimizer step
    for record in records:
        assert record.lr == full_run.snapshots.lr_at(record.step)


def test_scalars_reach_the_logger_through_pl_module_log(full_run):
    with open(full_run.root / "logs" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("spectral/k_star")]
    records = list(full_run.callback.monitor.records)
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert float(row["spectral/k_star"]) == record.k_star
        assert float(row["spectral/gap_ratio"]) == pytest.approx(record.gap_ratio, rel=1e-6)
        assert float(row["spectral/sigma/1"]) == pytest.approx(record.singular_values[0], rel=1e-6)


def test_records_and_validation_metrics_reach_the_run_store(full_run):
    with RunStore(full_run.root / "store", mode="r") as store:
        steps = [row["step"] for row in store.records()]
        evals = store.evals()
        config = store.config()
    assert steps == [r.step for r in full_run.callback.monitor.records]
    val_steps, val_loss = evals["val_loss"]
    assert list(val_steps) == [6, 12] and np.all(np.isfinite(val_loss))  # validation every 2 epochs
    assert not any(name.startswith("spectral/") for name in evals)
    assert config["user"]["integration"] == "lightning"


@pytest.mark.parametrize("save_window", [True, False])
def test_resumed_run_gives_the_records_of_the_uninterrupted_run(full_run, tmp_path, save_window):
    (checkpoint,) = (full_run.root / "ckpt").glob(f"*step={SAVE_STEPS}.ckpt")
    # The interrupted run's store already holds records past the checkpoint: they must be replaced.
    with RunStore(tmp_path / "store", mode="w") as store:
        for record in full_run.callback.monitor.records:
            store.add_record(record)
    callback = SpectralEdgeLightningCallback(
        window=WINDOW, storage_dtype=torch.float64, save_window=save_window, store=tmp_path / "store"
    )
    if not save_window:  # the same checkpoint, its callback state saved without the window
        state = torch.load(checkpoint, weights_only=False)
        state["callbacks"][callback.state_key]["window"] = None
        checkpoint = tmp_path / "no-window.ckpt"
        torch.save(state, checkpoint)
    trainer = make_trainer([callback])
    trainer.fit(ToyModule(seed=5), loader(), ckpt_path=checkpoint)  # another seed: all from the checkpoint

    full = {r.step: r for r in full_run.callback.monitor.records}
    resumed = list(callback.monitor.records)
    first = SAVE_STEPS + 1 if save_window else SAVE_STEPS + WINDOW
    assert [r.step for r in resumed] == list(range(first, MAX_STEPS + 1))
    # The first record after a refill has a rank-one ΔC (no update left the window): fields from it differ.
    from_delta_c = {"delta_c_fro", "davis_kahan", "adiabatic", "regime"}
    for i, record in enumerate(resumed):
        expected = full[record.step]
        np.testing.assert_allclose(record.singular_values, expected.singular_values, rtol=1e-10, atol=0)
        for name, value in record.scalars().items():
            if i == 0 and not save_window and name in from_delta_c:
                continue
            other = expected.scalars()[name]
            if isinstance(value, float) and math.isfinite(value):
                assert value == pytest.approx(other, rel=1e-10), name
            else:
                assert value == other, name
    with RunStore(tmp_path / "store", mode="r") as store:
        kept = [r.step for r in full_run.callback.monitor.records if r.step <= SAVE_STEPS]
        assert [row["step"] for row in store.records()] == kept + [r.step for r in resumed]


# ------------------------------------------------------------------ hooks called directly


def fake_trainer(**overrides) -> SimpleNamespace:
    settings = dict(is_global_zero=True, global_step=0, strategy=object(), sanity_checking=False)
    settings.update(overrides)
    return SimpleNamespace(**settings)


def test_only_global_rank_zero_monitors_and_writes(tmp_path):
    callback = SpectralEdgeLightningCallback(window=WINDOW, store=tmp_path / "store")
    trainer = fake_trainer(is_global_zero=False)
    module = ToyModule()
    callback.on_train_start(trainer, module)
    trainer.global_step = 1
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_validation_end(trainer, module)
    assert callback.monitor is None and callback.state_dict() == {}
    assert not (tmp_path / "store").exists()


def test_sharded_strategies_switch_the_callback_off_or_raise_in_strict_mode():
    fsdp = type("FSDPStrategy", (), {})()
    callback = SpectralEdgeLightningCallback(window=WINDOW)
    with pytest.warns(SpectrumWarning, match="FSDPStrategy"):
        callback.on_train_start(fake_trainer(strategy=fsdp), ToyModule())
    assert callback.monitor is None
    strict = SpectralEdgeLightningCallback(window=WINDOW, strict=True)
    with pytest.raises(ValueError, match="ZeRO-3"):
        strict.on_train_start(fake_trainer(strategy=SimpleNamespace(zero_stage_3=True)), ToyModule())


def test_resume_without_saved_state_warns_and_refills():
    callback = SpectralEdgeLightningCallback(window=WINDOW)
    with pytest.warns(SpectrumWarning, match="window refills"):
        callback.on_train_start(fake_trainer(global_step=6), ToyModule())
    assert callback.monitor is not None and callback.monitor.records == type(callback.monitor.records)()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window": 1}, ValueError, "window"),
        ({"interval": 0}, ValueError, "interval"),
        ({"windw": 3}, TypeError, "windw"),
        ({"model_or_params": None}, TypeError, "set by the callback"),
    ],
)
def test_bad_monitor_arguments_raise_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        SpectralEdgeLightningCallback(**kwargs)


def test_arguments_are_checked_by_building_the_config_not_a_throwaway_monitor(monkeypatch):
    import spectral_edge.integrations.lightning as module
    from spectral_edge import MonitorConfig

    class NoMonitor:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a monitor was built before training started")

    monkeypatch.setattr(module, "SpectralMonitor", NoMonitor)
    config = MonitorConfig(window=3, interval=2)
    callback = SpectralEdgeLightningCallback(config=config, lr=0.1)
    with pytest.raises(TypeError, match="got object without write_record"):
        SpectralEdgeLightningCallback(sinks=[object()])
    monkeypatch.undo()
    callback.on_train_start(fake_trainer(), ToyModule())
    assert callback.monitor.settings.window == 3 and callback.monitor.settings.interval == 2
    assert callback.monitor.lr == 0.1 and callback.monitor.config()["lr"] == 0.1
    assert callback.monitor.settings.user == {"integration": "lightning"}


def test_state_dict_round_trips_through_torch_load_with_weights_only(tmp_path):
    # Lightning may load checkpoints with weights_only=True: the state must hold only plain types.
    callback = SpectralEdgeLightningCallback(window=2)
    module = ToyModule()
    trainer = fake_trainer()
    callback.on_train_start(trainer, module)
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        trainer.global_step = step
        callback.on_train_batch_end(trainer, SimpleNamespace(log_dict=lambda *a, **k: None), None, None, 0)
    torch.save({"state": callback.state_dict()}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["state"]
    assert loaded["step_count"] == 3 and loaded["window"] is not None
