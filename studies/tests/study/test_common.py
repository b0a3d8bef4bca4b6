"""The study's run contract: RunOutcome, the atomic outcome file, and what StudyRecorder writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from spectral_edge import RunStore
from spectral_edge_studies.models.transformer import Transformer
from spectral_edge_studies.study import common, modular, multitask
from spectral_edge_studies.study.common import (
    CHECKPOINT_DIR,
    OUTCOME_FILE,
    RunOutcome,
    StudyRecorder,
    check_family,
    is_complete,
    load_outcome,
    run_name,
    write_outcome,
)

OUTCOME = RunOutcome(
    family="modular",
    task="add",
    seed=42,
    weight_decay=1.0,
    steps=1200,
    max_steps=3000,
    grok_step=700,
    memorize_step=400,
    final_train_acc=1.0,
    final_test_acc=0.99,
    final_train_loss=0.01,
    final_test_loss=0.05,
    n_params=289_536,
    wall_s=81.5,
    run_dir="runs/modular-add-wd1-seed42",
    n_evals=25,
    n_records=110,
    wq_ratio_at_grok=(1.1, 1.05),
    wq_ratio_final=(3.2, 1.4),
    checkpoint_steps=(0, 200, 700, 1200),
    extra={"test_acc_add": 0.99},
    config={"task": "add", "betas": [0.9, 0.98], "post_grok_steps": None},
)


def test_outcome_round_trips_through_json() -> None:
    text = json.dumps(OUTCOME.to_dict())
    assert RunOutcome.from_dict(json.loads(text)) == OUTCOME
    never = replace(OUTCOME, grok_step=None, memorize_step=None, wq_ratio_at_grok=None)
    assert RunOutcome.from_dict(json.loads(json.dumps(never.to_dict()))) == never
    assert OUTCOME.grokked and not never.grokked
    assert OUTCOME.ms_per_step == pytest.approx(1000 * 81.5 / 1200)


def test_outcome_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown RunOutcome fields \['grokked'\]"):
        RunOutcome.from_dict({**OUTCOME.to_dict(), "grokked": True})


def test_outcome_file_is_written_atomically(tmp_path, monkeypatch) -> None:
    assert not is_complete(tmp_path) and load_outcome(tmp_path) is None
    write_outcome(OUTCOME, tmp_path)
    assert is_complete(tmp_path) and load_outcome(tmp_path) == OUTCOME
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTCOME_FILE]  # no temporary file left

    # A crash before the rename leaves the previous file whole (or none at all): never half a file.
    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(OSError, match="disk full"):
        write_outcome(OUTCOME, fresh)
    assert not is_complete(fresh)
    with pytest.raises(OSError, match="disk full"):
        write_outcome(replace(OUTCOME, steps=1), tmp_path)
    assert load_outcome(tmp_path) == OUTCOME


def test_run_name_is_unique_per_variant() -> None:
    names = {run_name(modular.FAMILY, c) for c in modular.variants("full")}
    names |= {run_name(multitask.FAMILY, c) for c in multitask.variants("full")}
    assert len(names) == 36
    assert "modular-x2_y2-wd0-seed2024" in names and "multitask-tri-wd1-seed137" in names


def test_family_modules_follow_the_contract() -> None:
    check_family(modular)
    check_family(multitask)
    with pytest.raises(TypeError, match="lacks"):
        check_family(common)


# -- the recorder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    task: str = "toy"
    seed: int = 0
    weight_decay: float = 1.0
    max_steps: int = 40
    eval_every: int = 10
    monitor_interval: int = 2


# Accuracies fed at evaluations 0, 10, 20, 30, 40: memorised at 20, grokked at 30 (≥ 0.95 exactly at 0.95).
TRAIN_ACC = [0.1, 0.5, 0.99, 1.0, 1.0]
TEST_ACC = [0.0, 0.1, 0.5, 0.95, 0.99]


def _toy_run(run_dir, config=ToyConfig(), **kwargs):
    torch.manual_seed(0)
    model = Transformer(vocab_size=8, n_classes=7, seq_len=3, d_model=16, n_layers=2, n_heads=2, d_mlp=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=config.weight_decay)
    x, y = torch.randint(0, 8, (32, 3)), torch.randint(0, 7, (32,))
    queries = [block.attn.q_proj.weight for block in model.blocks]
    with StudyRecorder(model, optimizer, run_dir, family="toy", config=config, **kwargs) as recorder:
        for step in range(config.max_steps + 1):
            if step:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                recorder.after_step(step, loss.item())
            if step % config.eval_every == 0:
                i = step // config.eval_every
                metrics = {"train_loss": 1.0 - TRAIN_ACC[i], "test_loss": 2.0 - TEST_ACC[i]}
                metrics.update(train_acc=TRAIN_ACC[i], test_acc=TEST_ACC[i], test_acc_extra=0.5)
                recorder.evaluate(step, metrics, attention_query_weights=queries)
        return recorder.finish(steps=config.max_steps, extra={"note": 3}), model


def test_recorder_writes_the_contracted_run(tmp_path) -> None:
    run_dir = tmp_path / "toy"
    outcome, model = _toy_run(run_dir, n_checkpoints=3)

    assert outcome.grok_step == 30 and outcome.memorize_step == 20
    assert (outcome.steps, outcome.max_steps, outcome.n_evals) == (40, 40, 5)
    assert (outcome.final_train_acc, outcome.final_test_acc, outcome.final_test_loss) == (
        1.0,
        0.99,
        2.0 - 0.99,
    )
    assert outcome.n_params == sum(p.numel() for p in model.parameters())
    assert outcome.extra == {"note": 3.0} and outcome.config["monitor_interval"] == 2
    assert load_outcome(run_dir) == outcome

    with RunStore(run_dir, mode="r") as store:
        evals, arrays, records, config = store.evals(), store.arrays(), store.records(), store.config()
    expected = {"train_loss", "test_loss", "train_acc", "test_acc", "test_acc_extra", "weight_norm"}
    assert set(evals) == expected | {"wq0_ratio", "wq1_ratio"}
    assert evals["test_acc"][0].tolist() == [0, 10, 20, 30, 40]
    assert evals["test_acc"][1].tolist() == TEST_ACC
    assert set(arrays) == {"wq0_sigma", "wq1_sigma"}

    # The last evaluation's spectra and weight norm are the final model's.
    for i, block in enumerate(model.blocks):
        steps, sigma = arrays[f"wq{i}_sigma"]
        reference = np.linalg.svd(block.attn.q_proj.weight.detach().double().numpy(), compute_uv=False)
        assert steps.tolist() == [0, 10, 20, 30, 40] and sigma.shape == (5, 16)
        np.testing.assert_allclose(sigma[-1], reference, rtol=1e-12)
        assert evals[f"wq{i}_ratio"][1][-1] == pytest.approx(reference[0] / reference[1])
        assert outcome.wq_ratio_final[i] == pytest.approx(reference[0] / reference[1])
        assert outcome.wq_ratio_at_grok[i] == pytest.approx(sigma[3, 0] / sigma[3, 1])
    norm = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]).norm().item()
    assert evals["weight_norm"][1][-1] == pytest.approx(norm, rel=1e-12)

    # W = 10 updates two steps apart: the first record at step 20, then one every 2 steps.
    assert [r["step"] for r in records] == list(range(20, 41, 2)) and outcome.n_records == 11
    assert all(r["g23"] is not None for r in records)
    assert config["monitor"]["window"] == 10 and config["monitor"]["interval"] == 2
    assert config["user"]["family"] == "toy" and config["user"]["recipe"]["max_steps"] == 40

    # 3 planned checkpoints spread over the run (0, 20, 40) plus the grok step (30).
    saved = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir())
    assert outcome.checkpoint_steps == (0, 20, 30, 40)
    assert saved == [f"step_{s}.safetensors" for s in (0, 20, 30, 40)]
    from safetensors.torch import load_file

    final = load_file(run_dir / CHECKPOINT_DIR / "step_40.safetensors")
    torch.testing.assert_close(final["blocks.0.attn.q_proj.weight"], model.blocks[0].attn.q_proj.weight)


def test_a_rerun_replaces_an_interrupted_run(tmp_path) -> None:
    run_dir = tmp_path / "toy"
    _toy_run(run_dir, n_checkpoints=3)
    (run_dir / CHECKPOINT_DIR / "step_999.safetensors").write_bytes(b"stale")
    model = torch.nn.Linear(2, 2)
    recorder = StudyRecorder(
        model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir, family="toy", config=ToyConfig()
    )
    # The old outcome is gone the moment a new run starts, so a crash now leaves the run incomplete.
    assert not is_complete(run_dir) and not (run_dir / CHECKPOINT_DIR).exists()
    recorder.close()
    with RunStore(run_dir, mode="r") as store:
        assert len(store) == 0 and store.evals() == {}


def test_recorder_checks_its_inputs(tmp_path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"lacks \['monitor_interval'\]"):
        StudyRecorder(model, opt, tmp_path / "a", family="toy", config=_NoInterval("toy", 0, 1.0, 10, 5))
    with StudyRecorder(model, opt, tmp_path / "b", family="toy", config=ToyConfig()) as recorder:
        with pytest.raises(ValueError, match=r"missing \['test_acc'\]"):
            recorder.evaluate(
                0, {"train_loss": 1, "test_loss": 1, "train_acc": 0}, attention_query_weights=[]
            )
        recorder.evaluate(
            0, dict(train_loss=1, test_loss=1, train_acc=0, test_acc=0), attention_query_weights=[]
        )
        with pytest.raises(ValueError, match="the last evaluation must be at the last step"):
            recorder.finish(steps=40)
    assert not is_complete(tmp_path / "b")


def test_checkpoints_stay_within_the_budget(tmp_path) -> None:
    """A large model gets fewer planned checkpoints: the budget holds them and the grok and last ones."""
    model = torch.nn.Linear(16, 16)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = ToyConfig(max_steps=1000)
    with StudyRecorder(
        model, opt, tmp_path / "a", family="toy", config=config, checkpoint_budget_bytes=6 * size
    ) as recorder:
        assert recorder._checkpoint_plan == {0, 330, 670, 1000}  # 6 - 2 spread over the evaluation grid
    with StudyRecorder(
        model, opt, tmp_path / "b", family="toy", config=config, checkpoint_budget_bytes=2 * size
    ) as recorder:
        assert recorder._checkpoint_plan == set()


@dataclass(frozen=True)
class _NoInterval:
    task: str
    seed: int
    weight_decay: float
    max_steps: int
    eval_every: int


# ------------------------------------------------------------------ shared recipe helpers


@dataclass(frozen=True)
class _Recipe:
    n_layers: int = 2
    seed: int = 42
    post_grok_steps: int | None = 500
    lr: float = 1e-3
    init_scale: float = 3.0
    grad_clip: float = 1.0
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    d_model: int = 128
    n_heads: int = 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"post_grok_steps": -1}, "post_grok_steps must be None or an int >= 0"),
        ({"post_grok_steps": True}, "post_grok_steps must be None or an int >= 0"),
        ({"lr": 0.0}, "lr must be a finite float > 0"),
        ({"init_scale": float("nan")}, "init_scale must be a finite float > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite float >= 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two floats"),
        ({"n_heads": 3}, "d_model must be a multiple of n_heads"),
    ],
)
def test_check_training_settings_names_the_bad_field(change, message):
    common.check_training_settings(_Recipe())  # the defaults pass
    with pytest.raises(ValueError, match=message):
        common.check_training_settings(replace(_Recipe(), **change))


def test_check_ints():
    common.check_ints(_Recipe(), ("n_layers", "seed"), minimum=1)
    with pytest.raises(ValueError, match="n_layers must be an int >= 1, got 0"):
        common.check_ints(replace(_Recipe(), n_layers=0), ("n_layers",), minimum=1)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got True"):
        common.check_ints(replace(_Recipe(), seed=True), ("seed",), minimum=0)


def test_seeds_by_weight_decay():
    presets = {suite: _Recipe() for suite in common.SUITES}
    full = common.seeds_by_weight_decay(presets, "full")
    assert [(c.seed, c.weight_decay) for c in full] == [(s, w) for s in (42, 137, 2024) for w in (1.0, 0.0)]
    assert [(c.seed, c.weight_decay) for c in common.seeds_by_weight_decay(presets, "quick")] == [
        (42, 1.0),
        (42, 0.0),
    ]
    with pytest.raises(ValueError, match="suite must be one of"):
        common.seeds_by_weight_decay(presets, "huge")


def test_scale_parameters():
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    common.scale_parameters(layer, 3.0)
    for p, b in zip(layer.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), 3.0 * b)
        assert p.requires_grad


def test_past_grok_stops_only_long_enough_after_grokking(tmp_path):
    model = Transformer(vocab_size=5, n_classes=3, seq_len=3, d_model=8, n_layers=1, n_heads=2, d_mlp=8)
    optimizer = torch.optim.AdamW(model.parameters())
    config = replace(modular.PRESETS["smoke"], max_steps=10)
    with StudyRecorder(model, optimizer, tmp_path, family="modular", config=config) as recorder:
        assert not recorder.past_grok(1000, 0)  # not grokked
        recorder.grok_step = 300
        assert not recorder.past_grok(799, 500)
        assert recorder.past_grok(800, 500)
        assert not recorder.past_grok(10_000, None)  # never stop early
