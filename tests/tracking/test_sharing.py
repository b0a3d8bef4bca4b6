"""count_once: a tensor reached under several names or through views of one memory is kept once."""

from __future__ import annotations

import torch

from spectral_edge.tracking._sharing import count_once


def kept(out) -> list[str]:
    return [name for name, _ in out.named]


def test_aliases_views_and_slices_are_merged_into_the_whole_tensor():
    w = torch.zeros(3, 4)
    out = count_once(
        [("w", w), ("alias", w), ("flat", w.view(-1)), ("t", w.t()), ("row", w[1]), ("b", torch.zeros(2))]
    )
    assert kept(out) == ["w", "b"]
    assert out.merged == {"alias": "w", "flat": "w", "t": "w", "row": "w"}
    assert out.partial == {}


def test_the_largest_is_kept_whatever_the_order():
    w = torch.zeros(3, 4)
    out = count_once([("row", w[2]), ("w", w)])
    assert kept(out) == ["w"] and out.merged == {"row": "w"}


def test_between_equals_the_first_name_is_kept():
    w = torch.zeros(5)
    assert count_once([("lm_head.weight", w), ("embed.weight", w)]).merged == {
        "embed.weight": "lm_head.weight"
    }


def test_disjoint_views_of_one_buffer_are_both_kept():
    """Columns of one matrix share a storage and interleave in memory, but no element: both count."""
    w = torch.zeros(4, 3)
    out = count_once([("c0", w[:, 0]), ("c1", w[:, 1]), ("top", w[:2]), ("bottom", w[2:])])
    # The halves are the largest and kept; each column lies half in each, so nothing of it is lost.
    assert kept(out) == ["top", "bottom"] and out.merged == {"c0": "top", "c1": "top"} and out.partial == {}
    out = count_once([("c0", w[:, 0]), ("c1", w[:, 1])])
    assert kept(out) == ["c0", "c1"] and out.merged == {}


def test_partial_overlap_keeps_the_larger_and_counts_what_is_lost():
    buf = torch.zeros(10)
    out = count_once([("a", buf[0:6]), ("b", buf[4:10])])  # two shared elements, four of b's own
    assert kept(out) == ["a"] and out.merged == {"b": "a"} and out.partial == {"b": 4}
    out = count_once([("a", buf[0:6]), ("even", buf[::2])])  # strided: 0, 2, 4 shared; 6, 8 not
    assert kept(out) == ["a"] and out.merged == {"even": "a"} and out.partial == {"even": 2}


def test_meta_tensors_share_only_through_their_storage():
    """Shape-only tensors all have address 0: only one storage's views are merged."""
    base = torch.empty(3, 4, device="meta")
    other = torch.empty(3, 4, device="meta")
    out = count_once([("a", base), ("b", base.view(-1)), ("c", other)])
    assert kept(out) == ["a", "c"] and out.merged == {"b": "a"}


def test_empty_tensors_are_never_merged():
    out = count_once([("e1", torch.zeros(0)), ("e2", torch.zeros(0)), ("w", torch.zeros(2))])
    assert kept(out) == ["e1", "e2", "w"] and out.merged == {}
