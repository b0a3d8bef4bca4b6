"""A decoder-only transformer that classifies every position: Dyck-1 depth prediction (thesis §27, Table 6).

:class:`~spectral_edge_studies.models.transformer.Transformer` reads its prediction from the last
position only (and computes only that position in its final block), which suits ``a ∘ b =`` but not a
task with a target at every token. This model shares its trunk
(:class:`~spectral_edge_studies.models.transformer.TransformerTrunk`: embeddings, pre-norm blocks,
unembedding) and returns logits at every position, so the
output at position ``t`` depends on tokens ``0 … t`` only (causal attention). Right padding therefore
never changes the logits of the real tokens before it, and no padding mask is needed.

Parameter names match the classifier's, so a monitor's per-group report reads the same::

    embed.weight, pos_embed.weight,
    blocks.{i}.norm1.{weight,bias}, blocks.{i}.attn.{q,k,v,o}_proj.weight,
    blocks.{i}.norm2.{weight,bias}, blocks.{i}.mlp.{up,down}.{weight,bias},
    norm.{weight,bias}, unembed.weight
"""

from __future__ import annotations

import torch

from spectral_edge_studies.models.transformer import TransformerTrunk


class CausalTransformer(TransformerTrunk):
    """Decoder-only transformer with a classifier at every position (a causal token tagger).

    Args:
        vocab_size: number of input token ids.
        n_classes: number of output classes per position.
        seq_len: maximum input length (rows of the learned position embedding).
        d_model: residual width; a multiple of ``n_heads``.
        n_layers: number of blocks, ≥ 1.
        n_heads: attention heads per block, ≥ 1.
        d_mlp: hidden width of each MLP.
        dropout: dropout probability on the embeddings and on each branch output, in [0, 1).
        norm: ``"layer"`` (LayerNorm), ``"rms"`` (RMSNorm) or ``"none"``.

    Example:
        >>> model = CausalTransformer(vocab_size=3, n_classes=5, seq_len=6, d_model=16, n_layers=2,
        ...                           n_heads=2, d_mlp=32)
        >>> model(torch.tensor([[0, 0, 1, 1, 2, 2]])).shape
        torch.Size([1, 6, 5])
        >>> list(model.query_weights())
        ['blocks.0.attn.q_proj', 'blocks.1.attn.q_proj']
    """

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return class logits at every position.

        Args:
            tokens: (B, T) int64 token ids with ``T ≤ seq_len``.

        Returns:
            (B, T, n_classes) logits; position ``t`` sees tokens ``0 … t`` only.
        """
        if tokens.dim() != 2 or tokens.shape[1] > self.seq_len:
            raise ValueError(
                f"tokens must have shape (batch, T) with T <= {self.seq_len}, got {tuple(tokens.shape)}"
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.embed(tokens) + self.pos_embed(positions))  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.norm(x))  # (B, T, n_classes)


__all__ = ["CausalTransformer"]
