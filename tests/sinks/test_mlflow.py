"""MLflowSink: metric histories read back with MlflowClient equal the monitor's records and evals.

mlflow is imported inside the tests, after the autouse fixture has moved HOME and turned telemetry off:
importing it at collection would write ~/.config/mlflow/telemetry.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from spectral_edge.errors import MissingExtraError
from spectral_edge.sinks import MLflowSink
from spectral_edge.sinks.mlflow import CONFIG_ARTIFACT, EVENTS_ARTIFACT, _is_file_store

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs the mlflow extra")


def client_for(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_exception():
    from mlflow.exceptions import MlflowException

    return MlflowException


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_metric_histories_equal_the_records_evals_and_events(tmp_path, train):
    sink = MLflowSink(tmp_path / "mlruns", experiment="sinks-test", run_name="tiny")
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # set by the sink, which was given a directory
    run = train([sink])

    client = client_for((tmp_path / "mlruns").resolve().as_uri())
    info = client.get_run(sink.run_id)
    assert info.info.status == "FINISHED"  # the sink created the run and ended it
    assert info.info.run_name == "tiny"
    assert client.get_experiment(info.info.experiment_id).name == "sinks-test"

    scalars = [r.log_scalars(metric_prefix="") for r in run.records]
    assert "loss" in scalars[0] and "spectral/loss" not in scalars[0]  # the user's metric, its own name
    eval_keys = {f"spectral/eval/{name}" for name in run.evals[0][1]}
    assert set(info.data.metrics) == set(scalars[0]) | eval_keys
    for key in scalars[0]:
        # float64 all the way: equal, inf included (the bias group's R)
        assert history(client, sink.run_id, key) == [
            (r.step, s[key]) for r, s in zip(run.records, scalars, strict=True)
        ], key
    for name in run.evals[0][1]:
        assert history(client, sink.run_id, f"spectral/eval/{name}") == [(s, m[name]) for s, m in run.evals]

    path = client.download_artifacts(sink.run_id, EVENTS_ARTIFACT, str(tmp_path / "artifacts"))
    with open(path) as f:
        assert json.load(f) == {"events": [e.to_dict() for e in run.events]}


def test_the_config_is_params_and_the_regime_a_tag(tmp_path, train):
    from spectral_edge.tracking.record import REGIMES

    sink = MLflowSink(tmp_path / "mlruns")
    run = train([sink])
    client = client_for((tmp_path / "mlruns").resolve().as_uri())
    data = client.get_run(sink.run_id).data

    params = data.params
    assert params["spectral.monitor.window"] == "4"
    assert params["spectral.monitor.lr"] == "SGD"
    assert params["spectral.monitor.events.persistence"] == "1"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())
    assert all(k.startswith("spectral.") for k in params)
    path = client.download_artifacts(sink.run_id, CONFIG_ARTIFACT, str(tmp_path / "artifacts"))
    with open(path) as f:
        assert json.load(f)["monitor"]["window"] == 4

    regimes = [r.regime for r in run.records if r.regime is not None]
    assert regimes
    assert data.tags["spectral/regime_label"] == regimes[-1]  # a tag holds the latest regime
    assert history(client, sink.run_id, "spectral/regime") == [
        (r.step, float(REGIMES.index(r.regime))) for r in run.records if r.regime is not None
    ]


def test_a_changed_config_adds_new_params_and_keeps_the_first_values(tmp_path):
    sink = MLflowSink(tmp_path / "mlruns")
    long = "x" * 7000
    sink.write_config({"monitor": {"window": 4}, "user": {"note": long, "odd key[0]": 1}})
    sink.write_config({"monitor": {"window": 8, "excluded": {"head.weight": "frozen"}}, "user": {}})
    sink.close()
    client = client_for((tmp_path / "mlruns").resolve().as_uri())
    params = client.get_run(sink.run_id).data.params
    assert params["spectral.monitor.window"] == "4"  # MLflow refuses to change a param
    assert params["spectral.monitor.excluded.head.weight"] == "frozen"
    assert len(params["spectral.user.note"]) == 6000 and params["spectral.user.note"].endswith("…")
    assert params["spectral.user.odd key_0_"] == "1"
    path = client.download_artifacts(sink.run_id, CONFIG_ARTIFACT, str(tmp_path / "artifacts"))
    with open(path) as f:
        assert json.load(f)["monitor"]["window"] == 8  # the artifact holds the latest


def test_an_existing_run_is_left_open(tmp_path, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("mine")).info.run_id
    with MLflowSink(uri, run_id=run_id, prefix="") as sink:
        sink.write_eval(7, {"acc": 0.5})
    assert client.get_run(run_id).info.status == "RUNNING"
    assert history(client, run_id, "eval/acc") == [(7, 0.5)]
    with pytest.raises(mlflow_exception()):
        MLflowSink(uri, run_id="0" * 32)


def test_an_explicit_refusal_of_the_file_store_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    with pytest.raises(mlflow_exception(), match="MLFLOW_ALLOW_FILE_STORE"):
        MLflowSink(str(tmp_path / "mlruns"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("runs/mlruns", True),
        ("/abs/mlruns", True),
        ("file:///abs/mlruns", True),
        ("C:\\runs\\mlruns", True),
        ("http://localhost:5000", False),
        ("sqlite:///mlflow.db", False),
        ("databricks", False),
    ],
)
def test_which_uris_are_the_file_store(uri, expected):
    assert _is_file_store(uri) is expected


def test_missing_mlflow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'spectral-edge\[mlflow\]'"):
        MLflowSink(tmp_path)


def test_a_database_uri_without_sqlalchemy_says_what_to_do(tmp_path, monkeypatch):
    import spectral_edge.sinks.mlflow as sink_module

    monkeypatch.setattr(sink_module, "_has_sqlalchemy", lambda: False)  # as with mlflow-skinny
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(
        MissingExtraError, match=r"MLflow's current one.* is a database store.*MLflowSink\('runs/mlruns'\)"
    ):
        MLflowSink()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_resumed_run_keeps_its_params_and_takes_new_ones(tmp_path, monkeypatch):
    """A second sink on the same run (training resumed with another config) must not try to change a
    param: MLflow raises on that, which would stop the monitor's construction."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("resumed")).info.run_id
    with MLflowSink(uri, run_id=run_id) as first:
        first.write_config({"monitor": {"window": 4}})
    with MLflowSink(uri, run_id=run_id) as second:
        second.write_config({"monitor": {"window": 8, "interval": 2}})
    params = client.get_run(run_id).data.params
    assert params["spectral.monitor.window"] == "4" and params["spectral.monitor.interval"] == "2"
