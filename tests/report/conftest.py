"""Real monitored runs for the report tests: a 2-layer MLP on random regression data, 150 steps.

Training alternates between noisy two-sample minibatches and full-batch steps (steps 51-100), so the
update spectrum changes on the way and the monitor reports events (a gap opens when the smooth
full-batch updates line up).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spectral_edge import SpectralMonitor

STEPS = 150
WINDOW = 10
EVAL_EVERY = 20
GROUPS = {"hidden": ["0"], "out": ["2"]}


def train_run(
    path: Path, *, weight_decay: float, lr: bool = True, groups: object = GROUPS, evals: bool = True
) -> Path:
    """Train the MLP with the monitor at every step and evaluations every 20 steps; returns ``path``.

    Args:
        path: the run directory to create.
        weight_decay: SGD's weight decay (the two runs of the overlay differ in it).
        lr: give the monitor the optimizer (for 𝒜); False leaves 𝒜 out.
        groups: the monitor's ``groups=``.
        evals: log evaluations.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=weight_decay)
    x, y = torch.randn(128, 8), torch.randn(128, 1)
    x_val, y_val = torch.randn(64, 8), torch.randn(64, 1)
    batches = torch.Generator().manual_seed(1)
    with SpectralMonitor(
        model,
        window=WINDOW,
        lr=opt if lr else None,
        store=path,
        groups=groups,
        config={"task": "random regression", "weight_decay": weight_decay},
    ) as mon:
        for step in range(1, STEPS + 1):
            if 50 < step <= 100:
                xb, yb = x, y
            else:
                i = torch.randint(0, len(x), (2,), generator=batches)
                xb, yb = x[i], y[i]
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss.item())
            if evals and step % EVAL_EVERY == 0:
                with torch.no_grad():
                    val = torch.nn.functional.mse_loss(model(x_val), y_val).item()
                    full = torch.nn.functional.mse_loss(model(x), y).item()
                mon.log_eval(step, val_loss=val, train_loss=full)
    return path


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real monitored runs that differ only in weight decay (1.0 and 0.0), for the overlay."""
    root = tmp_path_factory.mktemp("report-runs")
    return train_run(root / "mlp-wd1", weight_decay=1.0), train_run(root / "mlp-wd0", weight_decay=0.0)
