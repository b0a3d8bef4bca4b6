"""A small encoder–decoder transformer for SCAN, written out plainly (thesis §27, Table 6).

The thesis trains a 3 + 3 layer encoder–decoder on SCAN and follows σ1/σ2 of the query matrices
(Remark 27.2). This model is the textbook pre-norm design with learned position embeddings:

* encoder block: ``x ← x + self_attn(norm(x))`` (padding keys masked), ``x ← x + mlp(norm(x))``;
* decoder block: ``y ← y + self_attn(norm(y))`` (causal), ``y ← y + cross_attn(norm(y), memory)``
  (padding keys of the source masked), ``y ← y + mlp(norm(y))``;
* a final norm after each stack and a bias-free unembedding of the decoder output.

Every attention layer has separate bias-free ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, so each query
matrix W_Q is one named parameter (:meth:`Seq2SeqTransformer.query_weights`)::

    src_embed.weight, src_pos.weight, tgt_embed.weight, tgt_pos.weight,
    encoder.{i}.norm1.*, encoder.{i}.attn.{q,k,v,o}_proj.weight, encoder.{i}.norm2.*, encoder.{i}.mlp.*,
    decoder.{i}.norm1.*, decoder.{i}.self_attn.{q,k,v,o}_proj.weight,
    decoder.{i}.norm2.*, decoder.{i}.cross_attn.{q,k,v,o}_proj.weight, decoder.{i}.norm3.*, decoder.{i}.mlp.*,
    encoder_norm.*, decoder_norm.*, unembed.weight

Decoder inputs are right-padded; causal attention means no real position ever attends to a later
padding position, so the decoder needs no padding mask of its own (the loss ignores padded targets).

:func:`greedy_decode` decodes a batch at once with a key/value cache (each step feeds one token per
sequence), and :func:`sequence_accuracy` scores whole action sequences, the thesis's SCAN metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spectral_edge.demo import MLP
from spectral_edge_studies.models.transformer import _NORMS, _norm

# Id conventions of tasks.scan, repeated so that this module does not depend on the task's vocabularies.
_PAD_ID, _BOS_ID, _EOS_ID, _IGNORE_INDEX = 0, 1, 2, -100


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate, bias-free Q, K, V and output projections.

    Queries come from ``x``; keys and values from ``x`` (self-attention) or from ``memory``
    (cross-attention). Built on ``F.scaled_dot_product_attention``.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.n_heads, d_model // self.n_heads).transpose(1, 2)  # (B, H, T, dh)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``source`` (B, S, d) to per-head keys and values, each (B, H, S, d/H)."""
        return self._heads(self.k_proj(source)), self._heads(self.v_proj(source))

    def attend(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Queries from ``x`` (B, T, d) over given keys and values; ``mask`` is True where attention is allowed.

        ``mask`` broadcasts to (B, H, T, S); ``None`` lets every query see every key.
        """
        q = self._heads(self.q_proj(x))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, T, dh)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape))

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, d) over ``memory`` (B, S, d), or over ``x`` itself when ``memory`` is None."""
        keys, values = self.keys_values(x if memory is None else memory)
        return self.attend(x, keys, values, mask)


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: bidirectional self-attention, then an MLP."""

    def __init__(self, *, d_model: int, n_heads: int, d_mlp: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm, d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.norm2 = _norm(norm, d_model)
        self.mlp = MLP(d_model, d_mlp)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Map (B, S, d) to (B, S, d); ``mask`` (B, 1, 1, S) is True at real source tokens."""
        x = x + self.drop(self.attn(self.norm1(x), mask=mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the encoder, then an MLP."""

    def __init__(self, *, d_model: int, n_heads: int, d_mlp: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm, d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.norm2 = _norm(norm, d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.norm3 = _norm(norm, d_model)
        self.mlp = MLP(d_model, d_mlp)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        y: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor | None,
        *,
        self_mask: torch.Tensor | None = None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Map (B, T, d) to (B, T, d); also return this block's self-attention keys and values.

        Args:
            y: (B, T, d) decoder states at positions ``t0 … t0 + T − 1``.
            cross_kv: keys and values of the encoder output for ``cross_attn``, each (B, H, S, d/H).
            cross_mask: (B, 1, 1, S) bool, True at real source tokens.
            self_mask: (T, T_all) bool, True where self-attention is allowed; None lets every query see
                every key (one new token after a cache).
            cache: keys and values of positions ``0 … t0 − 1`` from earlier calls, each (B, H, t0, d/H).
        """
        h = self.norm1(y)
        keys, values = self.self_attn.keys_values(h)
        if cache is not None:
            keys, values = torch.cat([cache[0], keys], dim=2), torch.cat([cache[1], values], dim=2)
        y = y + self.drop(self.self_attn.attend(h, keys, values, self_mask))
        y = y + self.drop(self.cross_attn.attend(self.norm2(y), *cross_kv, cross_mask))
        return y + self.drop(self.mlp(self.norm3(y))), (keys, values)


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder transformer trained with teacher forcing and decoded greedily.

    Args:
        src_vocab: encoder vocabulary size (id 0 is padding).
        tgt_vocab: decoder vocabulary size (ids 0, 1, 2 are padding, ``<bos>``, ``<eos>``).
        src_len: longest source (rows of the encoder's position embedding).
        tgt_len: longest decoder input (rows of the decoder's position embedding).
        d_model: residual width; a multiple of ``n_heads``.
        n_encoder_layers: encoder blocks, ≥ 1.
        n_decoder_layers: decoder blocks, ≥ 1.
        n_heads: attention heads per attention layer, ≥ 1.
        d_mlp: hidden width of each MLP.
        dropout: dropout probability on the embeddings and each branch output, in [0, 1).
        norm: ``"layer"`` (LayerNorm), ``"rms"`` (RMSNorm) or ``"none"``.

    Example:
        >>> model = Seq2SeqTransformer(src_vocab=14, tgt_vocab=9, src_len=9, tgt_len=49, d_model=16,
        ...                            n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_mlp=32)
        >>> src, tgt_in = torch.tensor([[4, 10, 0]]), torch.tensor([[1, 6, 6]])
        >>> model(src, tgt_in).shape
        torch.Size([1, 3, 9])
        >>> list(model.query_weights())
        ['encoder.0.attn.q_proj', 'decoder.0.self_attn.q_proj', 'decoder.0.cross_attn.q_proj']
        >>> greedy_decode(model, src, max_len=5).shape
        torch.Size([1, 5])
    """

    def __init__(
        self,
        *,
        src_vocab: int,
        tgt_vocab: int,
        src_len: int,
        tgt_len: int,
        d_model: int,
        n_encoder_layers: int,
        n_decoder_layers: int,
        n_heads: int,
        d_mlp: int,
        dropout: float = 0.0,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        for name, value in [
            ("src_vocab", src_vocab),
            ("src_len", src_len),
            ("tgt_len", tgt_len),
            ("d_model", d_model),
            ("n_encoder_layers", n_encoder_layers),
            ("n_decoder_layers", n_decoder_layers),
            ("n_heads", n_heads),
            ("d_mlp", d_mlp),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(tgt_vocab, bool) or not isinstance(tgt_vocab, int) or tgt_vocab <= _EOS_ID + 1:
            raise ValueError(
                f"tgt_vocab must be an int >= {_EOS_ID + 2} (padding, <bos>, <eos> and at least one "
                f"output token), got {tgt_vocab!r}"
            )
        if d_model % n_heads:
            raise ValueError(
                f"d_model must be a multiple of n_heads, got d_model={d_model}, n_heads={n_heads}; "
                "change either so each head gets d_model // n_heads dimensions"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        self.src_len, self.tgt_len = src_len, tgt_len
        block = dict(d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, dropout=dropout, norm=norm)
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.src_pos = nn.Embedding(src_len, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.tgt_pos = nn.Embedding(tgt_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderBlock(**block) for _ in range(n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(**block) for _ in range(n_decoder_layers))
        self.encoder_norm = _norm(norm, d_model)
        self.decoder_norm = _norm(norm, d_model)
        self.unembed = nn.Linear(d_model, tgt_vocab, bias=False)

    @staticmethod
    def source_mask(src: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S) bool, True at real (non-padding) source tokens: the keys attention may use.

        A source of padding only leaves its queries no key (NaN outputs); every SCAN command has a word.
        """
        return (src != _PAD_ID)[:, None, None, :]

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, S, d) of source ids (B, S) with ``S ≤ src_len``, right-padded with 0."""
        if src.dim() != 2 or not 1 <= src.shape[1] <= self.src_len:
            raise ValueError(
                f"src must have shape (batch, S) with 1 <= S <= {self.src_len}, got {tuple(src.shape)}"
            )
        positions = torch.arange(src.shape[1], device=src.device)
        x = self.drop(self.src_embed(src) + self.src_pos(positions))  # (B, S, d)
        mask = self.source_mask(src)
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x)

    def _embed_target(self, tgt: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + tgt.shape[1], device=tgt.device)
        return self.drop(self.tgt_embed(tgt) + self.tgt_pos(positions))  # (B, T, d)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: ``out[:, t]`` predicts the token after ``tgt_in[:, : t + 1]``.

        Args:
            src: (B, S) source ids, right-padded with 0.
            tgt_in: (B, T) decoder inputs (``<bos>`` then the target), ``T ≤ tgt_len``.

        Returns:
            (B, T, tgt_vocab) logits.
        """
        if tgt_in.dim() != 2 or not 1 <= tgt_in.shape[1] <= self.tgt_len or tgt_in.shape[0] != src.shape[0]:
            raise ValueError(
                f"tgt_in must have shape (batch, T) with 1 <= T <= {self.tgt_len} and the batch of src "
                f"{tuple(src.shape)}, got {tuple(tgt_in.shape)}"
            )
        memory = self.encode(src)
        cross_mask = self.source_mask(src)
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=src.device).tril()  # True: may attend
        y = self._embed_target(tgt_in, 0)
        for block in self.decoder:
            y, _ = block(y, block.cross_attn.keys_values(memory), cross_mask, self_mask=causal)
        return self.unembed(self.decoder_norm(y))

    def query_weights(self) -> dict[str, torch.Tensor]:
        """The query matrix W_Q of every attention layer (encoder self, decoder self and cross), by module name.

        Encoder layers first, then each decoder layer's self- and cross-attention. The tensors are the live
        ``(d_model, d_model)`` parameters; detach and copy them before keeping them.
        """
        weights = {f"encoder.{i}.attn.q_proj": b.attn.q_proj.weight for i, b in enumerate(self.encoder)}
        for i, b in enumerate(self.decoder):
            weights[f"decoder.{i}.self_attn.q_proj"] = b.self_attn.q_proj.weight
            weights[f"decoder.{i}.cross_attn.q_proj"] = b.cross_attn.q_proj.weight
        return weights


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, *, max_len: int) -> torch.Tensor:
    """Greedy decoding of a batch, one token per step with a key/value cache.

    Starts every sequence at ``<bos>`` (id 1) and appends the most likely token until it emits ``<eos>``
    (id 2) or ``max_len`` tokens are out. Positions after a sequence's ``<eos>`` hold padding (id 0).
    Equal to re-running the teacher-forced :meth:`Seq2SeqTransformer.forward` on the growing prefix and
    taking the argmax of its last position (tested). The model's train/eval mode is left as it is:
    call ``model.eval()`` first when it has dropout.

    Args:
        model: the encoder–decoder.
        src: (B, S) source ids, right-padded with 0.
        max_len: tokens to produce at most, ``1 ≤ max_len ≤ model.tgt_len``.

    Returns:
        (B, max_len) int64 predicted ids (``<bos>`` not included), ``<eos>`` then padding after the end.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= model.tgt_len:
        raise ValueError(
            f"max_len must be an int in [1, {model.tgt_len}] (the model's tgt_len), got {max_len!r}"
        )
    batch = src.shape[0]
    memory = model.encode(src)
    cross_mask = model.source_mask(src)
    cross_kv = [block.cross_attn.keys_values(memory) for block in model.decoder]
    cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.decoder)
    token = torch.full((batch, 1), _BOS_ID, dtype=torch.int64, device=src.device)
    out = torch.full((batch, max_len), _PAD_ID, dtype=torch.int64, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    for t in range(max_len):
        y = model._embed_target(token, t)  # (B, 1, d)
        for i, block in enumerate(model.decoder):
            # The newest query may see every cached key: no mask.
            y, cache[i] = block(y, cross_kv[i], cross_mask, cache=cache[i])
        token = model.unembed(model.decoder_norm(y)).argmax(dim=-1)  # (B, 1)
        out[:, t] = token[:, 0].masked_fill(done, _PAD_ID)
        done |= token[:, 0] == _EOS_ID
        if bool(done.all()):
            break
    return out


def sequence_accuracy(predicted: torch.Tensor, tgt_out: torch.Tensor) -> float:
    """Fraction of sequences whose every target token, ``<eos>`` included, is predicted exactly.

    The SCAN metric of the thesis (§27: grokking is test sequence accuracy ≥ 0.95). Target positions
    holding ``-100`` (padding) are not scored, so whatever a decoder writes after its ``<eos>`` is
    ignored; a prediction that stops early or runs on past the target's ``<eos>`` is wrong at that
    position.

    Args:
        predicted: (N, L) predicted ids, e.g. from :func:`greedy_decode`; ``L`` may differ from ``T``.
        tgt_out: (N, T) target ids, ``-100`` at padding.

    Returns:
        The fraction in [0, 1].

    Example:
        >>> target = torch.tensor([[6, 6, 2, -100], [5, 2, -100, -100]])
        >>> sequence_accuracy(torch.tensor([[6, 6, 2, 0], [5, 5, 2, 0]]), target)
        0.5
    """
    if predicted.dim() != 2 or tgt_out.dim() != 2 or predicted.shape[0] != tgt_out.shape[0]:
        raise ValueError(
            f"predicted and tgt_out must be (N, L) and (N, T) with the same N, got {tuple(predicted.shape)} "
            f"and {tuple(tgt_out.shape)}"
        )
    if tgt_out.shape[0] == 0:
        raise ValueError("sequence_accuracy needs at least one sequence, got N = 0")
    length = tgt_out.shape[1]
    if predicted.shape[1] < length:  # too short to hold some targets: pad with a token no target has
        predicted = F.pad(predicted, (0, length - predicted.shape[1]), value=_IGNORE_INDEX - 1)
    scored = tgt_out != _IGNORE_INDEX
    correct = (predicted[:, :length] == tgt_out) | ~scored
    return float(correct.all(dim=1).float().mean())


__all__ = ["MultiHeadAttention", "Seq2SeqTransformer", "greedy_decode", "sequence_accuracy"]
