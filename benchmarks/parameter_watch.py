"""Cost of the monitor's per-step check that its parameter set still holds (issue 14, item 2).

``SpectralMonitor`` runs ``ParameterWatch.stale()`` (``tracking/_selection.py``) before every push: every
parameter's ``requires_grad`` flag and how many parameters and submodules each module holds, compared with
the last full read. This script times it on a model of 200 parameter tensors in 134 modules (33 blocks of
two Linear layers and a LayerNorm, and a last Linear), beside the bare tuple of the ``requires_grad``
flags (the floor of any such check) and the full re-read it avoids. One torch thread; best of 40 repeats.

Usage::

    python benchmarks/parameter_watch.py
"""

from __future__ import annotations

import timeit

import torch
from torch import nn

from spectral_edge.tracking._selection import ParameterWatch


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(8, 8), nn.Linear(8, 8), nn.LayerNorm(8)


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=40)) / number * 1e6


def main() -> None:
    torch.set_num_threads(1)
    model = nn.Sequential(*[Block() for _ in range(33)], nn.Linear(8, 8))
    params = list(model.parameters())
    print(f"{len(params)} parameter tensors in {len(list(model.modules()))} modules")
    watch = ParameterWatch(model)
    flags = tuple(p.requires_grad for p in params)
    print(f"per-step check (stale):       {best_us(watch.stale, 5000):8.1f} µs")
    print(
        f"bare requires_grad tuple:     {best_us(lambda: tuple(p.requires_grad for p in params) == flags, 5000):8.1f} µs"
    )
    print(f"full re-read (read):          {best_us(watch.read, 50):8.1f} µs")


if __name__ == "__main__":
    main()
