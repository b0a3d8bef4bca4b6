"""A real training process with the monitor writing to a run store, killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from spectral_edge import RunStore

TRAINING = textwrap.dedent(
    """
    import sys, torch
    from spectral_edge import SpectralMonitor
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = SpectralMonitor(model, window=5, lr=opt, store=sys.argv[1])
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    step = 0
    while True:  # trains until killed
        step += 1
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if mon.step(loss=loss.item()) is not None:
            print(step, flush=True)  # the record of this step is handed to the store
        if step % 10 == 0:
            mon.log_eval(step, train_loss=loss.item())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_store_keeps_every_committed_record_of_a_killed_training_run(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINING, str(run)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    printed = []
    deadline = time.monotonic() + 120
    try:
        while len(printed) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit, no close(): killed mid-step
        proc.wait(timeout=30)
        proc.stdout.close()
    assert len(printed) >= 40, "the training process did not produce records"

    with RunStore(run, mode="r") as store:
        steps = [r["step"] for r in store.records()]
        evals = store.evals()
        config = store.config()
    # Every record the process handed to the store is in it, in order, and readable after the kill, but
    # for at most the one in flight on the store's writer thread (the README's promise).
    assert steps == printed[: len(steps)] or steps == printed + [printed[-1] + 1]
    assert len(steps) >= len(printed) - 1
    assert config["monitor"]["window"] == 5
    assert "train_loss" in evals
