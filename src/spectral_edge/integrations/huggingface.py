"""Hugging Face ``transformers.Trainer`` integration: :class:`SpectralEdgeCallback`.

Example:
    Monitor a Trainer run, write the run store and send the spectral scalars to ``report_to``::

        from spectral_edge.integrations import SpectralEdgeCallback

        callback = SpectralEdgeCallback(window=10, store="runs/gpt2")
        trainer = Trainer(model=model, args=args, train_dataset=train_set, callbacks=[callback])
        trainer.train()            # or trainer.train(resume_from_checkpoint=True)
        callback.monitor.records   # the SpectralRecords; callback.monitor.events the events
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from spectral_edge._imports import require
from spectral_edge.integrations._common import (
    all_agree,
    block_groups,
    close_trainer_store,
    distributed_job,
    monitor_settings,
    monitored_module,
    numeric_items,
    open_trainer_store,
    process_rank,
    sharding_message,
    sharding_problem,
    started_everywhere,
)
from spectral_edge.sinks.store import StoreSink
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking.config import MonitorConfig
from spectral_edge.tracking.distributed import Distributed, local_values
from spectral_edge.tracking.monitor import SpectralMonitor

transformers = require("transformers", "SpectralEdgeCallback (the Hugging Face Trainer integration)")
from transformers.integrations import get_reporting_integration_callbacks  # noqa: E402
from transformers.trainer_callback import CallbackHandler  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

__all__ = ["RANK_STATE_FILE", "STATE_FILE", "SpectralEdgeCallback"]

logger = logging.getLogger("spectral_edge")
_REFILL_NOTE = (
    "spectral-edge: %s was saved without the window (save_window=False): training resumes at step %d and "
    "the spectral window refills over the next %d steps before the first record"
)

#: File the monitor's state is saved to inside each ``checkpoint-N/`` folder (one process).
STATE_FILE = "spectral_edge_monitor.pt"
#: The file of process ``rank`` under torch.distributed: each process saves the part of the window it holds.
RANK_STATE_FILE = "spectral_edge_monitor.rank{rank}.pt"

# Entries of the Trainer's logs that are not worth a row in the run store's evals table.
_NOT_METRICS = ("total_flos",)
_NOT_METRIC_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time")

# The base class, typed Any: transformers is imported at run time through require(), so mypy cannot see it.
_TrainerCallback: Any = transformers.TrainerCallback


class SpectralEdgeCallback(_TrainerCallback):
    """Runs a :class:`~spectral_edge.SpectralMonitor` inside ``transformers.Trainer``.

    * **When.** One update per optimizer step, in ``on_optimizer_step``: right after ``optimizer.step()``,
      before the scheduler steps and the gradients are zeroed. With gradient accumulation that is once per
      ``gradient_accumulation_steps`` micro-batches. Records are filed under the Trainer's step number
      (``state.global_step`` after the step, the number the Trainer logs). Steps that the mixed-precision
      grad scaler skipped (parameters unchanged) are not pushed.
    * **Learning rate.** η is read from the optimizer's parameter groups at the step, which is the rate
      the step used (the scheduler has not moved yet): their rates weighted by monitored scalars, as
      :meth:`~spectral_edge.SpectralMonitor.resolve_lr` reads them (the rate itself when the groups
      agree); pass ``lr=`` to override.
    * **Logging.** Every record goes to the run store (``store=``). At each Trainer log
      (``logging_steps``) the newest record's :meth:`~spectral_edge.SpectralRecord.log_scalars` are added
      to the logs if they were not logged before, so TensorBoard / W&B / MLflow receive them through
      ``report_to``. For that the callback must run before the reporting callbacks, and the Trainer puts
      ``Trainer(callbacks=[cb])`` after them: so when the Trainer is made (``on_init_end``; or at train
      begin, for ``trainer.add_callback(cb)``) the callback moves itself ahead of them, as
      :meth:`attach` does. The console printer and ``state.log_history`` do not get the scalars. The
      Trainer's own numeric logs (loss, learning rate, grad norm, ``eval_*`` metrics) are written to
      the store's evals table.
    * **Groups.** Unless ``groups=`` (or ``config=``) is given, a model with a list of blocks gets one
      group per block (``transformer.h.0``, ``model.layers.0``, ...), ``"embeddings"`` for what comes
      before the blocks and ``"head"`` for what comes after (final norm, untied output head); each group
      gets its own k* and R. The monitor's default, one group per top-level module, would put all of a
      Hugging Face model in one group.
    * **Processes.** Under torch.distributed (DDP, and FSDP through accelerate's FSDP config or a model
      wrapped by the user: FSDP1 or FSDP2's ``fully_shard``) every process builds a monitor with
      ``distributed=True``: each pushes its part of the parameters (its shards; an equal run of the
      replicated ones), one all-reduce per step completes the Gram, and every process gets the whole
      model's records (see :mod:`spectral_edge.tracking.distributed`). Only the world main process
      (``state.is_world_process_zero``) opens the run store, feeds the sinks and adds scalars to the
      Trainer's logs. A process that dies makes the others raise
      :class:`~spectral_edge.errors.DistributedMonitorError` after ``distributed_timeout`` seconds. If a
      process cannot start its monitor, every process goes without. Without an initialised process group
      only the main process monitors. DeepSpeed ZeRO-3 is not supported yet (its partitioned parameters
      hold no data outside forward; the monitor would have to gather them or read DeepSpeed's flat fp32
      partitions): the callback warns and stays off (raises with ``strict=True``). Tensor-parallel
      DTensors (a 2-D mesh) are refused by the monitor with its own message.
    * **Resume.** ``on_save`` writes the monitor's state to ``checkpoint-N/spectral_edge_monitor.pt``
      (under torch.distributed, each process its own part to ``spectral_edge_monitor.rank<r>.pt``; a
      resumed process loads its own file, and the processes restore their windows only if every one of
      them found its file, else all refill theirs).
      On ``trainer.train(resume_from_checkpoint=...)`` the callback looks for it in
      ``args.resume_from_checkpoint`` and in ``output_dir/checkpoint-<step>`` (a callback is not told the
      folder ``train()`` was given; set ``args.resume_from_checkpoint`` when resuming from elsewhere) and
      loads it if it was saved with the parameters the model now holds, so the resumed run gives the same
      records as an uninterrupted one. A ``store=`` path is reopened in append mode on resume.
    * **Checkpoint size.** Exact resume needs the window, W rows of P numbers in the ``storage_dtype``
      (float32 by default), and the snapshot θ_prev the next update is taken from. With ``interval=1``
      the snapshot is the parameters the checkpoint's model file already holds, so it is not saved
      twice (a resumed callback takes it from the restored model); with ``interval > 1`` it is saved
      too, P numbers in the parameters' dtype. So ``spectral_edge_monitor.pt`` is about W·P·s bytes
      (s the storage item size; + P·p with ``interval > 1``), W times a float32 model's weights at the
      defaults (10 × at W = 10), plus W²·8 bytes per group and a few kB of counters and event state.
      ``save_window=False`` saves only the counters and event state (a few kB); the resumed monitor
      then refills W updates before its next record (and logs so). Under torch.distributed each
      process's file holds its own part: P/N of the numbers on each of N processes.
    * **Failures.** A monitoring problem is one :class:`~spectral_edge.SpectrumWarning`; training goes on.
      ``strict=True`` raises instead.

    Args:
        store: a run directory (created; with ``mode="w"`` semantics on a fresh run) or an open
            :class:`~spectral_edge.RunStore`; None keeps records in memory only.
        prefix: name prefix of the logged scalars (TensorBoard shows them as ``train/<prefix>...``).
        save_window: save the window with each checkpoint, W·P numbers (exact resume; see Checkpoint
            size), or only a few kB of counters (the resumed monitor refills its window first).
        distributed_timeout: under torch.distributed, seconds a process's monitor waits for the others
            before it raises :class:`~spectral_edge.errors.DistributedMonitorError`.
        **monitor_kwargs: any :class:`~spectral_edge.SpectralMonitor` keyword (``window``, ``interval``,
            ``groups``, ``storage_dtype``, ``strict``, ``config``, ``sinks``, ...), checked here at once (the
            settings as a :class:`~spectral_edge.tracking.config.MonitorConfig`).

    Attributes:
        monitor: the :class:`~spectral_edge.SpectralMonitor` once training has begun (None before; on
            every process under torch.distributed, else on the main process only).
    """

    monitor: SpectralMonitor | None

    def __init__(
        self,
        *,
        store: Any = None,
        prefix: str = "spectral/",
        save_window: bool = True,
        distributed_timeout: float = 600.0,
        **monitor_kwargs: Any,
    ) -> None:
        # Checked now, not when training starts: a MonitorConfig, and sinks with the Sink methods.
        self._config, self._sinks = monitor_settings(monitor_kwargs, caller=type(self).__name__)
        self._distributed = Distributed(timeout=distributed_timeout)
        self.store = store
        self.prefix = prefix
        self.save_window = save_window
        self.distributed_timeout = distributed_timeout
        self.monitor_kwargs = monitor_kwargs
        self.monitor: SpectralMonitor | None = None
        self._guard = Guard(strict=self._config.strict)
        self._store: StoreSink | None = None  # the run store, once training has opened it
        self._optimizer: Any = None
        self._last_logged_step: int | None = None
        self._attached = False  # placed in a Trainer's callbacks (attach, or found when called)
        self._ahead_of_reporting = False  # and ahead of report_to integrations: scalars go into the logs
        self._opened = False
        self._module: torch.nn.Module | None = None  # what the monitor watches (FSDP1: the wrapper)
        self._world = 1  # processes monitoring together (1: this one alone)

    def __repr__(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.monitor_kwargs.items())
        return f"{type(self).__name__}(store={self.store!r}, prefix={self.prefix!r}, {kwargs})"

    # ------------------------------------------------------------------ set-up

    def attach(self, trainer: Any) -> SpectralEdgeCallback:
        """Add the callback to ``trainer`` ahead of its ``report_to`` integrations; returns ``self``.

        ``Trainer(callbacks=[cb])`` and ``trainer.add_callback(cb)`` need no ``attach``: the callback
        places itself when the Trainer is made or training begins. ``attach`` does it at once (adding the
        callback if it is not there yet), for a Trainer whose callbacks are called some other way.

        The Trainer hands one ``logs`` dict to its callbacks in order and the reporting integrations come
        first, so a callback behind them would add its scalars after they have been written. The callback
        goes in front of them, and a small companion right after them takes the spectral scalars out of
        the logs again, so the console printer does not print them.
        """
        self._place(trainer.callback_handler, trainer.args.report_to, in_place=True)
        return self

    def _place(self, handler: Any, report_to: Any, *, in_place: bool) -> None:
        """Put the callback ahead of the reporting integrations in ``handler.callbacks``.

        ``in_place=False`` gives the handler a new list instead of rewriting its own: the handler may be
        iterating over the old one right now (an event is being dispatched), and goes on with it.
        """
        callbacks = [cb for cb in handler.callbacks if cb is not self and not isinstance(cb, _DropScalars)]
        reporting = tuple(get_reporting_integration_callbacks(report_to))
        positions = [i for i, cb in enumerate(callbacks) if reporting and isinstance(cb, reporting)]
        if positions:
            callbacks.insert(positions[-1] + 1, _DropScalars(self.prefix))
            callbacks.insert(positions[0], self)
        elif any(cb is self for cb in handler.callbacks):  # nothing to get ahead of: stay where it is
            callbacks = [cb for cb in handler.callbacks if not isinstance(cb, _DropScalars)]
        else:
            callbacks.append(self)
        if in_place:
            handler.callbacks[:] = callbacks
        else:
            handler.callbacks = callbacks
        self._attached = True
        self._ahead_of_reporting = bool(positions)

    def _place_in_calling_trainer(self, args: Any) -> None:
        """Place the callback in the handler of the Trainer that is calling it, if it can be found.

        A callback event is not given the Trainer: the handler is the ``CallbackHandler`` whose
        ``call_event`` is dispatching this event, a few frames up the stack.
        """
        frame: FrameType | None = sys._getframe(1)
        for _ in range(8):
            if frame is None:
                return
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler) and any(cb is self for cb in handler.callbacks):
                self._place(handler, args.report_to, in_place=False)
                return
            frame = frame.f_back

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Move the callback ahead of the ``report_to`` integrations (see Logging above)."""
        # Trainer(callbacks=[cb]) has put the callback behind the report_to integrations: move it ahead.
        if not self._attached:
            self._place_in_calling_trainer(args)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Build the monitor (every process under torch.distributed, else the main process), open the
        run store (main process), load the saved state on resume."""
        self.monitor, self._module = None, None
        if model is None:
            return
        # FSDP1 wraps the model from outside: the Trainer hands callbacks the model inside, and holds
        # the wrapper the monitor needs to find the shards as model_wrapped.
        module = monitored_module(model, _calling_trainer_model())
        distributed = distributed_job(module)
        if not distributed and not state.is_world_process_zero:
            return
        problem = sharding_problem(module, _sharded_args(args))
        if problem is not None:
            if self._guard.strict:
                raise ValueError(sharding_message(problem))
            self._guard.warn_once("sharded", sharding_message(problem) + " The callback is off for this run.")
            return
        if not self._attached:  # added with trainer.add_callback() after the Trainer was made
            self._place_in_calling_trainer(args)
        if args.report_to and not self._attached and state.is_world_process_zero:
            self._guard.warn_once(
                "not_attached",
                f"SpectralEdgeCallback could not find the Trainer calling it to place itself ahead of the "
                f"report_to integrations {list(args.report_to)}, so its scalars reach the run store but not "
                "them; add it with callback.attach(trainer) instead.",
                UserWarning,
            )
        resuming = state.global_step > 0
        if self._store is None and self.store is not None and state.is_world_process_zero:
            # A second train() call appends to the store the first one created. If the store cannot be
            # opened (say it already holds another run), the monitor still runs, keeping records in memory.
            self._store = self._guard(
                "opening the run store",
                lambda: open_trainer_store(
                    self.store,
                    resuming=resuming,
                    reopened=self._opened,
                    step=state.global_step,
                    strict=self._config.strict,
                ),
            )
            self._opened = True
        self._guard("starting the monitor", lambda: self._start(state, module, distributed))
        self._world = 1
        if distributed:
            everywhere, self._world = started_everywhere(self.monitor, self._guard)
            if not everywhere:
                self.monitor = None
                return
        monitor = self.monitor
        if resuming and monitor is not None:
            self._guard("loading the monitor state", lambda: self._resume(args, state, module, monitor))

    def _start(self, state: Any, module: torch.nn.Module, distributed: bool) -> None:
        # A second train() call gets a fresh monitor. The old one is dropped, not closed: close() would close
        # the store and sinks the two share; its torch hooks go when it is freed.
        config = self._config
        if config.lr is None and "lr" not in self.monitor_kwargs:
            # Read when a record is made, inside on_optimizer_step: before the scheduler moves the rate.
            config = replace(config, lr=self._step_lr)
        config = replace(config, user={"integration": "transformers", **config.user})
        # A MonitorConfig carries its own groups; config={...}, the user's extra settings, does not.
        if "groups" not in self.monitor_kwargs and not isinstance(
            self.monitor_kwargs.get("config"), MonitorConfig
        ):
            # One group per block, not the monitor's one group per top-level module (all of the model).
            groups = block_groups(module)
            if groups is not None:
                config = replace(config, groups=groups)
        store = self._store.store if self._store is not None else None  # the callback closes it
        self.monitor = SpectralMonitor(
            module,
            config=config,
            store=store,
            sinks=self._sinks,
            distributed=self._distributed if distributed else False,
        )
        self._module = module
        self._last_logged_step = None

    def _step_lr(self) -> float | None:
        """η of the step just taken, from the optimizer's groups (None when unknown: 𝒜 is left out)."""
        return self.monitor.resolve_lr(self._optimizer) if self.monitor is not None else None

    def _resume(self, args: Any, state: Any, model: torch.nn.Module, monitor: SpectralMonitor) -> None:
        """Load the state saved at this step (collective under torch.distributed: all load, or none)."""
        step = state.global_step
        candidates = []
        if isinstance(args.resume_from_checkpoint, (str, Path)):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}")
        name = _state_file(process_rank(), self._world)
        found: tuple[Path, dict[str, Any]] | None = None
        problem = None
        try:
            fingerprint = _fingerprint(model)
            for folder in candidates:
                path = folder / name
                if not path.is_file():
                    continue
                saved = torch.load(path, map_location="cpu", weights_only=True)
                # Only the state saved with these very parameters, by as many processes: another run's
                # checkpoint-<step> has another snapshot, and a window continued from it gives wrong updates.
                if (
                    saved.get("step") == step
                    and saved.get("world_size", 1) == self._world
                    and math.isclose(saved.get("fingerprint"), fingerprint, rel_tol=1e-9)
                ):
                    found = (path, saved)
                    break
        except Exception as exc:  # reach the agreement below whatever happens: the others wait for it
            problem = f"{type(exc).__name__}: {exc}"
        if self._world > 1 and not all_agree(found is not None):
            if found is not None:
                self._guard.warn_once(
                    "peer_no_state",
                    f"training resumes at step {step} and this process found its {name}, but another "
                    "process did not find its own; every process refills its spectral window over the next "
                    f"{monitor.window * monitor.interval} steps before the first record.",
                )
                return
        if found is not None:
            path, saved = found
            monitor.load_state_dict(saved["monitor"])
            if saved["monitor"].get("window") is None:
                logger.info(_REFILL_NOTE, path, step, monitor.window * monitor.interval)
            elif saved.get("snapshot_is_model"):
                # θ_prev was left out of the file: it is the parameters the checkpoint restored.
                monitor.tracker.snapshot([t for _, t in monitor.monitored_parameters()])
            return
        self._guard.warn_once(
            "no_state",
            f"training resumes at step {step} but no {name} saved with these parameters was found in "
            f"{' or '.join(map(str, candidates))} (resuming from a folder outside output_dir? set "
            "args.resume_from_checkpoint to it"
            + (f"; reading it failed: {problem}" if problem else "")
            + "); the spectral window refills over the next "
            f"{monitor.window * monitor.interval} steps before the first record.",
        )

    # ------------------------------------------------------------------ training

    def on_optimizer_step(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any
    ) -> None:
        """Push the update of the step just taken (skipped when the grad scaler skipped the step)."""
        if self.monitor is None:
            return
        if getattr(optimizer, "step_was_skipped", False):  # fp16 grad scaler: the parameters did not move
            return
        self._optimizer = optimizer
        # global_step is incremented after this event; the step just taken is filed as global_step + 1.
        self.monitor.step(step=state.global_step + 1)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Write the Trainer's numeric logs to the store; add the newest record's scalars to the logs."""
        monitor = self.monitor
        if monitor is None or logs is None:
            return
        self._guard("logging", lambda: self._log(monitor, state, logs))

    def _log(self, monitor: SpectralMonitor, state: Any, logs: dict[str, Any]) -> None:
        metrics = {
            name: value
            for name, value in numeric_items(logs, skip_prefix=self.prefix).items()
            if name not in _NOT_METRICS and not name.endswith(_NOT_METRIC_SUFFIXES)
        }
        if metrics:
            monitor.log_eval(state.global_step, **metrics)
        if not self._ahead_of_reporting or not state.is_world_process_zero:
            # Behind the reporting integrations, or none: the scalars would reach the printer only. And
            # under torch.distributed the main process alone reports.
            return
        record = monitor.last_record
        # Each record once, at the first log at or after its step (logs also come at evaluation and at the
        # end of training; with interval > 1 records and logging steps need not coincide).
        if record is not None and record.step != self._last_logged_step:
            logs.update(record.log_scalars(self.prefix))
            self._last_logged_step = record.step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the monitor's state into the checkpoint folder (see Checkpoint size above)."""
        monitor = self.monitor
        if monitor is None:
            return
        model = self._module if self._module is not None else kwargs.get("model")
        self._guard("saving the monitor state", lambda: self._save(monitor, args, state, model))

    def _save(self, monitor: SpectralMonitor, args: Any, state: Any, model: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {folder} not found (hyperparameter search runs save elsewhere), so the "
                "monitor state was not saved; a resumed run refills its window first"
            )
        name = _state_file(process_rank(), self._world)
        tmp = folder / (name + ".tmp")
        monitor_state = monitor.state_dict(include_window=self.save_window)
        saved = {
            "step": state.global_step,
            "world_size": self._world,
            "fingerprint": _fingerprint(model),
            "monitor": monitor_state,
            "snapshot_is_model": _drop_snapshot_held_by_model(monitor, monitor_state),
        }
        torch.save(saved, tmp)
        os.replace(tmp, folder / name)  # a killed save never leaves a half-written state file

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the run store the callback opened."""
        self._store = close_trainer_store(self._store, self.monitor, self._guard)


class _DropScalars(_TrainerCallback):
    """Placed after the reporting integrations by :meth:`SpectralEdgeCallback.attach`: removes the
    spectral scalars from the logs before the console printer sees them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Remove the spectral scalars from ``logs`` (the reporting integrations have written them)."""
        if isinstance(logs, MutableMapping):
            for name in [n for n in logs if n.startswith(self.prefix)]:
                del logs[name]


def _drop_snapshot_held_by_model(monitor: SpectralMonitor, state: dict[str, Any]) -> bool:
    """Leave the window's snapshot θ_prev out of ``state`` when it equals the monitored parameters.

    With ``interval=1`` the snapshot is taken at every step, so at a save it holds the very parameters
    the checkpoint's model file holds: P numbers saved twice. A resumed callback takes them from the
    restored model instead (bit for bit the same). Returns whether the snapshot was left out.
    """
    window = state.get("window")
    if not isinstance(window, dict) or window.get("prev") is None or state.get("calls_since_push") != 0:
        return False
    current = [t for _, t in monitor.monitored_parameters()]
    prev = window["prev"]
    if len(prev) != len(current) or not all(
        p.dtype == t.dtype and torch.equal(p, t.detach().reshape(-1).to(p.device))
        for p, t in zip(prev, current, strict=True)
    ):
        return False
    state["window"] = {**window, "prev": None}
    return True


def _fingerprint(model: torch.nn.Module) -> float:
    """Σ θ² over this process's values of the trainable parameters (float64): tells the parameters a
    state was saved with (under FSDP, this process's shards)."""
    with torch.no_grad():
        total = 0.0
        for p in model.parameters():
            if p.requires_grad:
                total += float(local_values(p).detach().double().pow(2).sum().item())  # a DTensor's shard
        return total


def _state_file(rank: int, world: int) -> str:
    return STATE_FILE if world == 1 else RANK_STATE_FILE.format(rank=rank)


def _calling_trainer_model() -> Any:
    """``model_wrapped`` of the ``transformers.Trainer`` whose event is being dispatched (a few frames up
    the stack), or None if it is not found."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(10):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, transformers.Trainer):
            return getattr(owner, "model_wrapped", None)
        frame = frame.f_back
    return None


def _sharded_args(args: Any) -> str | None:
    """What the Trainer's settings say of sharding (see :func:`sharding_problem`)."""
    ds = getattr(args, "hf_deepspeed_config", None)
    if ds is not None and getattr(ds, "is_zero3", lambda: False)():
        return "zero3"
    if getattr(args, "fsdp", None):
        return "TrainingArguments.fsdp is set (FSDP)"
    return None
