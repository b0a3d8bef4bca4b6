"""Modular-arithmetic dataset: counts, labels, and a deterministic, disjoint train/test split."""

from __future__ import annotations

import pytest
import torch

from spectral_edge_studies.tasks.modular import OPERATIONS, modular_dataset, multitask_modular_dataset

REFERENCE = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, -1, p)) % p,
    "x2_y2": lambda a, b, p: (a * a + b * b) % p,
}


def _pairs(x: torch.Tensor) -> set[tuple[int, int]]:
    return {(a, b) for a, b, _ in x.tolist()}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_counts_and_labels(operation: str) -> None:
    p = 11
    data = modular_dataset(p, operation, train_fraction=0.3, seed=0)
    n_pairs = p * (p - 1) if operation == "div" else p * p
    assert data.train_x.shape == (round(0.3 * n_pairs), 3)
    assert data.train_x.shape[0] + data.test_x.shape[0] == n_pairs
    assert data.train_y.shape == (data.train_x.shape[0],)
    assert data.train_x.dtype == data.train_y.dtype == torch.int64
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert (x[:, 2] == p).all()  # the "=" token
        for (a, b, _), answer in zip(x.tolist(), y.tolist(), strict=True):
            assert answer == REFERENCE[operation](a, b, p)


@pytest.mark.parametrize("operation", ["add", "div"])
def test_split_is_a_partition_of_all_pairs(operation: str) -> None:
    p = 13
    data = modular_dataset(p, operation, train_fraction=0.4, seed=3)
    train, test = _pairs(data.train_x), _pairs(data.test_x)
    expected = {(a, b) for a in range(p) for b in range(p) if operation != "div" or b != 0}
    assert not train & test
    assert train | test == expected
    assert len(train) == data.train_x.shape[0]  # no duplicates either


def test_same_seed_same_split_other_seed_other_split() -> None:
    first = modular_dataset(17, "mul", train_fraction=0.5, seed=42)
    again = modular_dataset(17, "mul", train_fraction=0.5, seed=42)
    other = modular_dataset(17, "mul", train_fraction=0.5, seed=137)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert _pairs(first.train_x) != _pairs(other.train_x)


def test_split_ignores_and_preserves_the_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = modular_dataset(7, "add", train_fraction=0.5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(modular_dataset(7, "add", train_fraction=0.5, seed=1).train_x, first.train_x)


def test_vocabulary() -> None:
    data = modular_dataset(5, "sub", train_fraction=0.5, seed=0)
    assert (data.train_x[:, 2] == 5).all()  # "=" is token p, so the vocabulary has p + 1 ids
    assert int(torch.cat([data.train_x, data.test_x]).max()) == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 7, "operation": "pow"}, "operation must be one of"),
        ({"p": 1, "operation": "add"}, "p must be an int >= 2"),
        ({"p": 9, "operation": "div"}, "prime"),
        ({"p": 7, "operation": "add", "train_fraction": 1.0}, r"train_fraction must lie in \(0, 1\)"),
        ({"p": 7, "operation": "add", "train_fraction": 0.001}, "at least one pair on each side"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    kwargs = {"train_fraction": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        modular_dataset(kwargs.pop("p"), kwargs.pop("operation"), seed=0, **kwargs)


# --- the thesis's four operations and the multi-task data (§27) ---------------------------------------


def test_sq_sum_is_an_alias_of_x2_y2() -> None:
    alias = modular_dataset(11, "sq_sum", train_fraction=0.5, seed=2)
    canonical = modular_dataset(11, "x2_y2", train_fraction=0.5, seed=2)
    assert alias.operation == canonical.operation == "x2_y2"
    assert torch.equal(alias.train_x, canonical.train_x) and torch.equal(alias.test_y, canonical.test_y)


@pytest.mark.parametrize("operation", ["add", "sub", "mul", "x2_y2"])
def test_the_four_thesis_operations_at_p_97(operation: str) -> None:
    data = modular_dataset(97, operation, train_fraction=0.5, seed=42)
    assert data.train_x.shape[0] + data.test_x.shape[0] == 97 * 97
    a, b = data.test_x[:, 0], data.test_x[:, 1]
    expected = torch.tensor(
        [REFERENCE[operation](x, y, 97) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    )
    assert torch.equal(data.test_y, expected)


@pytest.mark.parametrize(
    ("preset", "operations"), [("dual", ("add", "mul")), ("tri", ("add", "mul", "x2_y2"))]
)
def test_multitask_presets(preset: str, operations: tuple[str, ...]) -> None:
    p = 13
    data = multitask_modular_dataset(p, preset, train_fraction=0.4, seed=7)
    assert data.operations == operations
    assert data.train_y.shape == (round(0.4 * p * p), len(operations))
    assert data.test_y.shape == (p * p - data.train_y.shape[0], len(operations))
    assert data.vocab_size == p + 1 and data.equals_token == p
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert (x[:, 2] == p).all()
        for (a, b, _), answers in zip(x.tolist(), y.tolist(), strict=True):
            assert answers == [REFERENCE[op](a, b, p) for op in operations]
    # one shared split, identical to the single-task split of the same seed
    for k, op in enumerate(operations):
        single = modular_dataset(p, op, train_fraction=0.4, seed=7)
        assert torch.equal(data.train_x, single.train_x) and torch.equal(data.test_x, single.test_x)
        assert torch.equal(data.train_y[:, k], single.train_y)
        view = data.task(op)
        assert view.operation == op and torch.equal(view.test_y, single.test_y)


def test_multitask_is_seeded_and_accepts_operation_lists() -> None:
    first = multitask_modular_dataset(11, ["sub", "sq_sum"], train_fraction=0.5, seed=1)
    again = multitask_modular_dataset(11, ("sub", "x2_y2"), train_fraction=0.5, seed=1)
    other = multitask_modular_dataset(11, ("sub", "x2_y2"), train_fraction=0.5, seed=2)
    assert first.operations == ("sub", "x2_y2")
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert _pairs(first.train_x) != _pairs(other.train_x)


def test_multitask_with_division_drops_b_zero_for_every_task() -> None:
    data = multitask_modular_dataset(7, ["add", "div"], train_fraction=0.5, seed=0)
    pairs = _pairs(data.train_x) | _pairs(data.test_x)
    assert pairs == {(a, b) for a in range(7) for b in range(1, 7)}
    assert torch.equal(
        data.task("div").train_x, modular_dataset(7, "div", train_fraction=0.5, seed=0).train_x
    )


@pytest.mark.parametrize(
    ("tasks", "p", "match"),
    [
        ("quad", 7, "presets"),
        (["add", "add"], 7, "each once"),
        ([], 7, "at least one operation"),
        (["add", "pow"], 7, "operation must be one of"),
        (["mul", "div"], 8, "prime"),
    ],
)
def test_multitask_bad_arguments(tasks, p: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        multitask_modular_dataset(p, tasks, train_fraction=0.5, seed=0)


def test_multitask_view_of_a_missing_task_raises() -> None:
    with pytest.raises(ValueError, match="one of this data's"):
        multitask_modular_dataset(7, "dual", train_fraction=0.5, seed=0).task("sub")
