"""Modular arithmetic ``a ∘ b mod p``, the classic grokking task (Power et al. 2022; thesis §27, Table 7).

Every pair ``(a, b)`` with ``0 ≤ a, b < p`` (``b ≠ 0`` for division) is one example. The input is the
token sequence ``[a, b, =]``: ids ``0 … p−1`` are the numbers and id ``p`` is the ``=`` sign, so the
vocabulary has ``p + 1`` tokens. There is no operation token because a dataset holds a single
operation. The label is the result, a number in ``0 … p−1``.

The thesis's four grokking operations (Table 7) are ``add``, ``sub``, ``mul`` and ``x2_y2`` =
``a² + b²`` (also accepted as ``sq_sum``). Its multi-task models (§27, "Multi-task arithmetic") put
several heads on one trunk: ``dual`` = add + mul and ``tri`` = add + mul + a² + b², one input
``[a, b, =]`` with one target per task (:func:`multitask_modular_dataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
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
#: Other names accepted for an operation; the data records the name in :data:`OPERATIONS`.
OPERATION_ALIASES = {"sq_sum": "x2_y2"}
#: The thesis's multi-task models (§27): the operations of their heads, in head order.
MULTITASK_PRESETS = {"dual": ("add", "mul"), "tri": ("add", "mul", "x2_y2")}


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


def _canonical(operation: str) -> str:
    if not isinstance(operation, str):
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    operation = OPERATION_ALIASES.get(operation, operation)
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    return operation


def _check(p: int, operations: Sequence[str], train_fraction: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    if "div" in operations and not _is_prime(p):
        raise ValueError(f"division mod p needs a prime p so every b != 0 has an inverse, got p={p}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")


def _pairs_and_split(
    p: int, *, drop_b_zero: bool, train_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every input ``[a, b, =]`` and the seeded permutation's train and test row indices."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)  # (p²,) row-major: a major, b minor
    if drop_b_zero:
        keep = b != 0
        a, b = a[keep], b[keep]  # (p (p - 1),)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (n_pairs, 3)

    n_pairs = x.shape[0]
    n_train = round(train_fraction * n_pairs)
    if not 0 < n_train < n_pairs:
        raise ValueError(
            f"train_fraction={train_fraction} gives {n_train} of {n_pairs} pairs for training; "
            "choose a fraction that leaves at least one pair on each side"
        )
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    return x, order[:n_train], order[n_train:]


def modular_dataset(p: int, operation: str, *, train_fraction: float, seed: int) -> ModularData:
    """Build every pair for ``a ∘ b mod p`` and split it at random into train and test.

    The split is a permutation drawn from a ``torch.Generator`` seeded with ``seed``, so the same
    ``(p, operation, train_fraction, seed)`` always gives the same split, independent of the global RNG.
    The train set holds ``round(train_fraction * n_pairs)`` examples, the test set all the others.

    Args:
        p: modulus, an int ≥ 2; it must be prime for ``"div"`` (every ``b ≠ 0`` needs an inverse).
        operation: one of :data:`OPERATIONS`, or an alias in :data:`OPERATION_ALIASES`.
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
    operation = _canonical(operation)
    _check(p, [operation], train_fraction)
    x, train, test = _pairs_and_split(
        p, drop_b_zero=operation == "div", train_fraction=train_fraction, seed=seed
    )
    y = _answers(x[:, 0], x[:, 1], p, operation)
    return ModularData(
        p=p, operation=operation, train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test]
    )


@dataclass(frozen=True)
class MultiTaskModularData:
    """One split of every pair with one answer per task: the data of a multi-head model (§27).

    Column ``k`` of ``*_y`` answers ``operations[k]`` for the same input row; train and test are the
    same for every task.
    """

    p: int  # the modulus
    operations: tuple[str, ...]  # one per head, names from OPERATIONS
    train_x: torch.Tensor  # (n_train, 3) int64 tokens [a, b, =]
    train_y: torch.Tensor  # (n_train, n_tasks) int64 answers in [0, p)
    test_x: torch.Tensor  # (n_test, 3) int64 tokens [a, b, =]
    test_y: torch.Tensor  # (n_test, n_tasks) int64 answers in [0, p)

    @property
    def vocab_size(self) -> int:
        """Number of input token ids: ``p`` numbers and the ``=`` sign."""
        return self.p + 1

    @property
    def equals_token(self) -> int:
        """Token id of ``=``."""
        return self.p

    def task(self, operation: str) -> ModularData:
        """The single-task view of one head: the same split, that operation's answers.

        Example:
            >>> data = multitask_modular_dataset(7, "dual", train_fraction=0.5, seed=0)
            >>> single = data.task("mul")
            >>> bool((single.train_y == data.train_y[:, 1]).all())
            True
        """
        operation = _canonical(operation)
        if operation not in self.operations:
            raise ValueError(f"operation must be one of this data's {self.operations}, got {operation!r}")
        k = self.operations.index(operation)
        return ModularData(
            p=self.p,
            operation=operation,
            train_x=self.train_x,
            train_y=self.train_y[:, k],
            test_x=self.test_x,
            test_y=self.test_y[:, k],
        )


def multitask_modular_dataset(
    p: int, tasks: str | Sequence[str] = "dual", *, train_fraction: float, seed: int
) -> MultiTaskModularData:
    """Every pair ``(a, b)`` with the answers of several operations, split once for all of them.

    The thesis's multi-task models (§27) share one trunk between heads for ``dual`` = (add, mul) and
    ``tri`` = (add, mul, a² + b²). The split is the permutation :func:`modular_dataset` draws for the
    same ``p``, ``train_fraction`` and ``seed``, so each head sees exactly the split a single-task run
    would. With ``div`` among the tasks, ``b = 0`` is dropped for every task.

    Args:
        p: modulus, an int ≥ 2; prime if ``div`` is among the tasks.
        tasks: a preset of :data:`MULTITASK_PRESETS` or a sequence of distinct operations.
        train_fraction: fraction of the pairs used for training, in (0, 1).
        seed: seed of the split.

    Returns:
        The split as a :class:`MultiTaskModularData`.

    Raises:
        ValueError: on an unknown preset or operation, a repeated operation, or a bad ``p`` or fraction.

    Example:
        >>> data = multitask_modular_dataset(7, "tri", train_fraction=0.5, seed=0)
        >>> data.operations, tuple(data.train_y.shape)
        (('add', 'mul', 'x2_y2'), (24, 3))
        >>> a, b, _ = data.test_x[0].tolist()
        >>> data.test_y[0].tolist() == [(a + b) % 7, (a * b) % 7, (a * a + b * b) % 7]
        True
    """
    if isinstance(tasks, str):
        if tasks not in MULTITASK_PRESETS:
            raise ValueError(
                f"tasks must be one of the presets {sorted(MULTITASK_PRESETS)} or a sequence of operations, "
                f"got {tasks!r}"
            )
        tasks = MULTITASK_PRESETS[tasks]
    operations = tuple(_canonical(op) for op in tasks)
    if not operations or len(set(operations)) != len(operations):
        raise ValueError(f"tasks must name at least one operation, each once, got {tuple(tasks)!r}")
    _check(p, operations, train_fraction)
    x, train, test = _pairs_and_split(
        p, drop_b_zero="div" in operations, train_fraction=train_fraction, seed=seed
    )
    y = torch.stack([_answers(x[:, 0], x[:, 1], p, op) for op in operations], dim=1)  # (n_pairs, n_tasks)
    return MultiTaskModularData(
        p=p, operations=operations, train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test]
    )
