"""The main job's smoke preset through the real command line: training, monitor, store, summary, figure."""

from __future__ import annotations

import pytest

from spectral_edge import RunStore
from spectral_edge.cli.main import main
from spectral_edge.experiments.grokking import PRESETS


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "smoke"
    return run


def test_smoke_demo_end_to_end(smoke_run, capsys):
    assert main(["demo", "--preset", "smoke", "--out", str(smoke_run), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    config = PRESETS["smoke"]

    # The monitor must not change training: the grokking run is the recipe's own, step for step
    # (tests/experiments/test_grokking.py pins the same steps without a monitor).
    assert "memorised           at step 300" in summary
    assert "grokked             at step 1340" in summary
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
    assert steps[0] == 0 and steps[-1] == config.max_steps and test_acc[-1] > 0.95
    assert "wq_ratio" in evals
    assert all(e.kind != "nonfinite_update" for e in events)

    # Pinned numbers of this deterministic run (CPU, torch 2.13.0): the last record's spectrum.
    last = records[-1]
    assert last["k_star"] == PINNED_LAST_K_STAR
    assert last["gap_ratio"] == pytest.approx(PINNED_LAST_GAP_RATIO, rel=1e-3)
    assert last["metrics"]["loss"] == pytest.approx(PINNED_LAST_LOSS, rel=1e-3)

    png = smoke_run / "spectrum.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


PINNED_LAST_K_STAR = 1
PINNED_LAST_GAP_RATIO = 8.4899
PINNED_LAST_LOSS = 0.0011752
