"""Sinks: thin adapters that send the monitor's records, events and evaluations to a logging backend.

Pass them to the monitor; it feeds every sink after its run store (itself a sink, :class:`StoreSink`,
through the same fan-out and guard) and closes them in ``close()``::

    from spectral_edge.sinks import JsonlSink, MLflowSink, TensorBoardSink, WandbSink

    mon = SpectralMonitor(model, window=10, lr=optimizer, sinks=[
        TensorBoardSink("runs/tb/exp1"),
        WandbSink(project="exp1", mode="offline"),
        MLflowSink("runs/mlruns", experiment="exp1"),
        JsonlSink("runs/exp1/spectral.jsonl"),
    ])

Every backend gets the same scalar names, those of :meth:`SpectralRecord.log_scalars
<spectral_edge.tracking.record.SpectralRecord.log_scalars>`. Importing this package imports none of
tensorboard, wandb or mlflow. Each sink imports its backend when it is constructed, and if the backend
is missing the error names the extra to install (``pip install 'spectral-edge[wandb]'``).
"""

from spectral_edge.sinks.base import Sink, as_sink
from spectral_edge.sinks.jsonl import JsonlSink
from spectral_edge.sinks.mlflow import MLflowSink
from spectral_edge.sinks.store import StoreSink
from spectral_edge.sinks.tensorboard import TensorBoardSink
from spectral_edge.sinks.wandb import WandbSink

__all__ = [
    # the interface
    "Sink",
    "as_sink",
    # backends
    "StoreSink",
    "JsonlSink",
    "MLflowSink",
    "TensorBoardSink",
    "WandbSink",
]
