"""Plain PyTorch: ``SpectralMonitor.attach(optimizer)`` in a loop with gradient accumulation and a scheduler.

tests/tracking/test_monitor.py already checks that attach() gives one record per ``optimizer.step()``
matching ``analyze_window`` and that ``log_metrics`` reach the record. Here: the hook sees only real
optimizer steps when gradients are accumulated, and the learning rate it reads is the one the step used
(the hook runs inside ``optimizer.step()``, before ``scheduler.step()``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge import SpectralMonitor, analyze_window

WINDOW = 3
STEPS = 8
ACCUMULATION = 3


def flat(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]).numpy().copy()


def test_attach_with_gradient_accumulation_and_a_scheduler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
    mon = SpectralMonitor(model, window=WINDOW, lr=opt, storage_dtype=torch.float64)
    mon.attach(opt)  # the one line that turns monitoring on

    g = torch.Generator().manual_seed(1)
    snapshots, lrs = [flat(model)], []
    for _ in range(STEPS):
        for _ in range(ACCUMULATION):  # micro-batches: backward only, no record
            x, y = torch.randn(4, 5, generator=g), torch.randn(4, 2, generator=g)
            (nn.functional.mse_loss(model(x), y) / ACCUMULATION).backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        snapshots.append(flat(model))
        schedule.step()
        opt.zero_grad()
    mon.close()

    records = list(mon.records)
    assert [r.step for r in records] == list(range(WINDOW, STEPS + 1))
    deltas = np.diff(np.stack(snapshots), axis=0)  # (STEPS, P), row t-1 is the update of step t
    for record in records:
        ref = analyze_window(deltas[record.step - WINDOW : record.step])
        np.testing.assert_allclose(
            record.singular_values, ref.singular_values, rtol=1e-9, atol=1e-12 * ref.singular_values[0]
        )
        assert record.lr == pytest.approx(lrs[record.step - 1], rel=1e-15)
    # After close() the hook is gone: another step makes no record.
    model(torch.randn(4, 5)).sum().backward()
    opt.step()
    assert len(mon.records) == len(records)


# ------------------------------------------------------------------ the integrations package itself


def test_importing_the_integrations_package_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, spectral_edge.integrations as i; "
        "assert not {'transformers', 'lightning', 'pytorch_lightning'} & set(sys.modules), sorted(sys.modules); "
        "assert 'SpectralEdgeCallback' in dir(i)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "module", "framework", "extra"),
    [
        ("SpectralEdgeCallback", "spectral_edge.integrations.huggingface", "transformers", "hf"),
        (
            "SpectralEdgeLightningCallback",
            "spectral_edge.integrations.lightning",
            "lightning.pytorch",
            "lightning",
        ),
    ],
)
def test_a_missing_framework_names_the_extra_to_install(monkeypatch, name, module, framework, extra):
    import sys

    import spectral_edge.integrations as integrations
    from spectral_edge import MissingExtraError

    monkeypatch.setitem(sys.modules, framework, None)  # makes `import framework` raise ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=rf"pip install 'spectral-edge\[{extra}\]'"):
        getattr(integrations, name)
