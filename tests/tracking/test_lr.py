"""The one learning-rate resolver (tracking/_lr.py), which the monitor and the callbacks share."""

from __future__ import annotations

import math

import pytest
import torch

from spectral_edge.tracking._lr import group_rate, resolve_lr


def two_groups(rates):
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)  # 20 and 5 scalars
    opt = torch.optim.SGD(
        [
            {"params": list(body.parameters()), "lr": rates[0]},
            {"params": list(head.parameters()), "lr": rates[1]},
        ]
    )
    return body, head, opt


def test_one_rate_is_returned_exactly_and_several_are_weighted_by_monitored_scalars():
    body, head, opt = two_groups((0.1, 0.1))
    numel = {id(p): p.numel() for p in (*body.parameters(), *head.parameters())}
    warned = []
    assert resolve_lr(opt, numel_of=numel, warn=lambda k, m: warned.append(k)) == 0.1  # not a rounded mean
    assert warned == []
    opt.param_groups[1]["lr"] = 0.6
    eta = resolve_lr(opt, numel_of=numel, warn=lambda k, m: warned.append(k), step=7)
    assert eta == pytest.approx((20 * 0.1 + 5 * 0.6) / 25, rel=1e-15) and warned == ["lr_groups_differ"]
    only_head = {id(p): p.numel() for p in head.parameters()}  # the monitor watches the head only
    assert resolve_lr(opt, numel_of=only_head) == 0.6


def test_groups_at_zero_none_and_unmatched_optimizers():
    body, head, opt = two_groups((0.0, 0.2))
    numel = {id(p): p.numel() for p in (*body.parameters(), *head.parameters())}
    warned = []
    assert resolve_lr(opt, numel_of=numel, warn=lambda k, m: warned.append(k)) == 0.2
    opt.param_groups[1]["lr"] = 0.0
    assert resolve_lr(opt, numel_of=numel, warn=lambda k, m: warned.append(k)) is None
    assert warned == ["lr_zero_group", "lr_all_zero"]
    opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = 0.1, float("nan")  # a scheduler not there yet
    assert resolve_lr(opt, numel_of=numel) == 0.1
    copies = {id(torch.zeros(3)): 3}
    assert resolve_lr(opt, numel_of=copies, warn=lambda k, m: warned.append(k)) == 0.1
    assert warned[-1] == "lr_unmatched"


def test_numbers_callables_and_tensors():
    assert resolve_lr(None) is None and resolve_lr(0.5) == 0.5 and resolve_lr(lambda: None) is None
    assert resolve_lr(lambda: torch.tensor(0.25)) == 0.25
    assert resolve_lr(lambda: math.nan) is None and resolve_lr(lambda: -1.0) is None
    assert group_rate(torch.tensor([0.5])) == 0.5 and group_rate(math.inf) is None
