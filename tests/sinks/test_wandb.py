"""WandbSink in offline mode: the history in the run's ``.wandb`` file equals the monitor's output.

wandb 0.31 has no Python reader for its transaction log, so :func:`wandb_records` reads it here. The
format is LevelDB's log: a 7-byte file header ``":W&B"``, magic 0xBEE1 and version 0, then 32 KiB blocks
of chunks, each with a 7-byte header (CRC-32, length, type FULL/FIRST/MIDDLE/LAST). Each complete chunk
sequence is one ``wandb_internal_pb2.Record``.

wandb is imported inside the tests, after the autouse fixture has moved HOME and every W&B directory into
tmp_path and made W&B offline and silent.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import time

import pytest

from spectral_edge.errors import MissingExtraError
from spectral_edge.sinks import WandbSink

pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs the wandb extra")

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path):
    """Every ``Record`` in a ``run-*.wandb`` file, in the order written."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if pos + _HEADER + length > len(data):  # a chunk still being written
            return
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += -pos % _BLOCK
            continue
        parts = [chunk] if kind in (_FULL, _FIRST) else [*parts, chunk]
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def finished_records(run_dir, timeout=30.0):
    """The records of a finished run, once W&B's service has written them all.

    ``run.finish()`` returns once the service has the run, and the service writes the file a moment
    later (measured: sometimes only the 7-byte header was on disk right after finish()). The run's
    last record is its ``exit`` record.
    """
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout} s: {len(records)} records")
        time.sleep(0.05)


def history_rows(run_dir):
    """The run's history rows as dicts of plain values, without W&B's own ``_step``/``_runtime``/... keys."""
    rows = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            which = item.WhichOneof("value")
            if which is None:
                value = json.loads(item.value_json)  # W&B writes inf as Infinity, which json reads
            elif which == "json":
                value = json.loads(item.json)
            elif which == "none":
                value = None
            else:
                value = getattr(item, which)
            row[key] = value
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def run_config(run_dir):
    """The run's config as its config records leave it (later updates replace earlier keys)."""
    config = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") != "config":
            continue
        for item in record.config.update:
            key = item.key or "/".join(item.nested_key)
            config[key] = json.loads(item.value_json)
    return config


def metric_definitions(run_dir):
    return [
        (r.metric.name, r.metric.glob_name, r.metric.step_metric)
        for r in finished_records(run_dir)
        if r.WhichOneof("record_type") == "metric"
    ]


def the_run_dir(tmp_path):
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    return run_dir


def test_the_offline_history_equals_the_records_events_and_evals(tmp_path, train):
    sink = WandbSink(project="spectral-edge-tests", mode="offline", dir=str(tmp_path))
    run = train([sink])
    run_dir = the_run_dir(tmp_path)
    rows = history_rows(run_dir)

    # one row per record, event and eval, in the order the monitor produced them
    records = [row for row in rows if "spectral/k_star" in row]
    events = [row for row in rows if "spectral/event" in row]
    evals = [row for row in rows if "spectral/eval/acc" in row]
    assert len(records) + len(events) + len(evals) == len(rows)
    assert records == [  # inf included; the user's metrics under their own names
        {
            **r.log_scalars(metric_prefix=""),
            **({"spectral/regime_label": r.regime} if r.regime is not None else {}),
            "spectral/step": r.step,
        }
        for r in run.records
    ]
    assert "loss" in records[0] and "spectral/loss" not in records[0]
    assert events == [
        {"spectral/event": f"{e.kind} at step {e.step}: {e.message}", "spectral/step": e.step}
        for e in run.events
    ]
    assert evals == [
        {**{f"spectral/eval/{k}": v for k, v in m.items()}, "spectral/step": s} for s, m in run.evals
    ]
    # charts use spectral/step as their x-axis, not W&B's own _step
    assert ("", "spectral/*", "spectral/step") in metric_definitions(run_dir)
    assert ("loss", "", "spectral/step") in metric_definitions(run_dir)  # the sink's own run
    # the config, nested under "spectral" (W&B shows spectral.monitor.window)
    config = run_config(run_dir)
    assert config["spectral"]["monitor"]["window"] == 4
    assert config["spectral"]["monitor"]["events"]["persistence"] == 1
    assert config["spectral"]["user"] == {}
    # history_rows waited for the exit record, which only run.finish() writes: the sink finished its run


def test_an_existing_run_is_left_open(tmp_path):
    import wandb

    run = wandb.init(project="spectral-edge-tests", mode="offline", dir=str(tmp_path))
    with WandbSink(run=run, prefix="se/") as sink:
        sink.write_eval(3, {"acc": 0.5})
    run.log({"mine": 1.0})  # still open
    run.finish()
    assert history_rows(the_run_dir(tmp_path)) == [{"se/eval/acc": 0.5, "se/step": 3}, {"mine": 1.0}]


def test_a_run_and_init_arguments_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        WandbSink(run=object(), project="x")


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'spectral-edge\[wandb\]'"):
        WandbSink(mode="offline")
