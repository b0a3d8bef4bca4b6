"""Streaming state: the update window, the tracker, the online monitor, events, and offline analysis.

The layers, each its own class: :class:`MonitorConfig` (the settings, checked once) →
:class:`SpectralTracker` (the :class:`UpdateWindow`, :func:`build_record` and the :class:`EventDetector`)
→ :class:`SpectralMonitor` (a thin online shell: parameters, interval, η, the fan-out to the run store and
the sinks) and :func:`analyze_checkpoints` (the same tracker over saved checkpoints).
"""

from spectral_edge.tracking.build import PushedWindow, build_record
from spectral_edge.tracking.checkpoints import analyze_checkpoints, load_state_dict
from spectral_edge.tracking.config import MonitorConfig
from spectral_edge.tracking.distributed import Distributed
from spectral_edge.tracking.events import EventDetector, EventThresholds
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import GroupSpectrum, SpectralEvent, SpectralRecord
from spectral_edge.tracking.tracker import SpectralTracker, TrackResult
from spectral_edge.tracking.window import ParameterLayout, PushResult, UpdateWindow

__all__ = [
    # online monitoring
    "SpectralMonitor",
    "MonitorConfig",
    "Distributed",
    # the tracker and its parts
    "SpectralTracker",
    "TrackResult",
    "build_record",
    "PushedWindow",
    "EventDetector",
    "EventThresholds",
    "UpdateWindow",
    "ParameterLayout",
    "PushResult",
    # what is reported
    "SpectralRecord",
    "SpectralEvent",
    "GroupSpectrum",
    # offline analysis
    "analyze_checkpoints",
    "load_state_dict",
]
