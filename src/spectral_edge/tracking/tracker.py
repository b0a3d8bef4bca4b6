"""SpectralTracker: the window of the last W updates, the record builder and the event detector in one.

It knows nothing of models, optimizers, schedules or sinks: each :meth:`SpectralTracker.observe` takes
the current values of the tracked tensors, pushes θ − θ_prev into its
:class:`~spectral_edge.tracking.window.UpdateWindow`, and once W updates are in returns the
:class:`~spectral_edge.tracking.record.SpectralRecord` of :func:`~spectral_edge.tracking.build.build_record`
with the events the :class:`~spectral_edge.tracking.events.EventDetector` draws from it. The online
:class:`~spectral_edge.tracking.monitor.SpectralMonitor` and the offline
:func:`~spectral_edge.tracking.checkpoints.analyze_checkpoints` both drive one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from spectral_edge.errors import NonFiniteUpdateError
from spectral_edge.spectrum.window import DEFAULT_RANK_RTOL
from spectral_edge.tracking._guard import WarnOnce
from spectral_edge.tracking.build import PushedWindow, build_record
from spectral_edge.tracking.config import MonitorConfig, group_function
from spectral_edge.tracking.events import EventDetector
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord
from spectral_edge.tracking.sketch import SketchedWindow
from spectral_edge.tracking.window import ParameterLayout, PushResult, UpdateWindow, WindowShare

__all__ = ["SpectralTracker", "TrackResult"]

Named = Sequence[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
Tensors = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TrackResult:
    """What one :meth:`SpectralTracker.observe` did.

    Attributes:
        record: the record of the full window, or None (window not full yet, a snapshot, a skipped update).
        events: the events this observation completed: the detector's (gap opening, collapse, k* shift,
            regime change), or one ``nonfinite_update`` / ``zero_update`` when a run of such updates starts.
        status: "pushed", "snapshot" (the values became θ_prev; nothing pushed), "nonfinite" or "zero"
            (the update was skipped).
        flagged: some process raised ``flag=`` with this update (see :meth:`SpectralTracker.observe`);
            False after a snapshot, which pushes nothing.
    """

    record: SpectralRecord | None
    events: tuple[SpectralEvent, ...] = ()
    status: Literal["pushed", "snapshot", "nonfinite", "zero"] = "pushed"
    flagged: bool = False


class SpectralTracker:
    """The spectrum of the last W updates of a fixed set of tensors, and the events it shows.

    Each :meth:`observe` pushes δ_t = θ_t − θ_{t−1} (Def 1.1) as a row of X (Def 1.2) and, once W are in,
    returns the record of G = X Xᵀ (Def 1.3): k* = argmax σ_j/σ_{j+1} (Def 6.1, eq 13), R, g, α_j
    (eq 77), 𝒜 = ‖ΔC‖_F/(η g²) (Prop 34.3) and the rest of
    :func:`~spectral_edge.tracking.build.build_record`, with the events of the detector. A NaN/Inf update is
    skipped and restarts the window (``strict`` raises instead); a zero update is skipped; each starts one
    event and one warning per run of them.

    Args:
        named: the tensors, as (name, tensor) pairs or a mapping; their current values are the first
            snapshot θ_0. Each must be its own memory (see ``count_once`` for tied tensors). Tensors on
            several devices need ``config.storage_device`` (a ValueError otherwise).
        config: the settings (window W, grouping, storage, thresholds, ``strict``).
        copy: copy the snapshot (a live model's parameters change in place); ``False`` keeps references
            to tensors that will not change (checkpoints loaded from disk).
        share: the tensors are this process's part of a model trained on several
            (:class:`~spectral_edge.tracking.window.WindowShare`, made by
            :func:`~spectral_edge.tracking.distributed.split_parameters`): every push is summed over the
            processes, and the records are the whole model's. None: the tensors are the whole model.

    Example:
        >>> w = torch.zeros(4)
        >>> tracker = SpectralTracker([("w", w)], config=MonitorConfig(window=2))
        >>> for step, delta in enumerate(([1.0, 0, 0, 0], [0, 0.5, 0, 0]), start=1):
        ...     w += torch.tensor(delta)
        ...     result = tracker.observe([w], step=step, lr=0.1)
        >>> result.record.step, result.record.singular_values.tolist(), result.status
        (2, [1.0, 0.5], 'pushed')
    """

    def __init__(
        self,
        named: Named,
        *,
        config: MonitorConfig | None = None,
        copy: bool = True,
        share: WindowShare | None = None,
    ) -> None:
        self.config = config if config is not None else MonitorConfig()
        self.detector = EventDetector(self.config.events, self.config.regimes)
        self._group_of = group_function(self.config.groups)
        self._warn = WarnOnce()
        self._bad_streak: str | None = None  # "nonfinite" / "zero" while such updates keep coming
        pairs = _pairs(named)
        devices = {t.device for _, t in pairs}
        storage = self.config.storage_device
        if len(devices) > 1 and storage is None:
            raise ValueError(
                f"parameters live on several devices {sorted(map(str, devices))}; pass storage_device= "
                "to say where the window should be kept"
            )
        # Chosen once: a new tensor set (relayout) keeps the window where it was.
        self.storage_device = torch.device(storage) if storage is not None else next(iter(devices))
        self.relayout(pairs, copy=copy, share=share)

    # ------------------------------------------------------------------ the tensor set

    @property
    def layout(self) -> ParameterLayout:
        """Names, shapes and groups of the tracked tensors, in the window's order."""
        return self.window.layout

    @property
    def n_params(self) -> int:
        """P, the number of tracked scalars (of the whole model, when the tensors are one process's part)."""
        return self.window.total_params

    def relayout(self, named: Named, *, copy: bool = True, share: WindowShare | None = None) -> None:
        """Track another set of tensors: a new, empty window whose snapshot is their current values.

        The event detector keeps its state: a stream of records goes on across the change.

        Args:
            named: the tensors.
            copy: as for the constructor.
            share: as for the constructor (the new set's share, when the tensors are one process's part).

        Raises:
            ValueError: no tensors.
        """
        pairs = _pairs(named)
        layout, order = ParameterLayout.build(
            [n for n, _ in pairs],
            [tuple(t.shape) for _, t in pairs],
            self._group_of,
            all_groups=share.group_names if share is not None else None,
        )
        self._snapshot_device = pairs[0][1].device  # where a loaded snapshot goes
        self.window: UpdateWindow | SketchedWindow
        if self.config.sketch_dim is None:
            self.window = UpdateWindow(
                layout,
                window=self.config.window,
                storage_dtype=self.config.storage_dtype,
                storage_device=self.storage_device,
                chunk_size=self.config.chunk_size,
                kernel=self.config.kernel,
                share=share,
            )
        else:
            self.window = SketchedWindow(
                layout,
                window=self.config.window,
                sketch_dim=self.config.sketch_dim,
                seed=self.config.sketch_seed,
                offsets=_flat_offsets(pairs, layout, share),
                share=share,
            )
        self.window.snapshot([pairs[i][1] for i in order], copy=copy)

    def snapshot(self, tensors: Tensors, *, copy: bool = True) -> None:
        """Take the current values as θ_prev, the reference of the next update (the window is kept)."""
        self.window.snapshot(self._in_order(tensors), copy=copy)

    def reset(self) -> None:
        """Forget the window and the snapshot: the next :meth:`observe` takes a snapshot and pushes nothing.

        The event detector keeps its state.
        """
        self.window.reset()

    # ------------------------------------------------------------------ observing

    def observe(
        self,
        tensors: Tensors,
        *,
        step: int,
        lr: float | Callable[[], float | None] | None = None,
        metrics: Mapping[str, float] | None = None,
        copy: bool = True,
        flag: bool = False,
    ) -> TrackResult:
        """Push the update since the last snapshot; return the record once the window is full.

        Args:
            tensors: the current values, in :attr:`layout` order or as a mapping name -> tensor.
            step: the step to file the record and the events under.
            lr: η for 𝒜, or a zero-argument callable giving it, called only when a record is made.
            metrics: scalars to keep with the record.
            copy: as for the constructor (``False``: keep the tensors as the next snapshot).
            flag: a yes/no question put to every process sharing the model with this push:
                :attr:`TrackResult.flagged` is whether any of them raised it.

        Raises:
            NonFiniteUpdateError: a NaN/Inf update with ``config.strict``.
        """
        values = self._in_order(tensors)
        if not self.window.has_snapshot:  # after a reset: these values are θ_prev
            self.window.snapshot(values, copy=copy)
            return TrackResult(None, (), "snapshot")
        pushed = self.window.push(values, copy=copy, flag=flag)
        if pushed.status != "pushed":
            return TrackResult(None, self._skipped(pushed, step), pushed.status, pushed.flagged)
        self._bad_streak = None
        if not self.window.full:
            return TrackResult(None, (), "pushed", pushed.flagged)
        rate = lr() if callable(lr) else lr
        record = build_record(
            PushedWindow.read(self.window, pushed), step=step, lr=rate, metrics=metrics, config=self.config
        )
        if record.rank < self.window.window and self.window.rank_rtol > DEFAULT_RANK_RTOL:
            self._below_storage_floor(record)
        return TrackResult(record, tuple(self.detector.update(record)), "pushed", pushed.flagged)

    def _below_storage_floor(self, record: SpectralRecord) -> None:
        """Warn once that σ_j under the rounding floor of a low-precision window read as 0 (Weyl: rounding
        each stored value moves every σ_j by up to u·√W·σ_1, see ``storage_rank_rtol``)."""
        floor = math.sqrt(self.window.rank_rtol)
        dtype = str(self.window.storage_dtype).removeprefix("torch.")
        self._warn(
            "below_storage_floor",
            f"spectral-edge: at step {record.step}, σ_{record.rank + 1}..σ_{record.window} of the window are "
            f"below what {dtype} storage resolves ({floor:.1e}·σ_1) and read as 0, so R and k* may be set by "
            "the rounding floor rather than by the updates. Keep the window in float32 (the default), or use "
            "a sketch (sketch_dim=), whose error is relative on every σ_j (docs/scale.md).",
        )

    def _skipped(self, pushed: PushResult, step: int) -> tuple[SpectralEvent, ...]:
        kind = pushed.status
        if kind == "nonfinite":
            # θ_prev now holds the non-finite values: take a fresh snapshot before the next update. The
            # updates before it go too: a record mixing them with later ones would span the divergence.
            self.window.reset()
            message = (
                f"update at step {step} holds NaN or Inf (‖δ‖ = {pushed.update_norm}); it was skipped and "
                "the window restarts: the next record holds only updates after the next finite snapshot"
            )
            if self.config.strict:
                raise NonFiniteUpdateError(message + ". Training diverged or a parameter overflowed.")
            event_kind = "nonfinite_update"
        else:
            message = (
                f"no monitored parameter moved at step {step}; the zero update was skipped. "
                "Call step() once per optimizer.step() (with gradient accumulation, only on real steps)."
            )
            event_kind = "zero_update"
        if self._bad_streak == kind:  # one event per run of bad updates, not one per step
            return ()
        self._bad_streak = kind
        self._warn(event_kind, "spectral-edge: " + message)
        return (SpectralEvent(step=step, kind=event_kind, message=message),)

    def _in_order(self, tensors: Tensors) -> list[torch.Tensor]:
        if isinstance(tensors, Mapping):
            return [tensors[name] for name in self.window.layout.names]
        return list(tensors)

    # ------------------------------------------------------------------ reading

    def principal_directions(self, k: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The window's top-k directions v_j = Xᵀu_j/σ_j and σ_j (see :meth:`UpdateWindow.principal_directions`)."""
        return self.window.principal_directions(k)

    def describe(self) -> dict[str, Any]:
        """The settings and the facts of the window, as a run store saves them under ``"monitor"``."""
        return {
            **self.config.to_dict(),
            "n_params": self.n_params,
            "groups": self.layout.group_sizes(),
            "storage_device": str(self.storage_device),
            "window_bytes": self.window.nbytes,
            "kernel": self.window.kernel,
        }

    # ------------------------------------------------------------------ state

    def state_dict(self, *, include_window: bool = True) -> dict[str, Any]:
        """The detector's state and (by default) the window itself; without it a restored tracker
        re-snapshots and refills W updates before its next record."""
        return {
            "needs_snapshot": not self.window.has_snapshot,
            "detector": self.detector.state_dict(),
            "window": self.window.state_dict() if include_window else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Without a saved window the window is empty and has no
        snapshot: the next :meth:`observe` (or :meth:`snapshot`) takes one."""
        self.detector.load_state_dict(state["detector"])
        if state["window"] is not None:
            # A window saved while it waited for a snapshot (after a NaN update) was saved without one.
            self.window.load_state_dict(state["window"], snapshot_device=self._snapshot_device)
        else:
            self.window.reset()


def _pairs(named: Named) -> list[tuple[str, torch.Tensor]]:
    pairs = list(named.items()) if isinstance(named, Mapping) else list(named)
    if not pairs:
        raise ValueError("nothing to track: pass at least one (name, tensor)")
    return pairs


def _flat_offsets(
    pairs: list[tuple[str, torch.Tensor]], layout: ParameterLayout, share: WindowShare | None
) -> list[int]:
    """Each layout tensor's first index in the model's flat parameters, in the order the tensors were given
    (not the layout's group order), so that a sketch hashes the same index on one process or several."""
    if share is not None:
        if share.offsets is None:
            raise ValueError(
                "a sketched window (sketch_dim=) needs each process to know where its shard lies in the "
                "model, which FSDP1 does not tell (nor FSDP2 sharding on a dimension other than the first): "
                "use FSDP2 (fully_shard, sharded on dim 0), DDP, or the exact window"
            )
        return [share.offsets[name] for name in layout.names]
    starts, offset = {}, 0
    for name, t in pairs:
        starts[name] = offset
        offset += t.numel()
    return [starts[name] for name in layout.names]
