"""Encoder–decoder and per-position causal models: shapes, names, masking, greedy decoding, sequence accuracy."""

from __future__ import annotations

import pytest
import torch

from spectral_edge_studies.models.causal import CausalTransformer
from spectral_edge_studies.models.seq2seq import Seq2SeqTransformer, greedy_decode, sequence_accuracy

BOS, EOS, PAD = 1, 2, 0


def _seq2seq(**overrides) -> Seq2SeqTransformer:
    kwargs = dict(
        src_vocab=14,
        tgt_vocab=9,
        src_len=9,
        tgt_len=12,
        d_model=16,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
        d_mlp=32,
    )
    torch.manual_seed(0)
    return Seq2SeqTransformer(**{**kwargs, **overrides}).eval()


def _causal(**overrides) -> CausalTransformer:
    kwargs = dict(vocab_size=3, n_classes=5, seq_len=8, d_model=16, n_layers=2, n_heads=2, d_mlp=32)
    torch.manual_seed(0)
    return CausalTransformer(**{**kwargs, **overrides}).eval()


def test_seq2seq_shapes_and_query_weights() -> None:
    model = _seq2seq()
    src = torch.tensor([[4, 10, 0, 0], [5, 6, 7, 0]])
    assert model(src, torch.tensor([[BOS, 6, 6], [BOS, 5, 0]])).shape == (2, 3, 9)
    queries = model.query_weights()
    assert list(queries) == [
        "encoder.0.attn.q_proj",
        "encoder.1.attn.q_proj",
        "decoder.0.self_attn.q_proj",
        "decoder.0.cross_attn.q_proj",
        "decoder.1.self_attn.q_proj",
        "decoder.1.cross_attn.q_proj",
    ]
    assert all(w.shape == (16, 16) for w in queries.values())
    assert queries["decoder.1.cross_attn.q_proj"] is model.decoder[1].cross_attn.q_proj.weight
    names = {name for name, _ in model.named_parameters()}
    assert {"src_embed.weight", "tgt_pos.weight", "unembed.weight", "decoder.0.norm3.bias"} <= names


def test_decoder_is_causal_and_source_padding_is_ignored() -> None:
    model = _seq2seq()
    src = torch.tensor([[4, 10, 3, 0, 0]])
    tgt = torch.tensor([[BOS, 6, 6, 5, 7]])
    out = model(src, tgt)
    changed = tgt.clone()
    changed[0, 3:] = torch.tensor([8, 3])
    # Positions 0-2 see tokens 0-2 only.
    torch.testing.assert_close(model(src, changed)[:, :3], out[:, :3])
    # More padding on the source changes nothing; a padding id with another embedding would.
    longer = torch.tensor([[4, 10, 3, 0, 0, 0, 0]])
    torch.testing.assert_close(model(longer, tgt), out, rtol=1e-5, atol=1e-6)


def test_greedy_decoding_equals_rerunning_the_prefix() -> None:
    """The key/value cache must give what re-running teacher forcing on the growing prefix gives."""
    model = _seq2seq()
    src = torch.tensor([[4, 10, 3, 0], [5, 0, 0, 0], [6, 7, 8, 9]])
    decoded = greedy_decode(model, src, max_len=10)
    prefix = torch.full((3, 1), BOS)
    with torch.no_grad():
        for _ in range(10):
            prefix = torch.cat([prefix, model(src, prefix)[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    reference = prefix[:, 1:].clone()
    for row in reference:  # padding after the first <eos>
        ends = (row == EOS).nonzero()
        if len(ends):
            row[int(ends[0]) + 1 :] = PAD
    assert torch.equal(decoded, reference)


def test_greedy_decoding_on_a_hand_built_model() -> None:
    """A decoder whose logits depend only on the position: it writes 3, 4, <eos>, then padding."""
    model = _seq2seq(tgt_len=6)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.tgt_pos.weight[:, :6] = torch.eye(6)  # position t sets feature t
        plan = [3, 4, EOS, 5, 5, 5]  # token wanted after position t
        for t, token in enumerate(plan):
            model.unembed.weight[token, t] = 10.0
        model.decoder_norm = torch.nn.Identity()  # no normalisation of the one-hot features
        for block in model.decoder:
            block.norm1 = block.norm2 = block.norm3 = torch.nn.Identity()
    out = greedy_decode(model, torch.tensor([[4, 0], [5, 6]]), max_len=6)
    assert out.tolist() == [[3, 4, EOS, PAD, PAD, PAD]] * 2
    assert greedy_decode(model, torch.tensor([[4]]), max_len=2).tolist() == [[3, 4]]  # cut at max_len


def test_sequence_accuracy_on_a_hand_made_example() -> None:
    target = torch.tensor([[6, 6, EOS, -100], [5, EOS, -100, -100], [7, 7, 7, EOS], [3, EOS, -100, -100]])
    predicted = torch.tensor(
        [
            [6, 6, EOS, PAD],  # right
            [5, 5, EOS, PAD],  # runs on past the end: wrong
            [7, 7, 7, EOS],  # right, full length
            [3, EOS, 4, 4],  # right: what follows <eos> is not scored
        ]
    )
    assert sequence_accuracy(predicted, target) == 0.75
    assert sequence_accuracy(predicted[:, :2], target) == 0.25  # too short for rows 0 and 2; row 1 wrong
    with pytest.raises(ValueError, match="same N"):
        sequence_accuracy(predicted[:2], target)


def test_causal_transformer_predicts_every_position_causally() -> None:
    model = _causal()
    tokens = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 2]])
    out = model(tokens)
    assert out.shape == (2, 6, 5)
    changed = tokens.clone()
    changed[:, 3:] = 0
    torch.testing.assert_close(model(changed)[:, :3], out[:, :3])
    assert list(model.query_weights()) == ["blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]
    assert model.query_weights()["blocks.1.attn.q_proj"] is model.blocks[1].attn.q_proj.weight


@pytest.mark.parametrize(
    ("build", "overrides", "match"),
    [
        (_seq2seq, {"d_model": 15}, "multiple of n_heads"),
        (_seq2seq, {"tgt_vocab": 3}, "tgt_vocab must be an int >= 4"),
        (_seq2seq, {"norm": "batch"}, "norm must be one of"),
        (_causal, {"n_layers": 0}, "n_layers must be an int >= 1"),
        (_causal, {"dropout": 1.0}, "dropout must lie in"),
    ],
)
def test_models_reject_bad_arguments(build, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**overrides)


def test_inputs_longer_than_the_position_tables_are_rejected() -> None:
    with pytest.raises(ValueError, match="src must have shape"):
        _seq2seq()(torch.zeros(1, 10, dtype=torch.int64), torch.tensor([[BOS]]))
    with pytest.raises(ValueError, match="tgt_in must have shape"):
        _seq2seq()(torch.ones(1, 3, dtype=torch.int64), torch.ones(1, 13, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_len must be an int"):
        greedy_decode(_seq2seq(), torch.ones(1, 3, dtype=torch.int64), max_len=13)
    with pytest.raises(ValueError, match="tokens must have shape"):
        _causal()(torch.zeros(1, 9, dtype=torch.int64))
