"""Monitoring a model trained on several processes: each pushes its own part, one all-reduce completes it.

The Gram of the model is the sum of the Grams of any partition of its coordinates, G = Σ_r X_r X_rᵀ (a
dot product over all parameters is the sum of the dot products over disjoint parts; Def 1.3). So under
torch.distributed every process keeps a window of only its part X_r of each update, and each push sums
its new Gram row over the processes with one all-reduce of n_groups·W + 1 float64 numbers
(:class:`~spectral_edge.tracking.window.WindowShare`). Every process then holds the whole model's Gram,
bit for bit the same, and builds the same record; only rank 0 writes the run store and the sinks.

Which scalars a process pushes (:func:`split_parameters`):

* **Sharded parameters** are already partitioned: each process pushes its local shard. FSDP2
  (``fully_shard``) parameters are DTensors sharded on a 1-D mesh (their ``to_local()``); FSDP1 parameters
  are views of the process's shard of the flat parameter (``use_orig_params=True``; a parameter wholly on
  another process is an empty view here) or, without it, the flat parameter shards themselves.
* **Replicated parameters** (DDP, a DTensor replicated on its mesh, or any tensor every process holds
  whole) are split: their scalars, concatenated in the monitored order, are cut into ``world_size`` runs
  of equal length (± 1), and rank r pushes the r-th run as views of the tensors it crosses. Each
  process's pass over the parameters and its window memory thus fall by the number of processes.

The monitor checks once, collectively, that every process monitors the same parameters in the same
order and that each holds at least one scalar, and every collective has a timeout: a process that died or
stopped calling ``step()`` makes the others raise :class:`~spectral_edge.errors.DistributedMonitorError`
after ``timeout`` seconds rather than hang. Its collectives run on a gloo group of their own (the Gram
row lives on the host), whatever backend trains the model.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spectral_edge.errors import DistributedMonitorError
from spectral_edge.tracking._sharing import local_values
from spectral_edge.tracking.window import WindowShare

__all__ = [
    "Distributed",
    "ProcessGroupReducer",
    "ProcessPart",
    "local_values",
    "split_parameters",
    "unwrapped_name",
]

#: Name parts FSDP1, activation checkpointing and torch.compile insert into parameter names; left out of
#: the names the monitor reports, so that groups and names match the unwrapped model's.
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class Distributed:
    """How a :class:`~spectral_edge.tracking.monitor.SpectralMonitor` works across processes.

    Pass ``SpectralMonitor(model, distributed=True)`` (these defaults) or ``distributed=Distributed(...)``
    on every process of an initialised ``torch.distributed`` job; every process must then call ``step()``
    at the same steps.

    Attributes:
        group: the process group whose processes train the model together; None: the default (world) group.
        timeout: seconds a collective of the monitor waits for the other processes before it raises
            :class:`~spectral_edge.errors.DistributedMonitorError` (a process died or stopped monitoring).
    """

    group: Any = None
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")


class ProcessGroupReducer:
    """Sums float64 arrays over the processes of a group, on a gloo group of its own with a timeout.

    Args:
        spec: the processes and the timeout.

    Raises:
        RuntimeError: torch.distributed is not initialised.
    """

    def __init__(self, spec: Distributed) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "distributed monitoring needs an initialised torch.distributed job: call "
                "torch.distributed.init_process_group(...) (torchrun does it for you) before building the "
                "monitor, or leave distributed=False for one process"
            )
        self._dist = dist
        self.spec = spec
        ranks = dist.get_process_group_ranks(spec.group) if spec.group is not None else None
        # A group of its own: gloo reduces host arrays whatever backend trains the model, and its
        # timeout bounds every wait of the monitor's.
        # With a subgroup, only its members call new_group (they may be one of several shard groups).
        self.group = dist.new_group(
            ranks=ranks,
            backend="gloo",
            timeout=datetime.timedelta(seconds=float(spec.timeout)),
            use_local_synchronization=ranks is not None,
        )
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)

    def close(self) -> None:
        """Destroy the monitor's process group (its sockets); the reducer cannot be used after."""
        group, self.group = self.group, None
        if group is not None and self._dist.is_initialized():
            try:
                self._dist.destroy_process_group(group)
            except (RuntimeError, ValueError):  # the default group went first: nothing left to free
                pass

    def all_reduce(self, array: np.ndarray, *, what: str) -> None:
        """Replace ``array`` (C-contiguous float64) by its sum over the processes, in place."""
        if self.world_size == 1:
            return
        self._collective(what, lambda: self._dist.all_reduce(torch.from_numpy(array), group=self.group))

    def gather(self, value: Any, *, what: str) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order."""
        out: list[Any] = [None] * self.world_size
        self._collective(what, lambda: self._dist.all_gather_object(out, value, group=self.group))
        return out

    def _collective(self, what: str, call: Any) -> None:
        if self.group is None:  # without this, torch would run the call on the default group
            raise DistributedMonitorError(f"the monitor was closed; it cannot sum {what} any more")
        try:
            call()
        except Exception as exc:
            raise DistributedMonitorError(
                f"spectral-edge on rank {self.rank} of {self.world_size}: the monitor's collective for {what} "
                f"failed ({type(exc).__name__}: {exc}). Another process died or stopped calling the monitor "
                f"(each waits {self.spec.timeout:g} s). Every process must build the monitor and call step() "
                "at the same steps; if one process failed, its own error says why."
            ) from exc


@dataclass(frozen=True)
class _Piece:
    """One tensor's part on this process: the parameter, and the run [lo, hi) of its flat local values."""

    name: str
    param: torch.Tensor
    kind: str  # "shard" (this process's shard: a DTensor's local tensor, or FSDP1's view) or "slice" (a run)
    lo: int = 0
    hi: int = 0


class ProcessPart:
    """The scalars this process pushes, as (name, tensor) views, and the share of the whole it is.

    Built by :func:`split_parameters`; see the module docstring for who pushes what.

    Attributes:
        named: (name, local tensor) of this process's part, in the monitored order; a parameter with no
            scalar here is left out.
        share: the :class:`WindowShare` of the window that holds the part.
        process_params: each process's number of scalars, in rank order.
        kinds: how many monitored parameters are "sharded" and how many "replicated".
        sizes: each monitored parameter's number of scalars in the whole model (by its given name), the
            same on every process (an FSDP1 view holds only this process's share).
        group_sizes: each group's number of scalars in the whole model.
    """

    def __init__(
        self,
        pieces: list[_Piece],
        share: WindowShare,
        process_params: list[int],
        kinds: dict[str, int],
        sizes: dict[str, int],
        group_sizes: dict[str, int],
    ) -> None:
        self._pieces = pieces
        self.share = share
        self.process_params = process_params
        self.kinds = kinds
        self.sizes = sizes
        self.group_sizes = group_sizes
        self._key: list[tuple[int, int]] | None = None
        self._views: list[torch.Tensor] = []
        # A slice of a non-contiguous tensor (channels_last) is a copy, not a view: make it at every step.
        self._copied = any(p.kind == "slice" and not local_values(p.param).is_contiguous() for p in pieces)
        self.named = list(zip([p.name for p in pieces], self.tensors(), strict=True))

    def tensors(self) -> list[torch.Tensor]:
        """This process's tensors now, in :attr:`named` order (views of the live parameters).

        The views are made again only when a parameter's storage moved (FSDP1 swaps a parameter's data
        between its shard and the gathered tensor), so a step costs one pointer check per tensor.
        """
        with torch.no_grad():  # a DTensor's to_local() is then its local tensor itself, not a new one
            current = [local_values(p.param) for p in self._pieces]
            key = [(id(t), t.data_ptr()) for t in current]
            if key != self._key or self._copied:
                self._views = [
                    t.detach().reshape(-1)[p.lo : p.hi] if p.kind == "slice" else t
                    for p, t in zip(self._pieces, current, strict=True)
                ]
                self._key = key
        return self._views

    def describe(self) -> dict[str, Any]:
        """What the run store's config says of the split."""
        return {
            "world_size": len(self.process_params),
            "groups": dict(self.group_sizes),
            "process_params": list(self.process_params),
            "parameters": dict(self.kinds),
        }


def split_parameters(
    named: Sequence[tuple[str, torch.Tensor]],
    reducer: ProcessGroupReducer,
    *,
    group_of: Any,
    module: torch.nn.Module | None = None,
) -> ProcessPart:
    """Split the monitored parameters between the processes (collective: every process calls it).

    Args:
        named: the monitored (name, parameter) pairs, the same names in the same order on every process.
        reducer: the processes, and the collectives to agree with them.
        group_of: the group of a parameter's name (``group_function(config.groups)``).
        module: the model, to find FSDP1's sharded parameters.

    Raises:
        ValueError: the processes monitor different parameters, a process holds none of them, or a
            parameter is sharded in a way not supported (a DTensor on a mesh of more than one dimension).
        DistributedMonitorError: another process did not take part.
    """
    fsdp1 = _fsdp1_parameters(module)
    # DDP's own prefix goes too, so that the groups are the model's ("top" would make "module" the only one).
    ddp = isinstance(module, torch.nn.parallel.DistributedDataParallel)
    entries: list[tuple[str, torch.Tensor, str]] = []  # (name, parameter, "sharded" / "replicated")
    for name, param in named:
        clean = unwrapped_name(name.removeprefix("module.") if ddp else name)
        entries.append((clean, param, _placement(name, param, fsdp1, reducer.world_size)))
    names = [n for n, _, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError("parameter names collide once FSDP's wrapper prefixes are removed")
    replicated_sizes = [p.numel() for _, p, kind in entries if kind == "replicated"]
    # FSDP1's flat parameters (without use_orig_params) pad their shards with zeros that never move:
    # they add nothing to the Gram, but P (in d_crit and the noise level) counts the model's scalars only.
    held = [
        local_values(p).numel() - int(getattr(p, "_shard_numel_padded", 0)) if kind == "sharded" else 0
        for _, p, kind in entries
    ]
    signature = [(n, kind, p.numel() if kind == "replicated" else -1) for n, p, kind in entries]
    replicated_total = sum(replicated_sizes)
    seen = reducer.gather((signature, held), what="agreeing on the monitored parameters")
    for rank, (other, _) in enumerate(seen):
        if other != signature:
            raise ValueError(_disagreement(reducer.rank, signature, rank, other))
    # Each parameter's size in the whole model: a replicated one's own, a sharded one's shards summed.
    sizes = [
        p.numel() if kind == "replicated" else sum(h[i] for _, h in seen)
        for i, (_, p, kind) in enumerate(entries)
    ]

    # Replicated scalars, concatenated in order, are cut into world_size runs of equal length (± 1).
    world, rank = reducer.world_size, reducer.rank
    bounds = [replicated_total * r // world for r in range(world + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    pieces: list[_Piece] = []
    # Each piece's first element's index in the whole model's flat parameters, for a sketched window:
    # known for runs of replicated tensors and for DTensors sharded on their first dimension (a
    # contiguous run of the flat tensor); not for FSDP1's views.
    offsets: dict[str, int] | None = {}
    offset = 0  # among the replicated scalars
    start_of = 0  # among all scalars, in the monitored order
    for name, param, kind in entries:
        if kind == "sharded":
            first = _first_index(param)
            if first is None:
                offsets = None
            if local_values(param).numel() > 0:
                pieces.append(_Piece(name, param, "shard"))
                if offsets is not None and first is not None:
                    offsets[name] = start_of + first
            start_of += param.numel()  # a DTensor's numel is the whole tensor's
            continue
        n = param.numel()
        lo, hi = max(start, offset) - offset, min(stop, offset + n) - offset
        if lo < hi:
            pieces.append(_Piece(name, param, "slice", lo, hi))
            if offsets is not None:
                offsets[name] = start_of + lo
        offset += n
        start_of += n

    process_params = [sum(h) + bounds[r + 1] - bounds[r] for r, (_, h) in enumerate(seen)]
    empty = [r for r, p in enumerate(process_params) if p == 0]
    if empty:
        raise ValueError(
            f"processes {empty} of {world} hold none of the monitored scalars ({sum(process_params):,} in "
            "all): monitor this model in one process (distributed=False), or train it on fewer processes"
        )
    group_sizes: dict[str, int] = {}  # in order of first appearance: the layout's group order
    for clean, size in zip(names, sizes, strict=True):
        group = group_of(clean)
        group_sizes[group] = group_sizes.get(group, 0) + size
    share = WindowShare(
        reducer=reducer, total_params=sum(process_params), group_names=tuple(group_sizes), offsets=offsets
    )
    kinds = {"sharded": len(entries) - len(replicated_sizes), "replicated": len(replicated_sizes)}
    by_name = {given: size for (given, _), size in zip(named, sizes, strict=True)}
    return ProcessPart(pieces, share, process_params, kinds, by_name, group_sizes)


def unwrapped_name(name: str) -> str:
    """``name`` without the parts wrappers insert (:data:`WRAPPER_PARTS`): the unwrapped model's name.

    Example:
        >>> unwrapped_name("_fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.attn.weight")
        'layers.0.attn.weight'
    """
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _is_dtensor(t: torch.Tensor) -> bool:
    return local_values(t) is not t


def _first_index(param: torch.Tensor) -> int | None:
    """Where this process's shard of a sharded DTensor starts in the tensor's flat values (None when the
    shard is not one run of them, or for FSDP1's views, whose place is FSDP1's private bookkeeping)."""
    if not _is_dtensor(param):
        return None
    placements = tuple(param.placements)  # type: ignore[attr-defined]
    if any(p.is_shard() and p.dim != 0 for p in placements):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, corner = compute_local_shape_and_global_offset(
        param.shape,
        param.device_mesh,  # type: ignore[attr-defined]
        placements,
    )
    row = math.prod(param.shape[1:])
    return int(corner[0]) * row if corner else 0


def _placement(name: str, param: torch.Tensor, fsdp1: set[int], world_size: int) -> str:
    """ "sharded" when each process holds its own part of ``param``, "replicated" when each holds it all."""
    if id(param) in fsdp1:
        return "sharded"
    if not _is_dtensor(param):
        return "replicated"
    placements = tuple(param.placements)  # type: ignore[attr-defined]
    if all(p.is_replicate() for p in placements):
        return "replicated"
    mesh = param.device_mesh  # type: ignore[attr-defined]
    if mesh.ndim != 1 or mesh.size() != world_size:
        raise ValueError(
            f"parameter {name!r} is a DTensor with placements {placements} on a mesh of shape "
            f"{tuple(mesh.shape)}: the monitor supports parameters sharded over all {world_size} processes of "
            "its group on a 1-D mesh (FSDP2's fully_shard), or replicated ones; 2-D meshes (HSDP, tensor "
            "parallelism) are not supported yet"
        )
    if any(p.is_partial() for p in placements):
        raise ValueError(
            f"parameter {name!r} is a DTensor with a partial placement {placements}: reduce it first"
        )
    return "sharded"


def _fsdp1_parameters(module: torch.nn.Module | None) -> set[int]:
    """The ids of the parameters FSDP1 holds as this process's shard (all under an FSDP1 wrapper but its
    ignored ones)."""
    if module is None:
        return set()
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch built without distributed support
        return set()
    from torch.distributed.fsdp import ShardingStrategy

    ids: set[int] = set()
    for wrapper in (m for m in module.modules() if isinstance(m, FullyShardedDataParallel)):
        strategy = getattr(wrapper, "sharding_strategy", ShardingStrategy.FULL_SHARD)
        if strategy == ShardingStrategy.NO_SHARD:  # every process holds every parameter: replicated
            continue
        if strategy not in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP):
            raise ValueError(
                f"FSDP1 with sharding_strategy={strategy.name} shards within groups of processes and "
                "replicates across them, which the monitor does not split yet: use FULL_SHARD, "
                "SHARD_GRAD_OP or NO_SHARD, or FSDP2 (fully_shard) on a 1-D mesh"
            )
        ignored = {id(p) for p in getattr(wrapper, "_ignored_params", ())}
        ids.update(id(p) for p in wrapper.parameters() if id(p) not in ignored)
    return ids


def _disagreement(
    rank: int, mine: list[tuple[str, str, int]], other_rank: int, other: list[tuple[str, str, int]]
) -> str:
    where = next(
        (i for i, (a, b) in enumerate(zip(mine, other, strict=False)) if a != b), min(len(mine), len(other))
    )
    a = mine[where] if where < len(mine) else "nothing"
    b = other[where] if where < len(other) else "nothing"
    return (
        f"the processes monitor different parameters: rank {rank} has {len(mine)} and rank {other_rank} "
        f"{len(other)}, first differing at position {where}: {a} against {b} (name, placement, size of a "
        "replicated one). Build the same model, with the same trainable parameters, on every process "
        "before the monitor"
    )
