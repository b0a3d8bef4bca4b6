"""The studies' transformer: the demo's model with a choice of norm, dropout and a shared trunk."""

from __future__ import annotations

import pytest
import torch

from spectral_edge.demo import PRESETS, build_model
from spectral_edge_studies.models.transformer import Transformer, query_weight


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


@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
def test_last_position_shortcut_is_exact(norm: str) -> None:
    """The final block computes only the last position; that must equal running it on every position.

    In float64: the two paths multiply matrices of other shapes, whose float32 round-off (3.6e-7 here on an
    AMD EPYC) depends on the CPU's kernels; in float64 it is 2e-16.
    """
    torch.manual_seed(0)
    model = _small(n_layers=3, norm=norm).double().eval()
    tokens = torch.randint(0, 8, (6, 3))
    with torch.no_grad():
        x = model.embed(tokens) + model.pos_embed(torch.arange(3))
        for block in model.blocks:
            x = block(x)  # every position, causal mask everywhere
        reference = model.unembed(model.norm(x[:, -1]))
        assert reference.dtype == torch.float64
        torch.testing.assert_close(model(tokens), reference, rtol=1e-10, atol=1e-12)


def test_with_layer_norm_and_no_dropout_it_is_the_demos_model() -> None:
    """Seeded as the demo seeds its model, the same weights (in the same order) and the same logits."""
    config = PRESETS["smoke"]
    demo = build_model(config)
    torch.manual_seed(config.seed + 1)  # the demo's stream for the initial weights
    ours = Transformer(
        vocab_size=config.p + 1,
        n_classes=config.p,
        seq_len=3,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_mlp=config.d_mlp,
    )
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in demo.named_parameters()]
    for a, b in zip(ours.parameters(), demo.parameters(), strict=True):
        assert torch.equal(a, b)
    tokens = torch.randint(0, config.p, (32, 3))
    assert torch.equal(ours(tokens), demo(tokens))


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
