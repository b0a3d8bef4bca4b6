"""What the framework callbacks share: argument checks, the run store, unwrapping, sharding checks, guards.

Nothing here imports a training framework; each callback module imports its own.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from spectral_edge.errors import SpectrumWarning
from spectral_edge.tracking.monitor import SpectralMonitor

logger = logging.getLogger("spectral_edge")

T = TypeVar("T")

#: SpectralMonitor arguments the callbacks set themselves (``store=`` is the callbacks' own argument).
_OWN_KWARGS = ("model_or_params",)


def check_monitor_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Raise now, not when training starts, on a misspelt or invalid :class:`SpectralMonitor` argument.

    The callbacks build their monitor only when training begins (the model is final then); a throwaway
    monitor over one small tensor runs the constructor's checks at once.
    """
    for name in _OWN_KWARGS:
        if name in kwargs:
            raise TypeError(f"{name}= is set by the callback itself (the model the Trainer trains)")
    # Left out: storage_device (only checked by allocating there, and the real device may differ) and
    # sinks (closing the throwaway monitor would close them).
    trial = {k: v for k, v in kwargs.items() if k not in ("storage_device", "sinks")}
    SpectralMonitor([torch.zeros(2)], **trial).close()


def open_store(
    store: Any, *, resuming: bool, resume_step: int | None = None, write_behind: bool = True
) -> tuple[Any, bool]:
    """The run store for ``store=`` and whether the callback owns (and so closes) it.

    A path is opened with ``mode="w"`` for a new run (refusing to overwrite one that holds records) and
    ``mode="a"`` when training resumes from a checkpoint, so the resumed run appends to the same store.
    When training resumes from the checkpoint of step ``resume_step``, the rows the interrupted run
    wrote after that step are deleted: they belong to the trajectory that is being replaced, and would
    otherwise appear twice. A store opened from a path commits on a writer thread (``write_behind``),
    as the monitor's own stores do; a strict monitor passes ``write_behind=False``.
    """
    if store is None:
        return None, False
    owned = isinstance(store, (str, Path))
    if owned:
        from spectral_edge.store import RunStore

        store = RunStore(store, mode="a" if resuming else "w", write_behind=write_behind)
    if resume_step is not None and resume_step > 0:
        removed = store.truncate_after(resume_step)
        if removed:
            logger.info(
                "spectral-edge: resuming at step %d; removed %d rows written after it by the interrupted run",
                resume_step,
                removed,
            )
    return store, owned


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers (the same parameters)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile
            model = model._orig_mod
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


def first_lr(optimizer: Any) -> float | None:
    """η of the first parameter group, as a float (None when unknown)."""
    if optimizer is None:
        return None
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    value = groups[0].get("lr")
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


class Guard:
    """Runs callback code so that a monitoring failure is one warning, never an exception into training.

    With ``strict=True`` failures are raised instead.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self._warned: set[str] = set()

    def __call__(self, what: str, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except Exception as exc:
            if self.strict:
                raise
            self.warn_once(
                f"{what}:{type(exc).__name__}",
                f"spectral-edge: {what} failed ({exc!r}); training continues. Pass strict=True to raise "
                "instead.",
            )
            return None

    def warn_once(self, key: str, message: str, category: type[Warning] = SpectrumWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, category, stacklevel=3)
