"""The one learning-rate resolver: η for 𝒜 = ‖ΔG‖_F/(η g²) from a float, a callable or an optimizer.

The monitor reads it at each record; the framework callbacks read it through the monitor at each
optimizer step (before a scheduler moves the rate). An optimizer's parameter groups give η as their rates
weighted by each group's share of the monitored scalars, η = Σ_g n_g η_g / Σ_g n_g (see
:class:`~spectral_edge.tracking.monitor.SpectralMonitor`'s ``lr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["group_rate", "resolve_lr"]

Warn = Callable[[str, str], object]


def group_rate(value: Any) -> float | None:
    """A rate as a float: a number or a one-element tensor; None when there is none yet (None, NaN, Inf).

    Example:
        >>> group_rate(torch.tensor(0.5)), group_rate(float("nan")), group_rate(None)
        (0.5, None, None)
    """
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


def resolve_lr(
    source: Any,
    *,
    numel_of: Mapping[int, int] | None = None,
    warn: Warn | None = None,
    step: int | None = None,
) -> float | None:
    """η for 𝒜 now, or None when there is none (no source, a callable with no rate yet, every group at 0).

    Args:
        source: a float, a zero-argument callable returning one (or None), an optimizer (anything with
            ``param_groups``), or None.
        numel_of: ``id(tensor) -> numel`` of the monitored tensors, which weigh an optimizer's groups;
            None weighs each group by its own size.
        warn: ``warn(key, message)`` for the conditions worth one warning (groups at different rates, a
            group at 0, an optimizer holding none of the monitored tensors); None stays silent.
        step: the step named in those warnings.

    Example:
        >>> model = torch.nn.Linear(3, 1)  # 3 + 1 scalars
        >>> opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.5}])
        >>> round(resolve_lr(opt), 6), resolve_lr(lambda: 0.3), resolve_lr(None)
        (0.2, 0.3, None)
    """
    if source is None:
        return None
    if hasattr(source, "param_groups"):
        return _optimizer_lr(source, numel_of, warn or _silent, step)
    # A callable with no rate yet (None), or NaN/Inf/≤ 0: no 𝒜 this record.
    rate = group_rate(source() if callable(source) else source)
    return rate if rate is not None and rate > 0 else None


def _silent(key: str, message: str) -> None:
    pass


def _optimizer_lr(
    optimizer: Any, numel_of: Mapping[int, int] | None, warn: Warn, step: int | None
) -> float | None:
    groups = optimizer.param_groups
    at = "" if step is None else f" at step {step}"
    shares: list[tuple[int, float | None, int]] = []  # (group index, rate, weight of the group)
    if numel_of is not None:
        seen: set[int] = set()
        for i, group in enumerate(groups):
            n = 0
            for p in group["params"]:
                if id(p) in numel_of and id(p) not in seen:  # a tensor in two groups counts once
                    seen.add(id(p))
                    n += numel_of[id(p)]
            shares.append((i, group_rate(group.get("lr")), n))
        if not seen:  # the optimizer holds none of the monitored tensors (copies?): weigh by group sizes
            warn(
                "lr_unmatched",
                "spectral-edge: lr=optimizer holds none of the monitored parameters; η for 𝒜 weighs its "
                "groups' rates by the groups' own sizes",
            )
            numel_of = None
    if numel_of is None:
        shares = [
            (i, group_rate(g.get("lr")), sum(p.numel() for p in g["params"])) for i, g in enumerate(groups)
        ]
    # A group without a rate yet (None, NaN: a scheduler that has not set it) counts as no group.
    rated = [(i, r, n) for i, r, n in shares if n > 0 and r is not None]
    live = [(i, r, n) for i, r, n in rated if r > 0]
    idle = [(i, r, n) for i, r, n in rated if r <= 0]
    if not live:
        if idle:
            warn(
                "lr_all_zero",
                f"spectral-edge: every parameter group of the optimizer has lr 0{at}: 𝒜 = ‖ΔC‖_F/(η g²) is "
                "undefined at η = 0, so records have 𝒜 = None and no regime while the rates stay 0",
            )
        return None
    if idle:
        warn(
            "lr_zero_group",
            f"spectral-edge: the optimizer has parameter groups at lr 0{at} ({_groups_text(idle)}); they are "
            "left out of η for 𝒜 (their parameters do not move) while at 0",
        )
    rates = {r for _, r, _ in live}
    if len(rates) == 1:  # one rate: η is that rate exactly, not a weighted mean rounded back to it
        return rates.pop()
    eta = sum(r * n for _, r, n in live) / sum(n for _, _, n in live)
    warn(
        "lr_groups_differ",
        f"spectral-edge: the optimizer's parameter groups have different learning rates "
        f"({_groups_text(live)}); η for 𝒜 is their mean weighted by monitored scalars, "
        f"{eta:.6g}{at} (see SpectralMonitor's lr argument)",
    )
    return eta


def _groups_text(shares: list[tuple[int, float, int]]) -> str:
    """``group 0: lr 0.1 over 1,234 monitored scalars, ...`` for a warning."""
    return ", ".join(f"group {i}: lr {r:g} over {n:,} monitored scalars" for i, r, n in shares)
