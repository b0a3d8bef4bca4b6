"""Grokking recipe: model shapes and names, seeding, the training loop's contract, and the smoke run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from spectral_edge.experiments.grokking import (
    GROK_ACC,
    MEMORIZE_ACC,
    PRESETS,
    GrokConfig,
    TrainResult,
    build_model,
    make_data,
    train,
)
from spectral_edge.experiments.models.transformer import Transformer, query_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/experiments/conftest.py

EVAL_KEYS = {"train_loss", "train_acc", "test_loss", "test_acc", "wq_sigma1", "wq_sigma2", "wq_ratio"}


def _small(**overrides) -> Transformer:
    kwargs = dict(vocab_size=8, n_classes=7, seq_len=3, d_model=16, n_layers=2, n_heads=2, d_mlp=32)
    return Transformer(**{**kwargs, **overrides})


def test_parameter_names_are_stable() -> None:
    names = [name for name, _ in _small().named_parameters()]
    block = [
        "norm1.weight",
        "norm1.bias",
        "attn.q_proj.weight",
        "attn.k_proj.weight",
        "attn.v_proj.weight",
        "attn.o_proj.weight",
        "norm2.weight",
        "norm2.bias",
        "mlp.up.weight",
        "mlp.up.bias",
        "mlp.down.weight",
        "mlp.down.bias",
    ]
    expected = ["embed.weight", "pos_embed.weight"]
    expected += [f"blocks.{i}.{name}" for i in range(2) for name in block]
    expected += ["norm.weight", "norm.bias", "unembed.weight"]
    assert names == expected


@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
def test_forward_shape_and_query_weight(norm: str) -> None:
    model = _small(norm=norm)
    assert model(torch.randint(0, 8, (5, 3))).shape == (5, 7)
    assert model(torch.randint(0, 8, (5, 2))).shape == (5, 7)  # shorter inputs are fine
    wq = query_weight(model)
    assert wq.shape == (16, 16)
    assert wq is model.blocks[0].attn.q_proj.weight


def test_last_position_shortcut_is_exact() -> None:
    """The final block computes only the last position; that must equal running it on every position.

    In float64: the two paths multiply matrices of other shapes, whose float32 round-off (3.6e-7 here on an
    AMD EPYC) depends on the CPU's kernels; in float64 it is 2e-16.
    """
    torch.manual_seed(0)
    model = _small(n_layers=3).double().eval()
    tokens = torch.randint(0, 8, (6, 3))
    with torch.no_grad():
        x = model.embed(tokens) + model.pos_embed(torch.arange(3))
        for block in model.blocks:
            x = block(x)  # every position, causal mask everywhere
        reference = model.unembed(model.norm(x[:, -1]))
        assert reference.dtype == torch.float64
        torch.testing.assert_close(model(tokens), reference, rtol=1e-10, atol=1e-12)


def test_transformer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        _small(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="norm must be one of"):
        _small(norm="batch")
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        _small(dropout=1.0)
    with pytest.raises(ValueError, match="T <= 3"):
        _small()(torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="expects a Transformer"):
        query_weight(torch.nn.Linear(2, 2))


def test_build_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    config = PRESETS["smoke"]
    state = torch.get_rng_state()
    first = build_model(config)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    again = build_model(config)
    other = build_model(replace(config, seed=1))
    for (name, a), b in zip(first.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(query_weight(first), query_weight(other))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"operation": "pow"}, "operation must be one of"),
        ({"max_steps": 0}, "max_steps must be an int >= 1"),
        ({"eval_every": 2.5}, "eval_every must be an int >= 1"),
        ({"train_fraction": 0.0}, "train_fraction must lie in"),
        ({"lr": -1.0}, "lr must be a finite float > 0"),
        ({"weight_decay": math.nan}, "weight_decay must be a finite float >= 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two floats"),
        ({"grad_clip": 0.0}, "grad_clip must be None or a float > 0"),
        ({"early_stop_evals": -1}, "early_stop_evals must be an int >= 0"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GrokConfig(**overrides)


def test_default_preset_keeps_the_fixed_optimiser_settings() -> None:
    """The demo's claims (memorise ≤ grok/2, no grok without weight decay) were measured for these."""
    config = PRESETS["default"]
    assert (config.p, config.lr, config.weight_decay) == (97, 1e-3, 1.0)


@pytest.fixture(scope="module")
def smoke_run(grokking_smoke_run) -> tuple[TrainResult, list, list, list]:
    return grokking_smoke_run  # tests/experiments/conftest.py: trained once, shared with the demo's test


def test_smoke_run_memorises_then_groks_well_inside_the_budget(smoke_run) -> None:
    """What the smoke preset is for: memorise early, generalise much later, within the step budget.

    The steps come from a chaotic trajectory that differs between CPUs and thread counts (torch 2.13.0):
    on an AMD EPYC with one thread (as here) memorised at 320 and grokked at 1500, with two at 300 and 1340;
    over twenty runs with the initial weights perturbed by 1e-6 (ten on each thread count) memorised at
    280–340 and grokked at 1240–1500; the one-thread runs ended at test accuracy 0.93–1.0 and train
    accuracy ≥ 0.99, with dips to 0.80 and 0.88 after grokking. On an Intel Xeon grokked at 1480. Hence
    the 2,000-step budget and these margins.
    """
    result, *_ = smoke_run
    config = PRESETS["smoke"]
    assert result.steps_run == config.max_steps == 2000
    assert result.grok_step is not None and result.memorize_step is not None
    assert result.memorize_step <= result.grok_step / 2  # memorised first, grokked much later
    assert result.final["train_acc"] >= 0.8  # still fitted at the end
    assert result.final["test_acc"] >= 0.5  # and still generalising (chance: 1/23)
    assert result.final["wq_ratio"] > 10  # σ1/σ2 of W_Q opened up (§27), from ≈ 1 at init
    assert result.history["wq_ratio"][0] < 1.2  # the initial weights do not depend on the CPU: 1.043


def test_train_result_and_callbacks_follow_the_documented_contract(smoke_run) -> None:
    result, steps, evals, ticks = smoke_run
    config = PRESETS["smoke"]
    assert [step for step, _ in steps] == list(range(1, config.max_steps + 1))
    assert set(steps[0][1]) == {"loss", "lr", "grad_norm"}
    assert steps[0][1]["lr"] == pytest.approx(config.lr / config.warmup_steps)
    assert steps[-1][1]["lr"] == config.lr
    assert list(result.losses) == [metrics["loss"] for _, metrics in steps]
    assert result.eval_steps == tuple(range(0, config.max_steps + 1, 20))
    assert [step for step, _ in evals] == list(result.eval_steps)
    assert set(evals[0][1]) == EVAL_KEYS and set(result.history) == EVAL_KEYS
    assert all(len(values) == len(result.eval_steps) for values in result.history.values())
    assert dict(result.final) == evals[-1][1]
    assert ticks[0] == (1, config.max_steps) and ticks[-1] == (config.max_steps, config.max_steps)
    # memorise / grok steps are the first evaluations over the thresholds
    train_acc, test_acc = result.history["train_acc"], result.history["test_acc"]
    first_memorised = next(i for i, acc in enumerate(train_acc) if acc >= MEMORIZE_ACC)
    first_grokked = next(i for i, acc in enumerate(test_acc) if acc >= GROK_ACC)
    assert result.memorize_step == result.eval_steps[first_memorised]
    assert result.grok_step == result.eval_steps[first_grokked]
    assert 0 < result.eval_time_s < result.wall_time_s
    assert result.ms_per_step == pytest.approx(1000 * result.wall_time_s / config.max_steps)


def test_early_stopping_stops_at_the_streak_and_repeats_the_run(smoke_run) -> None:
    full, *_ = smoke_run
    config = replace(PRESETS["smoke"], max_steps=400, early_stop_evals=2, early_stop_acc=0.2)
    result = train(config, build_model(config), make_data(config))
    hits = [acc >= 0.2 for acc in full.history["test_acc"]]
    stop = next(i for i in range(1, len(hits)) if hits[i - 1] and hits[i])
    assert result.steps_run == full.eval_steps[stop] < 400
    assert result.losses == full.losses[: result.steps_run]


def test_callbacks_drawing_random_numbers_do_not_change_the_run() -> None:
    """Dropout draws from a private stream, so a monitor that uses the global RNG cannot perturb training."""
    config = replace(PRESETS["smoke"], dropout=0.3, max_steps=25, eval_every=5)
    quiet = train(config, build_model(config), make_data(config))
    noisy = train(
        config,
        build_model(config),
        make_data(config),
        on_step=lambda step, metrics: torch.rand(100),
        on_eval=lambda step, metrics: torch.randn(7),
    )
    assert quiet.losses == noisy.losses
    assert quiet.final == noisy.final
    plain = replace(config, dropout=0.0)
    without_dropout = train(plain, build_model(plain), make_data(plain))
    assert without_dropout.losses != quiet.losses  # dropout is really active
