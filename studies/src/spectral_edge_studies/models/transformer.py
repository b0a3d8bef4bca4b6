"""A small decoder-only transformer, written out plainly, that reads a short sequence and classifies it.

The demo's model (:class:`spectral_edge.demo.Transformer`, the same attention and MLP layers) with the
studies' options: RMSNorm or no norm instead of LayerNorm, dropout, other sizes, and a trunk that other
heads share. Pre-norm blocks: ``x ← x + attn(norm(x))``, ``x ← x + mlp(norm(x))``. Attention is causal
multi-head self-attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` layers, so the query
matrix W_Q whose spectrum §27 follows (Remark 27.2) is one named parameter. Positions are learned
embeddings. With LayerNorm and no dropout, a :class:`Transformer` seeded as the demo seeds its model holds
the demo model's weights and computes its logits.

Parameter names are stable and meant to be read in a monitor's per-group report::

    embed.weight, pos_embed.weight,
    blocks.{i}.norm1.weight, blocks.{i}.attn.{q,k,v,o}_proj.weight,
    blocks.{i}.norm2.weight, blocks.{i}.mlp.up.weight, blocks.{i}.mlp.down.weight,
    norm.weight, unembed.weight

(norm weights are absent with ``norm="none"``, and LayerNorm adds ``.bias``).
"""

from __future__ import annotations

import torch
from torch import nn

from spectral_edge.demo import MLP, Attention

_NORMS = ("layer", "rms", "none")


def _norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d_model)
    if kind == "rms":
        return nn.RMSNorm(d_model)
    return nn.Identity()


class Block(nn.Module):
    """One pre-norm transformer block; dropout acts on each branch's output before the residual add."""

    def __init__(self, *, d_model: int, n_heads: int, d_mlp: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm, d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = _norm(norm, d_model)
        self.mlp = MLP(d_model, d_mlp)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Map (B, T, d) to (B, T, d), or to (B, 1, d) with ``last_only`` (see :meth:`spectral_edge.demo.Attention.forward`)."""
        residual = x[:, -1:] if last_only else x
        x = residual + self.drop(self.attn(self.norm1(x), last_only=last_only))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerTrunk(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final norm and an unembedding: what the
    decoder-only models share. Each leaf (:class:`Transformer`, ``models.causal.CausalTransformer``)
    decides where it reads its logits; the arguments are documented there.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        n_classes: int,
        seq_len: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_mlp: int,
        dropout: float = 0.0,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        for name, value in [
            ("vocab_size", vocab_size),
            ("n_classes", n_classes),
            ("seq_len", seq_len),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("d_mlp", d_mlp),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if d_model % n_heads:
            raise ValueError(
                f"d_model must be a multiple of n_heads, got d_model={d_model}, n_heads={n_heads}; "
                "change either so each head gets d_model // n_heads dimensions"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, dropout=dropout, norm=norm)
            for _ in range(n_layers)
        )
        self.norm = _norm(norm, d_model)
        self.unembed = nn.Linear(d_model, n_classes, bias=False)

    def query_weights(self) -> dict[str, torch.Tensor]:
        """The query matrix W_Q of every attention layer, by module name, in depth order.

        §27 (Remark 27.2) follows σ1/σ2 of W_Q. The tensors are the live ``(d_model, d_model)``
        parameters (rows are output features); detach and copy them before keeping them.
        """
        return {f"blocks.{i}.attn.q_proj": block.attn.q_proj.weight for i, block in enumerate(self.blocks)}


class Transformer(TransformerTrunk):
    """Decoder-only transformer that predicts a class from the last position of its input.

    Args:
        vocab_size: number of input token ids.
        n_classes: number of output classes (the unembedding's rows).
        seq_len: maximum input length (rows of the learned position embedding).
        d_model: residual width; a multiple of ``n_heads``.
        n_layers: number of blocks, ≥ 1.
        n_heads: attention heads per block, ≥ 1.
        d_mlp: hidden width of each MLP.
        dropout: dropout probability on the embeddings and on each branch output, in [0, 1).
        norm: ``"layer"`` (LayerNorm), ``"rms"`` (RMSNorm) or ``"none"``.

    Example:
        >>> model = Transformer(vocab_size=8, n_classes=7, seq_len=3, d_model=16, n_layers=2,
        ...                     n_heads=2, d_mlp=32)
        >>> model(torch.tensor([[1, 2, 7], [3, 4, 7]])).shape
        torch.Size([2, 7])
        >>> tuple(query_weight(model).shape)
        (16, 16)
    """

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the class logits read at the last position.

        Args:
            tokens: (B, T) int64 token ids with ``T ≤ seq_len``.

        Returns:
            (B, n_classes) logits.
        """
        if tokens.dim() != 2 or tokens.shape[1] > self.seq_len:
            raise ValueError(
                f"tokens must have shape (batch, T) with T <= {self.seq_len}, got {tuple(tokens.shape)}"
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.embed(tokens) + self.pos_embed(positions))  # (B, T, d)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # Only the last position is read out, so the final block computes just that one (exactly).
            x = block(x, last_only=i == last)
        return self.unembed(self.norm(x[:, -1]))  # (B, n_classes)


def query_weight(model: Transformer) -> torch.Tensor:
    """The query matrix W_Q of the first attention layer, shape (d_model, d_model).

    §27 (Remark 27.2) tracks σ1/σ2 of this weight matrix through grokking. The tensor is the live
    parameter; detach and copy it before keeping it.

    Args:
        model: a :class:`Transformer`.

    Returns:
        ``model.blocks[0].attn.q_proj.weight`` (rows are output features).
    """
    if not isinstance(model, TransformerTrunk):
        raise TypeError(f"query_weight expects a Transformer, got {type(model).__name__}")
    return model.blocks[0].attn.q_proj.weight
