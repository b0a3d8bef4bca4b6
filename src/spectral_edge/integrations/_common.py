"""What the framework callbacks share: argument checks, unwrapping, sharding checks.

Nothing here imports a training framework; each callback module imports its own. The run store opener
(:meth:`~spectral_edge.sinks.store.StoreSink.open`), the failure guard (``tracking/_guard.py``) and the
learning-rate resolver (:meth:`~spectral_edge.tracking.monitor.SpectralMonitor.resolve_lr`) are the
monitor's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from spectral_edge.sinks.base import Sink, as_sink
from spectral_edge.sinks.store import StoreSink
from spectral_edge.tracking.config import MonitorConfig, resolve_config

#: SpectralMonitor arguments the callbacks set themselves (``store=`` is the callbacks' own argument).
_OWN_KWARGS = ("model_or_params",)


def monitor_settings(kwargs: Mapping[str, Any], *, caller: str) -> tuple[MonitorConfig, tuple[Sink, ...]]:
    """Check a callback's :class:`SpectralMonitor` keywords now, not when training starts.

    The callbacks build their monitor only when training begins (the model is final then); the settings
    are a :class:`~spectral_edge.tracking.config.MonitorConfig` checked here, and the sinks are checked
    against the :class:`~spectral_edge.sinks.base.Sink` interface.

    Returns:
        The config and the sinks (as given) to build the monitor with.

    Raises:
        TypeError: an unknown keyword, one the callback sets itself, or a sink without the sink methods.
        ValueError: a setting with a bad value.
    """
    for name in _OWN_KWARGS:
        if name in kwargs:
            raise TypeError(f"{name}= is set by the callback itself (the model the Trainer trains)")
    settings = dict(kwargs)
    config, sinks = settings.pop("config", None), tuple(settings.pop("sinks", ()))
    for sink in sinks:
        as_sink(sink)
    return resolve_config(config, settings, caller=caller), sinks


def open_trainer_store(
    store: Any, *, resuming: bool, reopened: bool, step: int, strict: bool
) -> StoreSink | None:
    """The run store of a trainer callback, opened when training starts.

    A path is opened to append when training resumes from a checkpoint or a second ``train()``/``fit()``
    call comes (``reopened``), else for a new run. A store the user opened is used as it is (``resume=``
    applies to paths only; it once made an open store fail here and its records go nowhere). Either way,
    on a resume the rows the interrupted run wrote after ``step`` are deleted.
    """
    is_path = isinstance(store, (str, os.PathLike))
    return StoreSink.open(
        store,
        resume=is_path and (resuming or reopened),
        resume_step=step if resuming else None,
        write_behind=not strict,
    )


def close_trainer_store(store: StoreSink | None, monitor: Any, guard: Callable[..., Any]) -> StoreSink | None:
    """At the end of training: close the run store the callback opened (a store the user passed stays
    open) and detach it from the monitor, so later evaluations do not write to a closed store. Returns
    the sink the callback still holds (None once closed)."""
    if store is None or not store.owned:
        return store
    guard("closing the run store", store.close)
    if monitor is not None:
        monitor.detach_store()
    return None


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers (the same parameters)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(inner, torch.nn.Module):
            model = inner
        else:
            return model


def sharding_problem(model: torch.nn.Module, hint: str | None = None) -> str | None:
    """Why the parameters of ``model`` cannot be monitored on one process, or None if they can.

    The monitor needs each process to hold whole parameters. FSDP, DeepSpeed ZeRO-3 and tensor-parallel
    DTensors split them across processes; that needs the shard-aware window (one all-reduce of W numbers
    per step), which is not written yet.
    """
    if hint is not None:
        return hint
    for name, p in model.named_parameters():
        kind = type(p).__name__
        if kind in ("DTensor", "FlatParameter") or hasattr(p, "ds_id"):
            what = "a DeepSpeed ZeRO-3 partition" if hasattr(p, "ds_id") else f"a {kind}"
            return f"parameter {name!r} is {what}"
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            return "the model is wrapped in FullyShardedDataParallel"
    return None


def sharding_message(problem: str) -> str:
    return (
        f"spectral-edge cannot monitor sharded parameters yet ({problem}): FSDP, DeepSpeed ZeRO-3 and "
        "tensor parallelism are not supported. Use DDP / ZeRO-1/2, or analyse saved checkpoints with "
        "spectral_edge.analyze_checkpoints."
    )


def numeric_items(metrics: Mapping[str, Any], *, skip_prefix: str) -> dict[str, float]:
    """The scalar entries of ``metrics`` (numbers, one-element tensors) as floats, without ``skip_prefix`` names."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name.startswith(skip_prefix) or isinstance(value, bool):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def block_groups(model: torch.nn.Module) -> Callable[[str], str] | None:
    """``groups=`` for a transformer: one group per block, one for what comes before the blocks, one for
    what comes after; None for a model without a list of blocks.

    The blocks are the children of the outermost ``nn.ModuleList`` s (``transformer.h``,
    ``model.layers``, ``bert.encoder.layer``, both stacks of an encoder-decoder): ``transformer.h.0``,
    ``transformer.h.1``, ... Parameters registered before the first block are ``"embeddings"`` (token and
    position embeddings, an embedding norm), those after the last block ``"head"`` (the final norm, an
    untied output head, a pooler or classifier), and any between two stacks (an encoder's final norm)
    are grouped by their parent module. The default ``groups="top"`` would put all of a Hugging Face
    model in one group (its parameters share one top-level module, ``transformer`` or ``model``).

    Example:
        >>> blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        >>> model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(4, 2), "h": blocks, "norm": torch.nn.LayerNorm(2)})
        >>> group = block_groups(model)
        >>> [group(name) for name, _ in model.named_parameters()]
        ['embeddings', 'h.0', 'h.0', 'h.1', 'h.1', 'head', 'head']
    """
    lists = [name for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    stacks = [n for n in lists if not any(n.startswith(o + ".") for o in lists if o != n)]
    if not stacks:
        return None
    # A stack's blocks are named "<stack>.<i>"; as many leading name components as that.
    depth = {stack: stack.count(".") + 2 if stack else 1 for stack in stacks}

    def block_of(name: str) -> str | None:
        for stack in stacks:
            if not stack or name.startswith(stack + "."):
                return ".".join(name.split(".")[: depth[stack]])
        return None

    names = [name for name, _ in model.named_parameters()]
    in_block = [i for i, name in enumerate(names) if block_of(name) is not None]
    if not in_block:
        return None
    first, last = in_block[0], in_block[-1]
    fixed = {name: "embeddings" for name in names[:first]} | {name: "head" for name in names[last + 1 :]}

    def group(name: str) -> str:
        block = block_of(name)
        if block is not None:
            return block
        if name in fixed:
            return fixed[name]
        return name.rsplit(".", 1)[0]  # between two stacks: its module (an encoder's final norm)

    return group
