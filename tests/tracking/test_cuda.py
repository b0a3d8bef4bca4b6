"""The GPU path: windows, sketches and the monitor on CUDA tensors, against float64 references on the host.

These run where CUDA is present and skip elsewhere (this project's CI has no GPU; docs/scale.md says
which card ran them last). The window's push on an accelerator is the torch path of ``UpdateWindow`` in
blocks of up to 2^24 values; the eigen stage runs on the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_edge import SpectralMonitor
from spectral_edge.tracking import MonitorConfig, SpectralTracker, UpdateWindow
from spectral_edge.tracking.sketch import SketchedWindow

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _updates(p: int, w: int, seed: int = 0) -> torch.Tensor:
    """(W, P) float32 updates with σ over three decades."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, w, generator=gen, dtype=torch.float64))
    return (q * torch.logspace(0, -3, w, dtype=torch.float64)).T.float().contiguous()


def _reference_sigma(rows: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(rows.double().cpu().numpy(), compute_uv=False)


@pytest.mark.parametrize("storage", ["cuda", "cpu"])  # on the device, and offloaded to the host
def test_window_of_cuda_parameters_matches_a_float64_svd(storage: str) -> None:
    p, w = 300_000, 6
    rows = _updates(p, w)
    theta = torch.zeros(p, device="cuda")
    win = UpdateWindow(p, window=w, storage_device=storage)
    win.snapshot([theta])
    for row in rows:
        theta += row.cuda()
        assert win.push([theta]).status == "pushed"
    stored = win.updates()  # what the window holds: θ_t − θ_{t−1} rounded once to float32
    lam = np.linalg.eigvalsh(win.gram())[::-1]
    np.testing.assert_allclose(np.sqrt(lam), _reference_sigma(stored), rtol=1e-9)
    np.testing.assert_allclose(np.sqrt(lam), _reference_sigma(rows), rtol=1e-5)


def test_sketch_of_cuda_parameters_equals_the_host_sketch() -> None:
    p, w, m = 200_000, 4, 2048
    rows = _updates(p, w, seed=1)
    host, device = torch.zeros(p), torch.zeros(p, device="cuda")
    a = SketchedWindow(p, window=w, sketch_dim=m, seed=3)
    b = SketchedWindow(p, window=w, sketch_dim=m, seed=3)
    a.snapshot([host])
    b.snapshot([device])
    for row in rows:
        host += row
        device += row.cuda()
        a.push([host])
        b.push([device])
    np.testing.assert_allclose(b.gram(), a.gram(), rtol=1e-12)


def test_monitor_on_a_cuda_model_reads_like_one_on_the_host() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = SpectralMonitor(model, window=5, lr=opt, storage_dtype=torch.float64)
    snapshots = [{n: p.detach().double().cpu() for n, p in model.named_parameters()}]
    records = []
    for _ in range(12):
        x = torch.randn(32, 64, device="cuda")
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = mon.step()
        snapshots.append({n: p.detach().double().cpu() for n, p in model.named_parameters()})
        if record is not None:
            records.append(record)
    tracker = SpectralTracker(
        list(snapshots[0].items()), config=MonitorConfig(window=5, storage_dtype=torch.float64)
    )
    want = [
        r.record for r in (tracker.observe(s, step=i) for i, s in enumerate(snapshots[1:], 1)) if r.record
    ]
    assert len(want) == len(records) == 8
    for got, ref in zip(records, want, strict=True):
        np.testing.assert_allclose(got.singular_values, ref.singular_values, rtol=1e-9)
        assert got.k_star == ref.k_star
