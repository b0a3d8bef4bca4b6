"""Tensors that share memory: each scalar is monitored once, however many names or views reach it.

A tied embedding (``lm_head.weight`` is ``embed.weight``) appears under two names in
``named_parameters(remove_duplicate=False)`` and in every ``torch.save``-d state dict; ``[W, W.view(-1)]``
hands the same memory over twice. Counting both puts each update of W into the window twice, so every
row of X carries W's block twice: G's W-part doubles and σ of a W-dominated window grows by up to √2.

Sharing is read from the tensors' memory, never from their values: two tensors share when their byte
ranges overlap in one address space (``data_ptr()`` on a device, or the same storage for shape-only
"meta" tensors, whose storage offset then stands for the address). Of tensors that overlap, the larger
(the first given, between equals) is kept and the others are merged into it:

* a tensor whose elements all lie in kept tensors (the same tensor under another name, a view, a
  slice) is left out: nothing is lost;
* a tensor that overlaps a kept one only in part (two overlapping slices of one buffer) cannot be
  counted exactly either way. It is left out too: its elements outside the kept tensors are not
  monitored (:attr:`CountedOnce.partial` counts them) rather than the shared ones counted twice, and
  the monitor warns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["CountedOnce", "count_once", "local_values"]


@dataclass(frozen=True)
class CountedOnce:
    """The outcome of :func:`count_once`."""

    named: list[tuple[str, torch.Tensor]]  # one (name, tensor) per distinct memory, in the given order
    merged: dict[str, str] = field(default_factory=dict)  # name left out -> the kept name sharing it
    partial: dict[str, int] = field(default_factory=dict)  # left out in part: name -> elements unmonitored

    def partial_warning(self) -> str:
        """The warning for the tensors left out in part (:attr:`partial`): which, how many elements, the fix."""
        parts = ", ".join(
            f"{name!r} ({lost} elements outside {self.merged[name]!r})" for name, lost in self.partial.items()
        )
        return (
            f"spectral-edge: parameters share part of their memory with a larger one: {parts}. Counting them "
            "would count the shared elements twice, so they are left out and the elements listed are not "
            "monitored; register whole tensors (not overlapping slices of one buffer) to monitor every element."
        )


@dataclass(frozen=True)
class _Span:
    domain: tuple[str, int]  # the address space: (device, 0), or ("meta", storage id)
    lo: int  # first byte
    hi: int  # one past the last byte
    dense: bool  # its elements fill [lo, hi) exactly once (contiguous, or a permutation of it)


def count_once(named: Sequence[tuple[str, torch.Tensor]]) -> CountedOnce:
    """Leave out every tensor whose memory another one already covers (see the module docstring).

    Example:
        >>> w = torch.zeros(3, 4)
        >>> out = count_once([("w", w), ("flat", w.view(-1)), ("row", w[1]), ("b", torch.zeros(2))])
        >>> [n for n, _ in out.named], out.merged
        (['w', 'b'], {'flat': 'w', 'row': 'w'})
    """
    spans = [_span(t) for _, t in named]
    placed = sorted(
        ((i, s) for i, s in enumerate(spans) if s is not None), key=lambda p: (p[1].domain, p[1].lo)
    )
    # Runs of tensors whose byte ranges overlap: one sweep over the sorted starts.
    clusters: list[list[int]] = []
    domain, end = None, -1
    for i, s in placed:
        if clusters and s.domain == domain and s.lo < end:
            clusters[-1].append(i)
            end = max(end, s.hi)
        else:
            clusters.append([i])
            domain, end = s.domain, s.hi
    merged: dict[int, tuple[int, int]] = {}  # left out -> (kept, elements of it in no kept tensor)
    placed_spans = dict(placed)
    for cluster in clusters:
        if len(cluster) > 1:
            merged.update(_resolve(cluster, named, {i: placed_spans[i] for i in cluster}))
    names = [n for n, _ in named]
    return CountedOnce(
        named=[item for i, item in enumerate(named) if i not in merged],
        merged={names[i]: names[k] for i, (k, _) in sorted(merged.items())},
        partial={names[i]: lost for i, (_, lost) in sorted(merged.items()) if lost},
    )


def local_values(t: torch.Tensor) -> torch.Tensor:
    """The values this process holds of ``t``: a DTensor's local shard (FSDP2 parameters are DTensors whose
    shape is the whole tensor's), else ``t`` itself."""
    if hasattr(t, "placements") and hasattr(t, "to_local"):
        with torch.no_grad():  # then to_local() is the local tensor itself, not a new autograd view
            return t.to_local()
    return t


def _span(t: torch.Tensor) -> _Span | None:
    """Where ``t``'s bytes lie, or None when it has none (empty) or its memory cannot be read (a tensor
    subclass without storage): such a tensor is never merged."""
    t = local_values(t)  # a DTensor's data_ptr is its shard's, its shape and strides the whole tensor's
    if t.numel() == 0:
        return None
    try:
        size = t.element_size()
        extent = 1 + sum((int(n) - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))  # in elements
        if t.device.type == "meta":
            domain, lo = ("meta", t.untyped_storage()._cdata), int(t.storage_offset()) * size
        else:
            domain, lo = (str(t.device), 0), t.data_ptr()
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        return None
    dense = t.is_contiguous() or (extent == t.numel() and _dense(t))
    return _Span(domain=domain, lo=lo, hi=lo + extent * size, dense=dense)


def _dense(t: torch.Tensor) -> bool:
    """Whether the strides, smallest first, step through memory without gaps or repeats."""
    expected = 1
    for stride, n in sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= n
    return True


def _resolve(
    cluster: list[int], named: Sequence[tuple[str, torch.Tensor]], spans: dict[int, _Span]
) -> dict[int, tuple[int, int]]:
    """Keep the largest tensors of one overlapping cluster; map each other one to the kept tensor it
    overlaps most, with the number of its elements that lie in no kept tensor."""
    nbytes = {i: named[i][1].numel() * named[i][1].element_size() for i in cluster}
    order = sorted(cluster, key=lambda i: (-nbytes[i], i))  # the largest first, then the first given
    out: dict[int, tuple[int, int]] = {}
    if all(spans[i].dense for i in cluster):  # byte intervals suffice: no mask, however large the tensors
        kept: list[int] = []
        for i in order:
            lo, hi = spans[i].lo, spans[i].hi
            shared = [(min(hi, spans[k].hi) - max(lo, spans[k].lo), -n, k) for n, k in enumerate(kept)]
            shared = [s for s in shared if s[0] > 0]
            if not shared:
                kept.append(i)
                continue
            uncovered = (hi - lo) - sum(s[0] for s in shared)  # kept tensors never overlap each other
            out[i] = (max(shared)[2], uncovered // named[i][1].element_size())
        return out
    # Strided views (a column, an expanded tensor): mark which kept tensor owns each unit of memory.
    lo0 = min(spans[i].lo for i in cluster)
    unit = math.gcd(*(named[i][1].element_size() for i in cluster), *(spans[i].lo - lo0 for i in cluster))
    owner = torch.full(((max(spans[i].hi for i in cluster) - lo0) // unit,), -1, dtype=torch.int32)
    for i in order:
        units = _units(named[i][1], spans[i].lo - lo0, unit)
        owners = owner[units]
        taken = owners >= 0
        if not bool(taken.any()):
            owner[units] = i
            continue
        counts = torch.bincount(owners[taken].long())
        per_element = named[i][1].element_size() // unit
        out[i] = (int(counts.argmax()), int((~taken).sum()) // per_element)
    return out


def _units(t: torch.Tensor, start: int, unit: int) -> torch.Tensor:
    """The memory units (of ``unit`` bytes, counted from ``start`` bytes before ``t``) its elements cover."""
    size = t.element_size()
    offsets = torch.zeros(1, dtype=torch.int64)  # byte offset of each element, built one dimension at a time
    for n, stride in zip(t.shape, t.stride(), strict=True):
        offsets = (offsets[:, None] + torch.arange(n, dtype=torch.int64) * (stride * size)).reshape(-1)
    first = (offsets + start) // unit
    return (first[:, None] + torch.arange(size // unit, dtype=torch.int64)).reshape(-1)
