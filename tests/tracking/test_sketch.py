"""SketchedWindow: a CountSketched window against independent references.

The hash is checked against a pure-Python-integer implementation of its definition (not the vectorised
code); the push path against sketches of the explicit updates (linearity) and against an exact
UpdateWindow fed the same updates (statuses, counts); the spectrum against a dense float64 SVD of the
planted window, with tolerances set about three times above the errors measured for these seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spectral_edge.tracking.sketch as sketch_module
from spectral_edge.tracking._native import native_op
from spectral_edge.tracking.build import PushedWindow, build_record
from spectral_edge.tracking.config import MonitorConfig
from spectral_edge.tracking.sketch import SketchedWindow, count_sketch, count_sketch_hash, sketch_error_bound
from spectral_edge.tracking.window import ParameterLayout, UpdateWindow, WindowShare

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# ------------------------------------------------------------------ an independent reference of the hash


def ref_mix64(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_output(key: int, n: int) -> int:
    """Output n of a splitmix64 generator seeded with ``key``, shifted right by one bit."""
    return ref_mix64((key + (n + 1) * GOLDEN) & M64) >> 1


def ref_hash(i: int, m: int, seed: int) -> tuple[int, int]:
    """The documented definition of count_sketch_hash, one index at a time, in Python integers."""
    k0, k1, k2 = (ref_output(seed, n) for n in range(3))
    a = ref_output(k0, i & 0xFFFF) ^ ref_output(k2, i >> 16)
    b = a ^ ref_output(k1, a >> 47)
    j = ((b & 0xFFFFFFFF) * 2 * m) >> 32
    return j >> 1, 1 - 2 * (j & 1)


def ref_sketch(values: list[float], offset: int, m: int, seed: int) -> list[float]:
    buckets: list[list[float]] = [[] for _ in range(m)]
    for k, v in enumerate(values):
        h, s = ref_hash(offset + k, m, seed)
        buckets[h].append(s * v)
    return [math.fsum(b) for b in buckets]


INDICES = [
    0,
    1,
    2,
    65_534,
    65_535,
    65_536,
    65_537,
    1_000_003,
    2**31 - 1,
    2**32 + 7,
    2**40 + 123_456,
    2**61 + 5,
]


@pytest.mark.parametrize("seed", [0, 12_345, 2**64 - 1])
@pytest.mark.parametrize("m", [1, 7, 1000, 2**20])
def test_hash_equals_its_definition_in_python_integers(seed: int, m: int) -> None:
    buckets, signs = count_sketch_hash(INDICES, m, seed)
    expected = [ref_hash(i, m, seed) for i in INDICES]
    assert buckets.tolist() == [h for h, _ in expected]
    assert signs.tolist() == [s for _, s in expected]


def test_pinned_sketch_of_a_fixed_vector() -> None:
    # Pinned once from ref_sketch (Python integers); a change of the hash, on any machine, breaks it.
    values = [0.5, -1.25, 2.0, 3.0, -0.75, 1.0, 4.5, -2.0, 0.25, 1.5]
    pinned = [3.25, 3.0, -4.5, 1.5, 0.0]
    offset = 65_531  # straddles a segment boundary
    assert ref_sketch(values, offset, 5, 42) == pinned
    assert count_sketch(torch.tensor(values), offset, 5, 42).tolist() == pinned
    # The vectorised window path (multi-segment pieces, chunks smaller than a segment) agrees too.
    win = SketchedWindow(10, window=2, sketch_dim=5, seed=42, offsets=[offset], chunk_size=3)
    win.push_update(values)
    assert win.updates()[0].tolist() == pinned


def test_bucket_loads_and_signs_are_balanced() -> None:
    # A coarse check that the hash spreads a contiguous range (what a model's parameters are).
    buckets, signs = count_sketch_hash(np.arange(1 << 20), 64, 3)
    counts = np.bincount(buckets, minlength=64)
    assert abs(counts - (1 << 14)).max() < 6 * math.sqrt(1 << 14)
    assert abs(int(signs.sum())) < 6 * math.sqrt(1 << 20)


# ------------------------------------------------------------------ linearity: S θ_t − S θ_{t−1} = S δ_t


def test_pushed_differences_equal_sketches_of_the_updates() -> None:
    gen = torch.Generator().manual_seed(0)
    names, shapes = ["a.w", "a.b", "b.w", "b.b"], [(300, 400), (300,), (500, 150), (7,)]
    layout, _ = ParameterLayout.build(names, shapes, lambda n: n.split(".")[0])
    thetas = [torch.randn(s, generator=gen) * 2e-2 for s in layout.shapes]  # float32, P ≈ 2e5
    pushed = SketchedWindow(layout, window=4, sketch_dim=4096, seed=5, chunk_size=50_000)
    direct = SketchedWindow(layout, window=4, sketch_dim=4096, seed=5, chunk_size=50_000)
    pushed.snapshot(thetas)
    for scale in (1e-4, 1e-6, 1e-7, 1e-8):
        new = [(t + scale * torch.randn(t.shape, generator=gen)).to(torch.float32) for t in thetas]
        assert all((n != t).any() for n, t in zip(new, thetas, strict=True))
        delta = [n.double() - t.double() for n, t in zip(new, thetas, strict=True)]  # exact in float64
        a, b = pushed.push(new), direct.push_update(delta)
        thetas = new
        za, zb = pushed.updates()[-1].numpy(), direct.updates()[-1].numpy()
        rel = np.abs(za - zb).max() / np.abs(zb).max()
        assert rel < 1e-12, (scale, rel)  # measured: 0.0 at every scale (both are S δ to ~2⁻¹⁰⁰)
        assert a.update_norm == pytest.approx(b.update_norm, rel=1e-12)
    np.testing.assert_allclose(pushed.gram(), direct.gram(), rtol=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    values=st.lists(st.floats(-1024.0, 1024.0, width=32), min_size=1, max_size=40),
    steps=st.lists(st.floats(-(2.0**-10), 2.0**-10, width=32), min_size=1, max_size=40),
    offset=st.integers(0, 2**40),
    m=st.integers(1, 50),
    seed=st.integers(0, 2**64 - 1),
)
def test_sketch_is_linear(values: list[float], steps: list[float], offset: int, m: int, seed: int) -> None:
    n = min(len(values), len(steps))
    theta0 = torch.tensor(values[:n], dtype=torch.float32)
    theta1 = (theta0 + torch.tensor(steps[:n], dtype=torch.float32)).to(torch.float32)
    delta = theta1.double() - theta0.double()  # exact
    z = count_sketch(theta1, offset, m, seed) - count_sketch(theta0, offset, m, seed)
    expected = ref_sketch(delta.tolist(), offset, m, seed)
    scale = max(float(np.abs(expected).max()), 1e-30)
    # The difference of the two sketches is S δ to float64 round-off relative to S δ, not to S θ.
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-13 * scale + 1e-30 * float(np.abs(values).max()))
    win = SketchedWindow(n, window=2, sketch_dim=m, seed=seed, offsets=[offset])
    win.snapshot([theta0])
    if win.push([theta1]).status == "pushed":
        np.testing.assert_allclose(win.updates()[0].numpy(), expected, rtol=0, atol=1e-13 * scale)


# ------------------------------------------------------------------ the spectrum against a dense SVD


def planted_window(p: int, w: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """X = U diag(σ) Vᵀ with σ over four decades and random orthonormal U, V; and σ² by a dense SVD."""
    rng = np.random.default_rng(0)
    v, _ = np.linalg.qr(rng.standard_normal((p, w)))
    u, _ = np.linalg.qr(rng.standard_normal((w, w)))
    x = (u * np.logspace(0, -4, w)) @ v.T
    return x, np.linalg.svd(x, compute_uv=False) ** 2


def sketched_eigenvalues(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    win = SketchedWindow(x.shape[1], window=x.shape[0], sketch_dim=m, seed=seed)
    for row in x:
        assert win.push_update(row).status == "pushed"
    return np.sort(np.linalg.eigvalsh(win.gram()))[::-1]


def test_every_eigenvalue_within_a_few_percent_of_the_exact_one() -> None:
    x, lam = planted_window(200_000)
    errors = {m: np.abs(sketched_eigenvalues(x, m) / lam - 1) for m in (1024, 4096, 16384)}
    # Measured (seed 0): m = 4096, largest relative error 0.034 over λ_1..λ_10 spanning 10⁸, the
    # smallest 0.034 too; √(2/m) = 0.022 is the typical size (the worst-case bound is vacuous here).
    assert errors[4096].max() < 0.1
    assert errors[4096][-1] < 0.1  # relative: no noise floor at the bottom of the spectrum
    # The error falls as m grows: measured rms 0.048 at m = 1024, 0.019 at 4096, 0.015 at 16384 (over 12
    # seeds the rms follows √(2/m) = 0.044, 0.022, 0.011, as for a fully random CountSketch); largest
    # error 0.105 at m = 1024, 0.025 at 16384.
    rms = {m: float(np.sqrt(np.mean(e**2))) for m, e in errors.items()}
    assert rms[16384] < rms[1024] / 2
    assert errors[16384].max() < 0.075


def test_error_bound_formula() -> None:
    assert sketch_error_bound(110_000, 10, 0.01) == pytest.approx(math.sqrt(110 / 1100))
    with pytest.raises(ValueError, match="failure_probability"):
        sketch_error_bound(100, 10, 0.0)


# ------------------------------------------------------------------ sharding through the reducer


class Recorder:
    """A reducer for a process alone: records what it would contribute."""

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def all_reduce(self, array: np.ndarray, *, what: str) -> None:
        self.sent.append(array.copy())


class AddPartner:
    """A reducer that adds the partner process's contributions, in order (a two-process all-reduce)."""

    def __init__(self, partner: list[np.ndarray]) -> None:
        self.partner = list(partner)

    def all_reduce(self, array: np.ndarray, *, what: str) -> None:
        array += self.partner.pop(0)


def _share(reducer: Any, layout: ParameterLayout) -> WindowShare:
    return WindowShare(reducer=reducer, total_params=20_000, group_names=layout.group_names)


def test_shards_with_global_offsets_sum_to_the_whole_window() -> None:
    gen = torch.Generator().manual_seed(1)
    shapes = [(200, 50), (3000,), (120, 70)]
    layout, _ = ParameterLayout.build(["x.w", "x.b", "y.w"], shapes, lambda n: n[0])
    steps = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]
    whole = SketchedWindow(layout, window=4, sketch_dim=512, seed=9, chunk_size=4096)
    # Rank 0 holds x.w and the first half of y.w; rank 1 holds x.b and the second half of y.w.
    half = 120 * 70 // 2
    off = [0, 200 * 50, 200 * 50 + 3000]
    lay0, _ = ParameterLayout.build(["x.w", "y.w0"], [(10_000,), (half,)], lambda n: n[0])
    lay1, _ = ParameterLayout.build(["x.b", "y.w1"], [(3000,), (half,)], lambda n: n[0])

    def shard0(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [ts[0].reshape(-1), ts[2].reshape(-1)[:half]]

    def shard1(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [ts[1], ts[2].reshape(-1)[half:]]

    rec = Recorder()
    rank1 = SketchedWindow(
        lay1, window=4, sketch_dim=512, seed=9, offsets=[off[1], off[2] + half], share=_share(rec, lay1)
    )
    theta = [torch.zeros(s) for s in shapes]
    rank1.snapshot(shard1(theta))
    for step in steps:
        theta = [t + s for t, s in zip(theta, step, strict=True)]
        rank1.push(shard1(theta))
    rank0 = SketchedWindow(
        lay0,
        window=4,
        sketch_dim=512,
        seed=9,
        offsets=[off[0], off[2]],
        share=_share(AddPartner(rec.sent), lay0),
    )
    theta = [torch.zeros(s) for s in shapes]
    rank0.snapshot(shard0(theta))
    whole.snapshot(theta)
    for step in steps:
        theta = [t + s for t, s in zip(theta, step, strict=True)]
        rank0.push(shard0(theta))
        whole.push(theta)
    assert rec.sent[0].shape == (2 * 2 * 512 + 1,)  # (hi, lo) × groups × m, and the flags
    np.testing.assert_allclose(rank0.stacked_group_grams(), whole.stacked_group_grams(), rtol=1e-13)
    np.testing.assert_allclose(rank0.updates().numpy(), whole.updates().numpy(), rtol=1e-13, atol=1e-300)


# ------------------------------------------------------------------ the window's interface


def two_group_layout() -> ParameterLayout:
    layout, _ = ParameterLayout.build(["enc.w", "head.w", "enc.b"], [(40, 30), (25,), (30,)], lambda n: n[:3])
    return layout


def test_groups_sum_to_the_total_and_the_push_result_reads_the_sketched_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    layout = two_group_layout()
    win = SketchedWindow(layout, window=3, sketch_dim=64, seed=4)
    for t in range(5):
        update = [torch.randn(s, generator=gen, dtype=torch.float64) for s in layout.shapes]
        before = win.updates().numpy()
        res = win.push_update(update)
        z = win.updates().numpy()[-1]
        assert res.status == "pushed" and res.dropped == (t >= 3)
        np.testing.assert_allclose(res.window_dots, before @ z, rtol=1e-12)
        assert res.update_norm == pytest.approx(float(np.linalg.norm(z)), rel=1e-12)
        if res.dropped:
            b = before[0]
            assert res.added_dot_dropped == pytest.approx(float(z @ b), rel=1e-12)
            exact = np.linalg.norm(np.outer(z, z) - np.outer(b, b))
            assert res.delta_c_fro == pytest.approx(exact, rel=1e-9)
    grams = win.group_grams()
    assert list(grams) == ["enc", "hea"]
    np.testing.assert_allclose(sum(grams.values()), win.gram(), rtol=1e-14)
    np.testing.assert_allclose(win.gram("enc"), grams["enc"])
    x = win.updates().numpy()
    np.testing.assert_allclose(win.gram(), x @ x.T, rtol=1e-12)


@pytest.mark.parametrize("bad", ["nan", "inf", "zero"])
def test_rejected_updates_behave_as_in_the_exact_window(bad: str) -> None:
    gen = torch.Generator().manual_seed(3)
    exact = UpdateWindow(50, window=3, storage_dtype=torch.float64, kernel="torch")
    sketch = SketchedWindow(50, window=3, sketch_dim=32, seed=1)
    theta = torch.randn(50, generator=gen, dtype=torch.float64)
    exact.snapshot([theta])
    sketch.snapshot([theta])
    for step in range(8):
        if step in (4, 6):
            new = theta.clone()  # "zero": θ unchanged
            if bad == "nan":
                new[7] = float("nan")
            elif bad == "inf":
                new[7] = float("inf")
        else:
            new = theta + torch.randn(50, generator=gen, dtype=torch.float64)
        a, b = exact.push([new]), sketch.push([new])
        assert (a.status, a.dropped, exact.count, exact.pushes) == (
            b.status,
            b.dropped,
            sketch.count,
            sketch.pushes,
        )
        if a.status != "pushed":
            assert (math.isnan(a.update_norm), a.update_norm == 0.0) == (
                math.isnan(b.update_norm),
                b.update_norm == 0.0,
            ) or bad == "inf"
        theta = new
    assert exact.count == sketch.count


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(4)
    layout = two_group_layout()
    steps = [[torch.randn(s, generator=gen) for s in layout.shapes] for _ in range(7)]
    a = SketchedWindow(layout, window=3, sketch_dim=128, seed=6)
    theta = [torch.zeros(s) for s in layout.shapes]
    a.snapshot(theta)
    for step in steps[:4]:
        theta = [t + s for t, s in zip(theta, step, strict=True)]
        a.push(theta)
    b = SketchedWindow(layout, window=3, sketch_dim=128, seed=6)
    b.load_state_dict(a.state_dict())
    assert b.has_snapshot and b.count == a.count and b.pushes == a.pushes
    for step in steps[4:]:
        theta = [t + s for t, s in zip(theta, step, strict=True)]
        ra, rb = a.push(theta), b.push(theta)
        assert ra.delta_c_fro == rb.delta_c_fro and np.array_equal(ra.window_dots, rb.window_dots)
    assert np.array_equal(a.stacked_group_grams(), b.stacked_group_grams())
    assert torch.equal(a.updates(), b.updates())
    state = a.state_dict()
    for kwargs in ({"seed": 7}, {"sketch_dim": 64}, {"window": 4}):
        other = SketchedWindow(layout, **{"window": 3, "sketch_dim": 128, "seed": 6, **kwargs})
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="n_params"):
        SketchedWindow(10, window=3, sketch_dim=128, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="SketchedWindow"):
        b.load_state_dict(UpdateWindow(layout, window=3).state_dict())


@pytest.mark.parametrize("p", [100, 1_000_000])
def test_memory_does_not_depend_on_p(p: int) -> None:
    win = SketchedWindow(p, window=10, sketch_dim=1000)
    assert win.nbytes == (10 + 2) * 1000 * 8
    two = SketchedWindow(two_group_layout(), window=10, sketch_dim=1000)
    assert two.nbytes == (10 + 2) * 1000 * 8 * 2


def test_a_record_builds_from_a_sketched_window() -> None:
    x, lam = planted_window(20_000, w=6)
    win = SketchedWindow(20_000, window=6, sketch_dim=2048, seed=0)
    for row in x:
        pushed = win.push_update(row)
    rec = build_record(PushedWindow.read(win, pushed), step=11, lr=0.1, config=MonitorConfig())
    assert rec.step == 11 and rec.window == 6
    np.testing.assert_allclose(rec.singular_values**2, lam, rtol=0.15)  # measured 0.049
    assert (win.kernel, win.eigen, win.storage_dtype, win.rank_rtol) == (
        "sketch-compiled" if native_op("count_sketch") is not None else "sketch",
        "numpy",
        torch.float64,
        1e-13,
    )


def test_what_a_sketch_cannot_do_or_accept() -> None:
    win = SketchedWindow(10, window=2, sketch_dim=8)
    win.push_update(np.arange(10.0))
    with pytest.raises(ValueError, match="principal directions"):
        win.principal_directions()
    with pytest.raises(RuntimeError, match="snapshot"):
        SketchedWindow(10, window=2, sketch_dim=8).push([torch.zeros(10)])
    with pytest.raises(ValueError, match="sketch_dim"):
        SketchedWindow(10, window=2, sketch_dim=0)
    with pytest.raises(ValueError, match="offsets"):
        SketchedWindow(10, window=2, sketch_dim=8, offsets=[0, 5])
    with pytest.raises(ValueError, match="overlap"):
        SketchedWindow(two_group_layout(), window=2, sketch_dim=8, offsets=[0, 1200, 1210])
    lay, _ = ParameterLayout.build(["w"], [(10,)], lambda n: "a")
    with pytest.raises(ValueError, match="groups"):
        SketchedWindow(lay, window=2, sketch_dim=8, share=WindowShare(object(), 10, ("b",)))  # type: ignore[arg-type]
    win.reset()
    assert win.count == 0 and not win.has_snapshot


def test_a_share_names_what_it_sums_and_the_whole_models_p() -> None:
    class Named:
        def __init__(self) -> None:
            self.what: list[str] = []

        def all_reduce(self, array: np.ndarray, *, what: str) -> None:
            self.what.append(what)

    named = Named()
    lay, _ = ParameterLayout.build(["w"], [(10,)], lambda n: "all")
    win = SketchedWindow(lay, window=2, sketch_dim=8, share=WindowShare(named, 25, ("all",)))
    win.snapshot([torch.zeros(10)])
    win.push([torch.ones(10)])
    assert len(named.what) == 2 and "sketch" in named.what[0]
    assert win.total_params == 25 and SketchedWindow(10, window=2, sketch_dim=8).total_params == 10


# ------------------------------------------------------------------ through the monitor


def _monitored_run(sketch_dim: int | None) -> list[Any]:
    """Records of a small MLP regression trained 40 steps with AdamW (P = 21,252), W = 10."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128),
        torch.nn.Tanh(),
        torch.nn.Linear(128, 128),
        torch.nn.Tanh(),
        torch.nn.Linear(128, 4),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    from spectral_edge import SpectralMonitor

    mon = SpectralMonitor(model, window=10, lr=opt, sketch_dim=sketch_dim)
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(32, 4, generator=gen)
    records = []
    for _ in range(40):
        x = torch.randn(64, 32, generator=gen)
        loss = (model(x) - torch.tanh(x @ teacher)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = mon.step()
        if record is not None:
            records.append(record)
    if sketch_dim:
        assert mon.config()["kernel"] in ("sketch", "sketch-compiled")
    return records


def test_a_sketched_monitor_reads_a_real_trajectory_like_the_exact_one() -> None:
    # Measured (AMD EPYC): the largest relative error of any σ_j over 31 records was 0.047, 0.025 and
    # 0.011 at m = 1024, 4096 and 16384, the gap ratio's 0.040, 0.025, 0.012, and k* matched the exact
    # window's in 30, 31 and 31 records. The bounds leave about three times the measured error.
    exact = _monitored_run(None)
    errors = {}
    for m in (1024, 16384):
        sketched = _monitored_run(m)
        assert len(sketched) == len(exact) == 31
        errors[m] = max(
            float(np.max(np.abs(a.singular_values / b.singular_values - 1)))
            for a, b in zip(sketched, exact, strict=True)
        )
        gap = max(abs(a.gap_ratio / b.gap_ratio - 1) for a, b in zip(sketched, exact, strict=True))
        matched = sum(a.k_star == b.k_star for a, b in zip(sketched, exact, strict=True))
        assert gap < 3 * errors[m] + 1e-3
        assert matched >= (27 if m == 1024 else 29)
    assert errors[1024] < 0.15 and errors[16384] < 0.035
    assert errors[16384] < errors[1024]


# ------------------------------------------------------------------ the compiled sketch against the torch path

needs_compiled = pytest.mark.skipif(
    native_op("count_sketch") is None, reason="the C++ kernel cannot be built here"
)
DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.float16]


def straddling_layout() -> tuple[ParameterLayout, list[int]]:
    """Tensors whose sizes straddle the kernel's blocks (512), the hash's segments (2¹⁶) and the pieces
    (chunk_size 5000 below), with small ones packed together, in two groups at offsets near 2⁴⁰."""
    names = ["a.w", "a.b", "a.g", "b.w", "b.b", "a.v", "b.x"]
    shapes = [(70_001,), (511,), (513,), (99, 101), (1,), (5000,), (65_537,)]
    layout, _ = ParameterLayout.build(names, shapes, lambda n: n[0])
    base = {"a.w": 2**40 - 70_000, "a.b": 2**40 + 1, "a.g": 2**40 + 512, "b.w": 2**40 + 2**16 - 77}
    base |= {"b.b": 2**40 + 2**16 - 77 + 9999, "a.v": 2**41 + 3, "b.x": 2**40 + 3 * 2**16 - 1}
    return layout, [base[n] for n in layout.names]


def both_windows(layout: ParameterLayout, offsets: list[int], **kwargs: Any) -> tuple[SketchedWindow, ...]:
    common = {"window": 3, "sketch_dim": 257, "seed": 11, "offsets": offsets, "chunk_size": 5000}
    common |= kwargs
    compiled = SketchedWindow(layout, kernel="compiled", **common)
    reference = SketchedWindow(layout, kernel="torch", **common)
    assert (compiled.kernel, reference.kernel) == ("sketch-compiled", "sketch")
    return compiled, reference


def random_tensors(layout: ParameterLayout, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    """Values over eight decades, some exact zeros, one all-zero tensor: every grid of the split occurs."""
    out = []
    for k, shape in enumerate(layout.shapes):
        scale = 10.0 ** torch.randint(-6, 3, shape, generator=gen, dtype=torch.float64)
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        t[torch.rand(shape, generator=gen) < 0.05] = 0.0
        out.append((t if k != 1 else torch.zeros(shape, dtype=torch.float64)).to(dtype))
    return out


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sketch_dim", [1, 257, 4096])
def test_compiled_sums_are_the_torch_paths_bit_for_bit(dtype: torch.dtype, sketch_dim: int) -> None:
    gen = torch.Generator().manual_seed(sketch_dim)
    layout, offsets = straddling_layout()
    compiled, reference = both_windows(layout, offsets, sketch_dim=sketch_dim)
    for _ in range(2):
        values = random_tensors(layout, dtype, gen)
        a = compiled._local_sketch(compiled._flatten(values))
        b = reference._local_sketch(reference._flatten(values))
        assert a.shape == b.shape == (2, 2, sketch_dim)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))  # every bit, signed zeros included


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_pushes_give_the_torch_paths_records(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    layout, offsets = straddling_layout()
    compiled, reference = both_windows(layout, offsets)
    theta = random_tensors(layout, dtype, gen)
    compiled.snapshot(theta)
    reference.snapshot(theta)
    for step in range(5):
        theta = [
            (t.double() + 1e-3 * torch.randn(t.shape, generator=gen, dtype=t.dtype)).to(dtype) for t in theta
        ]
        a, b = compiled.push(theta), reference.push(theta)
        assert (a.status, a.update_norm, a.delta_c_fro, a.added_dot_dropped) == (
            b.status,
            b.update_norm,
            b.delta_c_fro,
            b.added_dot_dropped,
        )
        assert step == 0 or np.array_equal(a.window_dots, b.window_dots)
    assert torch.equal(compiled.updates(), reference.updates())
    assert np.array_equal(compiled.stacked_group_grams(), reference.stacked_group_grams())
    assert torch.equal(compiled.state_dict()["prev"], reference.state_dict()["prev"])
    records = [
        build_record(PushedWindow.read(w, r), step=5, lr=0.1) for w, r in ((compiled, a), (reference, b))
    ]
    assert records[0].to_dict() == records[1].to_dict()  # every number of the record, to the bit


@needs_compiled
def test_compiled_sums_do_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(6)
    layout, offsets = straddling_layout()
    compiled, reference = both_windows(layout, offsets, chunk_size=3000)  # 60 pieces: many waves
    values = random_tensors(layout, torch.float32, gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(compiled._local_sketch(compiled._flatten(values)))
    finally:
        torch.set_num_threads(threads)
    expected = reference._local_sketch(reference._flatten(values))
    for r in results:
        assert np.array_equal(r.view(np.int64), expected.view(np.int64))


@needs_compiled
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_compiled_nonfinite_values_are_handled_as_the_torch_path_does(bad: float) -> None:
    gen = torch.Generator().manual_seed(7)
    layout, offsets = straddling_layout()
    compiled, reference = both_windows(layout, offsets)
    theta = random_tensors(layout, torch.float32, gen)
    compiled.snapshot(theta)
    reference.snapshot(theta)
    broken = [t.clone() for t in theta]
    broken[layout.names.index("b.w")].view(-1)[4321] = bad  # group "b" only
    a = compiled._local_sketch(compiled._flatten(broken))
    b = reference._local_sketch(reference._flatten(broken))
    assert (
        np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(a[:, 1]).all() and not np.isnan(a[:, 0]).any()
    )
    assert np.array_equal(a[:, 0].view(np.int64), b[:, 0].view(np.int64))
    ra, rb = compiled.push(broken), reference.push(broken)
    assert ra.status == rb.status == "nonfinite" and math.isnan(ra.update_norm) and math.isnan(rb.update_norm)
    assert compiled.count == reference.count == 0
    theta[0] = theta[0] + 1.0
    ra, rb = compiled.push(theta), reference.push(theta)  # the snapshot was refreshed: z is NaN again
    assert ra.status == rb.status
    assert torch.equal(compiled.updates(), reference.updates())


@needs_compiled
def test_other_dtypes_and_non_contiguous_tensors_are_sketched_alike() -> None:
    layout, offsets = straddling_layout()
    compiled, reference = both_windows(layout, offsets)
    gen = torch.Generator().manual_seed(8)
    strided = [
        torch.randn(2 * t.numel(), generator=gen)[::2] for t in random_tensors(layout, torch.float32, gen)
    ]
    ints = [torch.randint(-5, 5, s, generator=gen) for s in layout.shapes]  # the torch path's, as a fallback
    for values in (strided, ints):
        a = compiled._local_sketch(compiled._flatten(values))
        b = reference._local_sketch(reference._flatten(values))
        assert np.array_equal(a.view(np.int64), b.view(np.int64))


def test_without_the_extension_the_torch_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sketch_module, "native_op", lambda name: None)
    win = SketchedWindow(100, window=2, sketch_dim=16)
    assert win.kernel == "sketch"
    win.snapshot([torch.zeros(100)])
    assert win.push([torch.ones(100)]).status == "pushed"
    with pytest.raises(RuntimeError, match="kernel='compiled'"):
        SketchedWindow(100, window=2, sketch_dim=16, kernel="compiled")
    with pytest.raises(ValueError, match="kernel must be"):
        SketchedWindow(100, window=2, sketch_dim=16, kernel="fused")
    assert SketchedWindow(100, window=2, sketch_dim=16, kernel="torch").kernel == "sketch"
