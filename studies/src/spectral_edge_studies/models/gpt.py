"""A GPT-2 style language model, written out plainly: a small one for the CPU and the 124M recipe.

The architecture is GPT-2's (Radford et al. 2019) as nanoGPT writes it:

* token and learned position embeddings, summed, then dropout;
* ``n_layer`` pre-LayerNorm blocks: ``x ← x + attn(ln(x))``, ``x ← x + mlp(ln(x))``, where ``attn`` is
  causal multi-head self-attention (``F.scaled_dot_product_attention(is_causal=True)``) and ``mlp`` is
  ``d → d_mlp → d`` with a GELU;
* a final LayerNorm and a language-model head, tied to the token embedding by default.

Initialisation is GPT-2's: every weight matrix and embedding ~ N(0, 0.02²), biases zero, and the two
projections that write into the residual stream (``attn.o_proj``, ``mlp.down``) ~ N(0, (0.02/√(2·n_layer))²),
so the residual's variance does not grow with depth (GPT-2 paper, §2.3).

Names follow the other models of this package, so a monitor's per-group report reads the same; Q, K and V
are separate projections (not nanoGPT's fused ``c_attn``) so that each W_Q is one named parameter
(§27, Remark 27.2). The parameter count is unchanged by the split::

    embed.weight, pos_embed.weight,
    blocks.{i}.norm1.{weight,bias}, blocks.{i}.attn.{q,k,v,o}_proj.{weight,bias},
    blocks.{i}.norm2.{weight,bias}, blocks.{i}.mlp.{up,down}.{weight,bias},
    norm.{weight,bias}, unembed.weight

(``.bias`` of the linear layers and LayerNorms is absent with ``bias=False``; ``unembed.weight`` *is*
``embed.weight`` when the embeddings are tied, and is then listed once by ``named_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Targets equal to this are left out of the loss (padding, or positions with nothing to predict).
IGNORE_INDEX = -1


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`GPT`. Use :data:`GPT_PRESETS` or :meth:`from_preset` for the named sizes.

    Example:
        >>> GPTConfig(vocab_size=64, context=16, n_layer=2, n_head=2, d_model=32).d_mlp
        128
        >>> GPTConfig(vocab_size=64, context=16, n_layer=2, n_head=3, d_model=32)
        Traceback (most recent call last):
            ...
        ValueError: d_model must be a multiple of n_head, got d_model=32, n_head=3; change either so each head gets d_model // n_head dimensions
    """

    vocab_size: int  # number of token ids; logits have this many columns
    context: int  # longest input (rows of the position embedding)
    n_layer: int  # transformer blocks
    n_head: int  # attention heads per block; divides d_model
    d_model: int  # residual width
    d_mlp: int | None = None  # hidden width of each MLP; None means 4 · d_model (GPT-2), resolved here
    dropout: float = 0.0  # on the embeddings, the attention probabilities and each branch output
    tie_embeddings: bool = True  # the LM head shares the token embedding's matrix (GPT-2)
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2 has them)

    def __post_init__(self) -> None:
        if self.d_mlp is None:
            # Resolve the default here so the saved config states the width actually built.
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "d_mlp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model must be a multiple of n_head, got d_model={self.d_model}, n_head={self.n_head}; "
                "change either so each head gets d_model // n_head dimensions"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        for name in ("tie_embeddings", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> GPTConfig:
        """The preset ``name`` of :data:`GPT_PRESETS`, with some fields replaced (and re-validated).

        Example:
            >>> GPTConfig.from_preset("small", vocab_size=512).vocab_size
            512
        """
        if name not in GPT_PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {sorted(GPT_PRESETS)}")
        return dataclasses.replace(GPT_PRESETS[name], **overrides)


GPT_PRESETS: dict[str, GPTConfig] = {
    # ~0.1M parameters: unit tests, doctests and smoke runs (milliseconds a step).
    "tiny": GPTConfig(vocab_size=64, context=32, n_layer=2, n_head=4, d_model=64),
    # 1,071,872 parameters at vocab 2048: the study's CPU model. ~13 GFLOP per AdamW step at batch
    # 16 × 128 (6 · params · tokens); about 0.4–0.6 s on one (shared) CPU core here.
    "small": GPTConfig(vocab_size=2048, context=128, n_layer=4, n_head=4, d_model=128),
    # GPT-2 small: 124,439,808 parameters with tied embeddings. For a GPU (`--device cuda`).
    "gpt2-124m": GPTConfig(vocab_size=50257, context=1024, n_layer=12, n_head=12, d_model=768),
}


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with separate Q, K, V and output projections."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, bias = config.d_model, config.bias
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d, bias=bias)
        self.v_proj = nn.Linear(d, d, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.n_head, d_model // self.n_head).transpose(1, 2)  # (B, H, T, dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, d) to (B, T, d); position ``t`` attends to positions ``0 … t`` only."""
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, H, T, dh)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape))


class MLP(nn.Module):
    """Position-wise ``d → d_mlp → d`` perceptron with a GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_mlp, bias=config.bias)
        self.down = nn.Linear(config.d_mlp, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x`` of shape (..., d)."""
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One pre-LayerNorm block; dropout acts on each branch's output before the residual add."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, d) to (B, T, d)."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """GPT-2 style decoder-only language model (see the module docstring for the layout and init).

    Args:
        config: the model's shape; a :class:`GPTConfig` (for instance ``GPT_PRESETS["small"]``).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = GPT(GPT_PRESETS["tiny"])
        >>> idx, targets = torch.randint(0, 64, (2, 2, 10))
        >>> logits, loss = model(idx, targets)
        >>> tuple(logits.shape)
        (2, 10, 64)
        >>> abs(loss.item() - math.log(64)) < 0.1  # ≈ ln(vocab) at init: the logits start near zero
        True
        >>> model.unembed.weight is model.embed.weight
        True
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # One Parameter object in two modules: one gradient, one optimizer entry, counted once.
            self.unembed.weight = self.embed.weight
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # LayerNorm keeps PyTorch's (weight 1, bias 0), which is also GPT-2's.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits at every position, and the mean cross-entropy when ``targets`` are given.

        Args:
            idx: (B, T) int64 token ids with ``T ≤ context``.
            targets: optional (B, T) int64 next-token ids; entries equal to ``IGNORE_INDEX`` (-1) are
                left out of the mean.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size), where position ``t`` sees tokens ``0 … t``
            only; loss a scalar tensor, or None without targets.
        """
        if idx.dim() != 2 or not 1 <= idx.shape[1] <= self.config.context:
            raise ValueError(
                f"idx must have shape (batch, T) with 1 <= T <= context={self.config.context}, "
                f"got {tuple(idx.shape)}; crop the sequence or build the model with a longer context"
            )
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.embed(idx) + self.pos_embed(positions))  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        logits = self.unembed(self.norm(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups by nanoGPT's rule: every tensor with ≥ 2 dimensions decays.

        That is the attention and MLP matrices, the embeddings (and with them the tied LM head), and an
        untied LM head; biases and LayerNorm gains and biases (1-D) do not decay, since shrinking a
        gain or an offset towards zero is not a useful prior. Each group carries ``param_names``.
        The rule lives in :func:`spectral_edge_studies.optim.weight_decay_groups`.

        Args:
            weight_decay: decoupled weight decay ω of the decaying group, ≥ 0.

        Returns:
            ``[decay_group, no_decay_group]``, dicts ready for ``torch.optim.AdamW``.

        Example:
            >>> groups = GPT(GPT_PRESETS["tiny"]).parameter_groups(0.1)
            >>> [(g["weight_decay"], len(g["params"])) for g in groups]
            [(0.1, 14), (0.0, 22)]
        """
        from spectral_edge_studies.optim import weight_decay_groups  # the optimiser owns the rule

        return weight_decay_groups(self, weight_decay)

    def query_weights(self) -> dict[str, torch.Tensor]:
        """The query matrix W_Q of every block, by module name, in depth order (live (d, d) tensors).

        Example:
            >>> list(GPT(GPT_PRESETS["tiny"]).query_weights())
            ['blocks.0.attn.q_proj', 'blocks.1.attn.q_proj']
        """
        return {f"blocks.{i}.attn.q_proj": block.attn.q_proj.weight for i, block in enumerate(self.blocks)}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars, each shared (tied) tensor counted once.

    Works on a model built on the meta device, so the 124M preset is counted without allocating it.

    Example:
        >>> with torch.device("meta"):
        ...     model = GPT(GPT_PRESETS["gpt2-124m"])
        >>> count_parameters(model)
        124439808
    """
    # Ties share one Parameter object (not just storage), so identity is the rule. parameters() already
    # yields each object once; the set keeps the count right for a module that registers one twice.
    # Storage pointers would not do: every meta tensor reports data_ptr() == 0.
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "IGNORE_INDEX", "count_parameters"]
