"""Dyck-1 depth prediction: balanced strings, correct depths, the three protocols, determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from spectral_edge_studies.tasks.dyck import (
    CLOSE,
    DYCK_PROTOCOLS,
    IGNORE_INDEX,
    OPEN,
    PAD,
    decode_dyck,
    dyck_dataset,
    dyck_overlap,
    novel_prefix_mask,
    stack_depths,
)


def _reference_depths(x: torch.Tensor) -> torch.Tensor:
    """Depth after each token by a cumulative sum of ±1 (padding adds 0), IGNORE_INDEX at padding."""
    steps = torch.where(x == OPEN, 1, torch.where(x == CLOSE, -1, 0))
    return torch.where(x == PAD, IGNORE_INDEX, steps.cumsum(dim=1))


def _authors_generator(n_seqs: int, max_pairs: int, seed: int) -> list[str]:
    """The author's generator (dyck_scan/dyck/grok_sweep.py), written out independently."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_seqs):
        n_pairs, seq, opened, stack = rng.randint(1, max_pairs), "", 0, 0
        for _ in range(2 * n_pairs):
            if opened < n_pairs and stack > 0:
                if rng.random() < 0.55:
                    seq, opened, stack = seq + "(", opened + 1, stack + 1
                else:
                    seq, stack = seq + ")", stack - 1
            elif opened < n_pairs:
                seq, opened, stack = seq + "(", opened + 1, stack + 1
            else:
                seq, stack = seq + ")", stack - 1
        out.append(seq)
    return out


@pytest.fixture(scope="module")
def datasets() -> dict:
    return {protocol: dyck_dataset(protocol=protocol) for protocol in DYCK_PROTOCOLS}


@pytest.mark.parametrize("protocol", DYCK_PROTOCOLS)
def test_shapes_and_the_thesis_sizes(datasets: dict, protocol: str) -> None:
    data = datasets[protocol]
    assert data.train_x.shape == data.train_y.shape == (50, 24)
    assert data.test_x.shape == data.test_y.shape == (5000, 24)
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        assert t.dtype == torch.int64
    assert data.n_classes == 13 and data.protocol == protocol and data.seed == 0


@pytest.mark.parametrize("protocol", DYCK_PROTOCOLS)
def test_depth_targets_match_a_reference(datasets: dict, protocol: str) -> None:
    data = datasets[protocol]
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert torch.equal(y, _reference_depths(x))
        assert torch.equal(x == PAD, y == IGNORE_INDEX)
        real = y[y != IGNORE_INDEX]
        assert real.min() >= 0 and real.max() <= data.max_pairs
        lengths = (x != PAD).sum(dim=1)
        assert (lengths >= 2).all() and (lengths % 2 == 0).all()
        assert (y.gather(1, (lengths - 1)[:, None]) == 0).all()  # balanced: back to depth 0
        assert (x[:, 0] == OPEN).all()
        # padding only at the end
        assert torch.equal(x != PAD, torch.arange(x.shape[1])[None, :] < lengths[:, None])


def test_disjoint_protocol_has_no_test_string_in_train(datasets: dict) -> None:
    data = datasets["disjoint"]
    train = {decode_dyck(r) for r in data.train_x}
    assert not train & {decode_dyck(r) for r in data.test_x}
    assert dyck_overlap(data).test_sequences_in_train == 0.0


def test_distinct_protocol_has_no_repeats(datasets: dict) -> None:
    data = datasets["distinct"]
    strings = [decode_dyck(r) for r in torch.cat([data.train_x, data.test_x])]
    assert len(set(strings)) == 5050


def test_author_protocol_replays_the_authors_data(datasets: dict) -> None:
    drawn = _authors_generator(5050, 12, seed=0)
    order = torch.randperm(5050, generator=torch.Generator().manual_seed(0)).tolist()
    expected = [drawn[i] for i in order]
    data = datasets["author"]
    assert [decode_dyck(r) for r in data.train_x] == expected[:50]
    assert [decode_dyck(r) for r in data.test_x] == expected[50:]
    overlap = dyck_overlap(data)  # pinned: the overlap reported in the module docstring
    assert overlap.distinct_sequences == 2249
    assert overlap.test_sequences_in_train == pytest.approx(1221 / 5000)
    assert overlap.test_tokens_with_train_prefix == pytest.approx(0.4957, abs=1e-4)


def test_novel_prefix_mask(datasets: dict) -> None:
    data = datasets["author"]
    mask = novel_prefix_mask(data)
    assert mask.shape == data.test_x.shape and mask.dtype == torch.bool
    assert not mask[data.test_x == PAD].any()
    assert not mask[:, 0].any()  # "(" starts every training sequence
    train_prefixes = {s[: t + 1] for s in map(decode_dyck, data.train_x) for t in range(len(s))}
    for row in range(0, 5000, 97):
        s = decode_dyck(data.test_x[row])
        assert mask[row, : len(s)].tolist() == [s[: t + 1] not in train_prefixes for t in range(len(s))]
    tokens = int((data.test_x != PAD).sum())
    assert dyck_overlap(data).test_tokens_with_train_prefix == pytest.approx(1 - int(mask.sum()) / tokens)


@pytest.mark.parametrize("protocol", DYCK_PROTOCOLS)
def test_seeded_and_independent_of_global_rngs(protocol: str) -> None:
    kwargs = {"n_train": 10, "n_test": 40, "protocol": protocol}
    torch.manual_seed(0)
    random.seed(0)
    # The legacy global numpy RNG is what a careless generator would consume; check it is untouched.
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
    first = dyck_dataset(seed=5, **kwargs)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])  # noqa: NPY002
    torch.manual_seed(1)
    random.seed(1)
    again = dyck_dataset(seed=5, **kwargs)
    other = dyck_dataset(seed=6, **kwargs)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert not torch.equal(first.test_x, other.test_x)


def test_short_context_cuts_strings() -> None:
    data = dyck_dataset(n_train=5, n_test=50, ctx_len=6, max_pairs=8, seed=0, protocol="author")
    assert data.test_x.shape == (50, 6)
    assert torch.equal(data.test_y, _reference_depths(data.test_x))
    assert (data.test_y[data.test_y != IGNORE_INDEX] >= 0).all()


def test_stack_depths() -> None:
    assert stack_depths("") == []
    assert stack_depths("(()(()))") == [1, 2, 1, 2, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="only '\\(' and '\\)'"):
        stack_depths("(]")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"protocol": "random"}, "protocol must be one of"),
        ({"n_train": 0}, "n_train must be an int >= 1"),
        ({"n_test": 2.5}, "n_test must be an int >= 1"),
        ({"ctx_len": 0}, "ctx_len must be an int >= 1"),
        ({"max_pairs": 0}, "max_pairs must be an int >= 1"),
        ({"p_open": 1.0}, r"p_open must lie in \(0, 1\)"),
        ({"max_pairs": 2, "n_train": 2, "n_test": 2, "protocol": "distinct"}, "too few distinct strings"),
        ({"max_pairs": 1, "n_train": 1, "n_test": 1}, "too few distinct strings"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dyck_dataset(**kwargs)
