"""Float32 windows read like float64: every push path against a dense float64 SVD of the same updates.

The issue this guards against: dot products accumulated in float32 carried errors near 1e-7·‖x‖‖a‖, so
σ_j below about 1e-3·σ_1 were lost (and cut to zero), k* jumped to the cut, and updates near 1e-30 or
1e19 underflowed or overflowed. Now every push path accumulates in float64 and the rank cut is what float32
storage supports (:func:`spectral_edge.spectrum.window.storage_rank_rtol`).

The trajectories are float32 parameters whose updates have a planted spectrum spanning six decades: the
direction of component j lives on its own block of coordinates, so each coordinate of θ only ever holds
values of one component's scale, and θ's float32 rounding perturbs every component by ~1e-7 of itself
(with shared coordinates, rounding θ at the largest scale would bury the smallest components). The
reference is the float64 SVD of the exact differences θ_t − θ_{t−1} of the float32 parameters.

Targets (issue 13): σ_j within 1e-5 relative for σ_j ≥ 1e-4·σ_1; k* equal wherever the two largest ratios
differ by more than 1%; any update scale from 1e-30 to 1e30 is pushed (never "not moved", never NaN);
the offline analysis of the same trajectory reads the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectral_edge import SpectralMonitor, analyze_checkpoints
from spectral_edge.spectrum.window import DEFAULT_RANK_RTOL, storage_rank_rtol
from spectral_edge.tracking._native import native_kernel
from spectral_edge.tracking.window import UpdateWindow

KERNELS = ["torch", pytest.param("fused", marks=pytest.mark.skipif(native_kernel() is None, reason="no C++"))]
SIGMA_RTOL = 1e-5  # on σ_j ≥ SIGMA_FLOOR·σ_1
SIGMA_FLOOR = 1e-4


def planted_trajectory(
    *, steps: int, n_params: int, components: int, decades: float, scale: float, seed: int
) -> list[np.ndarray]:
    """θ_0 … θ_steps as float32 arrays: δ_t = Σ_j c_tj s_j v_j with s_j = scale·10^(−decades·j/(r−1)),
    c_tj ~ N(0, 1) and unit v_j on disjoint blocks of coordinates (see the module docstring)."""
    rng = np.random.default_rng(seed)
    s = scale * 10.0 ** (-decades * np.arange(components) / (components - 1))
    v = np.zeros((components, n_params))
    for j, block in enumerate(np.array_split(rng.permutation(n_params), components)):
        u = rng.standard_normal(block.size)
        v[j, block] = u / np.linalg.norm(u)
    theta = [(rng.standard_normal(n_params) * (s @ np.abs(v))).astype(np.float32)]
    for _ in range(steps):
        delta = (rng.standard_normal(components) * s) @ v
        theta.append((theta[-1].astype(np.float64) + delta).astype(np.float32))
    return theta


def exact_updates(theta: list[np.ndarray]) -> np.ndarray:
    """The (steps, P) exact float64 differences of the float32 parameters."""
    stacked = np.stack([t.astype(np.float64) for t in theta])
    return np.diff(stacked, axis=0)


def assert_reads_like_float64(
    sigma: np.ndarray, k_star: int, updates: np.ndarray, rank_rtol: float = DEFAULT_RANK_RTOL
) -> None:
    """σ and k* of one record against the dense float64 SVD of the window's exact updates.

    k* is compared with the reference's argmax over the ratios whose σ_{j+1} lies above the window's rank
    cut (what float32 storage resolves, ``rank_rtol``); where a reference σ_j sits within a factor 2 of
    the cut, or the two largest ratios are within 1% (a tie), which side of it wins is not defined."""
    want = np.linalg.svd(updates, compute_uv=False)
    resolved = want >= SIGMA_FLOOR * want[0]
    np.testing.assert_allclose(sigma[resolved], want[resolved], rtol=SIGMA_RTOL, atol=0)
    cut = np.sqrt(rank_rtol) * want[0]
    if np.any((want > cut / 2) & (want < 2 * cut)):
        return
    ratios = (want[:-1] / np.where(want[1:] >= cut, want[1:], np.inf))[: max(1, int(np.sum(want >= cut)) - 1)]
    top2 = np.sort(ratios)[-2:]
    if len(ratios) == 1 or top2[1] > 1.01 * top2[0]:
        assert k_star == int(np.argmax(ratios)) + 1


def run_monitor(theta: list[np.ndarray], window: int, kernel: str) -> list:
    """Drive a monitor over the trajectory (θ written into one float32 parameter); its records. A warning
    fails the test (pytest's filterwarnings = error), so a skipped update would too."""
    param = torch.nn.Parameter(torch.from_numpy(theta[0].copy()))
    mon = SpectralMonitor([param], window=window, lr=1.0, groups=None, kernel=kernel)
    records = []
    for t in theta[1:]:
        with torch.no_grad():
            param.copy_(torch.from_numpy(t))
        rec = mon.step()
        if rec is not None:
            records.append(rec)
    mon.close()
    assert not [e for e in mon.events if e.kind in ("nonfinite_update", "zero_update")]
    return records


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e19, 1e30], ids=lambda s: f"scale{s:g}")
def test_six_decades_read_like_float64_at_every_scale(kernel, scale):
    """A monitor with the default float32 window, on a trajectory whose update spectrum spans six decades,
    against the float64 SVD of the same updates, record by record."""
    window, steps = 10, 24
    theta = planted_trajectory(
        steps=steps, n_params=3000, components=12, decades=7, scale=scale, seed=int(abs(np.log10(scale)))
    )
    updates = exact_updates(theta)
    records = run_monitor(theta, window, kernel)
    rank_rtol = storage_rank_rtol(2.0**-24, window)  # float32 storage
    assert len(records) == steps - window + 1  # every update was pushed: none read as "not moved" or NaN
    spans = []
    for rec in records:
        assert np.all(np.isfinite(rec.singular_values))
        block = updates[rec.step - window : rec.step]
        want = np.linalg.svd(block, compute_uv=False)
        spans.append(want[0] / want[-1])
        assert rec.rank >= np.count_nonzero(want >= 1e-6 * want[0])  # nothing resolved was cut
        assert_reads_like_float64(np.asarray(rec.singular_values), rec.k_star, block, rank_rtol)
    assert min(spans) > 1e5 and max(spans) > 1e6  # every window spans five decades, some six or more


@pytest.mark.parametrize("kernel", KERNELS)
def test_offline_analysis_reads_as_the_online_monitor(kernel, tmp_path):
    """The same trajectory saved as checkpoints and read by analyze_checkpoints gives the online records."""
    window, steps = 6, 12
    theta = planted_trajectory(steps=steps, n_params=2000, components=8, decades=6, scale=1e-3, seed=7)
    online = run_monitor(theta, window, kernel)
    paths = []
    for step, t in enumerate(theta):
        path = tmp_path / f"step-{step}.pt"
        torch.save({"w": torch.from_numpy(t.copy())}, path)
        paths.append(path)
    offline = analyze_checkpoints(paths, window=window, groups=None)
    assert len(offline) == len(online)
    updates = exact_updates(theta)
    for on, off in zip(online, offline, strict=True):
        assert off.step == on.step
        # Both accumulate in float64, in different orders: eigenvalues equal to round-off relative to λ_1.
        lam_on, lam_off = np.square(on.singular_values), np.square(off.singular_values)
        np.testing.assert_allclose(lam_off, lam_on, rtol=0, atol=1e-14 * lam_on[0])
        assert off.k_star == on.k_star
        assert_reads_like_float64(
            np.asarray(off.singular_values), off.k_star, updates[on.step - window : on.step]
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.integers(2, 64),
    n_params=st.integers(1, 100_000),
    rank=st.integers(1, 64),
    log_scale=st.floats(-30, 30),
    kernel=st.sampled_from(["torch", "fused"]),
    seed=st.integers(0, 2**16),
)
def test_any_window_accumulates_like_float64(window, n_params, rank, log_scale, kernel, seed):
    """Property: whatever W (2–64), P (1–10⁵), planted rank and scale (1e-30–1e30), the window's Gram
    is the float64 Gram of the rows it stores, every push is taken, and its eigenvalues above the cut are
    those of a dense float64 SVD of the stored rows."""
    if kernel == "fused" and native_kernel() is None:
        kernel = "torch"
    rng = np.random.default_rng(seed)
    scale = 10.0**log_scale
    rank = min(rank, window, n_params)
    basis = rng.standard_normal((rank, n_params))
    win = UpdateWindow(n_params, window=window, kernel=kernel)
    theta = torch.zeros(n_params)
    win.snapshot([theta])
    for _ in range(window + 2):
        delta = (rng.standard_normal(rank) * scale) @ basis / np.sqrt(n_params)
        new = theta + torch.from_numpy(delta).float()
        assert torch.isfinite(new).all()
        moved = bool(torch.any(new != theta))  # below θ's float32 resolution nothing moves: no update
        theta = new
        assert win.push([theta]).status == ("pushed" if moved else "zero")
    rows = win.updates().double().numpy()
    reference = rows @ rows.T
    gram = win.gram()
    top = float(np.max(np.abs(reference)))
    np.testing.assert_allclose(gram, reference, rtol=0, atol=1e-13 * top)
    want = np.zeros(len(rows))  # σ_j beyond min(W, P) are 0
    want[: min(rows.shape)] = np.linalg.svd(rows, compute_uv=False)
    eig = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))
    resolved = want >= SIGMA_FLOOR * want[0]
    np.testing.assert_allclose(eig[resolved], want[resolved], rtol=SIGMA_RTOL)


def test_storage_rank_cut_is_the_weyl_bound_of_rounding():
    """The cut of a float32 window is no coarser than float64's for W ≤ 28, and bfloat16's sits where
    rounding every stored entry can move σ_j (u·√W·σ_1)."""
    assert storage_rank_rtol(2.0**-24, 28) == DEFAULT_RANK_RTOL
    assert storage_rank_rtol(2.0**-24, 64) == pytest.approx(64 * 2.0**-48)
    assert np.sqrt(storage_rank_rtol(2.0**-8, 10)) == pytest.approx(np.sqrt(10) * 2.0**-8)
    assert UpdateWindow(5, window=10).rank_rtol == DEFAULT_RANK_RTOL
    assert UpdateWindow(5, window=10, storage_dtype=torch.bfloat16).rank_rtol == pytest.approx(10 * 2.0**-16)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_real_training_trajectory_reads_like_float64(kernel):
    """A small network trained with AdamW (P ≈ 10⁴, as the smoke grokking recipe, where the old float32
    accumulation cut σ_j below 1e-3·σ_1 in a sixth of the records): every record against the float64
    SVD of the exact updates of its parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 48))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    window = 10
    mon = SpectralMonitor(model, window=window, lr=opt, kernel=kernel)
    inputs, targets = torch.randn(64, 32), torch.randint(0, 48, (64,))
    flat = [torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()]
    records = []
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.step()
        flat.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double())
        rec = mon.step()
        if rec is not None:
            records.append(rec)
    mon.close()
    updates = torch.diff(torch.stack(flat), dim=0).numpy()
    assert len(records) == 40 - window + 1
    for rec in records:
        assert rec.rank == window
        assert_reads_like_float64(
            np.asarray(rec.singular_values), rec.k_star, updates[rec.step - window : rec.step]
        )
