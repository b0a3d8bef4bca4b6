"""SpectralRecord and GroupSpectrum have a one-line repr: the reading, not the arrays."""

from __future__ import annotations

import math

import numpy as np

from tests.test_store import make_record


def test_record_repr_is_one_short_line_without_arrays():
    record = make_record(120, window=10, gap_ratio=3.41234, gap=0.012345, regime="transition")
    text = repr(record)
    assert text == (
        "SpectralRecord(step=120, k_star=1, gap_ratio=3.412, gap=0.01235, regime='transition', W=10, "
        "1 group, loss=0.008264)"
    )
    assert "\n" not in text and "array" not in text and len(text) < 140


def test_repr_of_nonfinite_none_and_many_groups():
    from spectral_edge.tracking.record import GroupSpectrum

    sv = np.ones(4)
    groups = {name: GroupSpectrum(k_star=1, gap_ratio=math.inf, singular_values=sv) for name in "abc"}
    record = make_record(3, gap_ratio=math.inf, regime=None, groups=groups, metrics={})
    assert (
        repr(record)
        == "SpectralRecord(step=3, k_star=1, gap_ratio=inf, gap=0.25, regime=None, W=4, 3 groups)"
    )
    assert repr(groups["a"]) == "GroupSpectrum(k_star=1, gap_ratio=inf, W=4)"
