"""The main job's smoke preset through the real command line: training, monitor, store, summary, figure."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from spectral_edge import RunStore
from spectral_edge.cli.main import main
from spectral_edge.experiments.grokking import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/experiments/conftest.py


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "smoke"
    return run


def _summary_step(summary: str, what: str) -> int:
    match = re.search(rf"^{what} +at step (\d+) ", summary, flags=re.MULTILINE)
    assert match, f"no '{what} at step N' line in the summary:\n{summary}"
    return int(match.group(1))


def test_smoke_demo_end_to_end(smoke_run, grokking_smoke_run, capsys):
    assert main(["demo", "--preset", "smoke", "--out", str(smoke_run), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    config = PRESETS["smoke"]
    unmonitored, *_ = grokking_smoke_run  # tests/experiments/conftest.py: the same recipe, no monitor

    # The summary reports the memorise and grok steps the run reached (which differ between CPUs: 320 and
    # 1500 on an AMD EPYC with one thread; test_grokking.py checks the recipe's margins).
    memorised, grokked = _summary_step(summary, "memorised"), _summary_step(summary, "grokked")
    assert memorised < grokked
    assert str(smoke_run / "run.db") in summary

    with RunStore(smoke_run, mode="r") as store:
        records = store.records()
        evals = store.evals()
        config_saved = store.config()
        events = store.events()
    # One record per step once the W = 10 window is full.
    assert len(records) == config.max_steps - 10 + 1
    assert [r["step"] for r in records[:2]] == [10, 11]
    assert config_saved["user"]["recipe"]["operation"] == "add"
    assert config_saved["monitor"]["window"] == 10
    steps, test_acc = evals["test_acc"]
    assert steps.tolist() == list(range(0, config.max_steps + 1, config.eval_every))  # every evaluation
    assert "wq_ratio" in evals
    assert all(e.kind != "nonfinite_update" for e in events)

    # The monitor must not change training: on this machine the monitored run is the recipe's own, step
    # for step, bit for bit (its numbers are those of the conftest's run without a monitor).
    assert test_acc.tolist() == list(unmonitored.history["test_acc"])
    assert evals["train_loss"][1].tolist() == list(unmonitored.history["train_loss"])
    assert [r["metrics"]["loss"] for r in records] == list(unmonitored.losses[9:])
    assert (memorised, grokked) == (unmonitored.memorize_step, unmonitored.grok_step)

    # The last record's spectrum is consistent in itself: σ descending, R = σ_k* / σ_k*+1 ≥ 1.
    last = records[-1]
    sigma = np.asarray(last["singular_values"])
    assert len(sigma) == 10 and (np.diff(sigma) <= 0).all() and sigma[-1] >= 0
    k = last["k_star"]
    assert 1 <= k < len(sigma) and last["gap_ratio"] == pytest.approx(sigma[k - 1] / sigma[k], rel=1e-9)
    assert math.isfinite(last["gap_ratio"]) and last["gap_ratio"] >= 1

    png = smoke_run / "spectrum.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
