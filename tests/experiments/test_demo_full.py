"""The full main job (about 7 minutes on 2 cores): run with `make test-slow`."""

from __future__ import annotations

import dataclasses

import pytest

from spectral_edge.experiments.demo import run_demo
from spectral_edge.experiments.grokking import PRESETS


@pytest.mark.slow
def test_default_demo_groks_with_a_clear_delay_and_the_control_does_not(tmp_path):
    config = PRESETS["default"]
    grokking = run_demo(config, tmp_path / "wd1", progress=False, figure=False)
    assert grokking.grok_step is not None
    assert grokking.memorize_step is not None and grokking.memorize_step <= grokking.grok_step / 2
    assert grokking.n_records == config.max_steps - 10 + 1
    assert any(e.kind == "gap_opening" for e in grokking.events)

    control = run_demo(
        dataclasses.replace(config, weight_decay=0.0), tmp_path / "wd0", progress=False, figure=False
    )
    assert control.grok_step is None
    assert control.train.final["test_acc"] < 0.5
