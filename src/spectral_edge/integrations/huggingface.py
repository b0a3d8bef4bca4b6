"""Hugging Face ``transformers.Trainer`` integration: :class:`SpectralEdgeCallback`.

Example:
    Monitor a Trainer run, write the run store and send the spectral scalars to ``report_to``::

        from spectral_edge.integrations import SpectralEdgeCallback

        callback = SpectralEdgeCallback(window=10, store="runs/gpt2")
        trainer = Trainer(model=model, args=args, train_dataset=train_set)
        callback.attach(trainer)   # ahead of the report_to integrations
        trainer.train()            # or trainer.train(resume_from_checkpoint=True)
        callback.monitor.records   # the SpectralRecords; callback.monitor.events the events
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from spectral_edge._imports import require
from spectral_edge.integrations._common import (
    monitor_settings,
    numeric_items,
    sharding_message,
    sharding_problem,
    unwrap_model,
)
from spectral_edge.sinks.store import StoreSink
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking.monitor import SpectralMonitor

transformers = require("transformers", "SpectralEdgeCallback (the Hugging Face Trainer integration)")
from transformers.integrations import get_reporting_integration_callbacks  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

__all__ = ["STATE_FILE", "SpectralEdgeCallback"]

#: File the monitor's state is saved to inside each ``checkpoint-N/`` folder.
STATE_FILE = "spectral_edge_monitor.pt"

# Entries of the Trainer's logs that are not worth a row in the run store's evals table.
_NOT_METRICS = ("total_flos",)
_NOT_METRIC_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time")


class SpectralEdgeCallback(transformers.TrainerCallback):
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
      to the logs if they were not logged before, so TensorBoard / W&B / MLflow receive them through ``report_to``; for that the callback
      must run before the reporting callbacks, which :meth:`attach` arranges (``Trainer(callbacks=[cb])``
      puts it after them, and the scalars then reach the store only). The Trainer's own numeric logs
      (loss, learning rate, grad norm, ``eval_*`` metrics) are written to the store's evals table.
    * **Processes.** Only the world main process (``state.is_world_process_zero``) builds a monitor and
      writes; with DDP every process holds the same parameters after the step, so one is enough. Sharded
      parameters (FSDP, DeepSpeed ZeRO-3, tensor parallel) are not supported yet: the callback warns and
      stays off (raises with ``strict=True``).
    * **Resume.** ``on_save`` writes the monitor's state to ``checkpoint-N/spectral_edge_monitor.pt``.
      On ``trainer.train(resume_from_checkpoint=...)`` the callback looks for it in
      ``args.resume_from_checkpoint`` and in ``output_dir/checkpoint-<step>`` (a callback is not told the
      folder ``train()`` was given; set ``args.resume_from_checkpoint`` when resuming from elsewhere) and
      loads it if it was saved with the parameters the model now holds, so the resumed run gives the same
      records as an uninterrupted one. ``save_window=False`` saves only counters and event state (the
      window holds W + 1 copies of the parameters); the resumed monitor then refills W updates first.
      A ``store=`` path is reopened in append mode on resume.
    * **Failures.** A monitoring problem is one :class:`~spectral_edge.SpectrumWarning`; training goes on.
      ``strict=True`` raises instead.

    Args:
        store: a run directory (created; with ``mode="w"`` semantics on a fresh run) or an open
            :class:`~spectral_edge.RunStore`; None keeps records in memory only.
        prefix: name prefix of the logged scalars (TensorBoard shows them as ``train/<prefix>...``).
        save_window: save the W × P window with each checkpoint (exact resume) or not (smaller files).
        **monitor_kwargs: any :class:`~spectral_edge.SpectralMonitor` keyword (``window``, ``interval``,
            ``groups``, ``storage_dtype``, ``strict``, ``config``, ``sinks``, ...), checked here at once (the
            settings as a :class:`~spectral_edge.tracking.config.MonitorConfig`).

    Attributes:
        monitor: the :class:`~spectral_edge.SpectralMonitor` once training has begun (None before, and on
            processes other than the main one).
    """

    def __init__(
        self,
        *,
        store: Any = None,
        prefix: str = "spectral/",
        save_window: bool = True,
        **monitor_kwargs: Any,
    ) -> None:
        # Checked now, not when training starts: a MonitorConfig, and sinks with the Sink methods.
        self._config, self._sinks = monitor_settings(monitor_kwargs, caller=type(self).__name__)
        self.store = store
        self.prefix = prefix
        self.save_window = save_window
        self.monitor_kwargs = monitor_kwargs
        self.monitor: SpectralMonitor | None = None
        self._guard = Guard(strict=self._config.strict)
        self._store: StoreSink | None = None  # the run store, once training has opened it
        self._optimizer: Any = None
        self._last_logged_step: int | None = None
        self._attached = False
        self._opened = False

    def __repr__(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.monitor_kwargs.items())
        return f"{type(self).__name__}(store={self.store!r}, prefix={self.prefix!r}, {kwargs})"

    # ------------------------------------------------------------------ set-up

    def attach(self, trainer: Any) -> SpectralEdgeCallback:
        """Add the callback to ``trainer`` ahead of its ``report_to`` integrations; returns ``self``.

        The Trainer hands one ``logs`` dict to its callbacks in order and the reporting integrations come
        first, so a callback added with ``Trainer(callbacks=[...])`` or ``add_callback`` adds its scalars
        after they have been written. ``attach`` moves the callback in front of them (adding it if it is
        not there yet), and puts a small companion right after them that takes the spectral scalars out of
        the logs again, so the console printer does not print them.
        """
        handler = trainer.callback_handler
        callbacks = [cb for cb in handler.callbacks if cb is not self and not isinstance(cb, _DropScalars)]
        reporting = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        positions = [i for i, cb in enumerate(callbacks) if reporting and isinstance(cb, reporting)]
        if positions:
            callbacks.insert(positions[-1] + 1, _DropScalars(self.prefix))
            callbacks.insert(positions[0], self)
        else:
            callbacks.append(self)
        handler.callbacks[:] = callbacks
        self._attached = True
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            self.monitor = None
            return
        problem = sharding_problem(unwrap_model(model), _sharded_args(args)) if model is not None else None
        if problem is not None:
            if self._guard.strict:
                raise ValueError(sharding_message(problem))
            self._guard.warn_once("sharded", sharding_message(problem) + " The callback is off for this run.")
            self.monitor = None
            return
        if args.report_to and not self._attached:
            self._guard.warn_once(
                "not_attached",
                f"SpectralEdgeCallback was added after the report_to integrations {list(args.report_to)}, so "
                "its scalars reach the run store but not them; add it with callback.attach(trainer) instead.",
                UserWarning,
            )
        resuming = state.global_step > 0
        if self._store is None and self.store is not None:
            # A second train() call appends to the store the first one created. If the store cannot be
            # opened (say it already holds another run), the monitor still runs, keeping records in memory.
            self._store = self._guard(
                "opening the run store",
                lambda: StoreSink.open(
                    self.store,
                    resume=resuming or self._opened,
                    resume_step=state.global_step if resuming else None,
                    write_behind=not self._config.strict,
                ),
            )
            self._opened = True
        self._guard("starting the monitor", lambda: self._start(args, state, model))

    def _start(self, args: Any, state: Any, model: Any) -> None:
        resuming = state.global_step > 0
        # A second train() call gets a fresh monitor. The old one is dropped, not closed: close() would close
        # the store and sinks the two share; its torch hooks go when it is freed.
        config = self._config
        if config.lr is None and "lr" not in self.monitor_kwargs:
            # Read when a record is made, inside on_optimizer_step: before the scheduler moves the rate.
            config = replace(config, lr=self._step_lr)
        config = replace(config, user={"integration": "transformers", **config.user})
        store = self._store.store if self._store is not None else None  # the callback closes it
        self.monitor = SpectralMonitor(unwrap_model(model), config=config, store=store, sinks=self._sinks)
        self._last_logged_step = None
        if resuming:
            self._resume(args, state, unwrap_model(model))

    def _step_lr(self) -> float | None:
        """η of the step just taken, from the optimizer's groups (None when unknown: 𝒜 is left out)."""
        return self.monitor.resolve_lr(self._optimizer) if self.monitor is not None else None

    def _resume(self, args: Any, state: Any, model: Any) -> None:
        step = state.global_step
        candidates = []
        if isinstance(args.resume_from_checkpoint, (str, Path)):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}")
        fingerprint = _fingerprint(model)
        for folder in candidates:
            path = folder / STATE_FILE
            if not path.is_file():
                continue
            saved = torch.load(path, map_location="cpu", weights_only=True)
            # Only the state saved with these very parameters: another run's checkpoint-<step> has another
            # snapshot, and a window continued from it would give wrong updates.
            if saved.get("step") == step and math.isclose(
                saved.get("fingerprint"), fingerprint, rel_tol=1e-9
            ):
                self.monitor.load_state_dict(saved["monitor"])
                return
        self._guard.warn_once(
            "no_state",
            f"training resumes at step {step} but no {STATE_FILE} saved with these parameters was found in "
            f"{' or '.join(map(str, candidates))} (resuming from a folder outside output_dir? set "
            "args.resume_from_checkpoint to it); the spectral window refills over the next "
            f"{self.monitor.window * self.monitor.interval} steps before the first record.",
        )

    # ------------------------------------------------------------------ training

    def on_optimizer_step(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if self.monitor is None:
            return
        if getattr(optimizer, "step_was_skipped", False):  # fp16 grad scaler: the parameters did not move
            return
        self._optimizer = optimizer
        # global_step is incremented after this event; the step just taken is filed as global_step + 1.
        self.monitor.step(step=state.global_step + 1)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.monitor is None or logs is None:
            return
        self._guard("logging", lambda: self._log(state, logs))

    def _log(self, state: Any, logs: dict[str, Any]) -> None:
        metrics = {
            name: value
            for name, value in numeric_items(logs, skip_prefix=self.prefix).items()
            if name not in _NOT_METRICS and not name.endswith(_NOT_METRIC_SUFFIXES)
        }
        if metrics:
            self.monitor.log_eval(state.global_step, **metrics)
        if not self._attached:
            return  # behind the reporting integrations: the scalars would only reach the console printer
        record = self.monitor.last_record
        # Each record once, at the first log at or after its step (logs also come at evaluation and at the
        # end of training; with interval > 1 records and logging steps need not coincide).
        if record is not None and record.step != self._last_logged_step:
            logs.update(record.log_scalars(self.prefix))
            self._last_logged_step = record.step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None:
            return
        self._guard("saving the monitor state", lambda: self._save(args, state, kwargs.get("model")))

    def _save(self, args: Any, state: Any, model: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {folder} not found (hyperparameter search runs save elsewhere), so the "
                "monitor state was not saved; a resumed run refills its window first"
            )
        tmp = folder / (STATE_FILE + ".tmp")
        saved = {
            "step": state.global_step,
            "fingerprint": _fingerprint(unwrap_model(model)),
            "monitor": self.monitor.state_dict(include_window=self.save_window),
        }
        torch.save(saved, tmp)
        os.replace(tmp, folder / STATE_FILE)  # a killed save never leaves a half-written state file

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._store is not None and self._store.owned:
            self._guard("closing the run store", self._store.close)
            if self.monitor is not None:
                self.monitor.detach_store()  # later evaluations must not write to the closed store
            self._store = None


class _DropScalars(transformers.TrainerCallback):
    """Placed after the reporting integrations by :meth:`SpectralEdgeCallback.attach`: removes the
    spectral scalars from the logs before the console printer sees them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if isinstance(logs, Mapping):
            for name in [n for n in logs if n.startswith(self.prefix)]:
                del logs[name]


def _fingerprint(model: torch.nn.Module) -> float:
    """Σ θ² over the trainable parameters (float64): tells the parameters a state was saved with."""
    with torch.no_grad():
        return float(
            sum(p.detach().double().pow(2).sum().item() for p in model.parameters() if p.requires_grad)
        )


def _sharded_args(args: Any) -> str | None:
    if getattr(args, "fsdp", None):
        return "TrainingArguments.fsdp is set"
    ds = getattr(args, "hf_deepspeed_config", None)
    if ds is not None and getattr(ds, "is_zero3", lambda: False)():
        return "DeepSpeed ZeRO stage 3 is configured"
    return None
