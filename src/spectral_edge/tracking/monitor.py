"""SpectralMonitor: the online monitor a training loop calls after each optimizer step.

It snapshots the parameters when constructed; each :meth:`SpectralMonitor.step` pushes the update since the
previous snapshot into an :class:`~spectral_edge.tracking.window.UpdateWindow` and, once W updates are in,
returns a :class:`~spectral_edge.tracking.record.SpectralRecord` computed from the W × W Gram matrix alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spectral_edge.errors import (
    NonFiniteUpdateError,
    ParameterLayoutError,
    SpectrumWarning,
    StoreWriteError,
)
from spectral_edge.spectrum.null import BBPVariant, bbp_ratio, noise_level_from_spectrum
from spectral_edge.spectrum.stability import (
    AdiabaticRegimes,
    GapUnits,
    adiabatic_parameter,
    alignment_from_half_eigen,
    davis_kahan_bound,
    stability_coefficients,
)
from spectral_edge.spectrum.window import gap_positions, spectrum_from_eigen
from spectral_edge.tracking._selection import UNREADABLE, ParameterWatch, Selection
from spectral_edge.tracking._sharing import CountedOnce
from spectral_edge.tracking.events import EventDetector, EventThresholds
from spectral_edge.tracking.record import GroupSpectrum, SpectralEvent, SpectralRecord
from spectral_edge.tracking.window import ParameterLayout, PushResult, UpdateWindow, check_window

if TYPE_CHECKING:  # sinks are adapters above tracking/: the monitor only calls their methods
    from spectral_edge.sinks.base import Sink
    from spectral_edge.store import StoreBacklog

logger = logging.getLogger(__name__)

#: Pushes between two full re-reads of the parameter set. Every push first runs the cheap check of
#: :class:`~spectral_edge.tracking._selection.ParameterWatch` (``requires_grad`` flags, parameters per
#: module); the full re-read also catches what that cannot see, a ``.data`` swapped for another shape.
LAYOUT_CHECK_EVERY = 50

GroupSpec = str | int | Callable[[str], str] | Mapping[str, Sequence[str]] | None
LearningRate = float | torch.optim.Optimizer | Callable[[], float] | None


def group_function(groups: GroupSpec) -> Callable[[str], str]:
    """The function name → group for a ``groups=`` argument.

    * ``"top"`` (default): the first component of the parameter name (one group per top-level module);
    * an int d: the first d components (``2`` puts ``blocks.0.*`` and ``blocks.1.*`` apart);
    * ``None`` or ``"all"``: one group;
    * a mapping ``{group: [name prefixes]}``: first matching prefix wins, unmatched names go to "other";
    * a callable: used as it is.

    Example:
        >>> group_function(2)("blocks.0.attn.q_proj.weight")
        'blocks.0'
    """
    if groups is None or groups == "all":
        return lambda name: "all"
    if groups == "top":
        return lambda name: name.split(".")[0]
    if isinstance(groups, int) and not isinstance(groups, bool):
        if groups < 1:
            raise ValueError(f"a group depth must be >= 1, got {groups}")
        return lambda name: ".".join(name.split(".")[:groups])
    if isinstance(groups, Mapping):
        table = [(prefix, group) for group, prefixes in groups.items() for prefix in prefixes]

        def by_prefix(name: str) -> str:
            # A prefix matches whole name components: "layer1" takes "layer1.weight", not "layer10.weight".
            return next(
                (g for prefix, g in table if name == prefix or name.startswith(prefix.rstrip(".") + ".")),
                "other",
            )

        return by_prefix
    if callable(groups):
        return groups
    raise ValueError(
        f"groups must be 'top', 'all', None, an int depth, a mapping of prefixes or a callable, got {groups!r}"
    )


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

    Args:
        model_or_params: an ``nn.Module``, an iterable of tensors, of (name, tensor) pairs, or a mapping.
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
        store: a run directory (str/Path, created; an error if it already holds records) or a
            :class:`~spectral_edge.store.RunStore` (open it with ``mode="a"`` to resume a run). A store
            the monitor opens from a path commits on a writer thread (``write_behind``, one record in
            flight at most) unless ``strict``, so that training does not wait for SQLite. A path that
            another writer holds is an error (one writer per store). Writes the disk refuses are held
            and retried by the store; an event and a warning give the counts, and :meth:`close` returns
            what was lost.
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
        threads: host threads sharing a torch-path push when the window is on the CPU (see
            :class:`UpdateWindow`); default 1.
        kernel: "auto", "fused" or "torch": how a push runs (see :class:`UpdateWindow`).
        config: extra JSON-able settings saved in the run store beside the monitor's own.
        sinks: loggers fed besides the run store (:mod:`spectral_edge.sinks`: TensorBoard, W&B, MLflow,
            JSONL, or any object with ``write_record``, ``write_event``, ``write_eval`` and ``close``).
            Each record goes to every sink after the store has it, each event and :meth:`log_eval` too,
            and :meth:`close` closes them. A sink that raises costs one warning and never stops training
            (``strict=True`` raises instead).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = SpectralMonitor(model, window=3, lr=opt)
        >>> for _ in range(4):
        ...     opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
        ...     rec = mon.step(loss=1.0)
        >>> rec.window, rec.k_star in (1, 2), len(mon.records)
        (3, True, 2)
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[Any] | Mapping[str, torch.Tensor],
        *,
        window: int = 10,
        interval: int = 1,
        lr: LearningRate = None,
        groups: GroupSpec = "top",
        store: Any = None,
        storage_dtype: torch.dtype = torch.float32,
        storage_device: torch.device | str | None = None,
        k95_threshold: float = 0.95,
        alpha_c: float = 1.0,
        gap_units: GapUnits = "sigma",
        regimes: AdiabaticRegimes | None = None,
        events: EventThresholds | None = None,
        bbp_variant: BBPVariant = "PW",
        strict: bool = False,
        history: int = 1000,
        chunk_size: int | None = None,
        threads: int | None = None,
        kernel: str = "auto",
        config: Mapping[str, Any] | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        check_window(window)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if gap_units not in ("sigma", "lambda"):
            raise ValueError(f"gap_units must be 'sigma' or 'lambda', got {gap_units!r}")
        if gap_units == "lambda" and regimes is None:
            raise ValueError(
                "gap_units='lambda' makes 𝒜 scale with 1/σ², so the default regime cut-offs (made for η𝒜 with g "
                "in σ units) mean nothing: pass regimes=AdiabaticRegimes(low=..., high=..., scale=...) as well"
            )
        if lr is not None and not isinstance(lr, (int, float, torch.optim.Optimizer)) and not callable(lr):
            raise ValueError(f"lr must be a float, an optimizer, a callable or None, got {type(lr).__name__}")
        if not 0.0 < k95_threshold <= 1.0:
            raise ValueError(f"k95_threshold must be in (0, 1], got {k95_threshold!r}")
        if alpha_c <= 0:
            raise ValueError(f"alpha_c must be > 0, got {alpha_c!r}")
        if bbp_variant not in ("PW", "P(W-1)"):
            raise ValueError(f"bbp_variant must be 'PW' or 'P(W-1)', got {bbp_variant!r}")
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history!r}")
        sinks = tuple(sinks)
        for sink in sinks:
            missing = [
                m for m in ("write_record", "write_event", "write_eval", "close") if not hasattr(sink, m)
            ]
            if missing:
                raise TypeError(
                    f"sinks must be spectral_edge.sinks.Sink objects (write_record, write_event, write_eval, "
                    f"close), got {type(sink).__name__} without {', '.join(missing)}"
                )

        self.window = window
        self.interval = interval
        self.lr = lr
        self.groups = groups
        self.storage_dtype = storage_dtype
        self.k95_threshold = k95_threshold
        self.alpha_c = alpha_c
        self.gap_units = gap_units
        self.regimes = regimes or AdiabaticRegimes()
        self.event_thresholds = events or EventThresholds()
        self.bbp_variant = bbp_variant
        self.strict = strict
        self.chunk_size = chunk_size
        self.threads = threads
        self.kernel = kernel
        self.sinks = sinks

        self._module = model_or_params if isinstance(model_or_params, torch.nn.Module) else None
        self._group_of = group_function(groups)
        self._watch = ParameterWatch(model_or_params)
        selection = self._watch.selection
        sharing = selection.sharing
        self.excluded: dict[str, str] = dict(selection.excluded)  # name -> why it is not monitored
        self.merged, self.partially_merged = sharing.merged, sharing.partial
        named = sharing.named
        if not named:
            raise ValueError(_nothing_to_monitor(selection))
        if sharing.partial:
            warnings.warn(_partial_message(sharing), SpectrumWarning, stacklevel=2)
        notice = _exclusion_notice(selection, {})
        if notice:
            warnings.warn("spectral-edge: " + notice, SpectrumWarning, stacklevel=2)
        devices = {t.device for _, t in named}
        if len(devices) > 1 and storage_device is None:
            raise ValueError(
                f"parameters live on several devices {sorted(map(str, devices))}; pass storage_device= "
                "to say where the window should be kept"
            )
        self.storage_device = (
            torch.device(storage_device) if storage_device is not None else next(iter(devices))
        )
        self._build_window(named)

        self.step_count = 0  # the step number of the latest call (the caller's, or a count of calls)
        self._calls_since_push = 0  # interval counts calls, so that any step numbering works
        self._needs_snapshot = False
        self._pushes_since_check = 0
        self._registry_changed = False
        self._bad_streak: str | None = None  # "nonfinite" / "zero" while such updates keep coming
        self._warned: set[str] = set()
        self._pending_metrics: dict[str, float] = {}
        self.records: deque[SpectralRecord] = deque(maxlen=history)
        self.events: list[SpectralEvent] = []
        self.detector = EventDetector(self.event_thresholds, self.regimes)
        self._hook_handle: Any = None
        self._hook_optimizer: torch.optim.Optimizer | None = None  # attach()'s: the rate when lr is None
        self._in_hook = False
        self._hook_ran = False  # the hook took an update that no call of the user's has followed yet
        self._hook_record: SpectralRecord | None = None
        self._paused = False  # no parameter left to monitor: wait until one is trainable again
        self._warning_registry: dict[Any, Any] = {}  # "default"-action bookkeeping of re-issued warnings

        self._user_config = dict(config or {})
        self._owns_store = isinstance(store, (str, Path))  # close() closes only a store it opened
        self.unwritten: StoreBacklog | None = None  # set by close(): what the run store could not write
        self.store = _open_store(store, write_behind=not strict)
        try:
            self._save_config()
        except BaseException:  # a config that cannot be stored: leave no store open (and locked) behind
            if self._owns_store and self.store is not None:
                with contextlib.suppress(Exception):
                    self.store.close()
            raise
        # Registered last, once nothing above can fail; removed by close() or when the monitor is freed.
        self._registry_hooks = _watch_registrations(self) if self._module is not None else []
        weakref.finalize(self, _remove_handles, self._registry_hooks)

    # ------------------------------------------------------------------ public API

    @property
    def n_params(self) -> int:
        """P, the number of monitored scalars."""
        return self._win.layout.n_params

    @property
    def last_record(self) -> SpectralRecord | None:
        return self.records[-1] if self.records else None

    def monitored_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every monitored parameter, in the order of the window's flat coordinates.

        Pass it to :class:`~spectral_edge.curvature.HessianOperator` so that H's coordinates line up with
        :meth:`principal_directions`.
        """
        if self._paused:
            return []
        return list(zip(self._win.layout.names, self._tensors, strict=True))

    def principal_directions(self, k: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The window's top-k directions v_j = Xᵀu_j/σ_j in parameter space, and σ_j (see
        :meth:`UpdateWindow.principal_directions`); flat in :meth:`monitored_parameters` order."""
        return self._win.principal_directions(k)

    def config(self) -> dict[str, Any]:
        """The monitor's settings as saved in the run store."""
        layout = self._win.layout
        return {
            "window": self.window,
            "interval": self.interval,
            "lr": self.lr
            if isinstance(self.lr, (int, float))
            else type(self.lr).__name__
            if self.lr
            else f"{type(self._hook_optimizer).__name__} (attach)"
            if self._hook_optimizer is not None
            else None,
            "n_params": layout.n_params,
            "groups": layout.group_sizes(),
            "excluded": dict(self.excluded),  # name -> why it is not monitored
            "merged": dict(self.merged),
            "partially_merged": dict(self.partially_merged),
            "storage_dtype": str(self.storage_dtype),
            "storage_device": str(self.storage_device),
            "window_bytes": self._win.nbytes,
            "kernel": self._win.kernel,
            "k95_threshold": self.k95_threshold,
            "alpha_c": self.alpha_c,
            "gap_units": self.gap_units,
            "regimes": asdict(self.regimes),
            "events": asdict(self.event_thresholds),
            "bbp_variant": self.bbp_variant,
            "strict": self.strict,
        }

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
        if self._calls_since_push < self.interval:
            return None
        self._calls_since_push = 0
        merged = {**self._pending_metrics, **metrics}
        self._pending_metrics = {}
        try:
            return self._step(merged)
        except (NonFiniteUpdateError, ParameterLayoutError):
            raise
        except Exception as exc:
            if self.strict:
                raise
            self._warn_once(
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
        self._guarded(
            "log_metrics", lambda: self._pending_metrics.update({k: float(v) for k, v in metrics.items()})
        )

    @_contains_warnings
    def log_eval(self, step: int | None = None, **metrics: float) -> None:
        """Record evaluation metrics (test loss, accuracy, ...) at ``step`` in the run store and the sinks."""
        self._guarded(
            "log_eval",
            lambda: self._write_eval(
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
        if self.lr is None:  # the config now names the rate's source
            self._guarded("the run store", self._save_config)
        return self._hook_handle

    def detach(self) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        self._hook_optimizer = None
        self._hook_ran = False

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
        self._warn_once(
            "second_call",
            f"spectral-edge: step() was called by the optimizer hook and again by you at step "
            f"{self.step_count}; with attach() do not call step() yourself. Your call took no update and "
            f"returned the hook's record.{lost}",
        )
        return self._hook_record

    @_contains_warnings
    def close(self) -> StoreBacklog | None:
        """Detach, close the sinks, and close the run store if the monitor opened it from a path.

        Returns:
            What the run store could not write, also kept as :attr:`unwritten`: a
            :class:`~spectral_edge.store.StoreBacklog` whose ``lost`` counts the records, events and
            evaluations that never reached the file (a warning says so too; ``held`` counts those a store
            the monitor did not open still holds for retry), or None without a run store.
        """
        self.detach()
        _remove_handles(self._registry_hooks)
        try:
            for sink in self.sinks:
                self._guarded(_sink_name(sink), sink.close)
        finally:  # strict mode raises a sink's error, but the store is closed all the same
            try:
                if self.store is not None and self._owns_store:
                    # Closing commits the last record and retries the held ones; what it could not write
                    # is a warning outside strict mode (and raised in strict mode, after this is set).
                    self._guarded("the run store", self.store.close)
            finally:
                backlog = getattr(self.store, "backlog", None)
                self.unwritten = backlog() if callable(backlog) else None
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
            "needs_snapshot": self._needs_snapshot,
            "detector": self.detector.state_dict(),
            "window": self._win.state_dict() if include_window else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (call after loading the model's own state)."""
        if state.get("version") != 1:
            raise ValueError(f"unknown monitor state version {state.get('version')!r}")
        self.step_count = int(state["step_count"])
        self._calls_since_push = int(state["calls_since_push"])
        self.detector.load_state_dict(state["detector"])
        if state["window"] is not None:
            device = self._tensors[0].device
            self._win.load_state_dict(state["window"], snapshot_device=device)
            self._needs_snapshot = bool(state["needs_snapshot"])
        else:
            self._win.reset()
            self._win.snapshot(self._tensors)
            self._needs_snapshot = False
            self._calls_since_push = 0  # the new snapshot starts a full interval

    # ------------------------------------------------------------------ internals

    def _build_window(self, named: list[tuple[str, torch.Tensor]]) -> None:
        layout, order = ParameterLayout.build(
            [n for n, _ in named], [tuple(t.shape) for _, t in named], self._group_of
        )
        self._tensors = [named[i][1] for i in order]
        self._ids = [id(t) for t in self._tensors]
        self._numel_of = {id(t): t.numel() for t in self._tensors}  # weights of the groups' rates
        self._win = UpdateWindow(
            layout,
            window=self.window,
            storage_dtype=self.storage_dtype,
            storage_device=self.storage_device,
            chunk_size=self.chunk_size,
            threads=self.threads,
            kernel=self.kernel,
        )
        self._win.snapshot(self._tensors)

    def _step(self, metrics: dict[str, float]) -> SpectralRecord | None:
        # A full re-read of the parameter set costs ~1 ms, too much for every step. ParameterWatch's check
        # (requires_grad flags and how many parameters each module holds, ~23 µs for 200 tensors) runs at
        # every push, since requires_grad_() and deletions fire no hook: a layer unfrozen mid-run was left
        # out of up to 49 records. It, torch's registration hooks (additions, replacements:
        # _registry_changed) and every LAYOUT_CHECK_EVERY-th push (a .data of another shape) trigger it.
        self._pushes_since_check += 1
        if self._registry_changed or self._pushes_since_check >= LAYOUT_CHECK_EVERY or self._watch.stale():
            self._registry_changed = False
            self._pushes_since_check = 0
            if self._layout_changed():
                return None
        if self._paused:
            return None
        if self._needs_snapshot:
            self._win.snapshot(self._tensors)
            self._needs_snapshot = False
            return None
        return self._observe(self._tensors, copy=True, metrics=metrics)

    def _observe(
        self, tensors: Sequence[torch.Tensor], *, copy: bool, metrics: dict[str, float]
    ) -> SpectralRecord | None:
        """Push θ − θ_prev for ``tensors`` (layout order) and, if the window is full, build and file a record.

        ``copy=False`` keeps ``tensors`` as the next snapshot instead of copying them (offline analysis of
        checkpoints that do not change once loaded).
        """
        pushed = self._win.push(tensors, copy=copy)
        if pushed.status != "pushed":
            self._skipped(pushed)
            return None
        self._bad_streak = None
        if not self._win.full:
            return None
        record = self._record(pushed, metrics)
        self.records.append(record)
        new_events = self.detector.update(record)
        if self.store is not None:
            self._guarded("the run store", lambda: self.store.add_record(record))
        for sink in self.sinks:
            self._guarded(_sink_name(sink), lambda s=sink: s.write_record(record))
        self._emit(new_events)
        return record

    def _record(self, pushed: PushResult, metrics: dict[str, float]) -> SpectralRecord:
        # Eigenvalues below what the stored rows resolve (UpdateWindow.rank_rtol) are rounding, not directions.
        rtol = self._win.rank_rtol
        # Every eigensolve of the record (total, groups, halves) in one call; the float stage below is
        # spectrum/'s own, so the record equals analyze_gram_with_parts and half_window_alignment.
        eig = self._win.spectra(half=self.window >= 4)
        spec, group_sigmas = spectrum_from_eigen(
            eig.total, eig.vectors, eig.groups, k95_threshold=self.k95_threshold, rank_rtol=rtol
        )
        p = self.n_params
        dc = float(pushed.delta_c_fro or 0.0)
        lr = self._current_lr()
        adiabatic = regime = None
        if lr is not None and lr > 0:
            adiabatic = adiabatic_parameter(
                dc, lr, gap=spec.gap, gap_lambda=spec.gap_lambda, units=self.gap_units
            )
            regime = self.regimes.classify(adiabatic, lr)
        nu = noise_level_from_spectrum(spec.eigenvalues, p)
        groups: dict[str, GroupSpectrum] = {}
        if group_sigmas is not None:
            for name, sigma, (k, r) in zip(
                self._win.layout.group_names,
                _read_only(group_sigmas),
                gap_positions(group_sigmas),
                strict=True,
            ):
                groups[name] = GroupSpectrum(k_star=k, gap_ratio=r, singular_values=sigma)
        return SpectralRecord(
            step=self.step_count,
            window=self.window,
            singular_values=spec.singular_values,
            ratios=spec.ratios,
            k_star=spec.k_star,
            gap_ratio=spec.gap_ratio,
            gap=spec.gap,
            gap_lambda=spec.gap_lambda,
            k95=spec.k95,
            k_star_weighted=spec.k_star_weighted,
            gap_ratio_weighted=spec.gap_ratio_weighted,
            g23=spec.g23,
            rank=spec.rank,
            effective_rank=spec.effective_rank,
            alpha=_read_only(stability_coefficients(spec.eigenvalues, dc, self.alpha_c)),
            alpha_half=_read_only(alignment_from_half_eigen(*eig.half, rank_rtol=rtol)) if eig.half else None,
            delta_c_fro=dc,
            davis_kahan=davis_kahan_bound(dc, spec.gap_lambda),
            adiabatic=adiabatic,
            regime=regime,
            lr=lr,
            update_norm=pushed.update_norm,
            noise_level=nu,
            bbp_ratio=bbp_ratio(spec.singular_values, nu, p, self.bbp_variant),
            groups=groups,
            metrics={k: float(v) for k, v in metrics.items()},
        )

    def _current_lr(self) -> float | None:
        lr = self.lr if self.lr is not None else self._hook_optimizer
        if lr is None:
            return None
        if isinstance(lr, torch.optim.Optimizer):
            return self._optimizer_lr(lr)
        value = lr() if callable(lr) else lr
        if value is None:  # a callable with no rate yet: no 𝒜 this record
            return None
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        return value if math.isfinite(value) and value > 0 else None

    def _optimizer_lr(self, optimizer: torch.optim.Optimizer) -> float | None:
        """η for 𝒜 from the optimizer's groups: their rates weighted by their monitored scalars (see ``lr``)."""
        numel = self._numel_of
        seen: set[int] = set()
        shares = []  # (group index, rate, monitored scalars in it)
        for i, group in enumerate(optimizer.param_groups):
            n = 0
            for p in group["params"]:
                if id(p) in numel and id(p) not in seen:  # a tensor in two groups counts once
                    seen.add(id(p))
                    n += numel[id(p)]
            shares.append((i, _rate(group.get("lr")), n))
        if not seen:  # the optimizer holds none of the monitored tensors (copies?): weigh by group sizes
            self._warn_once(
                "lr_unmatched",
                "spectral-edge: lr=optimizer holds none of the monitored parameters; η for 𝒜 weighs its "
                "groups' rates by the groups' own sizes",
            )
            groups = optimizer.param_groups
            shares = [(i, r, sum(p.numel() for p in groups[i]["params"])) for i, r, _ in shares]
        # A group without a rate yet (None, NaN: a scheduler that has not set it) counts as no group.
        shares = [(i, r, n) for i, r, n in shares if n > 0 and r is not None]
        live = [(i, r, n) for i, r, n in shares if r > 0]
        idle = [(i, r, n) for i, r, n in shares if r <= 0]
        step = self.step_count
        if not live:
            if idle:
                self._warn_once(
                    "lr_all_zero",
                    f"spectral-edge: every parameter group of the optimizer has lr 0 at step {step}: "
                    "𝒜 = ‖ΔC‖_F/(η g²) is undefined at η = 0, so records have 𝒜 = None and no regime while "
                    "the rates stay 0",
                )
            return None
        if idle:
            self._warn_once(
                "lr_zero_group",
                f"spectral-edge: the optimizer has parameter groups at lr 0 at step {step} "
                f"({_groups_text(idle)}); they are left out of η for 𝒜 (their parameters do not move) "
                "while at 0",
            )
        eta = sum(r * n for _, r, n in live) / sum(n for _, _, n in live)
        if len({r for _, r, _ in live}) > 1:
            self._warn_once(
                "lr_groups_differ",
                f"spectral-edge: the optimizer's parameter groups have different learning rates "
                f"({_groups_text(live)}); η for 𝒜 is their mean weighted by monitored scalars, "
                f"{eta:.6g} at step {step} (see SpectralMonitor's lr argument)",
            )
        return eta

    def _skipped(self, pushed: PushResult) -> None:
        kind = pushed.status
        if kind == "nonfinite":
            # θ_prev now holds the non-finite parameters: take a fresh snapshot before the next update. The
            # updates before it go too: a record mixing them with later ones would span the divergence.
            self._win.reset()
            self._needs_snapshot = True
            message = (
                f"update at step {self.step_count} holds NaN or Inf (‖δ‖ = {pushed.update_norm}); it was "
                "skipped and the window restarts: the next record holds only updates after the next finite "
                "snapshot"
            )
            if self.strict:
                raise NonFiniteUpdateError(message + ". Training diverged or a parameter overflowed.")
            event_kind = "nonfinite_update"
        else:
            message = (
                f"no monitored parameter moved at step {self.step_count}; the zero update was skipped. "
                "Call step() once per optimizer.step() (with gradient accumulation, only on real steps)."
            )
            event_kind = "zero_update"
        if self._bad_streak != kind:  # one event per run of bad updates, not one per step
            self._bad_streak = kind
            self._emit([SpectralEvent(step=self.step_count, kind=event_kind, message=message)])
            self._warn_once(event_kind, "spectral-edge: " + message)

    def _layout_changed(self) -> bool:
        """Re-read the parameter set; if it changed, restart the window on the new set (one warning, one
        event per change). Also refreshes :attr:`excluded` when only the tensors left out changed."""
        before = self.excluded
        selection = self._watch.read()
        sharing = selection.sharing
        named = sharing.named
        old = {} if self._paused else dict(zip(self._win.layout.names, self._tensors, strict=True))
        shapes = (
            {} if self._paused else dict(zip(self._win.layout.names, self._win.layout.shapes, strict=True))
        )
        changed = sorted(id(t) for _, t in named) != sorted(self._ids) or any(
            tuple(t.shape) != shapes[n] for n, t in old.items()
        )
        notice = _exclusion_notice(selection, before)
        if not changed:
            if selection.excluded != before:  # only tensors left out came or went
                self.excluded = dict(selection.excluded)
                if notice:
                    self._warn_once("excluded:" + notice, "spectral-edge: " + notice)
                self._guarded("the run store", self._save_config)
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
        if self.strict:
            raise ParameterLayoutError(message)
        self.excluded = dict(selection.excluded)
        self.merged, self.partially_merged = sharing.merged, sharing.partial
        if sharing.partial:
            self._warn_once("partially_merged", _partial_message(sharing))
        if named:
            self._build_window(named)
            self._needs_snapshot = self._paused = False
        else:
            self._win.reset()
            self._ids, self._paused = [], True
        self._emit([SpectralEvent(step=self.step_count, kind="parameters_changed", message=message)])
        # One warning per distinct change: freezing and unfreezing a layer each warn once, not every time.
        self._warn_once(
            f"parameters_changed:{what}", "spectral-edge: " + message + (" " + notice if notice else "")
        )
        self._guarded("the run store", self._save_config)
        return True

    def _write_eval(self, step: int, values: dict[str, float]) -> None:
        if self.store is not None:
            self._guarded("log_eval", lambda: self.store.add_eval(step, values))
        for sink in self.sinks:
            self._guarded(_sink_name(sink), lambda s=sink: s.write_eval(step, values))

    def _save_config(self) -> None:
        if self.store is not None:
            self.store.write_config({"monitor": self.config(), "user": self._user_config})

    def _emit(self, events: list[SpectralEvent]) -> None:
        self.events.extend(events)  # in memory first: a failing store must not lose them
        for event in events:
            if self.store is not None:
                self._guarded("the run store", lambda e=event: self.store.add_event(e))
            for sink in self.sinks:
                self._guarded(_sink_name(sink), lambda s=sink, e=event: s.write_event(e))

    def _guarded(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action``; outside strict mode a failure is one warning, never an exception into training."""
        try:
            action()
        except StoreWriteError as exc:  # the store holds the write for retry, or counts it lost
            if self.strict:
                raise
            self._store_failed(exc)
        except Exception as exc:
            if self.strict:
                raise
            self._warn_once(
                f"{what}:{type(exc).__name__}",
                f"spectral-edge: {what} failed ({exc!r}); training continues. In memory, mon.records keeps "
                f"the latest {self.records.maxlen} records and mon.events every event. Pass strict=True to "
                "raise instead.",
            )

    def _store_failed(self, exc: StoreWriteError) -> None:
        """The run store refused a write: an event and a warning with the store's counts when writes start
        failing and when the first is lost, not one per step (the store raises at every refused write)."""
        backlog, where = exc.backlog, getattr(self.store, "path", "the run store")
        kept = f"mon.records keeps the latest {self.records.maxlen} records in memory whatever happens"
        if exc.closed:  # the store is closed: no event can reach it
            warnings.warn(
                f"spectral-edge: {exc} {kept}; SpectralMonitor.unwritten has the counts.",
                SpectrumWarning,
                stacklevel=4,
            )
            return
        if exc.started:
            kind = "store_write_failed"
            message = (
                f"the run store {where} refuses writes ({backlog.error}; noticed at step {self.step_count}). "
                f"The store holds what it could not write in memory, up to {backlog.max_held} writes, and "
                "retries them before each later write and at close; beyond that they are lost. Now "
                f"{backlog.describe()}. Free disk space and they are written; {kept}."
            )
        elif exc.first_loss:
            kind = "store_writes_lost"
            message = (
                f"the run store {where} holds {backlog.max_held} unwritten writes, its limit, so records are "
                f"being lost (noticed at step {self.step_count}; {backlog.describe()}). Free disk space and "
                f"the held ones are written; {kept}."
            )
        else:
            return
        warnings.warn("spectral-edge: " + message, SpectrumWarning, stacklevel=4)
        # Its own write may be refused too: it is then held like the rest, and raises nothing new here.
        self._emit([SpectralEvent(step=self.step_count, kind=kind, message=message)])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, SpectrumWarning, stacklevel=4)


def _read_only(array: np.ndarray) -> np.ndarray:
    """A record holds read-only arrays (see SpectralRecord): a sink or a store encoding it later sees
    what the monitor measured."""
    array.setflags(write=False)
    return array


def _sink_name(sink: Any) -> str:
    """How a failing sink is named in the monitor's warning (one warning per sink class and error type)."""
    return f"the sink {type(sink).__name__}"


def _remove_handles(handles: list[Any]) -> None:
    while handles:
        handles.pop().remove()


def _watch_registrations(monitor: SpectralMonitor) -> list[Any]:
    """Global torch hooks that flag the monitor when any module registers a parameter or a submodule.

    The hooks hold only a weak reference, so a monitor that is dropped without close() is still freed.
    """
    ref = weakref.ref(monitor)

    def flag(*args: Any) -> None:
        target = ref()
        if target is not None:
            target._registry_changed = True

    module_mod = torch.nn.modules.module
    return [
        module_mod.register_module_parameter_registration_hook(flag),
        module_mod.register_module_module_registration_hook(flag),
    ]


def _rate(value: Any) -> float | None:
    """A parameter group's ``lr`` as a float; None when it has none yet (None, NaN or Inf)."""
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


def _groups_text(shares: list[tuple[int, float, int]]) -> str:
    """``group 0: lr 0.1 over 1,234 monitored scalars, ...`` for a warning."""
    return ", ".join(f"group {i}: lr {r:g} over {n:,} monitored scalars" for i, r, n in shares)


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


def _partial_message(sharing: CountedOnce) -> str:
    parts = ", ".join(
        f"{name!r} ({lost} elements outside {sharing.merged[name]!r})"
        for name, lost in sharing.partial.items()
    )
    return (
        f"spectral-edge: parameters share part of their memory with a larger one: {parts}. Counting them "
        "would count the shared elements twice, so they are left out and the elements listed are not "
        "monitored; register whole tensors (not overlapping slices of one buffer) to monitor every element."
    )


def _open_store(store: Any, *, write_behind: bool) -> Any:
    if store is None:
        return None
    if isinstance(store, (str, Path)):
        from spectral_edge.store import RunStore

        return RunStore(store, mode="w", write_behind=write_behind)
    return store
