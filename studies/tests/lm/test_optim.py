"""The language-model study's optimisers: warm-up + cosine schedule, AdamW groups, the Muon/AdamW split
and the CombinedOptimizer (steps, hooks, schedules, state_dict)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS
from spectral_edge_studies.optim import (
    CombinedOptimizer,
    build_optimizer,
    muon_parameter_names,
    set_lr,
    set_schedule_factor,
    warmup_cosine,
    weight_decay_groups,
)

TINY = GPT_PRESETS["tiny"]


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(dataclasses.replace(TINY, **overrides))


def _batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (4, 17), generator=torch.Generator().manual_seed(seed))


def _step(model: GPT, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    _, loss = model(batch[:, :-1], batch[:, 1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _names(group: dict) -> set[str]:
    return set(group["param_names"])


# --- schedule -----------------------------------------------------------------------------------------


def test_warmup_cosine_at_known_points() -> None:
    lr = lambda s: warmup_cosine(s, max_steps=110, warmup=10, peak_lr=1.0, min_lr_ratio=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)  # the first update already moves
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == lr(10) == pytest.approx(1.0)  # peak at the end of warm-up
    assert lr(60) == pytest.approx(0.55)  # half-way down the cosine: (peak + min) / 2
    assert lr(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == lr(10_000) == pytest.approx(0.1)
    values = [lr(s) for s in range(120)]
    assert all(a <= b for a, b in itertools.pairwise(values[:11]))
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_warmup_cosine_edge_cases() -> None:
    assert warmup_cosine(0, max_steps=10, warmup=0, peak_lr=2.0) == 2.0  # no warm-up: start at the peak
    assert warmup_cosine(5, max_steps=10, warmup=10, peak_lr=2.0) == pytest.approx(1.2)
    assert warmup_cosine(10, max_steps=10, warmup=10, peak_lr=2.0, min_lr_ratio=0.0) == 0.0
    assert warmup_cosine(3, max_steps=10, warmup=2, peak_lr=0.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": -1}, "step must be an int >= 0, got -1"),
        ({"step": 1.0}, "step must be an int >= 0, got 1.0"),
        ({"max_steps": 0}, "max_steps must be an int >= 1, got 0"),
        ({"warmup": 20}, "warmup must be <= max_steps, got warmup=20, max_steps=10"),
        ({"peak_lr": -1e-3}, "peak_lr must be a finite float >= 0, got -0.001"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must lie in \[0, 1\], got 1.5"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs, message) -> None:
    arguments = {"step": 0, "max_steps": 10, "warmup": 2, "peak_lr": 1e-3, **kwargs}
    step = arguments.pop("step")
    with pytest.raises(ValueError, match=message):
        warmup_cosine(step, **arguments)


# --- AdamW --------------------------------------------------------------------------------------------


def test_adamw_groups_decay_matrices_and_embeddings_but_not_biases_or_norms() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="adamw", lr=1e-3, weight_decay=0.5)
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert (decay["group"], decay["weight_decay"], no_decay["group"], no_decay["weight_decay"]) == (
        "decay",
        0.5,
        "no_decay",
        0.0,
    )
    assert {
        "embed.weight",
        "pos_embed.weight",
        "blocks.0.attn.q_proj.weight",
        "blocks.1.mlp.down.weight",
    } <= _names(decay)
    assert all(n.endswith("bias") or "norm" in n for n in _names(no_decay))
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # Every parameter exactly once; the tied head is the embedding.
    assert _names(decay) | _names(no_decay) == {n for n, _ in model.named_parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.95)
        assert group["lr"] == group["initial_lr"] == 1e-3 and group["lr_scale"] == 1.0


def test_model_parameter_groups_are_the_shared_rule() -> None:
    model = _model()
    ours, shared = model.parameter_groups(0.1), weight_decay_groups(model, 0.1)
    assert [(g["param_names"], g["weight_decay"]) for g in ours] == [
        (g["param_names"], g["weight_decay"]) for g in shared
    ]


def test_untied_head_decays_with_adamw() -> None:
    decay, _ = weight_decay_groups(_model(tie_embeddings=False), 0.1)
    assert "unembed.weight" in decay["param_names"]


# --- Muon split ---------------------------------------------------------------------------------------


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = _model(tie_embeddings=False)
    optimizer = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, CombinedOptimizer) and isinstance(optimizer, torch.optim.Optimizer)
    adamw, muon = optimizer.optimizers
    assert type(adamw) is torch.optim.AdamW and type(muon) is torch.optim.Muon
    hidden = {
        f"blocks.{i}.{m}.weight"
        for i in range(TINY.n_layer)
        for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.up", "mlp.down")
    }
    assert set(muon_parameter_names(model)) == hidden
    (muon_group,) = muon.param_groups
    assert _names(muon_group) == hidden and muon_group["group"] == "muon"
    decay, no_decay = adamw.param_groups
    assert _names(decay) == {"embed.weight", "pos_embed.weight", "unembed.weight"}
    assert all(n.endswith("bias") or "norm" in n for n in _names(no_decay))
    all_names = {n for g in optimizer.param_groups for n in g["param_names"]}
    assert all_names == {n for n, _ in model.named_parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # AdamW first, so param_groups[0]["lr"] is the AdamW rate a monitor reads.
    assert [g["group"] for g in optimizer.param_groups] == ["decay", "no_decay", "muon"]


def test_muon_defaults_match_adamw_update_size_and_decay() -> None:
    optimizer = build_optimizer(_model(), kind="muon", lr=3e-4, weight_decay=0.5)
    (group,) = optimizer.optimizers[1].param_groups
    assert group["adjust_lr_fn"] == "match_rms_adamw"
    assert group["lr"] == group["initial_lr"] == 3e-4 and group["lr_scale"] == 1.0
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.5, 0.95, True)
    original = build_optimizer(_model(), kind="muon", lr=3e-4, weight_decay=0.0, muon_adjust_lr_fn="original")
    (group,) = original.optimizers[1].param_groups
    assert group["adjust_lr_fn"] == "original" and group["lr"] == 0.02
    assert group["lr_scale"] == pytest.approx(0.02 / 3e-4)


def test_muon_weight_decay_shrinks_matrices_like_adamw() -> None:
    # With zero gradients, Muon's orthogonalised update is zero and only the decoupled decay acts:
    # W ← (1 − lr·ω) W, the same factor AdamW applies (the point of muon_lr = lr, see the module doc).
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=1e-2, weight_decay=0.5)
    weight = model.blocks[0].attn.q_proj.weight
    before = weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), before * (1 - 1e-2 * 0.5))


def test_build_optimizer_rejects_bad_arguments() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"kind must be one of \('adamw', 'muon'\), got 'sgd'"):
        build_optimizer(model, kind="sgd", lr=1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="lr must be a finite float > 0, got 0"):
        build_optimizer(model, kind="adamw", lr=0, weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay must be a finite float >= 0, got -0.1"):
        build_optimizer(model, kind="adamw", lr=1e-3, weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"betas must be two floats in \[0, 1\)"):
        build_optimizer(model, kind="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="muon_adjust_lr_fn must be one of"):
        build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1, muon_adjust_lr_fn="none")
    with pytest.raises(ValueError, match=r"muon_momentum must lie in \[0, 1\), got 1.0"):
        build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1, muon_momentum=1.0)
    head_only = nn.Sequential(nn.Embedding(5, 4))
    head_only.add_module("unembed", nn.Linear(4, 5))
    with pytest.raises(ValueError, match="Sequential has no hidden nn.Linear weights for Muon"):
        build_optimizer(head_only, kind="muon", lr=1e-3, weight_decay=0.1)


# --- CombinedOptimizer --------------------------------------------------------------------------------


def test_combined_step_changes_every_parameter() -> None:
    model = _model(tie_embeddings=False)
    optimizer = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, optimizer, _batch())
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
    assert set(optimizer.state) == set(model.parameters())  # the merged view of both inner states
    assert "momentum_buffer" in optimizer.state[model.blocks[0].mlp.up.weight]
    assert "exp_avg_sq" in optimizer.state[model.embed.weight]


def test_step_hooks_fire_once_per_combined_step() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1)
    calls: list[tuple[str, object]] = []
    post = optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", opt)))
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("pre", opt)))
    muon_weight = model.blocks[0].attn.q_proj.weight
    seen: list[torch.Tensor] = []
    # Post-hooks run after every inner step: the Muon matrices have already moved.
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(muon_weight.detach().clone()))
    before = muon_weight.detach().clone()
    for _ in range(3):
        _step(model, optimizer, _batch())
    assert calls == [("pre", optimizer), ("post", optimizer)] * 3
    assert not torch.equal(seen[0], before)
    post.remove()
    _step(model, optimizer, _batch())
    assert calls.count(("post", optimizer)) == 3


def test_closure_is_evaluated_once() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1)
    batch, evaluations = _batch(), []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        evaluations.append(loss.item())
        return loss

    assert optimizer.step(closure).item() == evaluations[0]
    assert len(evaluations) == 1


def test_schedule_helpers_drive_both_optimizers() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1, muon_lr=4e-3)
    adamw, muon = optimizer.optimizers
    set_lr(optimizer, warmup_cosine(0, max_steps=100, warmup=10, peak_lr=1e-3))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-4, 4e-4])
    assert muon.param_groups[0]["lr"] == pytest.approx(4e-4)  # the inner group itself, not a copy
    set_schedule_factor(optimizer, 0.5)
    assert [g["lr"] for g in adamw.param_groups + muon.param_groups] == pytest.approx([5e-4, 5e-4, 2e-3])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    # torch's schedulers accept it and use the same initial_lr.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.25)
    assert scheduler.get_last_lr() == pytest.approx([2.5e-4, 2.5e-4, 1e-3])
    with pytest.raises(ValueError, match="factor must be a finite float >= 0, got -1"):
        set_schedule_factor(optimizer, -1)
    plain = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\] has no 'initial_lr'"):
        set_schedule_factor(plain, 0.5)


def test_state_dict_round_trip_resumes_exactly() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=3e-3, weight_decay=0.1)
    for seed in range(3):
        _step(model, optimizer, _batch(seed))
    set_lr(optimizer, 1e-3)
    saved_model, saved_optim = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    resumed = _model(seed=99)
    resumed.load_state_dict(saved_model)
    fresh = build_optimizer(resumed, kind="muon", lr=3e-3, weight_decay=0.1)
    fresh.load_state_dict(saved_optim)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]
    for seed in range(3, 5):
        assert _step(resumed, fresh, _batch(seed)) == _step(model, optimizer, _batch(seed))
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    # After loading, the combined groups are the inner optimizers' (new) group dicts again.
    set_lr(fresh, 5e-4)
    assert fresh.optimizers[1].param_groups[0]["lr"] == 5e-4
    with pytest.raises(ValueError, match="must be a CombinedOptimizer.state_dict"):
        fresh.load_state_dict(fresh.optimizers[0].state_dict())


def test_combined_optimizer_rejects_overlap_and_new_groups() -> None:
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        CombinedOptimizer([torch.optim.SGD([a], lr=0.1), torch.optim.Muon([a], lr=0.1)])
    with pytest.raises(ValueError, match="non-empty sequence of torch.optim.Optimizer"):
        CombinedOptimizer([])
    combined = CombinedOptimizer([torch.optim.Muon([a], lr=0.1)])
    with pytest.raises(NotImplementedError, match="call add_param_group on one of .optimizers"):
        combined.add_param_group({"params": [b]})


def test_tiny_model_learns_with_muon() -> None:
    model = _model()
    optimizer = build_optimizer(model, kind="muon", lr=3e-3, weight_decay=0.0)
    losses = [_step(model, optimizer, _batch()) for _ in range(40)]
    assert losses[0] == pytest.approx(math.log(TINY.vocab_size), abs=0.2)
    assert losses[-1] < 0.5 * losses[0], losses
