"""Dyck-1 stack-depth prediction, the thesis's small grokking language task (§27, Table 6).

A causal model reads a balanced string of ``(`` and ``)`` and predicts, at every position, the stack
depth after that token: the number of ``(`` minus the number of ``)`` read so far, a class in
``0 … max_pairs``. The setup follows the author's code (``dyck_scan/dyck/grok_sweep.py``; formulas.md
§14): 50 training and 5,000 test sequences, context 24, one fixed data set (data seed 0) for every
training seed.

How a sequence is drawn (the author's generator): the number of pairs ``n`` is uniform in
``1 … max_pairs``; then, for ``2n`` tokens, ``(`` is written with probability ``p_open = 0.55`` when both
brackets are allowed, and the only legal bracket otherwise (``(`` at depth 0, ``)`` once all ``n`` are
open). Strings are cut to ``ctx_len`` tokens (with the defaults, ``2 · 12 = 24``, nothing is cut).
Tokens are ``( → 0``, ``) → 1``, padding ``→ 2``; targets at padding are ``IGNORE_INDEX = −100``.

Three protocols; the two new ones draw from ``numpy.random.default_rng(seed)``:

* ``"disjoint"`` (default): the author's protocol without the overlap. ``n_train`` draws make the
  training set (repeats kept, as in the author's); test sequences are further draws, skipping any string
  already in the training set, so no test sequence was seen in training. Test repeats are kept: the test
  set samples the generator's distribution, less the training strings (which removes most strings of
  1–3 pairs: there are only 1, 2 and 5 of them).
* ``"distinct"``: every sequence distinct, within and across the splits (repeats are dropped until
  ``n_train + n_test`` strings remain, then they are split at random). With so few short strings, the
  lengths lean long: with the defaults and seed 0, 4,511 of the 5,000 test strings have 8–12 pairs
  (2,084 in the author's data).
* ``"author"``: the author's data set, by replaying the author's code: ``random.Random(seed)`` draws ``n_train + n_test``
  sequences with repeats, and a ``torch.randperm`` seeded with ``seed`` splits them. With seed 0 only
  2,249 of the 5,050 sequences are distinct; 1,221 of the 5,000 test sequences (8.6% of test tokens)
  are also training sequences.

Why the author's "grokking" may not look like grokking (data side; see :func:`dyck_overlap`): in the
author's data 49.6% of the test tokens sit at a prefix that also starts a training sequence, which a
causal model answers from memory. A memoriser thus already scores about half of the test tokens, and
the thesis's criterion, the first step with test *token* accuracy ≥ 0.95, can be met soon after
memorisation with no sharp jump. Removing the overlap barely changes this: the share is 48.5% for
``"disjoint"`` and 40.9% for ``"distinct"`` (seed 0), because the short prefixes are shared by many
strings. A sharper test of generalisation is per-sequence accuracy, or token accuracy counted only at
positions whose prefix starts no training sequence (:func:`novel_prefix_mask`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

OPEN, CLOSE, PAD = 0, 1, 2
#: Input vocabulary size: ``(``, ``)`` and padding.
VOCAB_SIZE = 3
#: Target at padding positions; the default ``ignore_index`` of ``F.cross_entropy``.
IGNORE_INDEX = -100
DYCK_PROTOCOLS = ("disjoint", "distinct", "author")
_TOKEN = {"(": OPEN, ")": CLOSE}


@dataclass(frozen=True)
class DyckData:
    """A fixed train/test split of Dyck-1 depth prediction; int64 CPU tensors.

    Row ``i`` of ``*_x`` is one sequence, right-padded with ``PAD``; ``*_y[i, t]`` is the stack depth after
    token ``t``, or ``IGNORE_INDEX`` at padding.
    """

    train_x: torch.Tensor  # (n_train, ctx_len) tokens OPEN/CLOSE/PAD
    train_y: torch.Tensor  # (n_train, ctx_len) depths in [0, max_pairs], IGNORE_INDEX at padding
    test_x: torch.Tensor  # (n_test, ctx_len)
    test_y: torch.Tensor  # (n_test, ctx_len)
    ctx_len: int  # sequence length of the tensors
    max_pairs: int  # most bracket pairs in a sequence, hence the largest depth
    p_open: float  # probability of "(" when both brackets are legal
    protocol: str  # one of DYCK_PROTOCOLS
    seed: int  # data seed

    @property
    def n_classes(self) -> int:
        """Number of depth classes, ``0 … max_pairs``."""
        return self.max_pairs + 1


def stack_depths(sequence: str) -> list[int]:
    """The stack depth after each bracket of a string of ``(`` and ``)``.

    Example:
        >>> stack_depths("(()())")
        [1, 2, 1, 2, 1, 0]
    """
    depth, depths = 0, []
    for bracket in sequence:
        if bracket not in _TOKEN:
            raise ValueError(f"sequence must hold only '(' and ')', got {bracket!r} in {sequence!r}")
        depth += 1 if bracket == "(" else -1
        depths.append(depth)
    return depths


def decode_dyck(row: torch.Tensor) -> str:
    """The bracket string of one row of tokens, padding dropped.

    Example:
        >>> decode_dyck(torch.tensor([0, 0, 1, 1, 2, 2]))
        '(())'
    """
    return "".join("()"[t] for t in row.tolist() if t != PAD)


def _balanced(n_pairs: int, uniforms: Callable[[], float], p_open: float) -> str:
    # The author's generator, step for step, so that "author" draws the same random numbers.
    out, opened, depth = [], 0, 0
    for _ in range(2 * n_pairs):
        can_open, can_close = opened < n_pairs, depth > 0
        if can_open and (not can_close or uniforms() < p_open):
            out.append("(")
            opened, depth = opened + 1, depth + 1
        else:
            out.append(")")
            depth -= 1
    return "".join(out)


def _tensors(sequences: list[str], ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((len(sequences), ctx_len), PAD, dtype=torch.int64)
    y = torch.full((len(sequences), ctx_len), IGNORE_INDEX, dtype=torch.int64)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        x[row, :n] = torch.tensor([_TOKEN[b] for b in sequence], dtype=torch.int64)
        y[row, :n] = torch.tensor(stack_depths(sequence), dtype=torch.int64)
    return x, y


def _draw_disjoint(draw: Callable[[], str], n_train: int, n_test: int, *, distinct: bool) -> list[str]:
    """``n_train`` draws, then ``n_test`` draws of strings not among them; all distinct if ``distinct``."""
    train = [] if distinct else [draw() for _ in range(n_train)]
    seen = dict.fromkeys(train)  # insertion-ordered set
    test: list[str] = []
    n_wanted = n_train + n_test if distinct else n_test
    max_draws = 100 * (n_train + n_test) + 10_000
    for _ in range(max_draws):
        sequence = draw()
        if sequence not in seen:
            if distinct:
                seen[sequence] = None
            test.append(sequence)
            if len(test) == n_wanted:
                return test if distinct else train + test
    raise ValueError(
        f"found only {len(test)} of the {n_wanted} new strings needed in {max_draws} draws: the generator has "
        "too few distinct strings for this size; lower n_train or n_test, or raise max_pairs or ctx_len"
    )


def dyck_dataset(
    *,
    n_train: int = 50,
    n_test: int = 5000,
    ctx_len: int = 24,
    max_pairs: int = 12,
    p_open: float = 0.55,
    seed: int = 0,
    protocol: str = "disjoint",
) -> DyckData:
    """Draw the Dyck-1 depth-prediction data set of the thesis's grokking runs (§27).

    Args:
        n_train: training sequences (the thesis: 50, one full batch).
        n_test: test sequences (the thesis: 5,000).
        ctx_len: tensor length; longer strings are cut to it (the thesis: 24).
        max_pairs: most bracket pairs in a string, so depths lie in ``0 … max_pairs`` (the author: 12).
        p_open: probability of ``(`` when both brackets are legal (the author: 0.55).
        seed: data seed; the author used 0 for every training seed.
        protocol: ``"disjoint"`` (no test string is a training string), ``"distinct"`` (no string
            twice) or ``"author"`` (the author's data, overlap included); see the module docstring.

    Returns:
        The split as a :class:`DyckData`.

    Raises:
        ValueError: on a bad argument, or when the generator has too few distinct strings for the sizes.

    Example:
        >>> data = dyck_dataset(n_train=4, n_test=8, seed=0)
        >>> data.train_x.shape, data.test_y.shape, data.n_classes
        (torch.Size([4, 24]), torch.Size([8, 24]), 13)
        >>> s = decode_dyck(data.train_x[0])
        >>> data.train_y[0, : len(s)].tolist() == stack_depths(s)
        True
    """
    for label, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("ctx_len", ctx_len, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be an int >= 1, got {max_pairs!r}")
    if not 0.0 < p_open < 1.0:
        raise ValueError(f"p_open must lie in (0, 1), got {p_open!r}")
    if protocol not in DYCK_PROTOCOLS:
        raise ValueError(f"protocol must be one of {DYCK_PROTOCOLS}, got {protocol!r}")
    n_total = n_train + n_test

    if protocol == "author":
        rng = random.Random(seed)
        drawn = [_balanced(rng.randint(1, max_pairs), rng.random, p_open)[:ctx_len] for _ in range(n_total)]
        order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed)).tolist()
        sequences = [drawn[i] for i in order]
    else:
        gen = np.random.default_rng(seed)

        def draw() -> str:
            n_pairs = int(gen.integers(1, max_pairs + 1))
            uniforms = iter(gen.random(2 * n_pairs).tolist())
            return _balanced(n_pairs, uniforms.__next__, p_open)[:ctx_len]

        sequences = _draw_disjoint(draw, n_train, n_test, distinct=protocol == "distinct")
        if protocol == "distinct":
            sequences = [sequences[i] for i in gen.permutation(n_total).tolist()]

    train_x, train_y = _tensors(sequences[:n_train], ctx_len)
    test_x, test_y = _tensors(sequences[n_train:], ctx_len)
    return DyckData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        ctx_len=ctx_len,
        max_pairs=max_pairs,
        p_open=p_open,
        protocol=protocol,
        seed=seed,
    )


@dataclass(frozen=True)
class DyckOverlap:
    """How much of a Dyck test set a pure memoriser of the training set could answer."""

    test_sequences_in_train: float  # fraction of test sequences that are also training sequences
    test_tokens_in_train_sequences: float  # fraction of test tokens inside such sequences
    test_tokens_with_train_prefix: float  # fraction of test tokens whose prefix starts a training sequence
    distinct_sequences: int  # distinct sequences in train and test together


def _prefixes(x: torch.Tensor) -> set[str]:
    return {s[: t + 1] for s in map(decode_dyck, x) for t in range(len(s))}


def novel_prefix_mask(data: DyckData) -> torch.Tensor:
    """``(n_test, ctx_len)`` bool: True at test positions whose prefix starts no training sequence.

    A causal model's prediction at position ``t`` depends only on tokens ``0 … t``; where that prefix
    also starts a training sequence the answer can be memorised. Accuracy over this mask measures
    generalisation alone. Padding is False.

    Example:
        >>> data = dyck_dataset(n_train=20, n_test=200, seed=1)
        >>> mask = novel_prefix_mask(data)
        >>> bool(mask[:, 0].any())  # "(" starts every training sequence
        False
    """
    prefixes = _prefixes(data.train_x)
    rows = []
    for sequence in map(decode_dyck, data.test_x):
        novel = [sequence[: t + 1] not in prefixes for t in range(len(sequence))]
        rows.append(novel + [False] * (data.ctx_len - len(sequence)))
    return torch.tensor(rows, dtype=torch.bool).reshape(data.test_x.shape)


def dyck_overlap(data: DyckData) -> DyckOverlap:
    """Measure how much of a Dyck test set a memoriser of the training set could answer.

    Example:
        >>> dyck_overlap(dyck_dataset(n_train=20, n_test=200, seed=1)).test_sequences_in_train
        0.0
    """
    train = [decode_dyck(row) for row in data.train_x]
    test = [decode_dyck(row) for row in data.test_x]
    train_set = set(train)
    n_tokens = sum(len(s) for s in test)
    n_novel = int(novel_prefix_mask(data).sum())
    return DyckOverlap(
        test_sequences_in_train=sum(s in train_set for s in test) / len(test),
        test_tokens_in_train_sequences=sum(len(s) for s in test if s in train_set) / n_tokens,
        test_tokens_with_train_prefix=1 - n_novel / n_tokens,
        distinct_sequences=len(train_set | set(test)),
    )
