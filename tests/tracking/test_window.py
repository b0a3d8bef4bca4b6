"""UpdateWindow: the streaming Gram equals the batch Gram X Xᵀ of a reference kept independently.

Every check compares the fast path (chunked, slot-indexed pushes accumulated in float64) against a slow and
obviously correct reference: the deltas are kept by the test in float64, rounded to the storage dtype the
way the window stores them, and the reference Gram is a dense float64 ``X @ X.T`` of those rows.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch

from spectral_edge.tracking.window import ParameterLayout, UpdateWindow

# Tensors in an order where the groups interleave, so ParameterLayout.build has to permute them, with
# sizes that are not multiples of the chunk size (7) so every tensor ends on a partial chunk.
NAMES = ["enc.weight", "head.bias", "enc.bias", "mid.weight", "head.weight", "mid.bias"]
SHAPES = [(5, 4), (3,), (4,), (6, 2), (3, 4), (1,)]
CHUNK = 7

# Tolerance on Gram entries, relative to the largest entry of the reference Gram: every push path
# accumulates in float64, so the Gram is that of the stored rows to float64 round-off whatever the storage.
GRAM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-12, torch.bfloat16: 1e-12}


def group_of(name: str) -> str:
    return name.split(".")[0]


def make_layout() -> tuple[ParameterLayout, list[int]]:
    return ParameterLayout.build(NAMES, SHAPES, group_of)


def group_columns(layout: ParameterLayout) -> dict[str, np.ndarray]:
    """Column indices of each group in the flattened storage order."""
    cols: dict[str, list[int]] = {g: [] for g in layout.group_names}
    offset = 0
    for group, numel in zip(layout.groups, layout.numels, strict=True):
        cols[group].extend(range(offset, offset + numel))
        offset += numel
    return {g: np.asarray(c) for g, c in cols.items()}


def stored(rows: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Rows rounded to the storage dtype, back in float64 (what the window holds)."""
    return torch.from_numpy(np.asarray(rows, dtype=np.float64)).to(dtype).to(torch.float64).numpy()


def assert_gram_close(actual: np.ndarray, expected: np.ndarray, dtype: torch.dtype) -> None:
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=GRAM_RTOL[dtype] * scale)


class ThetaStream:
    """A sequence of parameter tensors θ_t in layout order, with the exact float64 deltas between them.

    For float32 and bfloat16 storage, θ holds multiples of 2^-10 below 2^13 in magnitude, so θ and every
    difference θ_t − θ_{t−1} are exact in float32: the only rounding left is the window's rounding to its
    storage dtype, which the reference reproduces with one cast. For float64 storage θ is generic.
    """

    def __init__(self, layout: ParameterLayout, dtype: torch.dtype, seed: int = 0) -> None:
        self.layout = layout
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.exact = dtype != torch.float64
        self.theta = self._draw()

    def _draw(self) -> np.ndarray:
        p = self.layout.n_params
        if self.exact:
            return self.rng.integers(-2000, 2000, size=p).astype(np.float64) * 2.0**-10
        return self.rng.standard_normal(p)

    def step(self) -> np.ndarray:
        """Advance θ; return the float64 delta."""
        if self.exact:
            # Mixed scales, so that bfloat16 rounding really changes values.
            delta = self.rng.integers(-3000, 3000, size=self.layout.n_params).astype(np.float64) * 2.0**-10
        else:
            delta = self.rng.standard_normal(self.layout.n_params) * self.rng.uniform(0.1, 3.0)
        old, self.theta = self.theta, self.theta + delta
        return self.theta - old  # what the window computes from the two θ (exact for the dyadic θ)

    def tensors(self) -> list[torch.Tensor]:
        """θ as tensors of the layout's shapes (float32 when exact, else float64)."""
        tdtype = torch.float32 if self.exact else torch.float64
        flat = torch.from_numpy(self.theta.copy()).to(tdtype)
        pieces = torch.split(flat, list(self.layout.numels))
        return [piece.reshape(shape).clone() for piece, shape in zip(pieces, self.layout.shapes, strict=True)]


def check_window(win: UpdateWindow, ref_rows: list[np.ndarray], cols: dict[str, np.ndarray]) -> None:
    """The window's Grams and rows against the reference rows (time order, already storage-rounded)."""
    dtype = win.storage_dtype
    x = np.asarray(ref_rows, dtype=np.float64).reshape(len(ref_rows), -1)
    assert win.count == len(ref_rows)
    expected = x @ x.T  # (count, count)
    assert_gram_close(win.gram(), expected, dtype)
    np.testing.assert_array_equal(win.updates().to(torch.float64).numpy(), x)
    grams = win.group_grams()
    assert list(grams) == list(win.layout.group_names)
    for name, idx in cols.items():
        assert_gram_close(grams[name], x[:, idx] @ x[:, idx].T, dtype)
    np.testing.assert_allclose(sum(grams.values()), win.gram(), rtol=1e-13, atol=0)


# ------------------------------------------------------------------ layout


def test_layout_groups_are_contiguous_and_order_is_a_permutation():
    layout, order = make_layout()
    assert sorted(order) == list(range(len(NAMES)))
    assert list(layout.names) == [NAMES[i] for i in order]
    assert list(layout.group_names) == ["enc", "head", "mid"]  # first appearance
    assert list(layout.groups) == ["enc", "enc", "head", "head", "mid", "mid"]
    # Inside a group the input order is kept.
    assert list(layout.names) == [
        "enc.weight",
        "enc.bias",
        "head.bias",
        "head.weight",
        "mid.weight",
        "mid.bias",
    ]
    assert layout.n_params == sum(math.prod(s) for s in SHAPES)
    assert layout.group_sizes() == {"enc": 24, "head": 15, "mid": 13}


def test_layout_build_rejects_bad_input():
    with pytest.raises(ValueError, match="names"):
        ParameterLayout.build(["a", "b"], [(1,)], group_of)
    with pytest.raises(ValueError, match="unique"):
        ParameterLayout.build(["a", "a"], [(1,), (2,)], group_of)


# ------------------------------------------------------------------ streaming == batch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("kernel", ["torch", "fused"])
def test_streaming_gram_equals_batch_gram(dtype, window, kernel):
    """Each way a push runs: torch calls per piece (any dtype and device) and the fused C++ kernel
    (float32 windows on the CPU)."""
    if kernel == "fused" and dtype != torch.float32:
        pytest.skip("the fused kernel serves float32 windows")
    layout, _ = make_layout()
    cols = group_columns(layout)
    stream = ThetaStream(layout, dtype, seed=window)
    win = UpdateWindow(layout, window=window, storage_dtype=dtype, chunk_size=CHUNK, kernel=kernel)
    assert win.kernel == kernel
    assert win.count == 0 and not win.full
    win.snapshot(stream.tensors())
    rows: list[np.ndarray] = []
    for n in range(1, 3 * window + 2):  # fill, wrap around the ring twice, and one more
        a = stored(stream.step(), dtype)
        before = [r.copy() for r in rows]
        result = win.push(stream.tensors())
        assert result.status == "pushed"
        assert result.dropped == (len(before) == window)
        b = before[0] if result.dropped else None
        rows = (before + [a])[-window:]
        check_window(win, rows, cols)
        assert win.pushes == n
        assert win.full == (n >= window)

        # ‖a‖, ⟨x_i, a⟩ in time order before the push, aᵀb and ‖a aᵀ − b bᵀ‖_F against dense references.
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        assert result.update_norm == pytest.approx(np.linalg.norm(a), rel=rtol)
        expected_dots = np.asarray(before).reshape(len(before), a.size) @ a
        assert result.window_dots.shape == (len(before),)
        norm_a = np.linalg.norm(a)
        scale = norm_a * max([np.linalg.norm(r) for r in before] + [norm_a])  # bounds every |⟨x, a⟩|
        np.testing.assert_allclose(result.window_dots, expected_dots, rtol=0, atol=rtol * scale)
        if b is None:
            assert result.added_dot_dropped is None
            assert result.delta_c_fro == pytest.approx(a @ a, rel=rtol)
        else:
            assert result.added_dot_dropped == pytest.approx(a @ b, rel=0, abs=rtol * scale)
            dense = np.linalg.norm(np.outer(a, a) - np.outer(b, b), "fro")
            assert result.delta_c_fro == pytest.approx(dense, rel=rtol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_push_update_flat_vectors_single_group(dtype):
    """An int layout (one group "all") fed explicit flat updates, chunked at 7 over P = 40."""
    p, window = 40, 3
    rng = np.random.default_rng(7)
    win = UpdateWindow(p, window=window, storage_dtype=dtype, chunk_size=CHUNK)
    assert win.layout.group_names == ("all",)
    rows: list[np.ndarray] = []
    for _ in range(3 * window + 1):
        # float32-representable, so that float64 → float32 → storage is one rounding, as in the reference.
        delta = rng.standard_normal(p).astype(np.float32).astype(np.float64) * rng.uniform(0.01, 100.0)
        delta = delta.astype(np.float32).astype(np.float64)
        assert win.push_update(delta).status == "pushed"
        rows = (rows + [stored(delta, dtype)])[-window:]
        check_window(win, rows, {"all": np.arange(p)})


def test_bfloat16_window_holds_rounded_updates():
    """bf16 storage: the Gram is that of the rounded rows, not of the exact updates."""
    win = UpdateWindow(1, window=2, storage_dtype=torch.bfloat16)
    x = 1.0 + 2.0**-10  # not representable in bfloat16 (8 bits of mantissa): rounds to 1.0
    win.push_update([x])
    win.push_update([3.0])
    np.testing.assert_array_equal(win.gram(), np.array([[1.0, 3.0], [3.0, 9.0]]))


def test_nbytes_and_copies():
    win = UpdateWindow(10, window=4, storage_dtype=torch.bfloat16)
    assert win.nbytes == 4 * 10 * 2
    win.push_update(np.ones(10))
    g = win.gram()
    g[0, 0] = -1.0
    u = win.updates()
    u.zero_()
    assert win.gram()[0, 0] == 10.0
    assert float(win.updates().sum()) == 10.0


# ------------------------------------------------------------------ bad updates


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "bad_kind, position",
    [("nan", 0), ("nan", -1), ("inf", 30), ("-inf", -1), ("zero", None)],
)
def test_rejected_updates_are_not_pushed(dtype, bad_kind, position):
    """NaN/Inf anywhere (first chunk, last chunk, middle) and all-zero updates are refused.

    When the window was full, the refused update had already overwritten (part of) the oldest row, so the
    window loses that row: its count drops by one, and the Gram stays that of ``updates()``.
    """
    layout, _ = make_layout()
    cols = group_columns(layout)
    p = layout.n_params
    window = 4
    win = UpdateWindow(layout, window=window, storage_dtype=dtype, chunk_size=CHUNK)
    rng = np.random.default_rng(3)

    def finite():
        return rng.standard_normal(p).astype(np.float32).astype(np.float64)

    def bad():
        if bad_kind == "zero":
            return np.zeros(p)
        v = finite()
        v[position] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[bad_kind]
        return v

    expected_status = "zero" if bad_kind == "zero" else "nonfinite"
    rows: list[np.ndarray] = []

    # Not full: a refused update changes nothing.
    for _ in range(2):
        d = finite()
        win.push_update(d)
        rows.append(stored(d, dtype))
    result = win.push_update(bad())
    assert result.status == expected_status
    assert not result.dropped
    assert result.delta_c_fro is None and result.window_dots is None
    check_window(win, rows, cols)

    # Full: the oldest update is lost.
    for _ in range(window - 2):
        d = finite()
        win.push_update(d)
        rows.append(stored(d, dtype))
    assert win.full
    pushes = win.pushes
    result = win.push_update(bad())
    assert result.status == expected_status
    assert result.dropped
    if bad_kind == "zero":
        assert result.update_norm == 0.0
    else:
        assert not math.isfinite(result.update_norm)
    rows = rows[1:]
    assert win.count == window - 1
    assert win.pushes == pushes
    check_window(win, rows, cols)
    assert np.all(np.isfinite(win.gram()))

    # The next finite push refills the window, without dropping anything.
    d = finite()
    result = win.push_update(d)
    assert result.status == "pushed" and not result.dropped
    assert result.delta_c_fro == pytest.approx(np.sum(stored(d, dtype) ** 2), rel=1e-5)
    rows.append(stored(d, dtype))
    check_window(win, rows, cols)
    assert win.full

    # And the window slides normally afterwards.
    for _ in range(window + 1):
        d = finite()
        assert win.push_update(d).status == "pushed"
        rows = (rows + [stored(d, dtype)])[-window:]
        check_window(win, rows, cols)


def test_nonfinite_push_from_snapshots_recovers_after_a_new_snapshot():
    """push(θ) with a NaN θ is refused; the snapshot then holds the NaN, so a new snapshot restarts it."""
    layout, _ = make_layout()
    cols = group_columns(layout)
    stream = ThetaStream(layout, torch.float64, seed=11)
    win = UpdateWindow(layout, window=3, storage_dtype=torch.float64, chunk_size=CHUNK)
    win.snapshot(stream.tensors())
    rows = []
    for _ in range(3):
        rows.append(stream.step())
        win.push(stream.tensors())
    check_window(win, rows, cols)

    poisoned = stream.tensors()
    poisoned[2][1] = float("nan")
    assert win.push(poisoned).status == "nonfinite"
    rows = rows[1:]
    check_window(win, rows, cols)

    win.snapshot(stream.tensors())
    rows.append(stream.step())
    assert win.push(stream.tensors()).status == "pushed"
    check_window(win, rows, cols)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_float64_parameters_are_subtracted_before_rounding(dtype):
    """θ in float64, window in float32/bfloat16: the stored row is the rounded *difference*.

    Bug: ``UpdateWindow._push`` computes ``torch.sub(theta.to(compute_dtype), old.to(compute_dtype))``
    whenever θ is not already in the compute dtype: for float64 parameters it rounds θ and θ_prev to
    float32 *before* subtracting. An update below float32's resolution of θ (|δ| < 6e-8·|θ|) then vanishes
    (reported as a "zero" update) and larger ones are quantised to multiples of ulp_32(θ) (δ = 1e-6 at
    θ ≈ 2 is stored as 1.19e-6). The comment there is about bfloat16 parameters, where upcasting is right.
    Fix: subtract in the wider of the two dtypes (``torch.promote_types(theta.dtype, compute_dtype)``) and
    round only the difference.
    """
    p = 12
    rng = np.random.default_rng(0)
    win = UpdateWindow(p, window=3, storage_dtype=dtype)
    theta = 1.0 + rng.random(p)  # θ in [1, 2): ulp_32 = 1.2e-7
    win.snapshot([torch.from_numpy(theta.copy())])
    rows = []
    for scale in (1e-9, 1e-6, 1e-4):
        delta = rng.standard_normal(p) * scale
        new = theta + delta
        result = win.push([torch.from_numpy(new.copy())])
        exact = new - theta  # the float64 update
        theta = new
        assert result.status == "pushed", f"an update of size {scale:g} was lost ({result.status})"
        rows.append(stored(exact.astype(np.float32).astype(np.float64), dtype))
    x = np.asarray(rows)
    np.testing.assert_allclose(
        win.updates().to(torch.float64).numpy(), x, rtol=1e-6 if dtype == torch.float32 else 1e-2
    )
    assert_gram_close(win.gram(), x @ x.T, dtype)


def test_unchanged_parameters_give_a_zero_update():
    win = UpdateWindow(5, window=2)
    theta = [torch.arange(5.0)]
    win.snapshot(theta)
    result = win.push(theta)
    assert result.status == "zero" and result.update_norm == 0.0
    assert win.count == 0


# ------------------------------------------------------------------ persistence


def _filled_window(dtype, window=3, pushes=None, seed=5):
    layout, _ = make_layout()
    stream = ThetaStream(layout, dtype, seed=seed)
    win = UpdateWindow(layout, window=window, storage_dtype=dtype, chunk_size=CHUNK)
    win.snapshot(stream.tensors())
    for _ in range(pushes if pushes is not None else 2 * window + 1):  # wrapped around
        stream.step()
        win.push(stream.tensors())
    return win, stream


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("via_file", [False, True])
def test_state_dict_round_trip_matches_an_uninterrupted_window(dtype, via_file):
    window = 3
    win, stream = _filled_window(dtype, window)
    state = win.state_dict()
    if via_file:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    layout, _ = make_layout()
    resumed = UpdateWindow(layout, window=window, storage_dtype=dtype, chunk_size=CHUNK)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.gram(), win.gram())
    for name in layout.group_names:
        np.testing.assert_array_equal(resumed.gram(name), win.gram(name))
    assert torch.equal(resumed.updates(), win.updates())
    assert resumed.count == win.count and resumed.pushes == win.pushes

    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for _ in range(2 * window + 1):
        stream.step()
        theta = stream.tensors()
        a = win.push([t.clone() for t in theta])
        b = resumed.push([t.clone() for t in theta])
        assert (a.status, a.dropped) == (b.status, b.dropped) == ("pushed", True)
        assert b.delta_c_fro == pytest.approx(a.delta_c_fro, rel=rtol)
        np.testing.assert_allclose(b.window_dots, a.window_dots, rtol=rtol, atol=0)
        np.testing.assert_allclose(resumed.gram(), win.gram(), rtol=rtol, atol=0)
        assert torch.equal(resumed.updates(), win.updates())


def test_state_dict_of_a_partial_window():
    win, stream = _filled_window(torch.float64, window=4, pushes=2)
    layout, _ = make_layout()
    resumed = UpdateWindow(layout, window=4, storage_dtype=torch.float64, chunk_size=CHUNK)
    resumed.load_state_dict(copy.deepcopy(win.state_dict()))
    assert resumed.count == 2 and not resumed.full
    for _ in range(3):
        stream.step()
        theta = stream.tensors()
        win.push([t.clone() for t in theta])
        resumed.push([t.clone() for t in theta])
        np.testing.assert_allclose(resumed.gram(), win.gram(), rtol=1e-13)


def test_loading_one_state_twice_gives_the_same_window():
    """load_state_dict must not alias the caller's tensors.

    Bug: ``UpdateWindow.load_state_dict`` sets ``self._prev = [p.to(device) for p in state["prev"]]``;
    ``.to`` returns the *same* tensor when the device and dtype already match, and every later ``push``
    refreshes the snapshot in place (``old.copy_(theta)``). So pushing into a resumed window rewrites the
    ``prev`` tensors of the state dict it was loaded from: loading that state again (a second resume, a
    retry after an error, a state kept in memory) restarts from the wrong snapshot.
    """
    window = 3
    win, stream = _filled_window(torch.float32, window)
    state = win.state_dict()
    saved_prev = [p.clone() for p in state["prev"]]
    stream.step()
    theta = stream.tensors()
    layout, _ = make_layout()

    first = UpdateWindow(layout, window=window, chunk_size=CHUNK)
    first.load_state_dict(state)
    r1 = first.push([t.clone() for t in theta])

    for before, after in zip(saved_prev, state["prev"], strict=True):
        assert torch.equal(before, after), (
            "pushing into a resumed window modified the state dict it came from"
        )

    second = UpdateWindow(layout, window=window, chunk_size=CHUNK)
    second.load_state_dict(state)
    r2 = second.push([t.clone() for t in theta])
    assert r2.status == r1.status == "pushed"
    np.testing.assert_array_equal(second.gram(), first.gram())


def test_loading_a_state_with_other_groups_keeps_the_gram_consistent():
    """A state saved with one group layout must not be loaded silently into a window with another.

    Bug: ``UpdateWindow.load_state_dict`` checks W, P and the tensor names but not the groups, then does
    ``self._gram[:, :n, :n] = state["grams"].numpy()``. A state saved with 1 group, shape (1, n, n),
    broadcasts into every one of the k groups of the new window, so ``gram()`` (the sum over groups) comes
    back k times too large. This happens when a monitor is resumed with another ``groups=`` argument and
    the parameter order does not change. Fix: store the group layout in the state and raise ValueError on
    a mismatch (or rebuild the group Grams from the rows).
    """
    names = ["a.w", "b.w", "c.w"]
    shapes = [(4,), (5,), (6,)]
    one_group, _ = ParameterLayout.build(names, shapes, lambda n: "all")
    three_groups, _ = ParameterLayout.build(names, shapes, group_of)
    assert one_group.names == three_groups.names

    rng = np.random.default_rng(0)
    saved = UpdateWindow(one_group, window=3, storage_dtype=torch.float64)
    for _ in range(3):
        saved.push_update(rng.standard_normal(15))
    loaded = UpdateWindow(three_groups, window=3, storage_dtype=torch.float64)
    try:
        loaded.load_state_dict(saved.state_dict())
    except ValueError:
        return  # refusing the mismatch is a correct answer
    x = loaded.updates().numpy()
    np.testing.assert_allclose(loaded.gram(), x @ x.T, rtol=1e-12)
    np.testing.assert_allclose(loaded.gram("a"), x[:, :4] @ x[:, :4].T, rtol=1e-12)


def test_loading_a_state_with_another_storage_dtype_keeps_the_gram_consistent():
    """A float32 state loaded into a bfloat16 window: rows get rounded, so the saved Gram no longer fits.

    Bug: ``UpdateWindow.load_state_dict`` ignores ``state["storage_dtype"]``; it casts the rows to the new
    storage dtype but copies the saved Gram as it is, so ``gram()`` is no longer X Xᵀ of ``updates()``.
    Fix: raise ValueError on a dtype mismatch (or recompute the Grams from the cast rows).
    """
    rng = np.random.default_rng(1)
    saved = UpdateWindow(20, window=3, storage_dtype=torch.float32)
    for _ in range(3):
        saved.push_update(rng.standard_normal(20).astype(np.float32))
    loaded = UpdateWindow(20, window=3, storage_dtype=torch.bfloat16)
    try:
        loaded.load_state_dict(saved.state_dict())
    except ValueError:
        return
    x = loaded.updates().to(torch.float64).numpy()
    assert_gram_close(loaded.gram(), x @ x.T, torch.bfloat16)


def test_load_state_dict_rejects_another_window_or_layout():
    win, _ = _filled_window(torch.float32, window=3)
    state = win.state_dict()
    layout, _ = make_layout()
    with pytest.raises(ValueError, match="W=3"):
        UpdateWindow(layout, window=4, chunk_size=CHUNK).load_state_dict(state)
    other = ParameterLayout.build(["x"], [(layout.n_params,)], group_of)[0]
    with pytest.raises(ValueError, match="different set of tensors"):
        UpdateWindow(other, window=3).load_state_dict(state)


def test_reset_forgets_everything():
    win, stream = _filled_window(torch.float32, window=3)
    win.reset()
    assert win.count == 0 and not win.has_snapshot
    assert np.all(win.gram() == 0) and win.gram().shape == (0, 0)
    with pytest.raises(RuntimeError, match="snapshot"):
        win.push(stream.tensors())


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("window", [1, 0, -3, 2.0, True, "10"])
def test_bad_window_size(window):
    with pytest.raises(ValueError, match=r"window must be an int >= 2, got"):
        UpdateWindow(10, window=window)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int32, "float32", np.float32])
def test_bad_storage_dtype(dtype):
    with pytest.raises(ValueError, match="storage_dtype must be one of"):
        UpdateWindow(10, window=3, storage_dtype=dtype)


@pytest.mark.parametrize("chunk", [0, -1, 2.5])
def test_bad_chunk_size(chunk):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        UpdateWindow(10, window=3, chunk_size=chunk)


def test_fused_kernel_needs_a_float32_cpu_window():
    with pytest.raises(ValueError, match="needs a float32 window on the CPU"):
        UpdateWindow(10, window=3, storage_dtype=torch.float64, kernel="fused")
    with pytest.raises(ValueError, match="kernel must be"):
        UpdateWindow(10, window=3, kernel="cuda")
    assert UpdateWindow(10, window=3, storage_dtype=torch.bfloat16).kernel == "torch"


@pytest.mark.parametrize("window", [2, 5, 7, 10, 13])
def test_fused_kernel_across_lane_row_and_block_boundaries(window):
    """Tensors long enough to use every path of the kernel: its vector lanes (32 and 8 values) with a
    remainder, its rows taken five at a time with a remainder (W = 7, 13), and its 8192-value blocks
    with a partial last block, plus a tensor shorter than one lane; against a float64 reference."""
    sizes = [2 * 8192 + 37, 8192, 100, 5]
    layout, _ = ParameterLayout.build(
        [f"t{i}.weight" for i in range(len(sizes))], [(n,) for n in sizes], group_of
    )
    stream = ThetaStream(layout, torch.float32, seed=window)
    win = UpdateWindow(layout, window=window, kernel="fused")
    win.snapshot(stream.tensors())
    rows: list[np.ndarray] = []
    for _ in range(window + 3):  # fill and wrap around
        rows = (rows + [stream.step()])[-window:]
        assert win.push(stream.tensors()).status == "pushed"
    check_window(win, rows, group_columns(layout))


def test_fused_kernel_falls_back_for_float64_parameters_and_matches_the_torch_path():
    """float64 parameters in a float32 window: the fused kernel does not apply, the torch path serves."""
    theta = torch.randn(50, dtype=torch.float64)
    fused = UpdateWindow(50, window=3, kernel="fused")
    plain = UpdateWindow(50, window=3, kernel="torch")
    for win in (fused, plain):
        win.snapshot([theta])
    for k in range(4):
        theta = theta + torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        fused.push([theta])
        plain.push([theta])
    np.testing.assert_allclose(fused.gram(), plain.gram(), rtol=1e-12)


def test_threads_is_ignored_with_a_future_warning():
    """The threaded torch push was removed (2.6–4.7 times slower than the fused kernel, the CPU default):
    ``threads=None``, the default, is silent; a value warns once and the window pushes as without it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UpdateWindow(10, window=3, threads=None)
    with pytest.warns(FutureWarning, match=r"threads=2\) is ignored.*drop the argument"):
        win = UpdateWindow(100, window=2, chunk_size=10, threads=2, kernel="torch")
    win.push_update(np.ones(100))
    win.push_update(np.arange(100.0))
    assert win.gram()[1, 1] == pytest.approx(np.sum(np.arange(100.0) ** 2))


def test_bad_parameter_count():
    with pytest.raises(ValueError, match=">= 1, got 0"):
        UpdateWindow(0, window=3)


def test_wrong_tensor_count_or_size():
    layout, _ = make_layout()
    win = UpdateWindow(layout, window=3)
    good = [torch.zeros(s) for s in layout.shapes]
    with pytest.raises(
        ValueError, match=f"expected {len(NAMES)} tensors in layout order, got {len(NAMES) - 1}"
    ):
        win.snapshot(good[:-1])
    bad = list(good)
    bad[1] = torch.zeros(layout.numels[1] + 1)
    with pytest.raises(
        ValueError,
        match=rf"tensor '{layout.names[1]}' has {layout.numels[1] + 1} elements, "
        rf"the layout says {layout.numels[1]}",
    ):
        win.snapshot(bad)
    win.snapshot(good)
    with pytest.raises(ValueError, match="expected"):
        win.push(good + [torch.zeros(1)])
    with pytest.raises(
        ValueError, match=f"update has {layout.n_params + 1} elements, the layout has P={layout.n_params}"
    ):
        win.push_update(np.zeros(layout.n_params + 1))
    with pytest.raises(ValueError, match="has 2 elements"):
        win.push_update([torch.zeros(2)] + good[1:])
    assert win.count == 0


# ------------------------------------------------------------------ principal directions


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_principal_directions_are_the_right_singular_vectors(dtype):
    """v_j = Xᵀu_j/σ_j against numpy's SVD of the time-ordered window, after wrap-around."""
    layout, _ = make_layout()
    stream = ThetaStream(layout, dtype, seed=11)
    win = UpdateWindow(layout, window=4, storage_dtype=dtype, chunk_size=CHUNK)
    win.snapshot(stream.tensors())
    rows = []
    for _ in range(6):
        rows = (rows + [stored(stream.step(), dtype)])[-4:]
        win.push(stream.tensors())
    x = np.asarray(rows)  # (W, P) in time order, columns in storage order
    _, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    directions, sigma = win.principal_directions(k=3)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    np.testing.assert_allclose(sigma, s_ref[:3], rtol=tol)
    v = directions.double().cpu().numpy()
    assert v.shape == (3, layout.n_params)
    np.testing.assert_allclose(np.abs(np.sum(v * vt_ref[:3], axis=1)), 1.0, rtol=0, atol=tol)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=tol)


def test_principal_directions_leave_out_zero_singular_values():
    win = UpdateWindow(5, window=3, storage_dtype=torch.float64)
    win.push_update([1.0, 2.0, 0.0, 0.0, 0.0])
    win.push_update([2.0, 4.0, 0.0, 0.0, 0.0])  # parallel: rank one
    directions, sigma = win.principal_directions()
    assert directions.shape == (1, 5) and sigma.shape == (1,)
    assert sigma[0] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="k must be"):
        win.principal_directions(k=0)
    with pytest.raises(ValueError, match="empty"):
        UpdateWindow(5, window=3).principal_directions()


def test_an_int_p_is_one_flat_vector_for_both_windows() -> None:
    # UpdateWindow and SketchedWindow take an int P through ParameterLayout.of: one tensor "all" in one group.
    from spectral_edge.tracking.sketch import SketchedWindow

    layout = ParameterLayout.of(7)
    assert (layout.names, layout.shapes, layout.group_names, layout.n_params) == (
        ("all",),
        ((7,),),
        ("all",),
        7,
    )
    assert ParameterLayout.of(layout) is layout
    for make in (lambda p: UpdateWindow(p, window=2), lambda p: SketchedWindow(p, window=2, sketch_dim=4)):
        assert make(7).layout == layout
        with pytest.raises(ValueError, match="the number of parameters must be >= 1, got 0"):
            make(0)
