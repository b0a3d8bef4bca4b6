"""Exceptions and warnings raised by spectral-edge.

Monitoring must never kill a training run over a numerical hiccup, so most problems surface as a
:class:`SpectrumWarning` plus an event in the run store; the exceptions below are raised for invalid
arguments, for corrupt input, or when the user asked for ``strict=True``.
"""

from __future__ import annotations


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


class MissingExtraError(SpectralEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
