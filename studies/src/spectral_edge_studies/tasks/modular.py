"""Modular arithmetic ``a ∘ b mod p``, the classic grokking task (Power et al. 2022; thesis §27, Table 7).

Every pair ``(a, b)`` with ``0 ≤ a, b < p`` (``b ≠ 0`` for division) is one example. The input is the
token sequence ``[a, b, =]``: ids ``0 … p−1`` are the numbers and id ``p`` is the ``=`` sign, so the
vocabulary has ``p + 1`` tokens. There is no operation token because a dataset holds a single
operation. The label is the result, a number in ``0 … p−1``.

The thesis's four grokking operations (Table 7) are ``add``, ``sub``, ``mul`` and ``x2_y2`` =
``a² + b²`` (also accepted as ``sq_sum``). Its multi-task models (§27, "Multi-task arithmetic") put
several heads on one trunk: ``dual`` = add + mul and ``tri`` = add + mul + a² + b², one input
``[a, b, =]`` with one target per task (:func:`multitask_modular_dataset`).

The single-task data are the demo's (:mod:`spectral_edge.demo`); this module adds the operations'
aliases and the multi-task splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spectral_edge import demo
from spectral_edge.demo import OPERATIONS, ModularData

#: Other names accepted for an operation; the data records the name in :data:`OPERATIONS`.
OPERATION_ALIASES = {"sq_sum": "x2_y2"}
#: The thesis's multi-task models (§27): the operations of their heads, in head order.
MULTITASK_PRESETS = {"dual": ("add", "mul"), "tri": ("add", "mul", "x2_y2")}


def _canonical(operation: str) -> str:
    if not isinstance(operation, str) or OPERATION_ALIASES.get(operation, operation) not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    return OPERATION_ALIASES.get(operation, operation)


def modular_dataset(p: int, operation: str, *, train_fraction: float, seed: int) -> ModularData:
    """Build every pair for ``a ∘ b mod p`` and split it at random into train and test.

    The demo's data (:func:`spectral_edge.demo.modular_dataset`), with the aliases of
    :data:`OPERATION_ALIASES`. The split is a permutation drawn from a ``torch.Generator`` seeded with
    ``seed``, so the same ``(p, operation, train_fraction, seed)`` always gives the same split, independent
    of the global RNG. The train set holds ``round(train_fraction * n_pairs)`` examples, the test set all
    the others.

    Args:
        p: modulus, an int ≥ 2; it must be prime for ``"div"`` (every ``b ≠ 0`` needs an inverse).
        operation: one of :data:`OPERATIONS`, or an alias in :data:`OPERATION_ALIASES`.
        train_fraction: fraction of the pairs used for training, in (0, 1).
        seed: seed of the split.

    Returns:
        The split as a :class:`~spectral_edge.demo.ModularData`.

    Raises:
        ValueError: on an unknown operation, a bad modulus, or a fraction that leaves either side empty.

    Example:
        >>> data = modular_dataset(7, "sq_sum", train_fraction=0.5, seed=0)
        >>> data.train_x.shape[0] + data.test_x.shape[0], data.operation
        (49, 'x2_y2')
        >>> a, b, eq = data.train_x[0].tolist()
        >>> eq == 7 and data.train_y[0].item() == (a * a + b * b) % 7
        True
    """
    return demo.modular_dataset(p, _canonical(operation), train_fraction=train_fraction, seed=seed)


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
    # The single-task split of the operation that decides which pairs exist (div drops b = 0), answered
    # for every operation: the same rows, in the same order, that each single-task run would draw.
    split_op = "div" if "div" in operations else operations[0]
    split = demo.modular_dataset(p, split_op, train_fraction=train_fraction, seed=seed)

    def answers(x: torch.Tensor) -> torch.Tensor:  # (n, 3) tokens -> (n, n_tasks) answers
        return torch.stack([OPERATIONS[op](x[:, 0], x[:, 1], p) for op in operations], dim=1)

    return MultiTaskModularData(
        p=p,
        operations=operations,
        train_x=split.train_x,
        train_y=answers(split.train_x),
        test_x=split.test_x,
        test_y=answers(split.test_x),
    )
