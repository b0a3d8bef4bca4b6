"""Lightning integration: :class:`SpectralEdgeLightningCallback` for ``lightning.pytorch.Trainer``.

Example:
    Monitor a LightningModule; the scalars go to the Trainer's loggers through ``pl_module.log``::

        from spectral_edge.integrations import SpectralEdgeLightningCallback

        callback = SpectralEdgeLightningCallback(window=10, store="runs/lit")
        trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[callback])
        trainer.fit(module, train_loader)       # or trainer.fit(module, train_loader, ckpt_path="last")
        callback.monitor.records                # the SpectralRecords; callback.monitor.events the events
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from spectral_edge._imports import require
from spectral_edge.integrations._common import (
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
from spectral_edge.tracking.distributed import Distributed
from spectral_edge.tracking.monitor import SpectralMonitor

pl = require("lightning.pytorch", "SpectralEdgeLightningCallback (the Lightning integration)")

__all__ = ["SpectralEdgeLightningCallback"]

logger = logging.getLogger("spectral_edge")

# The base class, typed Any: lightning is imported at run time through require(), so mypy cannot see it.
_Callback: Any = pl.Callback


class SpectralEdgeLightningCallback(_Callback):
    """Runs a :class:`~spectral_edge.SpectralMonitor` inside ``lightning.pytorch.Trainer``.

    * **When.** One update per real optimizer step: in ``on_train_batch_end`` whenever
      ``trainer.global_step`` has advanced, so with ``accumulate_grad_batches=n`` once every n batches.
      Records are filed under ``trainer.global_step`` (the number of optimizer steps taken). With manual
      optimization and several optimizers, one record per batch that stepped any of them.
    * **Learning rate.** η is read from the stepping optimizer's parameter groups in
      ``on_before_optimizer_step``, the rate the step used (Lightning steps step-interval schedulers before
      ``on_train_batch_end``): their rates weighted by monitored scalars, as
      :meth:`~spectral_edge.SpectralMonitor.resolve_lr` reads them (the rate itself when the groups
      agree); pass ``lr=`` to override.
    * **Logging.** Each record's :meth:`~spectral_edge.SpectralRecord.log_scalars` go through
      ``pl_module.log_dict`` (``on_step=True``, so the Trainer's loggers write them every
      ``log_every_n_steps``), and every record goes to the run store (``store=``). At each validation end
      the module's scalar ``trainer.callback_metrics`` (without the spectral ones) go to the store's evals.
    * **Processes.** Under torch.distributed (strategies ``"ddp"``, ``"fsdp"``, and
      ``ModelParallelStrategy`` with FSDP2 on a 1-D data-parallel mesh) every process builds a monitor
      with ``distributed=True``: each pushes its part of the parameters (its shards; an equal run of the
      replicated ones), one all-reduce per step completes the Gram, and every process gets the whole
      model's records (see :mod:`spectral_edge.tracking.distributed`). Only global rank zero
      (``trainer.is_global_zero``) opens the run store and feeds the sinks, and the scalars are logged
      with ``rank_zero_only=True``. A process that dies makes the others raise
      :class:`~spectral_edge.errors.DistributedMonitorError` after ``distributed_timeout`` seconds. If a
      process cannot start its monitor, every process goes without. DeepSpeed ZeRO-3 is not supported
      yet (its partitioned parameters hold no data outside forward; the monitor would have to gather them
      or read DeepSpeed's flat fp32 partitions): the callback warns and stays off (raises with
      ``strict=True``). Tensor-parallel DTensors (a 2-D mesh) are refused by the monitor with its own
      message.
    * **Resume.** The monitor's state travels in the Lightning checkpoint through the callback's
      ``state_dict``/``load_state_dict``, so ``trainer.fit(..., ckpt_path=...)`` continues with the same
      records as an uninterrupted run. A ``store=`` path is reopened in append mode. Under
      torch.distributed only rank zero's ``state_dict`` reaches the checkpoint, so ``state_dict`` gathers
      every process's state to rank zero (a collective: Lightning calls it on every process when it
      saves) and each resumed process takes its own part back; saved by another number of processes,
      the state is not restored (every process refills its window, with a warning). With
      ``save_window=True`` rank zero then holds the whole window, W·P numbers, while it saves: under
      FSDP that is W times the whole model; pass ``save_window=False`` where that does not fit.
    * **Checkpoint size.** The callback's entry in each checkpoint holds the window, W rows of P numbers
      in the ``storage_dtype`` (float32 by default), and the snapshot θ_prev, P numbers in the
      parameters' dtype: about W·P·s + P·p bytes (s, p the two item sizes), (W + 1) times a float32
      model's weights at the defaults (11 × at W = 10), plus W²·8 bytes per group and a few kB of
      counters and event state. ``save_window=False`` saves only the counters and event state (a few
      kB); the resumed monitor then refills W updates before its next record (and logs so).
    * **Failures.** A monitoring problem is one :class:`~spectral_edge.SpectrumWarning`; training goes on.
      ``strict=True`` raises instead.

    Args:
        store: a run directory (created) or an open :class:`~spectral_edge.RunStore`; None keeps records
            in memory only.
        prefix: name prefix of the logged scalars.
        save_window: save the window in checkpoints, (W + 1)·P numbers (exact resume; see Checkpoint
            size), or only a few kB of counters (the resumed monitor refills its window first).
        distributed_timeout: under torch.distributed, seconds a process's monitor waits for the others
            before it raises :class:`~spectral_edge.errors.DistributedMonitorError`.
        **monitor_kwargs: any :class:`~spectral_edge.SpectralMonitor` keyword (``window``, ``interval``,
            ``groups``, ``storage_dtype``, ``strict``, ``config``, ``sinks``, ...), checked here at once (the
            settings as a :class:`~spectral_edge.tracking.config.MonitorConfig`).

    Attributes:
        monitor: the :class:`~spectral_edge.SpectralMonitor` once training has started (None before; on
            every process under torch.distributed, else on rank zero only).

    Only the ``lightning`` package is supported; with the older ``pytorch_lightning`` import name,
    Lightning rejects this callback (its Trainer checks for its own ``Callback`` class).
    """

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
        self._opened = False
        self._loaded_state: dict[str, Any] | None = None
        self._last_global_step = 0
        self._step_lr: float | None = None
        self._world = 1  # processes monitoring together (1: this one alone)

    def __repr__(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.monitor_kwargs.items())
        return f"{type(self).__name__}(store={self.store!r}, prefix={self.prefix!r}, {kwargs})"

    # ------------------------------------------------------------------ set-up

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the monitor (every process under torch.distributed, else rank zero), open the run store
        (rank zero), load the restored state on resume."""
        # Here the model weights and this callback's state are restored from a checkpoint, if any.
        self._last_global_step = trainer.global_step
        self.monitor = None
        saved, self._loaded_state = self._loaded_state, None
        # FSDP1 wraps the LightningModule from outside: the monitor needs the strategy's wrapper.
        module = monitored_module(pl_module, getattr(trainer.strategy, "model", None))
        distributed = distributed_job(module)
        if not distributed and not trainer.is_global_zero:
            return
        problem = sharding_problem(module, _sharded_strategy(trainer.strategy))
        if problem is not None:
            if self._guard.strict:
                raise ValueError(sharding_message(problem))
            self._guard.warn_once("sharded", sharding_message(problem) + " The callback is off for this run.")
            return
        resuming = trainer.global_step > 0
        if self._store is None and self.store is not None and trainer.is_global_zero:
            # A second fit() call appends to the store the first one created. If the store cannot be
            # opened (say it already holds another run), the monitor still runs, keeping records in memory.
            self._store = self._guard(
                "opening the run store",
                lambda: open_trainer_store(
                    self.store,
                    resuming=resuming,
                    reopened=self._opened,
                    step=trainer.global_step,
                    strict=self._config.strict,
                ),
            )
            self._opened = True
        self._guard("starting the monitor", lambda: self._start(module, distributed))
        self._world = 1
        if distributed:
            everywhere, self._world = started_everywhere(self.monitor, self._guard)
            if not everywhere:
                self.monitor = None
                return
        monitor = self.monitor
        if resuming and monitor is not None:
            # Every process holds the same checkpoint, so each decides alike: all restore, or none.
            self._guard("loading the monitor state", lambda: self._resume(trainer, monitor, saved))

    def _start(self, module: Any, distributed: bool) -> None:
        # A second fit() call gets a fresh monitor. The old one is dropped, not closed: close() would close
        # the store and sinks the two share; its torch hooks go when it is freed.
        config = self._config
        if config.lr is None and "lr" not in self.monitor_kwargs:
            # The rate read in on_before_optimizer_step (None until a step reports it: no 𝒜).
            config = replace(config, lr=lambda: self._step_lr)
        config = replace(config, user={"integration": "lightning", **config.user})
        store = self._store.store if self._store is not None else None  # the callback closes it
        self.monitor = SpectralMonitor(
            module,
            config=config,
            store=store,
            sinks=self._sinks,
            distributed=self._distributed if distributed else False,
        )

    def _resume(self, trainer: Any, monitor: SpectralMonitor, saved: dict[str, Any] | None) -> None:
        step = trainer.global_step
        found = "no spectral-edge state" if saved is None else f"the state of step {saved.get('step_count')}"
        if saved is not None and "ranks" in saved:  # saved under torch.distributed: one state per process
            parts = saved["ranks"]
            if len(parts) != self._world:
                found = f"the states of {len(parts)} processes, not {self._world}"
                saved = None
            else:
                saved = parts[process_rank()] if self._world > 1 else parts[0]
        elif saved is not None and self._world > 1:
            found = "the state of one process (the whole model's window), not one per process"
            saved = None
        if saved is not None and saved.get("step_count") == step:
            monitor.load_state_dict(saved)
            if saved.get("window") is None:
                logger.info(
                    "spectral-edge: the checkpoint was saved without the window (save_window=False): "
                    "training resumes at step %d and the spectral window refills over the next %d steps "
                    "before the first record",
                    step,
                    monitor.window * monitor.interval,
                )
            return
        self._guard.warn_once(
            "no_state",
            f"training resumes at step {step} but the checkpoint holds {found}; the spectral "
            f"window refills over the next {monitor.window * monitor.interval} steps before the "
            "first record.",
        )

    # ------------------------------------------------------------------ training

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Read η, the rate the coming optimizer step uses."""
        monitor = self.monitor
        if monitor is not None:
            self._step_lr = self._guard("reading the learning rate", lambda: monitor.resolve_lr(optimizer))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Push the update when an optimizer step was taken; log the record's scalars."""
        step = trainer.global_step
        if step == self._last_global_step:  # an accumulation micro-batch: no optimizer step yet
            return
        self._last_global_step = step
        if self.monitor is None:
            return
        record = self.monitor.step(step=step)
        if record is not None:
            self._guard(
                "logging",
                lambda: pl_module.log_dict(
                    record.log_scalars(self.prefix), on_step=True, on_epoch=False, rank_zero_only=True
                ),
            )

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Write the module's scalar ``callback_metrics`` to the store's evals."""
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = self._guard(
            "reading callback_metrics",
            lambda: numeric_items(trainer.callback_metrics, skip_prefix=self.prefix),
        )
        if metrics:
            self.monitor.log_eval(trainer.global_step, **metrics)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the run store the callback opened."""
        self._store = close_trainer_store(self._store, self.monitor, self._guard)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The monitor's state for the Lightning checkpoint (``save_window`` decides about the window).

        Under torch.distributed a collective: every process's state is gathered to rank zero, whose
        state_dict alone Lightning writes, as ``{"ranks": [state of rank 0, state of rank 1, ...]}``.
        """
        monitor = self.monitor
        if monitor is None:
            return {}
        state = self._guard(
            "saving the monitor state", lambda: monitor.state_dict(include_window=self.save_window)
        )
        if self._world == 1:
            return state or {}
        import torch.distributed as dist

        # Every process joins the gather, even one whose state failed (None): the others wait for it. On
        # the host: a pickled GPU tensor would come back on the sender's device number.
        parts: list[Any] | None = [None] * self._world if dist.get_rank() == 0 else None
        # On the monitor's gloo group: the training group may be NCCL, which would stage every state on GPU 0.
        dist.gather_object(_to_cpu(state), parts, dst=0, group=monitor.process_group)
        if parts is None:
            return {}
        if any(part is None for part in parts):
            return {}  # a process could not save its part: a resumed run refills every window
        return {"ranks": parts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the restored state for ``on_train_start``, which builds the monitor."""
        # Called while the checkpoint is restored, before on_train_start builds the monitor.
        self._loaded_state = dict(state_dict) if state_dict else None


def _sharded_strategy(strategy: Any) -> str | None:
    """What the strategy says of sharding (see :func:`sharding_problem`)."""
    if getattr(strategy, "zero_stage_3", False):
        return "zero3"
    name = type(strategy).__name__
    if name in ("FSDPStrategy", "ModelParallelStrategy"):
        return f"the Trainer uses {name}"
    return None


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples moved to the host."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
