"""Streaming state: the update window, the online monitor, events, and offline checkpoint analysis."""

from spectral_edge.tracking.checkpoints import analyze_checkpoints, load_state_dict
from spectral_edge.tracking.events import EventDetector, EventThresholds
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import GroupSpectrum, SpectralEvent, SpectralRecord
from spectral_edge.tracking.window import ParameterLayout, PushResult, UpdateWindow

__all__ = [
    "SpectralMonitor",
    "SpectralRecord",
    "SpectralEvent",
    "GroupSpectrum",
    "EventDetector",
    "EventThresholds",
    "UpdateWindow",
    "ParameterLayout",
    "PushResult",
    "analyze_checkpoints",
    "load_state_dict",
]
