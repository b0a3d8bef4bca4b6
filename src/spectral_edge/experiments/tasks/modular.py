"""Modular arithmetic ``a ∘ b mod p``, the classic grokking task (Power et al. 2022; thesis §27, Table 7).

Every pair ``(a, b)`` with ``0 ≤ a, b < p`` (``b ≠ 0`` for division) is one example. The input is the
token sequence ``[a, b, =]``: ids ``0 … p−1`` are the numbers and id ``p`` is the ``=`` sign, so the
vocabulary has ``p + 1`` tokens. There is no operation token because a dataset holds a single
operation. The label is the result, a number in ``0 … p−1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Supported operations and what they compute (all mod p).
OPERATIONS = {
    "add": "a + b",
    "sub": "a - b",
    "mul": "a * b",
    "div": "a * b^-1 (b != 0)",
    "x2_y2": "a^2 + b^2",  # the thesis's 4th operation, code name x2_y2 (§27)
}


@dataclass(frozen=True)
class ModularData:
    """A fixed train/test split of every pair of one modular operation.

    Tensors live on the CPU; ``*_x`` hold token ids, ``*_y`` the answers.
    """

    p: int  # the modulus
    operation: str  # one of OPERATIONS
    train_x: torch.Tensor  # (n_train, 3) int64 tokens [a, b, =]
    train_y: torch.Tensor  # (n_train,) int64 answers in [0, p)
    test_x: torch.Tensor  # (n_test, 3) int64 tokens [a, b, =]
    test_y: torch.Tensor  # (n_test,) int64 answers in [0, p)

    @property
    def vocab_size(self) -> int:
        """Number of input token ids: ``p`` numbers and the ``=`` sign."""
        return self.p + 1

    @property
    def equals_token(self) -> int:
        """Token id of ``=``."""
        return self.p


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _answers(a: torch.Tensor, b: torch.Tensor, p: int, operation: str) -> torch.Tensor:
    if operation == "add":
        return (a + b) % p
    if operation == "sub":
        return (a - b) % p
    if operation == "mul":
        return (a * b) % p
    if operation == "div":
        # Fermat: b^(p-2) is the inverse of b mod a prime p.
        inverse = torch.tensor([pow(int(v), p - 2, p) for v in range(p)], dtype=torch.int64)
        return (a * inverse[b]) % p
    return (a * a + b * b) % p  # x2_y2


def modular_dataset(p: int, operation: str, *, train_fraction: float, seed: int) -> ModularData:
    """Build every pair for ``a ∘ b mod p`` and split it at random into train and test.

    The split is a permutation drawn from a ``torch.Generator`` seeded with ``seed``, so the same
    ``(p, operation, train_fraction, seed)`` always gives the same split, independent of the global RNG.
    The train set holds ``round(train_fraction * n_pairs)`` examples, the test set all the others.

    Args:
        p: modulus, an int ≥ 2; it must be prime for ``"div"`` (every ``b ≠ 0`` needs an inverse).
        operation: one of :data:`OPERATIONS`.
        train_fraction: fraction of the pairs used for training, in (0, 1).
        seed: seed of the split.

    Returns:
        The split as a :class:`ModularData`.

    Raises:
        ValueError: on an unknown operation, a bad modulus, or a fraction that leaves either side empty.

    Example:
        >>> data = modular_dataset(7, "add", train_fraction=0.5, seed=0)
        >>> data.train_x.shape[0] + data.test_x.shape[0]
        49
        >>> a, b, eq = data.train_x[0].tolist()
        >>> eq == data.equals_token and data.train_y[0].item() == (a + b) % 7
        True
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    if operation == "div" and not _is_prime(p):
        raise ValueError(f"division mod p needs a prime p so every b != 0 has an inverse, got p={p}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")

    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)  # (p²,) row-major: a major, b minor
    if operation == "div":
        keep = b != 0
        a, b = a[keep], b[keep]  # (p (p - 1),)
    y = _answers(a, b, p, operation)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (n_pairs, 3)

    n_pairs = x.shape[0]
    n_train = round(train_fraction * n_pairs)
    if not 0 < n_train < n_pairs:
        raise ValueError(
            f"train_fraction={train_fraction} gives {n_train} of {n_pairs} pairs for training; "
            "choose a fraction that leaves at least one pair on each side"
        )
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return ModularData(
        p=p, operation=operation, train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test]
    )
