"""The interface every sink implements: where a monitor sends its records, events and evaluations.

A sink is a thin adapter. It takes what :class:`~spectral_edge.tracking.monitor.SpectralMonitor` produces
and hands it to one logging backend. Everything a sink logs as scalars comes from
:meth:`SpectralRecord.log_scalars <spectral_edge.tracking.record.SpectralRecord.log_scalars>`, so every
backend shows the same names.

The monitor calls the methods through its one fan-out and failure guard, the run store
(:class:`~spectral_edge.sinks.store.StoreSink`) first. Outside strict mode, a sink that raises costs one
:class:`~spectral_edge.errors.SpectrumWarning` and never an exception in the training loop.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from typing import Any

from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

__all__ = ["SINK_METHODS", "Sink", "as_sink", "flat_config"]

#: The methods the monitor calls; an object with all four can be a sink without subclassing :class:`Sink`.
SINK_METHODS = ("write_record", "write_event", "write_eval", "close")


class Sink(abc.ABC):
    """Receives the monitor's output: one call per record, event and evaluation, then ``close()``.

    Subclass it and implement :meth:`write_record`; the other methods do nothing unless overridden.
    The monitor also accepts any object that has the four methods of :data:`SINK_METHODS`.

    Sinks are context managers; ``close()`` must be safe to call more than once.

    Example:
        >>> class PrintSink(Sink):
        ...     def write_record(self, record):
        ...         print(record.step, record.k_star)
        >>> import torch
        >>> from spectral_edge.tracking import SpectralMonitor
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = SpectralMonitor(model, window=2, sinks=[PrintSink()])
        >>> for _ in range(3):
        ...     opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
        ...     _ = mon.step()
        2 1
        3 1
        >>> mon.close()
    """

    @property
    def label(self) -> str:
        """How the monitor's warnings name this sink: ``"the sink <class name>"``."""
        return f"the sink {type(self).__name__}"

    #: Whether a config this sink refuses when the monitor is built is the caller's error (raised then)
    #: rather than a failure to warn about: True for the run store only.
    checks_config: bool = False

    @abc.abstractmethod
    def write_record(self, record: SpectralRecord) -> None:
        """Log one record (called after the monitor has written it to its run store)."""

    def write_config(self, config: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Log the run's configuration, ``{"monitor": ..., "user": ...}``; called when the monitor starts
        and whenever its parameter set changes. Default: ignored."""

    def write_event(self, event: SpectralEvent) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Log one event (gap opening, collapse, k* shift, ...). Default: ignored."""

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:  # noqa: B027
        """Log evaluation metrics (test loss, accuracy, ...) at ``step``. Default: ignored."""

    def close(self) -> None:  # noqa: B027
        """Flush and release what the sink opened. Default: nothing to release."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def flat_config(config: Mapping[str, Any], *, sep: str = ".") -> dict[str, bool | int | float | str]:
    """A nested config as one level of dotted keys and scalar values: the form of MLflow params and
    TensorBoard hparams.

    Nested mappings are joined with ``sep`` (an empty one is left out), ``None`` becomes ``"None"`` and
    any other non-scalar (a list, say) its JSON text.

    Example:
        >>> flat_config({"monitor": {"window": 10, "regimes": {"low": 0.1}, "excluded": {}},
        ...              "user": {"tags": ["a", "b"], "seed": None}})
        {'monitor.window': 10, 'monitor.regimes.low': 0.1, 'user.tags': '["a", "b"]', 'user.seed': 'None'}
    """
    out: dict[str, bool | int | float | str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                walk(item, f"{key}{sep}{name}" if key else str(name))
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is None:
            out[key] = "None"
        else:
            out[key] = json.dumps(value, default=str)

    walk(config, "")
    return out


def as_sink(obj: Any) -> Sink:
    """``obj`` as a :class:`Sink`: itself if it is one, else an adapter over an object with the four methods.

    Raises:
        TypeError: ``obj`` lacks some of :data:`SINK_METHODS`; the message names them.

    Example:
        >>> class Printer:
        ...     def write_record(self, record): print(record)
        ...     def write_event(self, event): pass
        ...     def write_eval(self, step, metrics): pass
        ...     def close(self): pass
        >>> as_sink(Printer()).label
        'the sink Printer'
    """
    if isinstance(obj, Sink):
        return obj
    missing = [m for m in SINK_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise TypeError(
            f"sinks must be spectral_edge.sinks.Sink objects (write_record, write_event, write_eval, close), "
            f"got {type(obj).__name__} without {', '.join(missing)}: subclass Sink or add the methods"
        )
    return _DuckSink(obj)


class _DuckSink(Sink):
    """A :class:`Sink` over an object that has the four methods without subclassing :class:`Sink`."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    @property
    def label(self) -> str:
        return f"the sink {type(self.obj).__name__}"

    def write_record(self, record: SpectralRecord) -> None:
        self.obj.write_record(record)

    def write_event(self, event: SpectralEvent) -> None:
        self.obj.write_event(event)

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.obj.write_eval(step, metrics)

    def write_config(self, config: Mapping[str, Any]) -> None:
        write = getattr(self.obj, "write_config", None)  # optional, as on Sink
        if callable(write):
            write(config)

    def close(self) -> None:
        self.obj.close()
