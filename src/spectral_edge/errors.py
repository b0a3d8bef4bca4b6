"""Exceptions and warnings raised by spectral-edge.

Monitoring must never kill a training run over a numerical hiccup, so most problems surface as a
:class:`SpectrumWarning` plus an event in the run store; the exceptions below are raised for invalid
arguments, for corrupt input, or when the user asked for ``strict=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # errors.py imports nothing of the library at run time (the store imports it)
    from spectral_edge.store import StoreBacklog


class SpectralEdgeError(Exception):
    """Base class of every exception raised by spectral-edge."""


class SpectrumWarning(UserWarning):
    """A numerical issue that was handled (clipped eigenvalues, a skipped update, ...)."""


class NonFiniteUpdateError(SpectralEdgeError, FloatingPointError):
    """An update contained NaN or Inf and the monitor runs in strict mode."""


class ParameterLayoutError(SpectralEdgeError, ValueError):
    """The set, order or shapes of the monitored parameters changed after the monitor started."""


class NotPositiveSemidefiniteError(SpectralEdgeError, ValueError):
    """A Gram matrix had an eigenvalue far below zero: it is not X Xᵀ of any real X."""


class RunStoreError(SpectralEdgeError, RuntimeError):
    """A run store is missing, half-written, or was written by an incompatible version."""


class StoreWriteError(RunStoreError):
    """A run store could not commit a write (a full disk, a file it may not write, an I/O error).

    The store keeps such writes in memory and retries them (see :class:`~spectral_edge.store.RunStore`'s
    ``max_held``); :attr:`backlog` says how many are held and how many were lost. :attr:`started` is true
    for the failure that began a run of failures, :attr:`first_loss` for the first write lost in it, and
    :attr:`closed` when the store raised it from ``close()``, where whatever was still held is lost.
    """

    def __init__(
        self, message: str, *, backlog: StoreBacklog, started: bool, first_loss: bool, closed: bool = False
    ) -> None:
        super().__init__(message)
        self.backlog = backlog  # errors.py imports nothing at run time: the type is for checkers only
        self.started = started
        self.first_loss = first_loss
        self.closed = closed


class DistributedMonitorError(SpectralEdgeError, RuntimeError):
    """A collective of a monitor spread over several processes failed or timed out: a process died or
    stopped calling the monitor. Raised even without ``strict``: the job cannot go on as one."""


class MissingExtraError(SpectralEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
