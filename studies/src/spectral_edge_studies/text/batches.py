"""Token streams for language-model training: a train/validation split and (input, target) batches.

Split rule (:func:`split_blocks`): the text is cut into blocks of about ``block_chars`` characters, each
cut moved forward to the next line start, and every ``1/val_fraction``-th block goes to validation
(block ``i`` is validation iff ``floor((i + 1) f) > floor(i f)``, so with ``f = 0.1`` blocks 9, 19, 29,
...). Validation is thus spread evenly over the corpus (every play contributes, so it is in-distribution
for the training text), contiguous within a block (no token of a validation line is seen in training),
and the same on every run. A random token-level shuffle would leak: the neighbours of each validation
window would be training data. Each block is tokenized on its own, so no token straddles a
train/validation boundary; the training stream joins its blocks back to back, so about one window in
``block_chars`` characters spans a seam where a validation block was cut out.

>>> import torch
>>> tokens = torch.arange(10)
>>> x, y = random_batch(tokens, batch_size=2, context=4, generator=torch.Generator().manual_seed(0))
>>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
(torch.Size([2, 4]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spectral_edge_studies.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class Block:
    """Characters ``text[start:end]``, and whether they are validation text."""

    start: int
    end: int
    is_val: bool


@dataclass(frozen=True)
class TokenSplits:
    """The token streams of :func:`encode_splits`.

    Attributes:
        train: 1-D int64 tensor, the training blocks' tokens in text order.
        val: 1-D int64 tensor, the validation blocks' tokens in text order.
    """

    train: torch.Tensor
    val: torch.Tensor


def split_blocks(text: str, *, val_fraction: float = 0.1, block_chars: int = 10_000) -> list[Block]:
    """The blocks of the split rule in the module docstring; they tile ``text`` exactly, in order.

    Raises:
        ValueError: ``val_fraction`` not in (0, 1), ``block_chars`` < 1, or ``text`` too short to give
            at least one training and one validation block.

    >>> text = "".join(f"line {i}\\n" for i in range(10))          # 7 characters a line
    >>> [(b.start, b.end, b.is_val) for b in split_blocks(text, val_fraction=0.5, block_chars=20)]
    [(0, 21, False), (21, 42, True), (42, 63, False), (63, 70, True)]
    """
    if isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if isinstance(block_chars, bool) or not isinstance(block_chars, int) or block_chars < 1:
        raise ValueError(f"block_chars must be an int >= 1, got {block_chars!r}")
    blocks: list[Block] = []
    start = 0
    while start < len(text):
        # Cut at a line start, so a validation block begins and ends with whole lines.
        newline = text.find("\n", start + block_chars - 1)
        end = len(text) if newline < 0 else newline + 1
        i = len(blocks)
        blocks.append(Block(start, end, math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)))
        start = end
    n_val = sum(b.is_val for b in blocks)
    if n_val == 0 or n_val == len(blocks):
        raise ValueError(
            f"a text of {len(text)} characters gives {len(blocks)} block(s) of ~{block_chars} characters, "
            f"{n_val} of them validation at val_fraction={val_fraction}; both splits need at least one block: "
            f"use a smaller block_chars (at most ~{max(len(text) * val_fraction, 1):.0f} here) or more text"
        )
    return blocks


def encode_splits(
    text: str, tokenizer: Tokenizer, *, val_fraction: float = 0.1, block_chars: int = 10_000
) -> TokenSplits:
    """Tokenize ``text`` into training and validation streams by :func:`split_blocks`.

    Example::

        tok = cached_tokenizer("shakespeare", kind="bpe", vocab_size=2048, text_fn=lambda: text)
        splits = encode_splits(corpus_text("shakespeare"), tok)   # splits.val: about 10% of the tokens
    """
    blocks = split_blocks(text, val_fraction=val_fraction, block_chars=block_chars)
    ids = tokenizer.encode_batch([text[b.start : b.end] for b in blocks])
    train = [t for b, t in zip(blocks, ids, strict=True) if not b.is_val]
    val = [t for b, t in zip(blocks, ids, strict=True) if b.is_val]
    return TokenSplits(train=_flat(train), val=_flat(val))


def random_batch(
    tokens: torch.Tensor, *, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows at random offsets: inputs ``x`` and next-token targets ``y``.

    ``x[b] = tokens[s_b : s_b + context]`` and ``y[b] = tokens[s_b + 1 : s_b + context + 1]``, both
    ``(batch_size, context)`` int64 on ``tokens.device``; the offsets ``s_b`` come from ``generator``,
    so a seeded generator gives the same batches on every run.

    Raises:
        ValueError: ``tokens`` is not a 1-D integer tensor, is shorter than ``context + 1``, or
            ``batch_size``/``context`` is not a positive int.
    """
    _check(tokens, batch_size=batch_size, context=context)
    # Offsets drawn on the generator's device, so a CPU generator drives batches of GPU tokens too.
    starts = torch.randint(
        0, len(tokens) - context, (batch_size,), generator=generator, device=generator.device
    )
    index = starts.to(tokens.device)[:, None] + torch.arange(context + 1, device=tokens.device)  # (B, T+1)
    window = tokens[index].long()
    return window[:, :-1], window[:, 1:]


def fixed_batches(
    tokens: torch.Tensor, *, batch_size: int, context: int, n_batches: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches of :func:`random_batch` from a generator seeded with ``seed``.

    The same arguments give the same list on every call, so a validation loss is always measured on
    the same windows.

    >>> a = fixed_batches(torch.arange(50), batch_size=3, context=5, n_batches=2, seed=1)
    >>> b = fixed_batches(torch.arange(50), batch_size=3, context=5, n_batches=2, seed=1)
    >>> all(bool((xa == xb).all()) for (xa, _), (xb, _) in zip(a, b))
    True
    """
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be an int >= 1, got {n_batches!r}")
    generator = torch.Generator().manual_seed(seed)
    return [
        random_batch(tokens, batch_size=batch_size, context=context, generator=generator)
        for _ in range(n_batches)
    ]


def _check(tokens: torch.Tensor, *, batch_size: int, context: int) -> None:
    for name, value in (("batch_size", batch_size), ("context", context)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point():
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a 1-D integer tensor, got {shape}")
    if len(tokens) < context + 1:
        raise ValueError(
            f"tokens has {len(tokens)} tokens, fewer than context + 1 = {context + 1} needed for one "
            f"(input, target) window; use a shorter context or more text"
        )


def _flat(parts: list[list[int]]) -> torch.Tensor:
    return torch.tensor([i for part in parts for i in part], dtype=torch.int64)
