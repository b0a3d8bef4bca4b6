"""Shared set-up of the sink tests: no network, no home directory, and a tiny monitored training run.

Every test here runs with HOME, the XDG directories, W&B's directories and MLflow's tracking URI inside its
own ``tmp_path``, W&B offline and silent, and MLflow's and W&B's telemetry off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import torch

from spectral_edge.tracking import EventThresholds, SpectralEvent, SpectralMonitor, SpectralRecord

N_STEPS = 40
WINDOW = 4
EVAL_EVERY = 10


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name, sub in [
        ("HOME", ""),
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_DATA_HOME", ".local/share"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
        ("WANDB_ARTIFACT_DIR", "wandb-artifacts"),
    ]:
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no stdout capture fighting pytest's
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")  # no system-metrics sampler
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns-default").as_uri())
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    # MLflowSink sets MLFLOW_ALLOW_FILE_STORE itself when it is unset: start unset, restore afterwards.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


@dataclass
class Trained:
    """What the monitor returned: the records, its events, and the evaluations the loop logged."""

    records: list[SpectralRecord]
    events: list[SpectralEvent]
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def train_monitored(sinks: Sequence[object], *, steps: int = N_STEPS, close: bool = True) -> Trained:
    """Fit ``Linear(3, 1)`` with SGD for ``steps`` steps under a monitor (W = 4) that feeds ``sinks``.

    Groups by parameter kind, so the bias group (P = 1, rank 1) has R = inf in every record: each sink
    meets a non-finite value. Event thresholds with persistence 1 make gap and k* events fire in 40 steps.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(64, 1, generator=g)
    mon = SpectralMonitor(
        model,
        window=WINDOW,
        lr=opt,
        groups=lambda name: name.split(".")[-1],
        events=EventThresholds(persistence=1, k_star_persistence=2, regime_smoothing=5),
        sinks=sinks,
    )
    out = Trained(records=[], events=[])
    for step in range(1, steps + 1):
        idx = torch.randint(0, 64, (8,), generator=g)
        opt.zero_grad()
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        loss.backward()
        opt.step()
        record = mon.step(loss=loss.item())
        if record is not None:
            out.records.append(record)
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                metrics = {"val_loss": (model(x) - y).pow(2).mean().item(), "acc": step / steps}
            mon.log_eval(step, **metrics)
            out.evals.append((step, metrics))
    if close:
        mon.close()
    out.events = list(mon.events)
    return out


@pytest.fixture
def train() -> Callable[..., Trained]:
    return train_monitored
