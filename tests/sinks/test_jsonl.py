"""JsonlSink: the lines read back equal what the monitor returned, are strict JSON, and survive a kill."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap

import pytest

from spectral_edge.sinks import JsonlSink
from spectral_edge.tracking import SpectralEvent


def read_lines(path):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def test_lines_read_back_equal_the_monitors_records_events_and_evals(tmp_path, train):
    path = tmp_path / "logs" / "spectral.jsonl"  # the parent is created
    run = train([JsonlSink(path)])
    lines = read_lines(path)
    assert all(isinstance(line.pop("wall_time"), float) for line in lines)

    records = [line for line in lines if line["type"] == "record"]
    events = [line for line in lines if line["type"] == "event"]
    evals = [line for line in lines if line["type"] == "eval"]
    assert len(records) + len(events) + len(evals) == len(lines)
    assert records == [{"type": "record", **r.to_dict()} for r in run.records]
    assert events == [{"type": "event", **e.to_dict()} for e in run.events]
    assert evals == [{"type": "eval", "step": step, "metrics": m} for step, m in run.evals]
    # R = inf of the rank-one bias group is the string "inf", as in to_dict and the run store
    assert {r["groups"]["bias"]["gap_ratio"] for r in records} == {"inf"}
    # the lines come in the order the monitor produced them: steps never go back
    steps = [line["step"] for line in lines]
    assert steps == sorted(steps)


def test_append_and_truncate(tmp_path):
    path = tmp_path / "e.jsonl"
    event = SpectralEvent(step=1, kind="zero_update", message="k* → ∞")
    for mode, expected in [("a", 1), ("a", 2), ("w", 1)]:
        with JsonlSink(path, mode=mode) as sink:
            sink.write_event(event)
        assert len(read_lines(path)) == expected
    assert read_lines(path)[0]["message"] == "k* → ∞"  # UTF-8 as it is
    with pytest.raises(ValueError, match="mode must be 'a'"):
        JsonlSink(path, mode="x")


def test_non_finite_evals_are_strings_and_a_closed_sink_refuses_writes(tmp_path):
    sink = JsonlSink(tmp_path / "e.jsonl")
    sink.write_eval(3, {"loss": math.inf, "acc": math.nan, "n": 1})
    sink.close()
    sink.close()  # twice is fine
    assert read_lines(tmp_path / "e.jsonl")[0]["metrics"] == {"loss": "inf", "acc": "nan", "n": 1.0}
    with pytest.raises(ValueError, match="closed"):
        sink.write_eval(4, {"acc": 1.0})


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_process_keeps_every_line_it_wrote(tmp_path):
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal
        from spectral_edge.sinks import JsonlSink
        from spectral_edge.tracking import SpectralEvent
        sink = JsonlSink({str(path)!r})
        for step in range(5):
            sink.write_event(SpectralEvent(step=step, kind="zero_update"))
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no interpreter shutdown, no buffer flush
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [line["step"] for line in read_lines(path)] == [0, 1, 2, 3, 4]
