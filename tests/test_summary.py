"""summarize_run: a run store reduced to the numbers `spectral-edge summary` and `compare` print."""

from __future__ import annotations

import json

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.demo import GROK_ACC
from spectral_edge.errors import RunStoreError
from spectral_edge.summary import GROK_THRESHOLD, metric_direction, open_run, summarize_run
from tests.cli.runs import WINDOW, write_empty_run, write_run


def test_the_grokking_threshold_is_the_demos():
    assert GROK_THRESHOLD == GROK_ACC


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val_loss", "min"),
        ("test_error", "min"),
        ("eval_perplexity", "min"),
        ("test_acc", "max"),
        ("eval_accuracy", "max"),
        ("f1", "max"),
        ("wq_sigma1", None),
        ("lr", None),
    ],
)
def test_metric_direction(name, direction):
    assert metric_direction(name) == direction


def test_grok_metric_can_be_chosen_and_must_exist(tmp_path):
    write_run(tmp_path / "run", n_steps=20)
    s = summarize_run(tmp_path / "run", grok_metric="test_acc", grok_threshold=0.45)
    assert (s.grok_metric, s.grok_step) == ("test_acc", 20)  # TEST_ACC[20] = 0.5
    assert summarize_run(tmp_path / "run", grok_threshold=0.999).grok_step is None
    with pytest.raises(
        ValueError, match=r"no evaluation named 'val_acc'; it logged \['test_acc', 'test_loss'\]"
    ):
        summarize_run(tmp_path / "run", grok_metric="val_acc")


def test_an_open_store_is_summarised_and_left_open(tmp_path):
    write_run(tmp_path / "run", n_steps=8, evals=False)
    with RunStore(tmp_path / "run", mode="r") as store:
        s = summarize_run(store)
        assert len(store) == s.n_records == 8 - WINDOW + 1  # still open
    assert s.grok_metric is None and s.evals == {}


def test_infinite_gap_ratios_are_counted_apart(tmp_path):
    """A rank-one window (one scalar moves) has R = inf: it is the peak but stays out of mean and median."""
    p, q = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(3))
    g = torch.Generator().manual_seed(0)
    with SpectralMonitor({"p": p, "q": q}, window=4, store=tmp_path / "run") as mon:
        for i in range(1, 9):
            with torch.no_grad():
                p += 0.1 * i
                if i > 4:
                    q += torch.randn(3, generator=g)
            mon.step()
    with RunStore(tmp_path / "run", mode="r") as store:
        ratios = [r["gap_ratio"] for r in store.records()]
    assert ratios[0] == float("inf") and all(r < float("inf") for r in ratios[1:])
    s = summarize_run(tmp_path / "run")
    assert s.n_infinite_gap_ratio == 1 and (s.gap_ratio_peak, s.gap_ratio_peak_step) == (float("inf"), 4)
    assert s.gap_ratio_mean == pytest.approx(sum(ratios[1:]) / 4)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["gap_ratio"]["peak"] == "inf" and d["gap_ratio"]["n_infinite"] == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="the path does not exist"):
        open_run(tmp_path / "missing")
    write_empty_run(tmp_path / "empty")
    with pytest.raises(RunStoreError, match="has no records yet"):
        summarize_run(tmp_path / "empty")
