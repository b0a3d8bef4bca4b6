"""Optimisers and the learning-rate schedule of the language-model study: AdamW, and Muon + AdamW.

* :func:`warmup_cosine` is the schedule: linear warm-up to the peak, then a cosine down to
  ``min_lr_ratio · peak`` (nanoGPT's, with its 10 % floor).
* :func:`build_optimizer` builds AdamW with the paper's β = (0.9, 0.95) and nanoGPT's decay groups
  (:func:`weight_decay_groups`), or, with ``kind="muon"``, ``torch.optim.Muon`` on the hidden weight
  matrices and AdamW on everything else, joined in one :class:`CombinedOptimizer`.
* :func:`set_schedule_factor` / :func:`set_lr` apply the schedule to every group of either.

Every group built here carries these extra keys, which the torch optimisers ignore:

* ``"initial_lr"``: the group's peak learning rate (the key torch's LR schedulers use for the same thing,
  so ``LambdaLR(opt, factor_fn)`` and :func:`set_schedule_factor` agree);
* ``"lr_scale"``: the group's peak divided by the AdamW peak ``lr`` (1 for AdamW groups,
  ``muon_lr / lr`` for the Muon group), which :func:`set_lr` multiplies in;
* ``"group"``: ``"decay"``, ``"no_decay"`` or ``"muon"``, for reports; and ``"param_names"``.

AdamW groups come first, so ``optimizer.param_groups[0]["lr"]`` (what a monitor reads as η) is the AdamW
rate in both kinds.

Muon settings and why (``torch.optim.Muon``, Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for
LLM Training")
------------------------------------------------------------------------------------------------------
Muon replaces each update of a matrix W (A × B) by the orthogonalised momentum O (Newton–Schulz, all
singular values ≈ 1, so ``RMS(O) ≈ 1/√max(A, B)``) and steps ``W ← W − γ' O``, where torch's
``adjust_lr_fn`` sets γ' from the group lr γ:

* ``"original"`` (Keller Jordan's): ``γ' = γ·√max(1, A/B)``; its learning rates are ~0.02, two orders above
  AdamW's, and must be tuned on their own;
* ``"match_rms_adamw"`` (Moonshot's): ``γ' = 0.2·γ·√max(A, B)``, so ``RMS(γ' O) = 0.2 γ``, the typical
  RMS of an AdamW update at rate γ. The paper shows AdamW's learning rate and weight decay can then be
  reused unchanged.

We use ``"match_rms_adamw"`` with ``muon_lr = lr`` by default: the study compares the *same* model, data,
learning rate, schedule and ω with the two optimisers, and this is the setting in which "the same
learning rate" means the same update size. Weight decay follows: torch's Muon decays as
``W ← (1 − γ ω) W`` with the *unadjusted* γ, exactly AdamW's decoupled decay, so with ``muon_lr = lr``
both optimisers shrink every matrix by the same factor per step. (With ``"original"`` and γ = 0.02 the
same ω would decay ~30× harder than AdamW does; pass ``muon_lr`` and think about ω if you choose it.)
Momentum 0.95 with Nesterov, 5 Newton–Schulz steps: the defaults of both papers and of torch.

Which parameters Muon takes: the weight of every ``nn.Linear`` except the output head (``unembed`` /
``lm_head``) and except a weight tied to an ``nn.Embedding``. Embeddings and the head are not "hidden"
matrices (their rows are per-token, not a linear map between hidden spaces; Jordan 2024 and Liu et al.
keep them on AdamW), and Muon accepts 2-D tensors only, so biases and norms go to AdamW as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

_KINDS = ("adamw", "muon")
_ADJUST_LR_FNS = ("match_rms_adamw", "original")
# Keller Jordan's Muon learning rate, the default when the "original" adjustment is chosen.
_ORIGINAL_MUON_LR = 0.02


def warmup_cosine(
    step: int, *, max_steps: int, warmup: int, peak_lr: float, min_lr_ratio: float = 0.1
) -> float:
    """Learning rate at ``step``: linear warm-up, then a cosine from ``peak_lr`` to ``min_lr_ratio·peak_lr``.

    ``step`` is 0-based: the number of optimizer steps already taken, so step 0 is the first update and
    gets ``peak_lr / warmup`` (never 0, which would waste a step). With ``m = min_lr_ratio · peak_lr``::

        lr(s) = peak · (s + 1) / warmup                                  for s < warmup
        lr(s) = m + (peak − m) · (1 + cos(π (s − warmup) / (max_steps − warmup))) / 2   for warmup ≤ s ≤ max_steps
        lr(s) = m                                                        for s > max_steps

    so the rate reaches ``peak`` at step ``warmup − 1``, stays there at ``warmup`` and ends at ``m`` on
    step ``max_steps`` (past the last of ``max_steps`` updates, which therefore uses slightly more).
    With ``peak_lr=1.0`` it returns the schedule *factor* for :func:`set_schedule_factor`.

    Args:
        step: optimizer steps already taken, an int ≥ 0.
        max_steps: length of the schedule, ≥ 1.
        warmup: warm-up steps, 0 ≤ warmup ≤ max_steps (0: start at the peak).
        peak_lr: the rate at the end of warm-up, ≥ 0.
        min_lr_ratio: the final rate as a fraction of ``peak_lr``, in [0, 1].

    Returns:
        The learning rate, a float.

    Example:
        >>> [round(warmup_cosine(s, max_steps=100, warmup=10, peak_lr=1e-3), 6) for s in (0, 9, 10, 55, 100)]
        [0.0001, 0.001, 0.001, 0.00055, 0.0001]
    """
    for name, value, low in (("step", step, 0), ("max_steps", max_steps, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if warmup > max_steps:
        raise ValueError(f"warmup must be <= max_steps, got warmup={warmup}, max_steps={max_steps}")
    if not (isinstance(peak_lr, (int, float)) and math.isfinite(peak_lr) and peak_lr >= 0):
        raise ValueError(f"peak_lr must be a finite float >= 0, got {peak_lr!r}")
    if not (isinstance(min_lr_ratio, (int, float)) and 0.0 <= min_lr_ratio <= 1.0):
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
    min_lr = min_lr_ratio * peak_lr
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    if step >= max_steps:  # also covers warmup == max_steps, where the cosine has no length
        return min_lr
    progress = (step - warmup) / (max_steps - warmup)  # in [0, 1)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's AdamW groups: tensors with ≥ 2 dimensions decay, 1-D ones (biases, norms) do not.

    Parameters with ``requires_grad=False`` are left out; a tied tensor appears once. Groups carry
    ``param_names`` and a ``"group"`` label.

    Args:
        model: any module.
        weight_decay: decoupled weight decay ω of the decaying group, ≥ 0.

    Returns:
        ``[decay_group, no_decay_group]`` (an empty one is kept, so the order is fixed).

    Example:
        >>> groups = weight_decay_groups(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), 0.1)
        >>> [(g["group"], g["weight_decay"], g["param_names"]) for g in groups]
        [('decay', 0.1, ['0.weight']), ('no_decay', 0.0, ['0.bias', '1.weight', '1.bias'])]
    """
    _check_weight_decay(weight_decay)
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append((name, p))
    return [_group(decay, "decay", weight_decay=weight_decay), _group(no_decay, "no_decay", weight_decay=0.0)]


def muon_parameter_names(
    model: nn.Module, *, output_heads: Sequence[str] = ("unembed", "lm_head")
) -> list[str]:
    """Names of the hidden weight matrices that Muon takes in :func:`build_optimizer`.

    The weight of every ``nn.Linear``, except modules whose own name (last component) is in
    ``output_heads`` and except a weight that is also an ``nn.Embedding``'s (a tied head).

    Example:
        >>> from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS
        >>> muon_parameter_names(GPT(GPT_PRESETS["tiny"]))[:5]
        ['blocks.0.attn.q_proj.weight', 'blocks.0.attn.k_proj.weight', 'blocks.0.attn.v_proj.weight', 'blocks.0.attn.o_proj.weight', 'blocks.0.mlp.up.weight']
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module_name.rsplit(".", 1)[-1] in output_heads:
            continue
        if module.weight.requires_grad and id(module.weight) not in embeddings:
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def build_optimizer(
    model: nn.Module,
    *,
    kind: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    muon_lr: float | None = None,
    muon_momentum: float = 0.95,
    muon_adjust_lr_fn: str = "match_rms_adamw",
    output_heads: Sequence[str] = ("unembed", "lm_head"),
) -> torch.optim.Optimizer:
    """AdamW on nanoGPT's groups, or Muon on the hidden matrices and AdamW on the rest.

    Args:
        model: the model to train (any module; Muon's split is :func:`muon_parameter_names`).
        kind: ``"adamw"`` or ``"muon"``.
        lr: AdamW's peak learning rate, > 0.
        weight_decay: decoupled weight decay ω for matrices (AdamW's decay group and Muon's matrices), ≥ 0.
        betas: AdamW's (β1, β2); the paper's β2 = 0.95.
        muon_lr: Muon's peak group learning rate γ; None means ``lr`` with ``"match_rms_adamw"`` and
            0.02 with ``"original"`` (see the module docstring for why).
        muon_momentum: Muon's (Nesterov) momentum μ, in [0, 1).
        muon_adjust_lr_fn: torch's ``adjust_lr_fn``, ``"match_rms_adamw"`` or ``"original"``.
        output_heads: module names (last component) kept off Muon.

    Returns:
        ``torch.optim.AdamW`` for ``"adamw"``; a :class:`CombinedOptimizer` (AdamW, then Muon) for
        ``"muon"``. Both are ``torch.optim.Optimizer`` instances, so LR schedulers and step hooks work.

    Example:
        >>> from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS
        >>> model = GPT(GPT_PRESETS["tiny"])
        >>> opt = build_optimizer(model, kind="muon", lr=1e-3, weight_decay=0.1)
        >>> [(g["group"], len(g["params"]), g["lr"]) for g in opt.param_groups]
        [('decay', 2, 0.001), ('no_decay', 22, 0.001), ('muon', 12, 0.001)]
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    _check_lr("lr", lr)
    _check_weight_decay(weight_decay)
    if not (len(betas) == 2 and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}")
    adamw_kwargs = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay}
    if kind == "adamw":
        groups = _with_lr(weight_decay_groups(model, weight_decay), lr, lr)
        return torch.optim.AdamW([g for g in groups if g["params"]], **adamw_kwargs)

    if muon_adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(f"muon_adjust_lr_fn must be one of {_ADJUST_LR_FNS}, got {muon_adjust_lr_fn!r}")
    if muon_lr is None:
        muon_lr = lr if muon_adjust_lr_fn == "match_rms_adamw" else _ORIGINAL_MUON_LR
    _check_lr("muon_lr", muon_lr)
    if not (isinstance(muon_momentum, (int, float)) and 0.0 <= muon_momentum < 1.0):
        raise ValueError(f"muon_momentum must lie in [0, 1), got {muon_momentum!r}")
    muon_names = set(muon_parameter_names(model, output_heads=output_heads))
    if not muon_names:
        raise ValueError(
            f"{type(model).__name__} has no hidden nn.Linear weights for Muon (output heads "
            f"{tuple(output_heads)} are excluded); use kind='adamw'"
        )
    params = dict(model.named_parameters())
    muon_group = _group(
        [(n, params[n]) for n in params if n in muon_names], "muon", weight_decay=weight_decay
    )
    # nanoGPT's decay rule for everything Muon does not take (embeddings, head, biases, norms).
    adamw_groups = []
    for group in weight_decay_groups(model, weight_decay):
        kept = [
            (n, p) for n, p in zip(group["param_names"], group["params"], strict=True) if n not in muon_names
        ]
        if kept:
            adamw_groups.append(_group(kept, group["group"], weight_decay=group["weight_decay"]))
    adamw = torch.optim.AdamW(_with_lr(adamw_groups, lr, lr), **adamw_kwargs)
    muon = torch.optim.Muon(
        _with_lr([muon_group], muon_lr, lr),
        lr=muon_lr,
        weight_decay=weight_decay,
        momentum=muon_momentum,
        nesterov=True,
        adjust_lr_fn=muon_adjust_lr_fn,
    )
    return CombinedOptimizer([adamw, muon])


class _MergedState(Mapping):
    """Read-only view of the inner optimizers' ``state`` (their parameters are disjoint)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, param: torch.Tensor) -> dict:
        for opt in self._optimizers:
            if param in opt.state:  # `in`, not [], which would insert into a defaultdict
                return opt.state[param]
        raise KeyError("parameter has no optimizer state (not stepped yet, or not optimized here)")

    def __iter__(self) -> Iterator[torch.Tensor]:
        for opt in self._optimizers:
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers)


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one (here: AdamW and Muon).

    It subclasses ``torch.optim.Optimizer`` for what callers check and use: ``isinstance`` (LR schedulers
    and the spectral monitor require it), ``param_groups`` (the inner optimizers' own group dicts,
    concatenated, so writing ``group["lr"]`` changes the inner optimizer) and step hooks.
    ``register_step_pre_hook`` / ``register_step_post_hook`` hooks fire once per :meth:`step`, after all
    inner steps, as ``hook(combined, args, kwargs)``. (Global hooks from
    ``torch.optim.optimizer.register_optimizer_step_post_hook`` fire for the inner steps too.)

    Args:
        optimizers: the inner optimizers, stepped in this order; no parameter may be in two.

    Example:
        >>> a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, 2))
        >>> opt = CombinedOptimizer([torch.optim.SGD([a], lr=0.1), torch.optim.Muon([b], lr=0.1)])
        >>> calls = []
        >>> handle = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o is opt))
        >>> (a.sum() + b.sum()).backward()
        >>> opt.step()
        >>> calls, [len(g["params"]) for g in opt.param_groups]
        ([True], [1, 1])
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        optimizers = list(optimizers)
        if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
            raise ValueError(
                f"optimizers must be a non-empty sequence of torch.optim.Optimizer, got {optimizers!r}"
            )
        self.optimizers = optimizers
        self._sealed = False
        # The base registers the inner group dicts themselves (not copies) and raises if a parameter
        # appears in two of them, which is the check we want.
        super().__init__([g for opt in optimizers for g in opt.param_groups], defaults={})
        self.state = _MergedState(self.optimizers)  # type: ignore[assignment]
        self._sealed = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused after construction: add the group to one of :attr:`optimizers` instead."""
        if self._sealed:
            raise NotImplementedError(
                "CombinedOptimizer cannot tell which inner optimizer should own a new group; call "
                "add_param_group on one of .optimizers, then build a new CombinedOptimizer"
            )
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Step every inner optimizer once; a ``closure`` is evaluated once, before the steps."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or, by default, drop) the gradients of every inner optimizer's parameters."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": [inner.state_dict(), ...]}``, in the order of :attr:`optimizers`."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (from a combination of the same optimizers)."""
        inner = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(inner, list) or len(inner) != len(self.optimizers):
            raise ValueError(
                f"state_dict must be a CombinedOptimizer.state_dict() with {len(self.optimizers)} inner "
                f"states, got {type(state_dict).__name__} with keys {list(state_dict)[:5] if isinstance(state_dict, dict) else None}"
            )
        for opt, sd in zip(self.optimizers, inner, strict=True):
            opt.load_state_dict(sd)
        # torch's load_state_dict replaces the inner group dicts; share the new ones again.
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    def __getstate__(self) -> dict[str, Any]:
        # The base pickles only defaults/state/param_groups; the inner optimizers are the real state.
        return {**super().__getstate__(), "optimizers": self.optimizers, "_sealed": True}


def set_schedule_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's rate to ``factor × group["initial_lr"]`` (its peak): one schedule for all groups.

    Use with ``warmup_cosine(step, ..., peak_lr=1.0)``. Groups built by :func:`build_optimizer` carry
    ``initial_lr``; so do groups once a torch LR scheduler has seen them.

    Example:
        >>> opt = torch.optim.SGD([{"params": [nn.Parameter(torch.ones(1))], "initial_lr": 0.5}], lr=0.5)
        >>> set_schedule_factor(opt, 0.1); opt.param_groups[0]["lr"]
        0.05
    """
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor must be a finite float >= 0, got {factor!r}")
    for i, group in enumerate(optimizer.param_groups):
        if "initial_lr" not in group:
            raise ValueError(
                f"param_groups[{i}] has no 'initial_lr' (its peak rate); build the optimizer with "
                "build_optimizer, or set group['initial_lr'] yourself"
            )
        group["lr"] = group["initial_lr"] * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the AdamW rate to ``lr`` and every other group to ``lr × group["lr_scale"]``.

    For use with ``warmup_cosine(step, ..., peak_lr=lr)``: the Muon group follows the same schedule,
    scaled by ``muon_lr / lr``. Groups without ``lr_scale`` get ``lr`` itself.

    Example:
        >>> from spectral_edge_studies.models.gpt import GPT, GPT_PRESETS
        >>> opt = build_optimizer(GPT(GPT_PRESETS["tiny"]), kind="muon", lr=1e-3, weight_decay=0.1,
        ...                       muon_lr=2e-3)
        >>> set_lr(opt, 5e-4); [g["lr"] for g in opt.param_groups]
        [0.0005, 0.0005, 0.001]
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite float >= 0, got {lr!r}")
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _group(named: list[tuple[str, nn.Parameter]], label: str, *, weight_decay: float) -> dict[str, Any]:
    return {
        "params": [p for _, p in named],
        "param_names": [n for n, _ in named],
        "weight_decay": weight_decay,
        "group": label,
    }


def _with_lr(groups: list[dict[str, Any]], peak: float, reference: float) -> list[dict[str, Any]]:
    for group in groups:
        group.update(lr=peak, initial_lr=peak, lr_scale=peak / reference)
    return groups


def _check_lr(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")


def _check_weight_decay(value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"weight_decay must be a finite float >= 0, got {value!r}")


__all__ = [
    "CombinedOptimizer",
    "build_optimizer",
    "muon_parameter_names",
    "set_lr",
    "set_schedule_factor",
    "warmup_cosine",
    "weight_decay_groups",
]
