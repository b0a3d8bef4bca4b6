"""What the framework callbacks share: argument checks, unwrapping, sharding checks, process agreement.

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
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking.config import MonitorConfig, resolve_config
from spectral_edge.tracking.distributed import unwrapped_name

#: SpectralMonitor arguments the callbacks set themselves (``store=`` is the callbacks' own argument).
_OWN_KWARGS = {
    "model_or_params": "the model the Trainer trains",
    "distributed": "on every process of a torch.distributed job; pass distributed_timeout= to change the "
    "seconds a process waits for the others",
}


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
    for name, why in _OWN_KWARGS.items():
        if name in kwargs:
            raise TypeError(f"{name}= is set by the callback itself ({why})")
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
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers (the same parameters).

    FSDP1's ``FullyShardedDataParallel`` is kept: the distributed monitor needs it to find the shards.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(inner, torch.nn.Module):
            model = inner
        else:
            return model


def monitored_module(model: torch.nn.Module, wrapped: Any = None) -> torch.nn.Module:
    """The module to hand the monitor: ``wrapped`` (the framework's outermost wrapper of ``model``) when
    it is or holds an FSDP1 wrapper, else ``model``; DDP, DataParallel and compile wrappers removed.

    FSDP1 wraps the model from outside: the model alone does not show which of its parameters are
    views of a process's shard, the ``FullyShardedDataParallel`` root does. DDP's wrapper adds nothing
    (every process holds every parameter) and its ``module.`` prefix would change the groups.
    """
    if isinstance(wrapped, torch.nn.Module) and _has_fsdp1(unwrap_model(wrapped)):
        return unwrap_model(wrapped)
    return unwrap_model(model)


def _has_fsdp1(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds sharded parameters: FSDP2 / tensor-parallel DTensors or FSDP1's wrappers."""
    if _has_fsdp1(model):
        return True
    return any(type(p).__name__ in ("DTensor", "FlatParameter") for p in model.parameters())


def distributed_job(model: torch.nn.Module) -> bool:
    """Whether the callback monitors ``model`` on every process (``SpectralMonitor(distributed=...)``):
    torch.distributed is initialised, and the job has several processes or ``model`` is sharded (FSDP on
    one process still shards its parameters into a flat buffer or DTensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size() > 1 or is_sharded(model)


def process_rank() -> int:
    """This process's global rank (0 outside a torch.distributed job)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_agree(flag: bool) -> bool:
    """True on every process if ``flag`` is true on every process of the default group (collective).

    The callbacks use it so that every process builds its monitor, or none does, and every process
    restores its window, or none does: a process whose monitor is off never joins the others'
    all-reduce, and windows restored on some processes only would give Grams that are not one model's.
    """
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def started_everywhere(monitor: Any, guard: Guard) -> tuple[bool, int]:
    """After each process tried to build its monitor under torch.distributed (collective): whether every
    one has one, and the number of processes. A process without a monitor would never join the others'
    all-reduce, so if any failed, the ones that did not warn and drop theirs: all monitor, or none."""
    import torch.distributed as dist

    if all_agree(monitor is not None):
        return True, dist.get_world_size()
    if monitor is not None:
        guard.warn_once(
            "peer_failed",
            "another process could not start its spectral-edge monitor (its warning says why), so no "
            "process monitors this run",
        )
    return False, dist.get_world_size()


#: Why DeepSpeed ZeRO-3 is not monitored (yet).
ZERO3_MESSAGE = (
    "DeepSpeed ZeRO-3 is not supported yet: its partitioned parameters hold no data outside forward "
    "(each is an empty placeholder; a process's shard lives in DeepSpeed's flat fp32 partitions), so the "
    "monitor would have to gather every parameter at each step or read the flat partitions, which it does "
    "not do yet. Use ZeRO-1/2 (monitored like DDP) or FSDP, or analyse saved checkpoints with "
    "spectral_edge.analyze_checkpoints."
)


def sharding_problem(model: torch.nn.Module, hint: str | None = None) -> str | None:
    """Why the parameters of ``model`` cannot be monitored here, or None if they can.

    ``hint`` is what the framework's settings say: ``"zero3"`` (DeepSpeed ZeRO-3) or the name of a
    sharded setting (an FSDP strategy). DeepSpeed ZeRO-3 is not supported (:data:`ZERO3_MESSAGE`).
    FSDP1, FSDP2 and 1-D DTensors are, by the distributed monitor, once torch.distributed is initialised
    (it sums the processes' Grams); without that, sharded parameters are a problem. Tensor parallelism
    (a DTensor on a 2-D mesh) is refused by the monitor itself, with its own message.
    """
    if hint == "zero3" or any(hasattr(p, "ds_id") for p in model.parameters()):
        return ZERO3_MESSAGE
    if distributed_job(model):
        return None
    if hint is not None:
        what = hint
    elif is_sharded(model):
        what = "the model's parameters are sharded (FSDP or DTensors)"
    else:
        return None
    return (
        f"{what}, but torch.distributed is not initialised in this process: monitoring FSDP or other "
        "sharded parameters needs the process group, to sum the Grams of the processes' shards. Launch "
        "the job with torchrun / accelerate launch (or let the Trainer initialise it) so that every "
        "process runs the callback."
    )


def sharding_message(problem: str) -> str:
    return f"spectral-edge cannot monitor this model: {problem}"


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
    # Names without the parts FSDP1 and activation checkpointing insert: the distributed monitor reports
    # the unwrapped model's names.
    lists = [
        unwrapped_name(name)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m)
    ]
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

    names = [unwrapped_name(name) for name, _ in model.named_parameters()]
    in_block = [i for i, name in enumerate(names) if block_of(name) is not None]
    if not in_block:
        return None
    first, last = in_block[0], in_block[-1]
    fixed = {name: "embeddings" for name in names[:first]} | {name: "head" for name in names[last + 1 :]}

    def group(name: str) -> str:
        name = unwrapped_name(name)
        block = block_of(name)
        if block is not None:
            return block
        if name in fixed:
            return fixed[name]
        return name.rsplit(".", 1)[0]  # between two stacks: its module (an encoder's final norm)

    return group
