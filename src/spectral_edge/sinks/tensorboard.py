"""TensorBoard sink, through ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` extra).

What it writes, at the record's step (``prefix`` defaults to ``"spectral/"``):

* scalars: every entry of :meth:`SpectralRecord.log_scalars
  <spectral_edge.tracking.record.SpectralRecord.log_scalars>` (k*, R, g, K95, 𝒜, the regime as its index
  in :data:`~spectral_edge.tracking.record.REGIMES`: 0 plateau, 1 transition, 2 forgetting; ``sigma/j``,
  ``alpha/j``, each group's k* and R), and the metrics passed to ``step()`` under their own names
  (``loss``; ``metric_prefix`` prepends to them);
* the regime as text too, under ``{prefix}regime_label`` (the Text tab), at each record where it changes;
* a histogram of σ_1 … σ_W under ``{prefix}sigma``;
* events as Markdown text under ``{prefix}events`` (the Text tab), at the event's step;
* evaluations as scalars ``{prefix}eval/{name}``;
* the configuration (``{"monitor": ..., "user": ...}``) as hyperparameters of the HParams tab, in the
  same event files (no sub-run): dotted keys (``spectral.monitor.window``) of
  :func:`~spectral_edge.sinks.base.flat_config`, with ``{prefix}k_star`` and ``{prefix}gap_ratio`` as
  the dashboard's metrics. Written when the monitor starts and again whenever its config changes; the
  dashboard shows the latest.

Non-finite values (R = inf at a rank edge) are written as they are: TensorBoard's event files store
±inf and NaN, and read them back unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from spectral_edge._imports import require
from spectral_edge.sinks.base import Sink, flat_config
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

__all__ = ["TensorBoardSink"]


class TensorBoardSink(Sink):
    """Writes the monitor's records, events and evaluations to TensorBoard event files.

    Args:
        log_dir: the directory of the event files (``SummaryWriter(log_dir)``); point ``tensorboard
            --logdir`` at it or at its parent.
        writer: instead of ``log_dir``, an existing ``SummaryWriter`` to log into (for example the one a
            framework's TensorBoard logger holds); ``close()`` then only flushes it: its owner closes it.
        prefix: prepended to every tag of the monitor's own (the hparams' keys take it as
            ``spectral.``).
        histogram: also write σ as a histogram.
        metric_prefix: prepended to the metrics passed to ``step()`` (default none: ``loss`` stays
            ``loss``).

    Raises:
        MissingExtraError: tensorboard is not installed.
        ValueError: neither or both of ``log_dir`` and ``writer`` were given.

    Example::

        mon = SpectralMonitor(model, window=10, lr=optimizer, sinks=[TensorBoardSink("runs/tb/exp1")])
        # ... train, calling mon.step() ...
        mon.close()  # closes the writer; then: tensorboard --logdir runs/tb
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: Any = None,
        prefix: str = "spectral/",
        histogram: bool = True,
        metric_prefix: str = "",
    ) -> None:
        if (log_dir is None) == (writer is None):
            raise ValueError(
                "pass exactly one of log_dir (a directory for new event files) and writer (an existing "
                f"SummaryWriter), got log_dir={log_dir!r} and writer={writer!r}"
            )
        self.log_dir = log_dir
        self.prefix = prefix
        self.histogram = histogram
        self.metric_prefix = metric_prefix
        self._owns_writer = writer is None
        if log_dir is not None:
            require("tensorboard", "TensorBoardSink")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=os.fspath(log_dir))
        self.writer = writer
        self._regime: str | None = None  # the regime last written as text
        self._closed = False

    def __repr__(self) -> str:
        where = f"{os.fspath(self.log_dir)!r}" if self.log_dir is not None else f"writer={self.writer!r}"
        return f"TensorBoardSink({where}, prefix={self.prefix!r})"

    def write_config(self, config: Mapping[str, Any]) -> None:
        namespace = self.prefix.strip("/") or "spectral"
        values = flat_config({namespace: config})
        metrics = {self.prefix + "k_star": 0.0, self.prefix + "gap_ratio": 0.0}  # names only: none written
        # SummaryWriter.add_hparams would write into a new sub-run (a directory named by the time); the
        # three summaries go into this writer's own event file instead, as the HParams tab reads them.
        get_file_writer = getattr(self.writer, "_get_file_writer", None)
        if get_file_writer is None:  # a writer other than torch's or tensorboardX's: text in the Text tab
            text = "\n".join(f"    {key} = {value}" for key, value in values.items())
            self.writer.add_text(self.prefix + "config", text)
            return
        # Imported here: a writer of another library (above) must not need torch's tensorboard support.
        from torch.utils.tensorboard.summary import hparams

        file_writer = get_file_writer()
        for summary in hparams(values, metrics):
            file_writer.add_summary(summary)

    def write_record(self, record: SpectralRecord) -> None:
        for tag, value in record.log_scalars(self.prefix, metric_prefix=self.metric_prefix).items():
            self.writer.add_scalar(tag, value, global_step=record.step)
        if record.regime is not None and record.regime != self._regime:
            self.writer.add_text(self.prefix + "regime_label", record.regime, global_step=record.step)
            self._regime = record.regime
        if self.histogram:
            self.writer.add_histogram(self.prefix + "sigma", record.singular_values, global_step=record.step)

    def write_event(self, event: SpectralEvent) -> None:
        # The Text tab renders Markdown: escape the * of "k*" so two of them do not italicise the line.
        message = event.message.replace("*", r"\*")
        text = f"**{event.kind}** at step {event.step}: {message}" if message else f"**{event.kind}**"
        self.writer.add_text(self.prefix + "events", text, global_step=event.step)

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{self.prefix}eval/{name}", float(value), global_step=int(step))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()
