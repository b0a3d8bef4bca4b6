"""SpectralEdgeCallback in a real ``transformers.Trainer`` on a tiny GPT-2 built from a config.

The reference never touches the monitor: a second, plain callback copies every trainable parameter (in
float64) at train begin and after each optimizer step, and the test runs ``analyze_window`` on the last W
differences of those copies.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from spectral_edge import RunStore, SpectrumWarning, analyze_window  # noqa: E402
from spectral_edge.integrations import SpectralEdgeCallback  # noqa: E402
from spectral_edge.integrations.huggingface import STATE_FILE  # noqa: E402

WINDOW = 4
MAX_STEPS = 12
ACCUMULATION = 2
N_EXAMPLES = 48  # 12 micro-batches of 4 per epoch: 6 optimizer steps per epoch
SAVE_STEPS = 6


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences, the same for every seed of the model."""

    def __init__(self, n: int = N_EXAMPLES, length: int = 16, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


class Snapshots(TrainerCallback):
    """The reference: float64 copies of the trainable parameters at train begin and after each step."""

    def __init__(self) -> None:
        self.flat: list[np.ndarray] = []
        self.steps: list[int] = []
        self.micro_batches = 0

    @staticmethod
    def _copy(model: torch.nn.Module) -> np.ndarray:
        params = [p.detach().reshape(-1).double() for p in model.parameters() if p.requires_grad]
        return torch.cat(params).numpy().copy()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.flat = [self._copy(model)]
        self.first_step = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.flat.append(self._copy(model))
        self.steps.append(state.global_step + 1)

    def window_at(self, step: int, window: int = WINDOW) -> np.ndarray:
        """The (W, P) reference trajectory matrix whose newest update was taken at ``step``."""
        i = step - self.first_step  # snapshots index: 0 is train begin
        return np.diff(np.stack(self.flat[i - window : i + 1]), axis=0)


def assert_matches_reference(record, rows: np.ndarray) -> None:
    ref = analyze_window(rows)
    sigma = ref.singular_values
    np.testing.assert_allclose(record.singular_values, sigma, rtol=1e-9, atol=1e-12 * sigma[0])
    assert record.k_star == ref.k_star
    assert record.gap_ratio == pytest.approx(ref.gap_ratio, rel=1e-9)
    assert record.update_norm == pytest.approx(float(np.linalg.norm(rows[-1])), rel=1e-9)


# Fields of the first record after a window (re)fills that differ by design: ΔC is then rank one (‖a‖²),
# since no update left the window, and these are computed from it.
FROM_DELTA_C = {"delta_c_fro", "davis_kahan", "adiabatic", "regime"}


def scalars_close(a, b, rel: float = 1e-10, skip: frozenset[str] | set[str] = frozenset()) -> None:
    assert a.step == b.step
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=rel, atol=0)
    for name, value in a.scalars().items():
        if name in skip:
            continue
        other = b.scalars()[name]
        if isinstance(value, float) and math.isfinite(value):
            assert other == pytest.approx(value, rel=rel, abs=1e-300), name
        else:
            assert other == value, name


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 12-step run: checkpoints at 6 and 12, TensorBoard reporting, a run store.

    The callback is added the way HF users write it, ``Trainer(callbacks=[...])``, which puts it behind
    the ``report_to`` integrations; it moves itself ahead of them when the Trainer is made.
    """
    root = tmp_path_factory.mktemp("hf_full")
    callback = SpectralEdgeCallback(window=WINDOW, storage_dtype=torch.float64, store=root / "store")
    snapshots = Snapshots()
    args = training_args(
        root / "out",
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        report_to=["tensorboard"],
    )
    trainer = Trainer(
        model=tiny_gpt2(), args=args, train_dataset=TokenDataset(), callbacks=[snapshots, callback]
    )
    trainer.train()
    return SimpleNamespace(root=root, callback=callback, snapshots=snapshots, trainer=trainer)


def test_one_record_per_optimizer_step_matching_independent_snapshots(full_run):
    records = list(full_run.callback.monitor.records)
    snapshots = full_run.snapshots
    # Gradient accumulation: 2 micro-batches per optimizer step, one update per optimizer step.
    assert snapshots.micro_batches == MAX_STEPS * ACCUMULATION
    assert snapshots.steps == list(range(1, MAX_STEPS + 1))
    assert [r.step for r in records] == list(range(WINDOW, MAX_STEPS + 1))
    np.testing.assert_array_equal(snapshots.flat[-1], Snapshots._copy(full_run.trainer.model))  # the end
    for record in records:
        assert_matches_reference(record, snapshots.window_at(record.step))


def test_learning_rate_is_the_one_the_step_used(full_run):
    logged = {
        e["step"]: e["learning_rate"] for e in full_run.trainer.state.log_history if "learning_rate" in e
    }
    records = full_run.callback.monitor.records
    assert len({r.lr for r in records}) == len(records)  # the linear schedule moves every step
    for record in records:
        assert record.lr == logged[record.step]
        assert record.adiabatic is not None and record.regime is not None


def test_records_and_training_logs_reach_the_run_store(full_run):
    with RunStore(full_run.root / "store", mode="r") as store:
        rows = store.records()
        evals = store.evals()
        config = store.config()
    assert [row["step"] for row in rows] == [r.step for r in full_run.callback.monitor.records]
    steps, losses = evals["loss"]
    assert list(steps) == list(range(1, MAX_STEPS + 1)) and np.all(np.isfinite(losses))
    assert "learning_rate" in evals and not any(name.startswith("spectral/") for name in evals)
    assert config["user"]["integration"] == "transformers"


def test_scalars_reach_tensorboard_through_report_to(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = (full_run.root / "out").glob("runs/*/events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0})
    events.Reload()
    records = {r.step: r for r in full_run.callback.monitor.records}
    k_star = events.Scalars("train/spectral/k_star")
    assert [e.step for e in k_star] == sorted(records)  # each record once, at its own step
    for name in ("k_star", "gap_ratio", "sigma/1", "lr"):
        for event in events.Scalars(f"train/spectral/{name}"):
            expected = records[event.step].log_scalars()[f"spectral/{name}"]
            assert event.value == pytest.approx(expected, rel=1e-6)  # TensorBoard keeps float32
    assert "train/loss" in events.Tags()["scalars"]


def test_the_callback_moves_ahead_of_the_reporting_integrations_when_the_trainer_is_made(full_run):
    from transformers.integrations import TensorBoardCallback

    names = [type(cb).__name__ for cb in full_run.trainer.callback_handler.callbacks]
    assert (
        names.index("SpectralEdgeCallback") < names.index("TensorBoardCallback") < names.index("_DropScalars")
    )
    assert names.count("SpectralEdgeCallback") == 1 and names.count("_DropScalars") == 1
    assert any(isinstance(cb, TensorBoardCallback) for cb in full_run.trainer.callback_handler.callbacks)


@pytest.mark.parametrize("how", ["attach", "add_callback"])
def test_attach_and_add_callback_also_reach_tensorboard(tmp_path, how):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = SpectralEdgeCallback(window=2)
    args = training_args(tmp_path / "out", max_steps=3, report_to=["tensorboard"])
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenDataset())
    if how == "attach":
        callback.attach(trainer)
    else:
        trainer.add_callback(callback)  # after the Trainer was made: placed when training begins
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "could not place itself" warning
        trainer.train()
    (event_file,) = (tmp_path / "out").glob("runs/*/events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/spectral/k_star")] == [2, 3]
    assert not any(name.startswith("spectral/") for e in trainer.state.log_history for name in e)


def test_hf_models_get_one_group_per_block_by_default(full_run):
    # groups="top" would put all of GPT-2 in one group ("transformer"): no per-group spectra at all.
    record = full_run.callback.monitor.last_record
    assert list(record.groups) == ["embeddings", "transformer.h.0", "transformer.h.1", "head"]
    with RunStore(full_run.root / "store", mode="r") as store:
        sizes = store.config()["monitor"]["groups"]
    model = full_run.trainer.model
    assert sizes["head"] == sum(p.numel() for p in model.transformer.ln_f.parameters())
    assert sizes["transformer.h.0"] == sum(p.numel() for p in model.transformer.h[0].parameters())


def test_block_groups_of_other_architectures():
    from collections import Counter

    import transformers

    from spectral_edge.integrations._common import block_groups

    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=32)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **small)
    )
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(num_hidden_layers=2, **small))
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=32)
    )
    groups = {}
    for name, model in (("llama", llama), ("bert", bert), ("t5", t5)):
        group = block_groups(model)
        groups[name] = list(Counter(group(n) for n, _ in model.named_parameters()))
    assert groups["llama"] == ["embeddings", "model.layers.0", "model.layers.1", "head"]  # norm, lm_head
    assert groups["bert"] == ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]
    # Between the encoder's and the decoder's blocks: the encoder's final norm, by its module.
    assert groups["t5"] == [
        "embeddings",
        "encoder.block.0",
        "encoder.final_layer_norm",
        "decoder.block.0",
        "head",
    ]
    assert block_groups(torch.nn.Linear(3, 2)) is None  # no blocks: the monitor's default stays


def test_groups_given_by_the_user_are_kept(tmp_path):
    model = tiny_gpt2()
    callback = SpectralEdgeCallback(window=WINDOW, groups="all")
    callback.on_train_begin(fake_args(tmp_path), TrainerState(), TrainerControl(), model=model)
    assert callback.monitor.settings.groups == "all"


def test_console_log_lines_leave_out_the_spectral_scalars(full_run, tmp_path, capsys):
    # The callback puts a companion after the reporting integrations that removes the scalars again, so
    # the printer (and the trainer's log_history) see only the Trainer's own logs.
    assert not any(name.startswith("spectral/") for e in full_run.trainer.state.log_history for name in e)
    # Without reporting integrations nothing needs the scalars, and the printer does not print them.
    callback = SpectralEdgeCallback(window=2)
    trainer = Trainer(
        model=tiny_gpt2(),
        args=training_args(tmp_path, max_steps=3),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    trainer.train()
    printed = capsys.readouterr().out
    assert "'loss'" in printed and "spectral/" not in printed
    assert len(callback.monitor.records) == 2


@pytest.mark.parametrize("save_window", [True, False])
def test_resumed_run_gives_the_records_of_the_uninterrupted_run(full_run, tmp_path, save_window, caplog):
    source = full_run.root / "out" / f"checkpoint-{SAVE_STEPS}"
    # interval=1: the snapshot θ_prev is the checkpoint's own weights, left out and restored from them.
    assert torch.load(source / STATE_FILE, weights_only=True)["snapshot_is_model"]
    if save_window:
        # The usual case: the checkpoint sits in output_dir and train(resume_from_checkpoint=True) finds it.
        args = training_args(tmp_path / "out")
        _copy_checkpoint(source, tmp_path / "out" / source.name)
        resume = True
    else:
        # A folder outside output_dir, named by args.resume_from_checkpoint; its state has no window.
        checkpoint = _copy_checkpoint(source, tmp_path / "elsewhere")
        saved = torch.load(checkpoint / STATE_FILE, weights_only=True)
        saved["monitor"]["window"] = None
        torch.save(saved, checkpoint / STATE_FILE)
        args = training_args(tmp_path / "out", resume_from_checkpoint=str(checkpoint))
        resume = str(checkpoint)
    # The interrupted run's store already holds records past the checkpoint (it ran to the end here): the
    # resumed run must replace them, not file them twice.
    with RunStore(tmp_path / "store", mode="w") as store:
        for record in full_run.callback.monitor.records:
            store.add_record(record)
    callback = SpectralEdgeCallback(window=WINDOW, storage_dtype=torch.float64, store=tmp_path / "store")
    # Another seed: everything must come from the checkpoint.
    trainer = Trainer(model=tiny_gpt2(seed=5), args=args, train_dataset=TokenDataset(), callbacks=[callback])
    caplog.set_level(logging.INFO, logger="spectral_edge")
    trainer.train(resume_from_checkpoint=resume)
    # Resuming without a saved window is the user's choice: said in the log, not warned about.
    assert ("saved without the window" in caplog.text) == (not save_window)

    full = {r.step: r for r in full_run.callback.monitor.records}
    resumed = list(callback.monitor.records)
    first = SAVE_STEPS + 1 if save_window else SAVE_STEPS + WINDOW
    assert [r.step for r in resumed] == list(range(first, MAX_STEPS + 1))
    for i, record in enumerate(resumed):
        scalars_close(record, full[record.step], skip=FROM_DELTA_C if i == 0 and not save_window else set())
    with RunStore(tmp_path / "store", mode="r") as store:
        kept = [r.step for r in full_run.callback.monitor.records if r.step <= SAVE_STEPS]
        assert [row["step"] for row in store.records()] == kept + [r.step for r in resumed]


def test_a_resumed_run_writes_to_a_store_the_user_opened(full_run, tmp_path):
    # resume= applies to paths: passed with an open RunStore it made opening fail, and the resumed run's
    # records reached no store at all (one warning). The store is used as it is, truncated at the step.
    source = full_run.root / "out" / f"checkpoint-{SAVE_STEPS}"
    _copy_checkpoint(source, tmp_path / "out" / source.name)
    with RunStore(tmp_path / "store", mode="w") as store:
        for record in full_run.callback.monitor.records:
            store.add_record(record)
    with RunStore(tmp_path / "store", mode="a") as store:
        callback = SpectralEdgeCallback(window=WINDOW, storage_dtype=torch.float64, store=store)
        trainer = Trainer(
            model=tiny_gpt2(seed=5),
            args=training_args(tmp_path / "out"),
            train_dataset=TokenDataset(),
            callbacks=[callback],
        )
        trainer.train(resume_from_checkpoint=True)
        assert not store.closed  # the user's store: the user closes it
    with RunStore(tmp_path / "store", mode="r") as store:
        kept = [r.step for r in full_run.callback.monitor.records if r.step <= SAVE_STEPS]
        assert [row["step"] for row in store.records()] == kept + [r.step for r in callback.monitor.records]
    assert callback.monitor.records[-1].step == MAX_STEPS


def test_resume_without_saved_state_warns_and_refills(full_run, tmp_path):
    checkpoint = _copy_checkpoint(full_run.root / "out" / f"checkpoint-{SAVE_STEPS}", tmp_path / "ckpt")
    (checkpoint / STATE_FILE).unlink()
    callback = SpectralEdgeCallback(window=WINDOW, storage_dtype=torch.float64)
    trainer = Trainer(
        model=tiny_gpt2(),
        args=training_args(tmp_path / "out", max_steps=SAVE_STEPS + WINDOW),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    with pytest.warns(SpectrumWarning, match="window refills"):
        trainer.train(resume_from_checkpoint=str(checkpoint))  # not in output_dir nor in args: not found
    assert [r.step for r in callback.monitor.records] == [SAVE_STEPS + WINDOW]


# ------------------------------------------------------------------ hooks called directly


def fake_args(tmp_path: Path, **overrides) -> SimpleNamespace:
    settings = dict(output_dir=str(tmp_path), report_to=[], fsdp=None, resume_from_checkpoint=None)
    settings.update(overrides)
    return SimpleNamespace(**settings)


def test_only_the_world_main_process_monitors_and_writes(tmp_path):
    callback = SpectralEdgeCallback(window=WINDOW, store=tmp_path / "store")
    state = TrainerState(is_world_process_zero=False)
    model = torch.nn.Linear(3, 2)
    callback.on_train_begin(fake_args(tmp_path), state, TrainerControl(), model=model)
    callback.on_optimizer_step(fake_args(tmp_path), state, TrainerControl(), optimizer=None)
    callback.on_save(fake_args(tmp_path), state, TrainerControl())
    assert callback.monitor is None
    assert not (tmp_path / "store").exists()


def test_sharded_parameters_switch_the_callback_off_or_raise_in_strict_mode(tmp_path):
    model = torch.nn.Linear(3, 2)
    model.weight.ds_id = 0  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    callback = SpectralEdgeCallback(window=WINDOW)
    with pytest.warns(SpectrumWarning, match="ZeRO-3"):
        callback.on_train_begin(fake_args(tmp_path), TrainerState(), TrainerControl(), model=model)
    assert callback.monitor is None
    strict = SpectralEdgeCallback(window=WINDOW, strict=True)
    with pytest.raises(ValueError, match="FSDP"):
        strict.on_train_begin(fake_args(tmp_path, fsdp=True), TrainerState(), TrainerControl(), model=model)


def test_a_failing_save_is_a_warning_not_an_exception(tmp_path):
    callback = SpectralEdgeCallback(window=WINDOW)
    state = TrainerState(global_step=3)
    callback.on_train_begin(
        fake_args(tmp_path), TrainerState(), TrainerControl(), model=torch.nn.Linear(3, 2)
    )
    with pytest.warns(SpectrumWarning, match="checkpoint folder"):
        callback.on_save(fake_args(tmp_path), state, TrainerControl())


def test_a_store_holding_another_run_is_a_warning_and_records_stay_in_memory(full_run, tmp_path):
    callback = SpectralEdgeCallback(window=WINDOW, store=full_run.root / "store")  # holds records
    with pytest.warns(SpectrumWarning, match="opening the run store failed.*would erase"):
        callback.on_train_begin(
            fake_args(tmp_path), TrainerState(), TrainerControl(), model=torch.nn.Linear(3, 2)
        )
    assert callback.monitor is not None and callback.monitor.store is None


def test_report_to_without_a_trainer_to_place_it_in_warns_once(tmp_path):
    # Hooks called by something other than a Trainer's CallbackHandler: the callback cannot place itself.
    callback = SpectralEdgeCallback(window=WINDOW)
    args = fake_args(tmp_path, report_to=["tensorboard"])
    with pytest.warns(UserWarning, match="attach"):
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=torch.nn.Linear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=torch.nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window": 1}, ValueError, "window"),
        ({"windw": 3}, TypeError, "windw"),
        ({"model_or_params": None}, TypeError, "set by the callback"),
    ],
)
def test_bad_monitor_arguments_raise_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        SpectralEdgeCallback(**kwargs)


def test_arguments_are_checked_by_building_the_config_not_a_throwaway_monitor(tmp_path, monkeypatch):
    import spectral_edge.integrations.huggingface as module

    built = []
    monkeypatch.setattr(module, "SpectralMonitor", lambda *a, **k: built.append(k))
    callback = SpectralEdgeCallback(window=3, storage_device="cpu", config={"run": "a"})
    assert built == []  # nothing is built before training begins
    monkeypatch.undo()
    callback.on_train_begin(
        fake_args(tmp_path), TrainerState(), TrainerControl(), model=torch.nn.Linear(3, 2)
    )
    settings = callback.monitor.settings
    assert settings.window == 3 and settings.user == {"integration": "transformers", "run": "a"}
    assert callable(settings.lr)  # the optimizer's rate at each step, read through the monitor


@pytest.mark.parametrize("save_window", [True, False])
def test_saved_state_is_the_window_in_its_dtype_and_the_snapshot_or_a_few_kb(tmp_path, save_window):
    # The documented size rule: W rows of P numbers in storage_dtype and W²·8 bytes per group; no float64
    # copies, and with interval=1 no snapshot θ_prev (the checkpoint's model file holds those very
    # parameters; the resume tests check that the records still continue exactly). Without the window:
    # counters and event state.
    model = torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.Linear(50, 40))
    n_params = sum(p.numel() for p in model.parameters())
    callback = SpectralEdgeCallback(window=WINDOW, save_window=save_window)
    args = fake_args(tmp_path)
    callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    for step in range(WINDOW + 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        callback.on_optimizer_step(args, TrainerState(global_step=step), TrainerControl(), optimizer=None)
    assert callback.monitor.last_record is not None
    (tmp_path / "checkpoint-6").mkdir()
    callback.on_save(args, TrainerState(global_step=6), TrainerControl(), model=model)
    size = (tmp_path / "checkpoint-6" / STATE_FILE).stat().st_size
    small = 16_000
    if save_window:
        assert WINDOW * n_params * 4 < size <= WINDOW * n_params * 4 + small
        assert torch.load(tmp_path / "checkpoint-6" / STATE_FILE, weights_only=True)["snapshot_is_model"]
    else:
        assert size <= small


def test_a_snapshot_that_is_not_the_current_parameters_is_saved(tmp_path):
    # interval=2, saved between two pushes: θ_prev is older than the parameters, so it must be kept.
    model = torch.nn.Linear(10, 5)
    callback = SpectralEdgeCallback(window=2, interval=2)
    args = fake_args(tmp_path)
    callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    for step in range(5):
        with torch.no_grad():
            model.weight.add_(1e-3)
        callback.on_optimizer_step(args, TrainerState(global_step=step), TrainerControl(), optimizer=None)
    (tmp_path / "checkpoint-5").mkdir()
    callback.on_save(args, TrainerState(global_step=5), TrainerControl(), model=model)
    saved = torch.load(tmp_path / "checkpoint-5" / STATE_FILE, weights_only=True)
    assert not saved["snapshot_is_model"] and saved["monitor"]["window"]["prev"] is not None


def _copy_checkpoint(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target
