"""Modular-arithmetic dataset: counts, labels, and a deterministic, disjoint train/test split."""

from __future__ import annotations

import pytest
import torch

from spectral_edge.experiments.tasks.modular import OPERATIONS, modular_dataset

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
    assert data.vocab_size == 6 and data.equals_token == 5
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
