"""SpectralMonitor: the online monitor a training loop calls after each optimizer step.

A thin shell over a :class:`~spectral_edge.tracking.tracker.SpectralTracker`. The monitor finds the
trainable parameters and watches them change, applies the interval, resolves η, and hands each update to
the tracker, which returns a :class:`~spectral_edge.tracking.record.SpectralRecord` once W updates are in
(computed from the W × W Gram matrix alone) and the events it completes. Records and events go out through
one fan-out (``tracking/_fanout.py``): the run store as a sink (:class:`~spectral_edge.sinks.store.StoreSink`)
first, then the other sinks, each delivery behind one failure guard (``tracking/_guard.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spectral_edge.errors import (
    DistributedMonitorError,
    NonFiniteUpdateError,
    ParameterLayoutError,
    SpectrumWarning,
)
from spectral_edge.sinks.base import Sink, as_sink
from spectral_edge.sinks.store import StoreSink
from spectral_edge.tracking._fanout import FanOut
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking._lr import resolve_lr
from spectral_edge.tracking._selection import UNREADABLE, ParameterWatch, Selection
from spectral_edge.tracking.config import (
    GroupSpec,
    LearningRate,
    MonitorConfig,
    group_function,
    resolve_config,
)
from spectral_edge.tracking.distributed import Distributed, ProcessGroupReducer, ProcessPart, split_parameters
from spectral_edge.tracking.events import EventDetector
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord
from spectral_edge.tracking.sketch import SketchedWindow
from spectral_edge.tracking.tracker import SpectralTracker
from spectral_edge.tracking.window import UpdateWindow

if TYPE_CHECKING:
    from spectral_edge.store import RunStore, StoreBacklog

__all__ = ["LAYOUT_CHECK_EVERY", "GroupSpec", "LearningRate", "SpectralMonitor", "group_function"]

logger = logging.getLogger(__name__)

#: Pushes between two full re-reads of the parameter set. Every push first runs the cheap check of
#: :class:`~spectral_edge.tracking._selection.ParameterWatch` (``requires_grad`` flags, parameters per
#: module); the full re-read also catches what that cannot see, a ``.data`` swapped for another shape.
LAYOUT_CHECK_EVERY = 50


def _contains_warnings(method: Callable[..., Any]) -> Callable[..., Any]:
    """No warning escapes ``method`` into the training loop that called it, whatever the filters.

    Under ``python -W error`` (or pytest's ``filterwarnings = error``) a warning is an exception: one NaN
    update's SpectrumWarning crashed the training run, and a warning deep in a push (numpy, torch) aborted
    the record half-way. While a filter says "error", the warnings of ``method`` are recorded, so that it
    runs to the end, and re-issued after it under the caller's filters; one that the filters turn into an
    error is logged through the ``spectral_edge`` logger instead. Exceptions (``strict=True``) still raise.

    ``warnings.catch_warnings`` changes process-wide state: while such a call runs, a warning raised by
    another thread (a data-loading thread, say) is caught and re-issued here too rather than raised in
    its own thread. Only under an "error" filter, and only for the duration of one call.
    """

    @functools.wraps(method)
    def contained(self: SpectralMonitor, *args: Any, **kwargs: Any) -> Any:
        if not any(f[0] == "error" for f in warnings.filters):
            return method(self, *args, **kwargs)  # no warning can raise: no global state to touch
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return method(self, *args, **kwargs)
        finally:
            for w in caught:
                _reissue(w, self._warning_registry)

    return contained


def _reissue(w: warnings.WarningMessage, registry: dict[Any, Any]) -> None:
    """Show a recorded warning under the current filters; log it if they make it an exception."""
    try:
        warnings.warn_explicit(
            w.message, w.category, w.filename, w.lineno, registry=registry, source=w.source
        )
    except Exception:
        logger.warning(
            "%s: %s (%s:%s; logged because the warning filters turn it into an error)",
            w.category.__name__,
            w.message,
            w.filename,
            w.lineno,
        )


class _Setting:
    """A read-only attribute of the monitor that reads the field of its :class:`MonitorConfig`."""

    def __init__(self, field: str = "") -> None:
        self.field = field  # "" until __set_name__: the attribute's own name

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = self.field or name

    def __get__(self, monitor: Any, owner: type | None = None) -> Any:
        return self if monitor is None else getattr(monitor.settings, self.field)


class SpectralMonitor:
    """Watches the spectrum of the last W parameter updates while a model trains.

    Call :meth:`step` right after each ``optimizer.step()`` (or :meth:`attach` it to the optimizer). The
    monitor snapshots the trainable parameters when it is constructed; each step takes the update since
    the previous snapshot. Every tensor left out is in :attr:`excluded` (name → reason; a tensor that only
    partly overlaps a monitored one is in :attr:`partially_merged` instead): frozen
    (``requires_grad=False``) and non-floating ones with an info log, complex ones, and ones on the meta
    device or otherwise holding no data with one warning (a model whose trainable parameters all hold no
    data is an error). The set is checked at every step for the cost of a flag check: a parameter
    unfrozen, frozen, added, replaced or removed mid-run restarts the window on the new set at once, with
    one warning and one ``parameters_changed`` event. A tensor reached under several names or through
    views of one memory (a tied embedding, ``[W, W.view(-1)]``) is monitored once: :attr:`merged` maps
    each name left out to the name kept, and the run store's config holds it. A tensor that shares only part of its memory with a
    larger one is left out with a warning, its other elements unmonitored (:attr:`partially_merged`).

    The monitor is a thin shell: it discovers the parameters (and watches them change), applies the
    interval, resolves η, and hands each update to a :class:`~spectral_edge.tracking.tracker.SpectralTracker`
    (the window, the record builder, the event detector); records and events go out through one fan-out,
    the run store first (:class:`~spectral_edge.sinks.store.StoreSink`), then the sinks, each delivery
    behind one failure guard.

    Args:
        model_or_params: an ``nn.Module``, an iterable of tensors, of (name, tensor) pairs, or a mapping.
        config: a :class:`~spectral_edge.tracking.config.MonitorConfig` holding the settings below (keywords
            given as well override its fields), or, as before, a mapping of extra JSON-able settings saved
            in the run store beside the monitor's own (:attr:`MonitorConfig.user`). Every keyword but
            ``config``, ``store``, ``resume``, ``overwrite`` and ``sinks`` is a field of
            :class:`MonitorConfig`, checked at once.
        window: W ≥ 2, updates per window (the paper uses 10).
        interval: take updates between snapshots this many steps apart (the paper's windows over
            checkpoints 200 steps apart use interval=200); records come every ``interval`` steps.
        lr: learning rate η for 𝒜 = ‖ΔC‖_F/(η g²): a float, a zero-argument callable, the optimizer (read at
            each record), or None: then the optimizer given to :meth:`attach`, if any, else 𝒜 and the
            regime are not computed. With several parameter groups η is their rates weighted by each
            group's share of the monitored scalars, η = Σ_g n_g η_g / Σ_g n_g, with one warning naming the
            rates when they differ. ΔC sums over the monitored coordinates, each moved at its group's rate,
            so this is the rate per coordinate averaged over them: the η of a one-rate optimizer taking steps
            of the same mean size (for gradients of comparable size). It equals η for one group and follows
            the groups' sizes continuously, where "the rate of the largest group" jumps as sizes cross, and
            a small group at another rate (biases, norms) moves it little. A group at lr 0 is left out (its
            parameters do not move), with one warning; with every group at 0, 𝒜 is None (one warning).
        groups: how to split the parameters into groups with their own Gram (see :func:`group_function`);
            group Grams come from the same pass and sum to the total.
        store: a run directory (str/Path, created; an error if it already holds records, unless
            ``resume`` or ``overwrite``) or a :class:`~spectral_edge.store.RunStore` (open it with
            ``mode="a"`` to append). :meth:`close` marks the run finished (``meta()["finished_at"]``,
            what ``spectral-edge watch`` shows). A store
            the monitor opens from a path commits on a writer thread (``write_behind``, one record in
            flight at most) unless ``strict``, so that training does not wait for SQLite. A path that
            another writer holds is an error (one writer per store). Writes the disk refuses are held
            and retried by the store; an event and a warning give the counts, and :meth:`close` returns
            what was lost.
        resume: with a ``store`` path, append to the run already there (created if missing), e.g. when
            training resumes from a checkpoint: ``RunStore(path, mode="a")``.
        overwrite: with a ``store`` path, replace the run already there, records and all:
            ``RunStore(path, mode="w", overwrite=True)``. Not with ``resume``.
        storage_dtype: torch.float32 (default), torch.bfloat16 (half the memory) or torch.float64.
        storage_device: where the W × P window lives; default the parameters' device.
        k95_threshold: cumulative-variance threshold of K_95 (Def 7.1).
        alpha_c: the Davis–Kahan constant c of α_j (Def 16.1).
        gap_units: units of g in 𝒜: "sigma" (Def 8.1) or "lambda".
        regimes: cut-offs of the 𝒜 regimes.
        events: thresholds of the event detectors.
        bbp_variant: "PW" or "P(W-1)" in d_crit (Prop 4.1).
        strict: raise on a non-finite update, a changed parameter set or an internal error instead of
            warning and carrying on. Either way no warning escapes :meth:`step`, the :meth:`attach` hook,
            :meth:`log_metrics`, :meth:`log_eval` or :meth:`close`, whatever the warning filters: under
            ``-W error`` the monitor's warnings go to the ``spectral_edge`` logger instead.
        history: records kept in memory (:attr:`records`); the run store keeps all of them.
        chunk_size: elements per chunk of the push loop (see :class:`UpdateWindow`).
        threads: deprecated and ignored (a FutureWarning when given): the threaded push was removed.
        kernel: "auto", "fused" or "torch": how a push runs (see :class:`UpdateWindow`).
        sketch_dim: m, to keep CountSketches of the updates instead of the W × P window: (W + 2)·m float64
            numbers per group whatever P is, every σ_j within a relative error of about √(2/m) (no noise
            floor), and no :meth:`principal_directions` (:class:`~spectral_edge.tracking.sketch.SketchedWindow`).
            None (default): the exact window.
        sketch_seed: the sketch's seed (the same on every process of one model).
        sinks: loggers fed besides the run store (:mod:`spectral_edge.sinks`: TensorBoard, W&B, MLflow,
            JSONL, or any object with ``write_record``, ``write_event``, ``write_eval`` and ``close``).
            Each record goes to every sink after the store has it, each event and :meth:`log_eval` too,
            and :meth:`close` closes them. A sink that raises costs one warning and never stops training
            (``strict=True`` raises instead).
        distributed: ``True`` or a :class:`~spectral_edge.tracking.distributed.Distributed`, on every
            process of a torch.distributed job (DDP, FSDP1, FSDP2): each process pushes only its part of
            the parameters (its shards; an equal run of the replicated ones), one all-reduce per step
            completes the Gram, and every process gets the whole model's records. Only rank 0 writes the
            ``store`` and the ``sinks`` (the others ignore them). Every process must call :meth:`step` at
            the same steps; a process that dies makes the others raise
            :class:`~spectral_edge.errors.DistributedMonitorError` after the timeout. Default ``False``:
            this process's parameters are the whole model.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = SpectralMonitor(model, window=3, lr=opt)
        >>> for _ in range(4):
        ...     opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
        ...     rec = mon.step(loss=1.0)
        >>> rec.window, rec.k_star in (1, 2), len(mon.records)
        (3, True, 2)
        >>> mon.settings.window, mon.config()["window"]
        (3, 3)
    """

    window = _Setting()
    interval = _Setting()
    lr = _Setting()
    groups = _Setting()
    storage_dtype = _Setting()
    k95_threshold = _Setting()
    alpha_c = _Setting()
    gap_units = _Setting()
    regimes = _Setting()
    event_thresholds = _Setting("events")
    bbp_variant = _Setting()
    strict = _Setting()
    chunk_size = _Setting()
    threads = _Setting()
    kernel = _Setting()
    sketch_dim = _Setting()
    sketch_seed = _Setting()

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[Any] | Mapping[str, torch.Tensor],
        *,
        config: MonitorConfig | Mapping[str, Any] | None = None,
        store: str | Path | RunStore | StoreSink | None = None,
        resume: bool = False,
        overwrite: bool = False,
        sinks: Sequence[Sink] = (),
        distributed: bool | Distributed = False,
        **settings: Any,
    ) -> None:
        # The settings are MonitorConfig's fields, passed through so that one class checks them all.
        self.settings: MonitorConfig = resolve_config(config, settings, caller=type(self).__name__)
        self.sinks = tuple(sinks)
        delivered = [as_sink(sink) for sink in self.sinks]  # a TypeError names what a sink lacks

        self._module = model_or_params if isinstance(model_or_params, torch.nn.Module) else None
        self._watch = ParameterWatch(model_or_params)
        selection = self._watch.selection
        sharing = selection.sharing
        self.excluded: dict[str, str] = dict(selection.excluded)  # name -> why it is not monitored
        self.merged, self.partially_merged = sharing.merged, sharing.partial
        named = sharing.named
        if not named:
            raise ValueError(_nothing_to_monitor(selection))
        if sharing.partial:
            warnings.warn(sharing.partial_warning(), SpectrumWarning, stacklevel=2)
        notice = _exclusion_notice(selection, {})
        if notice:
            warnings.warn("spectral-edge: " + notice, SpectrumWarning, stacklevel=2)
        self._reducer = _reducer(distributed)
        self._part: ProcessPart | None = self._split(named)
        if self._reducer is not None and self._reducer.rank != 0:  # one writer: rank 0
            store, self.sinks, delivered = None, (), []
        part = self._part
        if part is None:
            self.tracker = SpectralTracker(named, config=self.settings)
        else:
            self.tracker = SpectralTracker(part.named, config=self.settings, share=part.share)
        self._adopt(named)

        self.step_count = 0  # the step number of the latest call (the caller's, or a count of calls)
        self._calls_since_push = 0  # interval counts calls, so that any step numbering works
        self._pushes_since_check = 0
        self._registry_changed = False
        self._recheck_wanted = False  # distributed: this process asks every process to re-read the parameters
        self._recheck_agreed = False  # distributed: some process asked, with the last push
        self._pending_metrics: dict[str, float] = {}
        self.records: deque[SpectralRecord] = deque(maxlen=self.settings.history)
        self._hook_handle: Any = None
        self._hook_optimizer: torch.optim.Optimizer | None = None  # attach()'s: the rate when lr is None
        self._in_hook = False
        self._hook_ran = False  # the hook took an update that no call of the user's has followed yet
        self._hook_record: SpectralRecord | None = None
        self._paused = False  # no parameter left to monitor: wait until one is trainable again
        self._warning_registry: dict[Any, Any] = {}  # "default"-action bookkeeping of re-issued warnings

        history = self.settings.history
        self._guard = Guard(
            strict=self.settings.strict,
            note=f"In memory, mon.records keeps the latest {history} records and mon.events every event.",
        )
        self.unwritten: StoreBacklog | None = None  # set by close(): what the run store could not write
        # A store given as a path is opened here, and owned: close() closes it.
        for name, flag in (("resume", resume), ("overwrite", overwrite)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self._store_sink = StoreSink.open(
            store, resume=resume, overwrite=overwrite, write_behind=not self.settings.strict
        )
        self._out = FanOut(
            ([self._store_sink] if self._store_sink is not None else []) + delivered,
            guard=self._guard,
            kept=f"mon.records keeps the latest {history} records in memory whatever happens",
            counts="SpectralMonitor.unwritten",
        )
        try:
            self._out.config(self._config_document(), check=True)
        except BaseException:  # a config that cannot be stored: leave no store open (and locked) behind
            if self._store_sink is not None and self._store_sink.owned:
                with contextlib.suppress(Exception):
                    self._store_sink.close()
            raise
        # Registered last, once nothing above can fail; removed by close() or when the monitor is freed.
        self._registry_hooks = self._watch_registrations() if self._module is not None else []
        weakref.finalize(self, _remove_handles, self._registry_hooks)

    # ------------------------------------------------------------------ public API

    @property
    def n_params(self) -> int:
        """P, the number of monitored scalars."""
        return self.tracker.n_params

    @property
    def storage_device(self) -> torch.device:
        """Where the W × P window lives (``storage_device=``, else the parameters' device)."""
        return self.tracker.storage_device

    @property
    def detector(self) -> EventDetector:
        """The tracker's :class:`~spectral_edge.tracking.events.EventDetector`."""
        return self.tracker.detector

    @property
    def events(self) -> list[SpectralEvent]:
        """Every event of the run, in order (kept in memory before any sink or the store sees it)."""
        return self._out.events

    @property
    def store(self) -> RunStore | None:
        """The run store records go to, or None."""
        return self._store_sink.store if self._store_sink is not None else None

    @store.setter
    def store(self, value: None) -> None:
        if value is not None:
            raise ValueError("a monitor's store can only be set to None (see detach_store()), not replaced")
        self.detach_store()

    @property
    def _win(self) -> UpdateWindow | SketchedWindow:
        # Kept for the window's own tests and benchmarks/, which read the window through it; use
        # mon.tracker.window.
        return self.tracker.window

    @property
    def process_group(self) -> Any:
        """The monitor's own gloo process group with ``distributed``, where its collectives run (None
        without); closed by :meth:`close`."""
        return self._reducer.group if self._reducer is not None else None

    @property
    def last_record(self) -> SpectralRecord | None:
        """The newest record kept in memory, or None before the window first fills."""
        return self.records[-1] if self.records else None

    def monitored_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every monitored parameter, in the order of the window's flat coordinates.

        Pass it to :class:`~spectral_edge.curvature.HessianOperator` so that H's coordinates line up with
        :meth:`principal_directions`. With ``distributed``, this process's part: its shards and its run of
        the replicated parameters, as views.
        """
        if self._paused:
            return []
        return list(zip(self.tracker.layout.names, self._observed(), strict=True))

    def principal_directions(self, k: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The window's top-k directions v_j = Xᵀu_j/σ_j in parameter space, and σ_j (see
        :meth:`UpdateWindow.principal_directions`); flat in :meth:`monitored_parameters` order."""
        return self.tracker.principal_directions(k)

    def config(self) -> dict[str, Any]:
        """The monitor's settings and what it watches, as saved in the run store under ``"monitor"``."""
        described = self.tracker.describe()
        if self.settings.lr is None and self._hook_optimizer is not None:
            described["lr"] = f"{type(self._hook_optimizer).__name__} (attach)"
        if self._part is not None:  # the whole model's group sizes, not this process's
            described["distributed"] = self._part.describe()
            described["groups"] = dict(self._part.group_sizes)
        return {
            **described,
            "excluded": dict(self.excluded),  # name -> why it is not monitored
            "merged": dict(self.merged),
            "partially_merged": dict(self.partially_merged),
        }

    @_contains_warnings
    def resolve_lr(self, source: LearningRate) -> float | None:
        """η for 𝒜 from ``source`` as the monitor reads it: a float, a zero-argument callable, or an
        optimizer whose groups' rates are weighted by their monitored scalars (see ``lr``); None for None.

        The framework callbacks read each step's rate through it before a scheduler moves it.
        """
        return resolve_lr(source, numel_of=self._numel_of, warn=self._guard.warn_once, step=self.step_count)

    def recheck_parameters(self) -> None:
        """Re-read the parameter set at the next step: call it after swapping a parameter's ``.data``
        for one of another shape, which no torch hook reports (the periodic re-read would find it later)."""
        self._registry_changed = True

    @_contains_warnings
    def step(self, *, step: int | None = None, **metrics: float) -> SpectralRecord | None:
        """Take the update since the last snapshot; return a record once the window is full.

        Call right after ``optimizer.step()``. With ``interval=n`` only every n-th call takes an update
        (the others return None and their metrics are dropped). After :meth:`attach` the hook calls it:
        a call of yours after the hook's takes no update, warns once, and returns the hook's record.

        Args:
            step: the global step to file the record under; default the monitor's own count of calls.
            **metrics: scalars to keep with the record (loss, accuracy, ...).

        Returns:
            The :class:`SpectralRecord`, or None (window not full yet, between intervals, or a skipped update).
        """
        if self._hook_ran and not self._in_hook:
            return self._second_call(metrics)
        self.step_count = int(step) if step is not None else self.step_count + 1
        self._calls_since_push += 1
        if self._calls_since_push < self.settings.interval:
            return None
        self._calls_since_push = 0
        merged = {**self._pending_metrics, **metrics}
        self._pending_metrics = {}
        try:
            return self._step(merged)
        except (NonFiniteUpdateError, ParameterLayoutError, DistributedMonitorError):
            raise
        except Exception as exc:
            if self.settings.strict:
                raise
            self._guard.warn_once(
                f"internal:{type(exc).__name__}",
                f"spectral-edge skipped step {self.step_count} after an internal error ({exc!r}); "
                "training is unaffected. Pass strict=True to raise instead.",
            )
            return None

    @_contains_warnings
    def log_metrics(self, **metrics: float) -> None:
        """Metrics to attach to the next record (for use with :meth:`attach`, where step() takes none).

        With :meth:`attach` the record is made inside ``optimizer.step()``: log before calling it.
        """
        self._guard(
            "log_metrics", lambda: self._pending_metrics.update({k: float(v) for k, v in metrics.items()})
        )

    @_contains_warnings
    def log_eval(self, step: int | None = None, **metrics: float) -> None:
        """Record evaluation metrics (test loss, accuracy, ...) at ``step`` in the run store and the sinks."""
        self._guard(
            "log_eval",
            lambda: self._out.eval(
                self.step_count if step is None else int(step), {k: float(v) for k, v in metrics.items()}
            ),
        )

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Call :meth:`step` automatically after every ``optimizer.step()`` (a step post-hook).

        Do not call :meth:`step` yourself as well: pass metrics with :meth:`log_metrics` before
        ``optimizer.step()``. With ``lr=None`` the monitor reads η for 𝒜 from ``optimizer``.

        Returns:
            The hook handle; ``handle.remove()`` (or :meth:`detach`) stops monitoring.
        """
        self.detach()
        self._hook_optimizer = optimizer
        self._hook_handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._hook_step())
        if self.settings.lr is None:  # the config now names the rate's source
            self._save_config()
        return self._hook_handle

    def detach(self) -> None:
        """Undo :meth:`attach`: the optimizer's step no longer calls :meth:`step`."""
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        self._hook_optimizer = None
        self._hook_ran = False

    def detach_store(self) -> StoreSink | None:
        """Stop writing to the run store, without closing it (its owner closed it, or will); returns its sink.

        Later records and events still reach :attr:`records`, :attr:`events` and the other sinks.
        """
        sink, self._store_sink = self._store_sink, None
        if sink is not None:
            self._out.remove(sink)
        return sink

    def _hook_step(self) -> None:
        self._in_hook = True
        try:
            self._hook_record = self.step()
        finally:
            self._in_hook = False
        self._hook_ran = True

    def _second_call(self, metrics: dict[str, float]) -> SpectralRecord | None:
        """A call of the user's after the hook already took this step's update: name it, take nothing.

        Taken as a step it would push a zero update (nothing moved since the hook's snapshot), return None
        every time and warn about gradient accumulation.
        """
        self._hook_ran = False
        lost = (
            f" Its metrics ({', '.join(sorted(metrics))}) were not recorded: pass them with log_metrics() "
            "before optimizer.step()."
            if metrics
            else ""
        )
        self._guard.warn_once(
            "second_call",
            f"spectral-edge: step() was called by the optimizer hook and again by you at step "
            f"{self.step_count}; with attach() do not call step() yourself. Your call took no update and "
            f"returned the hook's record.{lost}",
        )
        return self._hook_record

    @_contains_warnings
    def close(self) -> StoreBacklog | None:
        """Detach, close the sinks, mark the run finished in its store (``meta()["finished_at"]``, what
        ``spectral-edge watch`` shows), and close the run store if the monitor opened it from a path.

        Returns:
            What the run store could not write, also kept as :attr:`unwritten`: a
            :class:`~spectral_edge.store.StoreBacklog` whose ``lost`` counts the records, events and
            evaluations that never reached the file (a warning says so too; ``held`` counts those a store
            the monitor did not open still holds for retry), or None without a run store.
        """
        self.detach()
        _remove_handles(self._registry_hooks)
        try:
            # The sinks, then the run store: closing commits the last record and retries the held ones;
            # what it could not write is a warning outside strict mode (raised in strict mode, after this).
            self._out.close()
        finally:
            self.unwritten = self._store_sink.backlog() if self._store_sink is not None else None
            if self._reducer is not None:
                self._reducer.close()
        return self.unwritten

    def __enter__(self) -> SpectralMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_dict(self, *, include_window: bool = True) -> dict[str, Any]:
        """State to resume from: counters, event-detector state and (by default) the window itself.

        Without the window a resumed monitor re-snapshots and refills W updates before its next record.
        """
        return {
            "version": 1,
            "step_count": self.step_count,
            "calls_since_push": self._calls_since_push,
            **self.tracker.state_dict(include_window=include_window),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (call after loading the model's own state)."""
        if state.get("version") != 1:
            raise ValueError(
                f"unknown monitor state version {state.get('version')!r}: expected 1, saved by "
                "SpectralMonitor.state_dict(); pass the 'monitor' entry of a checkpoint this library saved"
            )
        self.step_count = int(state["step_count"])
        self._calls_since_push = int(state["calls_since_push"])
        self.tracker.load_state_dict(state)
        if state["window"] is None:
            self.tracker.snapshot(self._observed())
            self._calls_since_push = 0  # the new snapshot starts a full interval

    # ------------------------------------------------------------------ internals

    def _adopt(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Hold the monitored ``named`` parameters, and (in the tracker's layout order) what each step
        hands to the tracker."""
        self._watched = dict(named)  # name -> parameter, what the parameter-set checks compare against
        self._shapes = {name: tuple(t.shape) for name, t in named}
        self._ids = [id(t) for _, t in named]
        # The weights of the optimizer groups' rates: the whole model's sizes, the same on every process.
        sizes = self._part.sizes if self._part is not None else {name: t.numel() for name, t in named}
        self._numel_of = {id(t): sizes[name] for name, t in named}
        if self._part is None:
            self._tensors = [self._watched[name] for name in self.tracker.layout.names]

    def _observed(self) -> list[torch.Tensor]:
        """The tensors the tracker takes at a step: the parameters, or this process's part of them."""
        return self._tensors if self._part is None else self._part.tensors()

    def _split(self, named: list[tuple[str, torch.Tensor]]) -> ProcessPart | None:
        """This process's part of ``named`` (None without ``distributed``); collective."""
        if self._reducer is None or not named:
            return None
        group_of = group_function(self.settings.groups)
        return split_parameters(named, self._reducer, group_of=group_of, module=self._module)

    def _current_lr(self) -> float | None:
        lr = self.settings.lr
        return self.resolve_lr(lr if lr is not None else self._hook_optimizer)

    def _step(self, metrics: dict[str, float]) -> SpectralRecord | None:
        # A full re-read of the parameter set costs ~1 ms, too much for every step. ParameterWatch's check
        # (requires_grad flags and how many parameters each module holds, ~23 µs for 200 tensors) runs at
        # every push, since requires_grad_() and deletions fire no hook: a layer unfrozen mid-run was left
        # out of up to 49 records. It, torch's registration hooks (additions, replacements:
        # _registry_changed) and every LAYOUT_CHECK_EVERY-th push (a .data of another shape) trigger it.
        self._pushes_since_check += 1
        if self._part is None:
            due = (
                self._registry_changed
                or self._pushes_since_check >= LAYOUT_CHECK_EVERY
                or self._watch.stale()
            )
        else:
            due = self._due_across_processes()
        try:
            if due:
                self._registry_changed = self._recheck_agreed = False
                self._pushes_since_check = 0
                if self._layout_changed():
                    return None
            if self._paused:
                return None
            observed = self._observed()
        except (NonFiniteUpdateError, ParameterLayoutError, DistributedMonitorError):
            raise
        except Exception as exc:
            if self._part is None:
                raise
            # The other processes are on their way to this step's all-reduce: carrying on without it would
            # pair their rows with another step's. Stop, with what happened.
            raise DistributedMonitorError(
                f"spectral-edge failed on this process before its all-reduce at step {self.step_count} "
                f"({exc!r}); the other processes would wait for it, so the monitor stops here"
            ) from exc
        result = self.tracker.observe(
            observed, step=self.step_count, lr=self._current_lr, metrics=metrics, flag=self._recheck_wanted
        )
        if result.status != "snapshot":  # the flag went out with the push
            self._recheck_wanted, self._recheck_agreed = False, result.flagged
        if result.record is not None:
            self.records.append(result.record)
            self._out.record(result.record)
        self._out.emit(result.events)
        return result.record

    def _due_across_processes(self) -> bool:
        """Whether every process re-reads its parameter set now (distributed): a re-read that finds a
        change calls a collective, so the processes must decide together. What one process notices
        (a hook, a changed flag) goes out with its next push; all re-read at the step after it, and all at
        every LAYOUT_CHECK_EVERY-th step, which they count alike."""
        self._recheck_wanted = self._recheck_wanted or self._registry_changed or self._watch.stale()
        self._registry_changed = False
        return self._recheck_agreed or self._pushes_since_check >= LAYOUT_CHECK_EVERY

    def _layout_changed(self) -> bool:
        """Re-read the parameter set; if it changed, restart the window on the new set (one warning, one
        event per change). Also refreshes :attr:`excluded` when only the tensors left out changed."""
        before = self.excluded
        selection = self._watch.read()
        sharing = selection.sharing
        named = sharing.named
        old = {} if self._paused else self._watched
        shapes = {} if self._paused else self._shapes
        changed = sorted(id(t) for _, t in named) != sorted(self._ids) or any(
            tuple(t.shape) != shapes[n] for n, t in old.items()
        )
        notice = _exclusion_notice(selection, before)
        if not changed:
            if selection.excluded != before:  # only tensors left out came or went
                self.excluded = dict(selection.excluded)
                if notice:
                    self._guard.warn_once("excluded:" + notice, "spectral-edge: " + notice)
                self._save_config()
            return False
        what = _describe_change(old, shapes, named, selection, before, sharing.merged)
        if named:
            size = sum(t.numel() for _, t in named)
            outcome = (
                f"The window restarts on the new set ({size:,} scalars in {len(named)} tensors): the next "
                "record holds only updates from here on."
            )
        else:
            outcome = "No parameter is left to monitor: monitoring pauses until one is trainable again."
        message = f"the monitored parameters changed at step {self.step_count}: {what}. {outcome}"
        if self.settings.strict:
            raise ParameterLayoutError(message)
        self.excluded = dict(selection.excluded)
        self.merged, self.partially_merged = sharing.merged, sharing.partial
        if sharing.partial:
            self._guard.warn_once("partially_merged", sharing.partial_warning())
        if named:
            self._part = self._split(named)
            if self._part is None:
                self.tracker.relayout(named)
            else:
                self.tracker.relayout(self._part.named, share=self._part.share)
            self._adopt(named)
            self._paused = False
        else:
            self.tracker.reset()
            self._ids, self._paused = [], True
        self._out.emit([SpectralEvent(step=self.step_count, kind="parameters_changed", message=message)])
        # One warning per distinct change: freezing and unfreezing a layer each warn once, not every time.
        self._guard.warn_once(
            f"parameters_changed:{what}", "spectral-edge: " + message + (" " + notice if notice else "")
        )
        self._save_config()
        return True

    def _config_document(self) -> dict[str, Any]:
        return {"monitor": self.config(), "user": dict(self.settings.user)}

    def _save_config(self) -> None:
        """Hand the changed config to the sinks (the run store keeps the latest)."""
        self._guard("the monitor's config", lambda: self._out.config(self._config_document()))

    def _watch_registrations(self) -> list[Any]:
        """Global torch hooks that flag the monitor when any module registers a parameter or a submodule.

        The hooks hold only a weak reference, so a monitor that is dropped without close() is still freed.
        """
        ref = weakref.ref(self)

        def flag(*args: Any) -> None:
            target = ref()
            if target is not None:
                target.recheck_parameters()

        module_mod = torch.nn.modules.module
        return [
            module_mod.register_module_parameter_registration_hook(flag),
            module_mod.register_module_module_registration_hook(flag),
        ]


def _reducer(distributed: bool | Distributed) -> ProcessGroupReducer | None:
    if distributed is False:
        return None
    if distributed is True:
        distributed = Distributed()
    if not isinstance(distributed, Distributed):
        raise TypeError(f"distributed must be True, False or a Distributed(...), got {distributed!r}")
    return ProcessGroupReducer(distributed)


def _remove_handles(handles: list[Any]) -> None:
    while handles:
        handles.pop().remove()


def _names_text(items: list[str], limit: int = 8) -> str:
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _nothing_to_monitor(selection: Selection) -> str:
    """The construction error when no tensor can be monitored: what was found, why each is out, the fix."""
    excluded = list(selection.excluded)
    unreadable = [n for n in excluded if selection.kinds[n] in UNREADABLE]
    if unreadable:
        listed = selection.describe(unreadable)
        return f"cannot monitor this model: its parameters hold no data to read: {listed}"
    if not excluded:
        return "nothing to monitor: no parameters were passed"
    listed = selection.describe(excluded)
    return f"nothing to monitor: no trainable floating-point parameters; left out: {listed}"


def _exclusion_notice(selection: Selection, before: Mapping[str, str]) -> str | None:
    """Log the tensors newly left out for an expected reason (frozen, non-floating) at info level; return
    the warning for the others (complex, meta, no data), or None."""
    new = [n for n, reason in selection.excluded.items() if before.get(n) != reason]
    if not new:
        return None
    unexpected = selection.unexpected()
    expected = [n for n in new if n not in unexpected]
    if expected:
        logger.info(
            "spectral-edge: %d parameter tensors are not monitored: %s",
            len(expected),
            _names_text([f"{n} ({selection.excluded[n]})" for n in expected], limit=10),
        )
    odd = [n for n in new if n in unexpected]
    if not odd:
        return None
    return (
        f"{len(odd)} parameter tensor{'s are' if len(odd) > 1 else ' is'} not monitored: "
        f"{selection.describe(odd)}. mon.excluded lists every tensor left out and why."
    )


def _describe_change(
    old: Mapping[str, torch.Tensor],
    old_shapes: Mapping[str, tuple[int, ...]],
    named: list[tuple[str, torch.Tensor]],
    selection: Selection,
    before: Mapping[str, str],
    merged: Mapping[str, str],
) -> str:
    """What changed in the monitored set, by name: ``a now monitored (was frozen ...); b left out (...)``."""
    new = dict(named)
    parts = []
    for name, t in named:
        if name not in old:
            was = before.get(name)
            parts.append(f"{name} now monitored" + (f" (was {was})" if was else " (new)"))
        elif t is not old[name]:
            parts.append(f"{name} replaced by another tensor")
        elif tuple(t.shape) != old_shapes[name]:
            parts.append(f"{name} reshaped from {old_shapes[name]} to {tuple(t.shape)}")
    for name in old:
        if name not in new:
            if name in selection.excluded:
                why = selection.excluded[name]
            elif name in merged:
                why = f"shares its memory with {merged[name]}"
            else:
                why = "no longer in the model"
            parts.append(f"{name} left out ({why})")
    return "; ".join(parts[:8]) + (f"; and {len(parts) - 8} more" if len(parts) > 8 else "") or "reordered"
