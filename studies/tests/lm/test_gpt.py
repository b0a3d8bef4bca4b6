"""The GPT language model: config checks, shapes, causality, tying, GPT-2's parameter count and init,
loss at init, overfitting a batch, determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS, IGNORE_INDEX, GPTConfig, count_parameters

TINY = GPT_PRESETS["tiny"]


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(dataclasses.replace(TINY, **overrides))


def _tokens(*shape: int, vocab: int = TINY.vocab_size, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# --- config -------------------------------------------------------------------------------------------


def test_config_resolves_d_mlp_and_is_frozen() -> None:
    config = GPTConfig(vocab_size=10, context=8, n_layer=1, n_head=2, d_model=8)
    assert config.d_mlp == 32
    assert GPTConfig(vocab_size=10, context=8, n_layer=1, n_head=2, d_model=8, d_mlp=5).d_mlp == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 0}, "vocab_size must be an int >= 1, got 0"),
        ({"context": 2.0}, "context must be an int >= 1, got 2.0"),
        ({"n_layer": True}, "n_layer must be an int >= 1, got True"),
        ({"n_head": 3}, "d_model must be a multiple of n_head, got d_model=64, n_head=3"),
        ({"d_mlp": -1}, "d_mlp must be an int >= 1, got -1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
        ({"dropout": "0.1"}, "dropout must be a float"),
        ({"tie_embeddings": 1}, "tie_embeddings must be True or False, got 1"),
        ({"bias": None}, "bias must be True or False, got None"),
    ],
)
def test_config_rejects_bad_values_with_the_value_in_the_message(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **overrides)


def test_presets() -> None:
    assert GPTConfig.from_preset("small", vocab_size=300).vocab_size == 300
    assert GPTConfig.from_preset("small") == GPT_PRESETS["small"]
    small = GPT_PRESETS["small"]
    shape = (small.vocab_size, small.context, small.n_layer, small.n_head, small.d_model)
    assert shape == (2048, 128, 4, 4, 128)
    with pytest.raises(ValueError, match=r"unknown GPT preset 'gpt3'; choose one of \['gpt2-124m'"):
        GPTConfig.from_preset("gpt3")
    with pytest.raises(TypeError, match="config must be a GPTConfig, got dict"):
        GPT({"vocab_size": 3})  # type: ignore[arg-type]


# --- parameter counts ---------------------------------------------------------------------------------


def test_gpt2_124m_preset_has_gpt2_small_parameter_count() -> None:
    # Built on the meta device: shapes only, no 500 MB allocation.
    with torch.device("meta"):
        model = GPT(GPT_PRESETS["gpt2-124m"])
        untied = GPT(dataclasses.replace(GPT_PRESETS["gpt2-124m"], tie_embeddings=False))
    assert count_parameters(model) == 124_439_808
    assert count_parameters(untied) == 124_439_808 + 50257 * 768  # the head's own matrix
    assert model.unembed.weight is model.embed.weight


def test_small_and_tiny_preset_sizes() -> None:
    assert count_parameters(GPT(TINY)) == 106_240
    with torch.device("meta"):
        assert count_parameters(GPT(GPT_PRESETS["small"])) == 1_071_872


def test_count_parameters_counts_a_tied_tensor_once_and_skips_frozen() -> None:
    model = _model()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    d, v = TINY.d_model, TINY.vocab_size
    assert count_parameters(_model(tie_embeddings=False)) - count_parameters(model) == v * d
    model.pos_embed.weight.requires_grad_(False)
    assert count_parameters(model) == 106_240 - TINY.context * d


# --- structure and init -------------------------------------------------------------------------------


def test_parameter_names_follow_the_package_convention() -> None:
    names = [name for name, _ in _model(n_layer=1).named_parameters()]
    assert names == [
        "embed.weight",
        "pos_embed.weight",
        *[f"blocks.0.norm1.{s}" for s in ("weight", "bias")],
        *[f"blocks.0.attn.{m}_proj.{s}" for m in "qkvo" for s in ("weight", "bias")],
        *[f"blocks.0.norm2.{s}" for s in ("weight", "bias")],
        *[f"blocks.0.mlp.{m}.{s}" for m in ("up", "down") for s in ("weight", "bias")],
        "norm.weight",
        "norm.bias",
    ]  # unembed.weight is embed.weight, so named_parameters lists it once
    no_bias = [name for name, _ in _model(bias=False).named_parameters()]
    assert not [name for name in no_bias if name.endswith("bias")]
    assert list(_model().query_weights()) == ["blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]


def test_tied_head_shares_one_parameter_and_one_gradient() -> None:
    model = _model()
    assert model.unembed.weight is model.embed.weight
    _, loss = model(_tokens(2, 8), _tokens(2, 8, seed=2))
    loss.backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
    untied = _model(tie_embeddings=False)
    assert untied.unembed.weight is not untied.embed.weight


def test_gpt2_init() -> None:
    # Wide enough for the sample std to be within a few percent of the target.
    model = _model(d_model=128, n_layer=4, n_head=4)
    residual_std = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down.weight")):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "norm" in name and name.endswith("weight"):  # LayerNorm gains
            assert torch.equal(p, torch.ones_like(p)), name
        else:  # biases, LayerNorm offsets
            assert torch.equal(p, torch.zeros_like(p)), name


# --- forward ------------------------------------------------------------------------------------------


def test_shapes_and_optional_loss() -> None:
    model = _model().eval()
    logits, loss = model(_tokens(3, 7))
    assert logits.shape == (3, 7, TINY.vocab_size) and loss is None
    logits, loss = model(_tokens(2, TINY.context), _tokens(2, TINY.context, seed=2))
    assert logits.shape == (2, TINY.context, TINY.vocab_size) and loss.shape == ()


def test_forward_rejects_bad_shapes() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"1 <= T <= context=32, got \(1, 33\); crop the sequence"):
        model(_tokens(1, 33))
    with pytest.raises(ValueError, match=r"idx must have shape \(batch, T\)"):
        model(_tokens(8))
    with pytest.raises(ValueError, match=r"targets must have the shape of idx \(2, 4\), got \(2, 3\)"):
        model(_tokens(2, 4), _tokens(2, 3))


def test_causal_masking_future_tokens_do_not_change_earlier_logits() -> None:
    model = _model().eval()
    idx = _tokens(2, 12)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % TINY.vocab_size
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 7:], before[:, 7:])


def test_loss_at_init_is_about_log_vocab() -> None:
    # Targets independent of the inputs: with a tied head, predicting the *input* token would score
    # better than chance even at init, since h·e_token picks up the token's own embedding.
    config = GPT_PRESETS["small"]
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(config, n_layer=1)).eval()
    _, loss = model(_tokens(4, 64, vocab=config.vocab_size), _tokens(4, 64, vocab=config.vocab_size, seed=2))
    assert loss.item() == pytest.approx(math.log(config.vocab_size), abs=0.1)


def test_ignore_index_targets_are_left_out_of_the_mean() -> None:
    model = _model().eval()
    idx, targets = _tokens(2, 10), _tokens(2, 10, seed=2)
    masked = targets.clone()
    masked[:, :4] = IGNORE_INDEX
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 4:].reshape(-1, TINY.vocab_size), targets[:, 4:].reshape(-1)
    )
    torch.testing.assert_close(loss, expected)


def test_dropout_is_random_in_training_and_off_in_eval() -> None:
    model = _model(dropout=0.2)
    idx = _tokens(2, 10)
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)


# --- training -----------------------------------------------------------------------------------------


def _train(model: GPT, batch: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameter_groups(0.0), lr=lr, betas=(0.9, 0.95))
    losses = []
    for _ in range(steps):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_tiny_model_overfits_a_tiny_batch() -> None:
    losses = _train(_model(), _tokens(4, 17), steps=100)
    assert losses[0] == pytest.approx(math.log(TINY.vocab_size), abs=0.2)
    assert losses[-1] < 0.1, losses[-1]


def test_same_seed_same_model_and_same_training() -> None:
    batch = _tokens(2, 9)
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed.weight, c.embed.weight)
    assert _train(a, batch, steps=3) == _train(b, batch, steps=3)
