"""Fixtures shared by the grokking recipe's tests and the demo's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from spectral_edge.experiments.grokking import PRESETS, TrainResult, build_model, make_data, train


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Train on one torch thread. The trajectory depends on the thread count, so runs compared bit for bit
    must use the same one; and on a busy 2-core machine two threads per op wait on each other (the smoke
    preset measured 8× slower with two than with one on the AMD EPYC under a load of 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def grokking_smoke_run() -> tuple[TrainResult, list, list, list]:
    """The smoke preset trained once on one torch thread, without a monitor: the result and every
    callback's arguments.

    Session-wide so the demo's test can check, step for step on this machine, that its monitored run is
    this one (the trajectory itself differs between CPUs, so no test pins its numbers).
    """
    config = PRESETS["smoke"]
    steps, evals, ticks = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread; set here too, as a session fixture is set up first
    try:
        result = train(
            config,
            build_model(config),
            make_data(config),
            on_step=lambda step, metrics: steps.append((step, metrics)),
            on_eval=lambda step, metrics: evals.append((step, metrics)),
            progress=lambda step, total, metrics: ticks.append((step, total)),
        )
    finally:
        torch.set_num_threads(threads)
    return result, steps, evals, ticks
