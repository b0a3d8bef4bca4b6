"""MLflow sink, through ``mlflow.tracking.MlflowClient`` (needs the ``mlflow`` extra; mlflow-skinny will do).

What it logs to the run (``prefix`` defaults to ``"spectral/"``):

* a record: every entry of :meth:`SpectralRecord.log_scalars
  <spectral_edge.tracking.record.SpectralRecord.log_scalars>` as a metric at the record's step, in one
  ``log_batch`` call (or more, if it holds over MLflow's 1000 metrics per batch). The regime is the
  metric ``{prefix}regime``, its index in :data:`~spectral_edge.tracking.record.REGIMES` (0 plateau,
  1 transition, 2 forgetting), and the tag ``{prefix}regime_label``, its name, set when it changes (a
  tag holds the latest value). The metrics passed to ``step()`` keep their own names (``loss``;
  ``metric_prefix`` prepends to them);
* an evaluation: metrics ``{prefix}eval/{name}`` at its step;
* events: the artifact ``spectral_events.json``, ``{"events": [SpectralEvent.to_dict(), ...]}``,
  rewritten with every new event (events are rare);
* the configuration (``{"monitor": ..., "user": ...}``): run params with dotted keys
  (``spectral.monitor.window``, from :func:`~spectral_edge.sinks.base.flat_config`), values as strings
  cut to MLflow's 6000 characters and keys to its 250 (characters MLflow refuses in a key become ``_``).
  MLflow never changes a param once logged, so a config that changes mid-run (a layer unfrozen) adds its
  new keys as params and keeps the first value of the others; the artifact ``spectral_config.json``
  always holds the latest config in full.

Where it logs, without a server: a local directory, MLflow's file store. MLflow 3.x can also keep runs in
SQLite (``sqlite:///mlflow.db``, its default), but that store needs SQLAlchemy and Alembic, which the full
``mlflow`` package installs and ``mlflow-skinny`` does not. The file store works with both. MLflow 3.x
refuses the file store unless the environment variable ``MLFLOW_ALLOW_FILE_STORE`` is true. Giving the
sink a local directory is a request for that store, so the sink sets ``MLFLOW_ALLOW_FILE_STORE=true`` in
``os.environ`` when the variable is unset. If you set it to false yourself, MLflow's error is raised.
Read the runs back with ``MlflowClient(tracking_uri)``, or ``mlflow ui --backend-store-uri <dir>``,
with the variable set. Any other URI (``http://``, ``sqlite:``, ``databricks``) goes to MLflow unchanged,
except that a database URI without SQLAlchemy raises at once with this advice. That includes MLflow's
default when no tracking URI is set.

Non-finite values (R = inf at a rank edge) are logged as they are. MLflow accepts them: the file store
keeps ±inf and NaN, and the SQL stores keep NaN and turn ±inf into ±1.8e308.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectral_edge._imports import require
from spectral_edge.errors import MissingExtraError
from spectral_edge.sinks.base import Sink, flat_config
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

__all__ = ["MLflowSink"]

#: The artifact that holds the run's events.
EVENTS_ARTIFACT = "spectral_events.json"
#: The artifact that holds the latest configuration in full.
CONFIG_ARTIFACT = "spectral_config.json"
_MAX_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
_MAX_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
_MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
_NOT_IN_KEYS = re.compile(r"[^\w./\- :]")  # MLflow's keys: alphanumerics, _ - . space / and :
_NOT_FILE_STORES = ("databricks", "databricks-uc", "uc")  # URIs without "://" that are not paths
_DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")  # "sqlite", "postgresql+psycopg2", ...


class MLflowSink(Sink):
    """Logs the monitor's records, evaluations and events to an MLflow run.

    Args:
        tracking_uri: where runs are kept: a local directory (a path or a ``file:`` URI, MLflow's file
            store; see the module docstring), a server URI, or None for MLflow's current tracking URI
            (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``).
        experiment: the experiment a new run goes into, created if missing (ignored with ``run_id``).
        run_id: an existing run to log into (e.g. ``mlflow.active_run().info.run_id``); the sink leaves
            it open on ``close()``. Without it the sink creates a run and ends it (FINISHED) on ``close()``.
        run_name: the name of the run the sink creates.
        prefix: prepended to every metric key of the monitor's own (params take it as ``spectral.``).
        metric_prefix: prepended to the metrics passed to ``step()`` (default none: ``loss`` stays
            ``loss``).

    Raises:
        MissingExtraError: mlflow is not installed, or the URI is a database (``sqlite:``, MLflow's default)
            and SQLAlchemy is not (mlflow-skinny).
        MlflowException: the tracking URI cannot be opened or ``run_id`` does not exist.

    Example::

        mon = SpectralMonitor(model, window=10, lr=optimizer, sinks=[MLflowSink("runs/mlruns")])
        # ... train, calling mon.step() ...
        mon.close()  # ends the run
        # then: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/mlruns
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike[str] | None = None,
        *,
        experiment: str = "spectral-edge",
        run_id: str | None = None,
        run_name: str | None = None,
        prefix: str = "spectral/",
        metric_prefix: str = "",
    ) -> None:
        mlflow = require("mlflow", "MLflowSink")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        if isinstance(tracking_uri, os.PathLike):
            tracking_uri = Path(tracking_uri).resolve().as_uri()
        uri = tracking_uri if tracking_uri is not None else mlflow.get_tracking_uri()
        if _is_database(uri) and not _has_sqlalchemy():
            where = " (MLflow's current one: MLFLOW_TRACKING_URI, set_tracking_uri or its default)"
            where = where if tracking_uri is None else ""
            raise MissingExtraError(
                f"MLflowSink: the tracking URI {uri!r}{where} is a database store, which needs SQLAlchemy: "
                "pip install mlflow (the full package, not mlflow-skinny), or give the sink a directory "
                "for MLflow's file store instead, e.g. MLflowSink('runs/mlruns')"
            )
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = uri
        self.prefix = prefix
        self.metric_prefix = metric_prefix
        self._metric = Metric
        self._param = Param
        self._regime: str | None = None  # the regime tag last set
        self.client = MlflowClient(tracking_uri=uri)
        self._params: dict[str, str] = {}  # params the run holds: MLflow refuses to change them
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found is not None else self.client.create_experiment(experiment)
            )
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            self._owns_run = True
        else:
            # Fails now, not at the first record, if the run does not exist. Its params are kept as they
            # are: a resumed run's second monitor must not try to change one (MLflow raises).
            self._params.update(self.client.get_run(run_id).data.params)
            self._owns_run = False
        self.run_id = run_id
        self.experiment = experiment
        self._events: list[dict[str, Any]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"MLflowSink({self.tracking_uri!r}, run_id={self.run_id!r}, prefix={self.prefix!r})"

    def write_config(self, config: Mapping[str, Any]) -> None:
        namespace = self.prefix.strip("/") or "spectral"
        new = []
        for key, value in flat_config({namespace: config}).items():
            key = _NOT_IN_KEYS.sub("_", key)[:_MAX_KEY]
            text = str(value)
            text = text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 1] + "…"
            if key not in self._params:
                new.append((key, text))
        for start in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            batch = new[start : start + _MAX_PARAMS_PER_BATCH]
            self.client.log_batch(self.run_id, params=[self._param(key, text) for key, text in batch])
            self._params.update(batch)  # only once logged: a batch that failed is tried again next time
        self.client.log_dict(self.run_id, dict(config), CONFIG_ARTIFACT)

    def write_record(self, record: SpectralRecord) -> None:
        self._log(record.step, record.log_scalars(self.prefix, metric_prefix=self.metric_prefix))
        if record.regime is not None and record.regime != self._regime:
            self.client.set_tag(self.run_id, self.prefix + "regime_label", record.regime)
            self._regime = record.regime

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self._log(int(step), {f"{self.prefix}eval/{name}": float(value) for name, value in metrics.items()})

    def write_event(self, event: SpectralEvent) -> None:
        self._events.append(event.to_dict())
        self.client.log_dict(self.run_id, {"events": self._events}, EVENTS_ARTIFACT)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_run:
            self.client.set_terminated(self.run_id, status="FINISHED")

    def _log(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH])


def _is_database(uri: str) -> bool:
    """Whether MLflow opens ``uri`` with its SQLAlchemy store (mlflow.store.db.db_types.DATABASE_ENGINES)."""
    return urllib.parse.urlparse(uri).scheme.lower().startswith(_DATABASE_SCHEMES)


def _has_sqlalchemy() -> bool:
    return importlib.util.find_spec("sqlalchemy") is not None


def _is_file_store(uri: str) -> bool:
    """Whether MLflow opens ``uri`` as its file store: a path or a ``file:`` URI."""
    if uri in _NOT_FILE_STORES:
        return False
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha())  # "C:\\runs" is a path
