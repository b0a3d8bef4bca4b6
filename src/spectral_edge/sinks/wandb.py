"""Weights & Biases sink (needs the ``wandb`` extra); works online and with ``mode="offline"``.

What it logs (``prefix`` defaults to ``"spectral/"``), one ``run.log`` call each:

* a record: every entry of :meth:`SpectralRecord.log_scalars
  <spectral_edge.tracking.record.SpectralRecord.log_scalars>` plus ``{prefix}step``, the record's step,
  and ``{prefix}regime_label``, the regime's name (a string column; ``{prefix}regime`` is its index in
  :data:`~spectral_edge.tracking.record.REGIMES`: 0 plateau, 1 transition, 2 forgetting). The metrics
  passed to ``step()`` keep their own names (``loss``; ``metric_prefix`` prepends to them);
* an event: the string ``{prefix}event`` (``"<kind> at step <n>: <message>"``) plus ``{prefix}step``;
* an evaluation: ``{prefix}eval/{name}`` plus ``{prefix}step``;
* the configuration (``{"monitor": ..., "user": ...}``): ``run.config.update({"spectral": config},
  allow_val_change=True)``, nested as it is (W&B shows ``spectral.monitor.window``), updated whenever
  the monitor's config changes.

Steps: the sink never passes ``step=`` to ``run.log``. It declares ``{prefix}step`` as the x-axis of
``{prefix}*`` with ``run.define_metric``, the convention of the Hugging Face and Lightning W&B loggers.
So the sink can share a run with a framework logger, and neither drops the other's rows as "step less
than the current step". In a run the sink starts itself, the metrics passed to ``step()`` use
``{prefix}step`` too; in a run it is given, their x-axis is left to the run's owner. W&B's own ``_step`` advances by one per call, so if you also log to the same
run with an explicit ``run.log(..., step=n)``, give your metrics an x-axis metric of their own instead:
W&B drops a row whose ``step`` is below its current one.

Non-finite values (R = inf at a rank edge) are logged as they are: W&B's history accepts ±inf and NaN
(stored as ``Infinity``/``NaN``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spectral_edge._imports import require
from spectral_edge.sinks.base import Sink
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

__all__ = ["WandbSink"]


class WandbSink(Sink):
    """Logs the monitor's records, events and evaluations to a W&B run.

    Args:
        run: an existing run (``wandb.init(...)``'s result, or ``wandb.run``) to log into; the sink
            leaves it open on ``close()``, since its owner finishes it.
        prefix: prepended to every key of the monitor's own.
        metric_prefix: prepended to the metrics passed to ``step()`` (default none: ``loss`` stays
            ``loss``).
        **init_kwargs: without ``run``, the sink starts its own run with ``wandb.init(**init_kwargs)``
            (``project=``, ``mode="offline"``, ``dir=``, ...) and finishes it on ``close()``.

    Raises:
        MissingExtraError: wandb is not installed.
        ValueError: both ``run`` and ``wandb.init`` arguments were given.

    Example::

        sink = WandbSink(project="grokking", mode="offline", dir="runs/wandb")
        mon = SpectralMonitor(model, window=10, lr=optimizer, sinks=[sink])
        # ... train, calling mon.step() ...
        mon.close()  # finishes the run; later: wandb sync runs/wandb/wandb/offline-run-*
    """

    def __init__(
        self, run: Any = None, *, prefix: str = "spectral/", metric_prefix: str = "", **init_kwargs: Any
    ) -> None:
        if run is not None and init_kwargs:
            raise ValueError(
                "pass either run= (an existing W&B run) or wandb.init arguments for a new run, not both; "
                f"got run={run!r} and {sorted(init_kwargs)}"
            )
        wandb = require("wandb", "WandbSink")
        self.prefix = prefix
        self.metric_prefix = metric_prefix
        self.step_key = prefix + "step"
        self._defined: set[str] = set()  # metrics of step() given the x-axis step_key
        self._owns_run = run is None
        self.run = wandb.init(**init_kwargs) if run is None else run
        self.run.define_metric(self.step_key)
        self.run.define_metric(prefix + "*", step_metric=self.step_key)
        self._closed = False

    def __repr__(self) -> str:
        return f"WandbSink(run={getattr(self.run, 'id', self.run)!r}, prefix={self.prefix!r})"

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update({self.prefix.strip("/") or "spectral": dict(config)}, allow_val_change=True)

    def write_record(self, record: SpectralRecord) -> None:
        row: dict[str, Any] = dict(record.log_scalars(self.prefix, metric_prefix=self.metric_prefix))
        if self._owns_run:
            for name in record.metrics:
                key = self.metric_prefix + name
                if key not in self._defined and not key.startswith(self.prefix):
                    self.run.define_metric(key, step_metric=self.step_key)
                    self._defined.add(key)
        if record.regime is not None:
            row[self.prefix + "regime_label"] = record.regime
        self.run.log({**row, self.step_key: record.step})

    def write_event(self, event: SpectralEvent) -> None:
        text = f"{event.kind} at step {event.step}: {event.message}" if event.message else event.kind
        self.run.log({self.prefix + "event": text, self.step_key: event.step})

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        values = {f"{self.prefix}eval/{name}": float(value) for name, value in metrics.items()}
        self.run.log({**values, self.step_key: int(step)})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_run:
            self.run.finish()
