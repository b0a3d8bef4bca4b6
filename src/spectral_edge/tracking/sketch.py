"""SketchedWindow: the window's Gram matrix from CountSketches of the updates, for models whose W × P
window does not fit.

The exact window (:class:`~spectral_edge.tracking.window.UpdateWindow`) keeps X (W × P, Def 1.2) and a
snapshot θ_prev, about (W + 1)·P values. A sketched window keeps instead, per parameter group, the last W
sketched updates z_t = S δ_t (W × m) and S θ_{t−1}, where S (m × P) is a CountSketch (Charikar, Chen &
Farach-Colton 2002; Clarkson & Woodruff 2013): column i of S has one non-zero, the sign s(i) ∈ {±1} in
row h(i) ∈ [0, m). S is never stored: h(i) and s(i) are a fixed hash of the *global* element index i and
the seed (:func:`count_sketch_hash`), recomputed chunk by chunk. Because S is linear,
S δ_t = S θ_t − S θ_{t−1}: a push reads θ once, sketches it, and subtracts the previous sketch; no
P-sized snapshot is kept. The sketched Gram G_s = Z Zᵀ = X SᵀS Xᵀ (W × W) is kept incrementally as the exact
one is (the new row's W dot products, W·m flops), one per group; the groups' Grams sum to the total.

Why the spectrum survives. Let X = U Σ Vᵀ (U: W × r and V: P × r with orthonormal columns, r ≤ W) and
M = Vᵀ SᵀS V (r × r). Then G_s = UΣ M ΣUᵀ, whose non-zero eigenvalues are those of M^{1/2} Σ² M^{1/2}, a
congruence of Σ², the exact G's non-zero eigenvalues; by Ostrowski's theorem (Horn & Johnson, *Matrix
Analysis*, Thm 4.5.9) λ_j(G_s) = θ_j λ_j(G) with θ_j ∈ [λ_min(M), λ_max(M)]. So if ‖M − I‖₂ ≤ ε < 1 (S is an
ε-subspace embedding of the row space of X), *every* eigenvalue is within a factor 1 ± ε of the exact
one, the smallest alike (a relative error, with no noise floor, unlike rounded storage), the rank is kept,
σ_j = √λ_j is within √(1 ± ε), and every ratio σ_j/σ_{j+1}, the gap ratio R (Def 6.3, eq 15) included,
within a factor √((1 + ε)/(1 − ε)) (the ratios of eigenvalues within (1 + ε)/(1 − ε)). For a CountSketch
with h pairwise and s 4-wise independent, E‖M − I‖_F² ≤ (r² + r)/m: the diagonal terms of SᵀS are exact,
and a pair i ≠ j contributes only when h(i) = h(j), with probability 1/m (expanding E(M − I)_ab² leaves
Σ_{i≠j} V_ia²V_jb² + V_iaV_ibV_jaV_jb ≤ 1 + δ_ab, over m). By Markov's inequality, with probability
≥ 1 − δ, ‖M − I‖₂ ≤ ‖M − I‖_F ≤ ε whenever m ≥ W(W + 1)/(ε²δ). This is the CountSketch bound of Nelson &
Nguyễn ("OSNAP", FOCS 2013; one non-zero per column) and Meng & Mahoney (STOC 2013), after Clarkson &
Woodruff (STOC 2013); see Woodruff, *Sketching as a Tool for Numerical Linear Algebra* (2014), §2.1.
:func:`sketch_error_bound` gives ε for m, W and δ. Several groups sketched separately are one CountSketch
into n_groups·m rows whose collisions happen within a group only (probability ≤ 1/m), so the bound holds
for the total Gram as well.

The bound is loose: it controls the worst direction and pays for Markov's inequality. For one eigenvalue
the first-order error is v_jᵀ(SᵀS − I)v_j, of standard deviation about √(2/m) for a direction spread over
many parameters: measured at W = 10, P = 2·10⁵ over four decades of σ_j, m = 4096 gives errors of a few
per cent on every λ_j (rms 0.02), where the bound (δ = 0.1) only promises ε ≈ 0.5
(tests/tracking/test_sketch.py).

The hash. The theorem assumes random hash families; a monitor needs a fixed, seeded function that every
process and machine computes identically, so that shards of one model, each sketching its own elements by
their global index, produce sketches that sum (the optional ``reducer``). :func:`count_sketch_hash` is a
tabulation hash (Pătraşcu & Thorup, JACM 2012) with one derived character, after the mixed tabulation of
Dahlgaard, Knudsen, Rotenberg & Thorup (FOCS 2015), which Dahlgaard, Knudsen & Thorup (NeurIPS 2017)
show to concentrate like a fully random hash in feature hashing (CountSketch rows); its tables are filled
by splitmix64 (Steele, Lea & Flood, OOPSLA 2014), and the index's bits above the first 16 select a
splitmix64 output rather than a table entry. No independence theorem is claimed for this variant; what is
checked is that the measured eigenvalue errors match those of a fully random CountSketch (rms over 12 seeds
0.041, 0.023, 0.012 against 0.045, 0.020, 0.011 at m = 1024, 4096, 16384, W = 10, P = 2·10⁵). Its
arithmetic is on non-negative int64 values below 2⁶³ (XOR, shifts, one product below 2⁶³), so it is exact
in torch on any machine.

Exactness of the difference. S θ_t and S θ_{t−1} are nearly equal (|δ| ≪ |θ| late in training), so
their float64 difference would lose log₂(|θ|/|δ|) bits. Each chunk's values are therefore split as
θ = hi + lo with hi on a grid fine enough that the bucket sums of hi are exact in float64 and |lo| below
one grid step; the chunk sums are accumulated in double-double (Knuth's TwoSum), so S θ is kept as
hi + lo to about 2⁻¹⁰⁰ relative and z_t = (hi_t − hi_{t−1}) + (lo_t − lo_{t−1}) is S δ_t to float64
round-off, however small δ is. That is why the kept sketch of θ is two m-vectors per group: the state is
(W + 2)·m float64 numbers per group whatever P is (:attr:`SketchedWindow.nbytes`), plus the W × W Grams and
two 2¹⁶-entry hash tables shared by every window of a seed.

The compiled path. On the CPU the sketch is computed by the extension's ``count_sketch`` operator
(``csrc/count_sketch.cpp``, built by ``tracking/_native.py``), which reads each piece twice (its peak,
then the hash and the sums in registers), where the torch path (:class:`_Accumulator`) makes about fifteen
torch calls over 8-byte scratch buffers per piece. The torch path is the reference and serves other
devices and machines without a compiler: the compiled one performs the same float64 operations in the same
order (the same pieces, the same grid, each slot's sums in element order, the pieces folded in plan
order), so the two give the same (hi, lo) sums bit for bit, whatever the thread count, not merely to the
last ulp.
``kernel="torch"`` (or ``SPECTRAL_EDGE_KERNEL=torch``) keeps the torch path; :attr:`SketchedWindow.kernel`
says which runs.

What a sketch cannot give: directions in parameter space (:meth:`SketchedWindow.principal_directions`
raises); the exact window is needed for them.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from spectral_edge.errors import SpectrumWarning
from spectral_edge.spectrum.window import storage_rank_rtol
from spectral_edge.tracking._native import native_op
from spectral_edge.tracking._spectra import WindowEigen, window_spectra
from spectral_edge.tracking.window import (
    GramSlots,
    ParameterLayout,
    PushResult,
    WindowShare,
    check_share,
    check_window,
)

__all__ = ["SketchedWindow", "count_sketch", "count_sketch_hash", "sketch_error_bound"]

#: Bits of the element index read by the first hash table; the index's higher bits pick a segment key.
CHAR_BITS = 16
_CHAR = 1 << CHAR_BITS
_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
#: The table entries are 63-bit: the derived character is their top 16 bits (bits 47..62).
_DERIVED_SHIFT = 63 - CHAR_BITS
#: sketch_dim · 2 · 2³² must stay below 2⁶³ for the bucket product to be exact in int64.
MAX_SKETCH_DIM = 1 << 30
_GOLDEN = 0x9E3779B97F4A7C15
#: Elements sketched at once. Measured at P = 10⁶, m = 10⁴ on one CPU thread: 8.4 ms a push with 2¹⁶
#: (more torch calls), 6.9 ms with 2¹⁸, 9.3 ms with 2²⁰ (the five scratch buffers, 40 MiB, leave the cache).
DEFAULT_CHUNK = 1 << 18
#: Parameter dtypes the compiled sketch reads in their own precision (others take the torch path).
COMPILED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def sketch_error_bound(sketch_dim: int, window: int, failure_probability: float) -> float:
    """ε such that a CountSketch of ``sketch_dim`` rows keeps every eigenvalue of the window's Gram within
    a factor 1 ± ε with probability ≥ 1 − δ: ε = √(W(W + 1)/(m δ)) (module docstring; Nelson & Nguyễn 2013).

    A value ≥ 1 means the worst-case bound promises nothing at that m; the measured errors are far smaller
    (about √(2/m) per eigenvalue).

    Args:
        sketch_dim: m, rows of the sketch.
        window: W, updates in the window (the dimension of the row space to embed).
        failure_probability: δ in (0, 1).

    Example:
        >>> round(sketch_error_bound(110_000, 10, 0.01), 6)
        0.316228
    """
    if not isinstance(sketch_dim, int) or sketch_dim < 1:
        raise ValueError(f"sketch_dim must be a positive int, got {sketch_dim!r}")
    check_window(window)
    if not 0.0 < failure_probability < 1.0:
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability!r}")
    return math.sqrt(window * (window + 1) / (sketch_dim * failure_probability))


# ---------------------------------------------------------------------------------------------- the hash


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 values (numpy's unsigned arithmetic wraps modulo 2⁶⁴)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stream(key: int, start: int, count: int) -> np.ndarray:
    """Outputs start..start+count−1 of a splitmix64 generator seeded with ``key``, as 63-bit int64."""
    k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    state = np.uint64(key & _MASK64) + k * np.uint64(_GOLDEN)  # wraps modulo 2⁶⁴, as splitmix64's state
    return (_mix64(state) >> np.uint64(1)).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _tables(seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The hash tables of ``seed``: T (2¹⁶ entries, by the index's low 16 bits), D (2¹⁶, by the derived
    character) and the key of the segment keys (see :func:`count_sketch_hash`)."""
    keys = [int(k) for k in _stream(seed, 0, 3)]
    table = torch.from_numpy(_stream(keys[0], 0, _CHAR))
    derived = torch.from_numpy(_stream(keys[1], 0, _CHAR))
    return table, derived, keys[2]


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return seed


def _check_sketch_dim(sketch_dim: object) -> int:
    if (
        not isinstance(sketch_dim, int)
        or isinstance(sketch_dim, bool)
        or not 1 <= sketch_dim <= MAX_SKETCH_DIM
    ):
        raise ValueError(f"sketch_dim must be an int in [1, 2**30], got {sketch_dim!r}")
    return sketch_dim


class _Workspace:
    """Scratch buffers for one piece of up to ``size`` elements on one device: three int64 (the hash) and
    two float64 (the values split in two). Kept between pushes: fresh 8 MiB tensors at every op cost
    page faults comparable to the ops themselves, and numbered calls with ``out=`` stay on torch's
    vectorised kernels (``a ^ b`` on int64 tensors took 25 times longer than ``torch.bitwise_xor``)."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = size, device
        self.ints = torch.empty(3, size, dtype=torch.int64, device=device)
        self.floats = torch.empty(2, size, dtype=torch.float64, device=device)


def _slots(start: int, count: int, sketch_dim: int, seed: int, work: _Workspace) -> torch.Tensor:
    """(count,) int64 slots 2·h(i) + [s(i) = −1] for the global indices i = start..start+count−1
    (:func:`count_sketch_hash`), in ``work``'s first int buffer."""
    table, derived, segment_key = _tables(seed)
    if table.device != work.device:
        table, derived = _device_tables(seed, work.device)
    h, d, e = work.ints[0, :count], work.ints[1, :count], work.ints[2, :count]
    first, last = start >> CHAR_BITS, (start + count - 1) >> CHAR_BITS
    keys = _stream(segment_key, first, last - first + 1).tolist()
    done = 0
    for q, key in zip(range(first, last + 1), keys, strict=True):  # a = T[c] XOR K[q], segment by segment
        lo = (start + done) & (_CHAR - 1) if q == first else 0
        n = min(_CHAR - lo, count - done)
        torch.bitwise_xor(table[lo : lo + n], key, out=h[done : done + n])
        done += n
    torch.bitwise_right_shift(h, _DERIVED_SHIFT, out=d)
    torch.index_select(derived, 0, d, out=e)
    h.bitwise_xor_(e)  # b = a XOR D[a >> 47]
    h.bitwise_and_(_MASK32).mul_(2 * sketch_dim).bitwise_right_shift_(32)  # ⌊u · 2m⌋, u = b mod 2³² / 2³²
    return h


@functools.lru_cache(maxsize=8)
def _compiled_tables(seed: int) -> torch.Tensor:
    """(3, 2¹⁶) int32: the bits of the tables the compiled hash reads, T mod 2³², T >> 47 and D mod 2³²
    (as int32 bit patterns): b mod 2³² and a >> 47 need no others (``csrc/count_sketch.cpp``)."""
    table, derived, _ = _tables(seed)
    low = [t.bitwise_and(_MASK32) for t in (table, derived)]
    bits = torch.stack([low[0], table.bitwise_right_shift(_DERIVED_SHIFT), low[1]])
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)  # the same 32 bits


@functools.lru_cache(maxsize=8)
def _device_tables(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    table, derived, _ = _tables(seed)
    return table.to(device), derived.to(device)


def count_sketch_hash(indices: Any, sketch_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The CountSketch's bucket h(i) ∈ [0, m) and sign s(i) ∈ {±1} of each global element index i.

    With c = i mod 2¹⁶ and q = ⌊i / 2¹⁶⌋, and splitmix64 generators (outputs shifted right by one bit,
    63-bit): k_0, k_1, k_2 the first three outputs of the generator seeded with ``seed``, T[c] output c of
    the one seeded with k_0, D[d] output d of the one seeded with k_1, K[q] output q of the one seeded
    with k_2 (output n is mix64(key + (n + 1)·0x9E3779B97F4A7C15 mod 2⁶⁴)):

        a = T[c] XOR K[q];  b = a XOR D[a >> 47];  j = ⌊(b mod 2³²) · 2m / 2³²⌋ ∈ [0, 2m)
        h(i) = ⌊j / 2⌋,  s(i) = +1 if j is even else −1.

    Mixed tabulation (module docstring): one table lookup per element for the low character, a key per
    2¹⁶-element segment, and one lookup of the derived character a >> 47.

    Args:
        indices: non-negative global element indices below 2⁶³ (array-like of ints).
        sketch_dim: m.
        seed: the sketch's seed, an int in [0, 2⁶⁴).

    Returns:
        ``(buckets, signs)``, int64 arrays of the shape of ``indices``.

    Example:
        >>> buckets, signs = count_sketch_hash([0, 1, 2], 8, seed=0)
        >>> bool(((buckets >= 0) & (buckets < 8)).all()), sorted(set(np.abs(signs).tolist()))
        (True, [1])
    """
    m, seed = _check_sketch_dim(sketch_dim), _check_seed(seed)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and int(idx.min()) < 0:
        raise ValueError("indices must be non-negative")
    table, derived, segment_key = _tables(seed)
    flat = idx.reshape(-1)
    segments, inverse = np.unique(flat >> CHAR_BITS, return_inverse=True)
    keys = np.array([_stream(segment_key, int(q), 1)[0] for q in segments], dtype=np.int64)
    a = table.numpy()[flat & (_CHAR - 1)] ^ keys[inverse.reshape(-1)]
    b = a ^ derived.numpy()[a >> _DERIVED_SHIFT]
    j = ((b & _MASK32) * (2 * m)) >> 32
    return (j >> 1).reshape(idx.shape), (1 - 2 * (j & 1)).reshape(idx.shape)


# ---------------------------------------------------------------------------------------- the sketch


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: s = fl(a + b) and the exact error e, a + b = s + e (elementwise, float64)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


class _Accumulator:
    """Double-double bucket sums S·v of one or more groups: ``hi + lo`` to about 2⁻¹⁰⁰ relative."""

    def __init__(self, n_groups: int, sketch_dim: int) -> None:
        self.hi = np.zeros((n_groups, sketch_dim))
        self.lo = np.zeros((n_groups, sketch_dim))
        self.nonfinite = np.zeros(n_groups, dtype=bool)

    def add(
        self, group: int, values: torch.Tensor, start: int, sketch_dim: int, seed: int, work: _Workspace
    ) -> None:
        """Add the sketch of ``values`` (flat, any float dtype, at most ``work.size`` elements) at global
        indices start.. to ``group``."""
        n = values.numel()
        if n == 0 or self.nonfinite[group]:
            return
        v, hi = work.floats[0, :n], work.floats[1, :n]
        v.copy_(values)  # exact: float32 and bfloat16 values are float64 values
        low, high = torch.aminmax(v)
        peak = max(-float(low), float(high))
        if not math.isfinite(peak):
            self.nonfinite[group] = True
            return
        if peak == 0.0:
            return
        # Grid g with n·peak < 2⁵² g: every partial sum of hi parts is a multiple of g below 2⁵³ g, hence
        # exact in float64 in any order; rounding to the grid by adding and subtracting 1.5·2⁵² g is exact
        # for |v| ≤ 2⁵¹ g, and lo = v − hi is exact with |lo| ≤ g/2.
        grid_exponent = math.frexp(peak)[1] + max(1, (n - 1).bit_length()) - 52
        if grid_exponent + 53 < 1024:
            shifter = 1.5 * math.ldexp(1.0, grid_exponent + 52)
            torch.add(v, shifter, out=hi).sub_(shifter)
            v.sub_(hi)  # now lo
        else:  # values within about n·2⁻⁵² of float64's largest: plain float64 sums, no split
            hi.copy_(v)
            v.zero_()
        slots = _slots(start, n, sketch_dim, seed, work)
        s_hi = torch.bincount(slots, weights=hi, minlength=2 * sketch_dim).cpu().numpy()
        s_lo = torch.bincount(slots, weights=v, minlength=2 * sketch_dim).cpu().numpy()
        # Sums beyond float64's range (values near 1e308) become Inf/NaN and the push "nonfinite", quietly.
        with np.errstate(over="ignore", invalid="ignore"):
            part_hi = s_hi[0::2] - s_hi[1::2]  # exact: both multiples of g below 2⁵³ g
            part_lo = s_lo[0::2] - s_lo[1::2]
            total, err = _two_sum(self.hi[group], part_hi)
            self.hi[group] = total
            self.lo[group] += err + part_lo

    def result(self) -> np.ndarray:
        """(2, n_groups, m): the normalised (hi, lo) pairs, NaN for a group that held NaN/Inf."""
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.stack(_two_sum(self.hi, self.lo))
        out[:, self.nonfinite] = np.nan
        return out


def count_sketch(
    values: torch.Tensor, offset: int, sketch_dim: int, seed: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """S·v for the elements ``values`` (flattened row-major) at global indices offset, offset + 1, ….

    The functional form of the sketch that :class:`SketchedWindow` keeps per group (hash:
    :func:`count_sketch_hash`); sums are exact to float64 rounding of the result. The sketches of
    disjoint ranges of one vector add up to the sketch of the vector.

    Args:
        values: any float tensor (or array-like).
        offset: the global index of its first element.
        sketch_dim: m.
        seed: the sketch's seed.
        out: an optional (m,) float64 array the sketch is added to.

    Returns:
        ``out`` (or a new (m,) float64 array) holding S·v; NaN where ``values`` hold NaN/Inf.

    Example:
        >>> a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 0.0, -1.0, 2.0])
        >>> bool(np.allclose(count_sketch(a + b, 0, 4), count_sketch(a, 0, 4) + count_sketch(b, 0, 4)))
        True
        >>> parts = count_sketch(a[:1], 0, 4) + count_sketch(a[1:], 1, 4)  # two shards, global offsets
        >>> bool((parts == count_sketch(a, 0, 4)).all())
        True
    """
    m, seed = _check_sketch_dim(sketch_dim), _check_seed(seed)
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    v = torch.as_tensor(values).detach().reshape(-1)
    acc = _Accumulator(1, m)
    work = _Workspace(min(v.numel(), DEFAULT_CHUNK), v.device)
    for lo in range(0, v.numel(), DEFAULT_CHUNK):
        acc.add(0, v[lo : lo + DEFAULT_CHUNK], offset + lo, m, seed, work)
    hi_lo = acc.result()
    result = hi_lo[0, 0] + hi_lo[1, 0]
    if out is None:
        return result
    out += result
    return out


class SketchedWindow(GramSlots):
    """The last W CountSketched updates and their Gram matrices: :class:`UpdateWindow`'s read and push
    interface in (W + 2)·m float64 numbers per group, whatever P is.

    Every eigenvalue of the sketched Gram is within a factor 1 ± ε of the exact window's with
    probability ≥ 1 − δ once m ≥ W(W + 1)/(ε²δ) (module docstring, :func:`sketch_error_bound`); in
    practice the error is about √(2/m) per eigenvalue. A push reads θ once and costs O(P) hashing and
    bucket sums plus W·m flops for the Gram row.

    Args:
        layout: the tensors' names, shapes and groups (:meth:`ParameterLayout.build`), or an int P for one
            flat vector in one group "all".
        window: W ≥ 2, updates kept.
        sketch_dim: m, rows of the sketch (1 ≤ m ≤ 2³⁰).
        seed: the sketch's seed (every process of one model must use the same).
        offsets: the global index of each layout tensor's first element (its elements follow in row-major
            order); default the cumulative sizes in layout order. Under sharded training each process
            gives its shard's global positions, so that the processes' sketches sum to the model's.
        chunk_size: elements hashed at once (a piece; the pieces fix the rounding of the sums). The torch
            path's scratch memory is 40 bytes per element of this; the compiled path's is 32·m bytes per
            piece in flight (one per intra-op thread).
        share: for one process's part of a model trained on several
            (:class:`~spectral_edge.tracking.window.WindowShare`): its reducer sums each new sketch of θ
            (or of an explicit update) over the processes, a C-contiguous (2, n_groups, m) array holding
            S·θ as the double-double pair (hi, lo), and its ``total_params`` is the P the record reports.
            None (default): the tensors are the whole model.
        kernel: "auto" (default) computes the sketch with the compiled operator when it builds and the
            tensors are CPU tensors of a float dtype it reads, else with torch; "compiled" requires the
            operator (RuntimeError if it cannot be built); "torch" always uses the torch path, the
            reference. Both give the same sums bit for bit.

    Attributes:
        kernel: "sketch-compiled" where the compiled operator is used for CPU tensors, "sketch" for the
            torch path (the string the run store's config keeps).

    Example:
        >>> win = SketchedWindow(1000, window=2, sketch_dim=64, seed=1)
        >>> win.snapshot([torch.zeros(1000)])
        >>> _ = win.push([torch.ones(1000)]); _ = win.push([2 * torch.ones(1000)])
        >>> win.full, win.kernel in ("sketch", "sketch-compiled"), win.nbytes == (2 + 2) * 64 * 8
        (True, True, True)
    """

    eigen = "numpy"
    storage_dtype = torch.float64
    storage_device = torch.device("cpu")

    def __init__(
        self,
        layout: ParameterLayout | int,
        *,
        window: int = 10,
        sketch_dim: int,
        seed: int = 0,
        offsets: Sequence[int] | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        share: WindowShare | None = None,
        kernel: str = "auto",
    ) -> None:
        layout = ParameterLayout.of(layout)
        check_window(window)
        _check_sketch_dim(sketch_dim)
        _check_seed(seed)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if kernel not in ("auto", "compiled", "torch"):
            raise ValueError(f"kernel must be 'auto', 'compiled' or 'torch', got {kernel!r}")
        if offsets is None:
            offsets = list(np.cumsum((0,) + layout.numels[:-1]).tolist())
        offsets = [int(o) for o in offsets]
        if len(offsets) != len(layout.names):
            raise ValueError(
                f"got {len(offsets)} offsets for {len(layout.names)} tensors: give one per tensor"
            )
        if any(o < 0 or o + n > 1 << 62 for o, n in zip(offsets, layout.numels, strict=True)):
            raise ValueError("offsets must be non-negative and the global indices below 2**62")
        spans = sorted(zip(offsets, layout.numels, layout.names, strict=True))
        for (o1, n1, a), (o2, _, b) in zip(spans, spans[1:], strict=False):
            if o1 + n1 > o2:  # shared indices would share buckets and signs: the sketches would not add up
                raise ValueError(
                    f"tensors {a!r} and {b!r} overlap at global indices [{o2}, {o1 + n1}): fix offsets"
                )
        check_share(layout, share)

        self.layout = layout
        self.window = window
        self.sketch_dim = sketch_dim
        self.seed = seed
        self.offsets = tuple(offsets)
        self.chunk_size = chunk_size
        self.share = share
        #: The rows are float64 sketches: the float64 Gram's own round-off is the cut (no storage rounding).
        self.rank_rtol = storage_rank_rtol(2.0**-53, window)
        n_groups = len(layout.group_names)
        self._rows = np.zeros((n_groups, window, sketch_dim))  # per group, slot-indexed sketched updates
        self._gram = np.zeros((n_groups, window, window))  # per group, indexed by slot
        self._order: list[int] = []  # slots, oldest first
        self._prev: np.ndarray | None = None  # (2, n_groups, m): S θ_prev as (hi, lo)
        self.pushes = 0
        self._plan = self._make_plan()
        self._max_piece = max(hi - lo for _, lo, hi, _, _ in self._plan)
        self._work: dict[torch.device, _Workspace] = {}
        _tables(seed)  # build the tables now, not at the first push
        self._op: Any = None if kernel == "torch" else native_op("count_sketch")
        if self._op is None and kernel == "compiled":
            raise RuntimeError(
                "kernel='compiled' was asked for but the C++ kernel could not be built (see the warning "
                "logged by spectral_edge); install a C++ compiler and ninja, or use kernel='auto'"
            )
        self.kernel = "sketch-compiled" if self._op is not None else "sketch"
        self._native_plan = self._make_native_plan() if self._op is not None else None
        self._scratch: torch.Tensor | None = None  # (K, 4m) float64, all zero between calls

    def __repr__(self) -> str:
        return (
            f"SketchedWindow(P={self.layout.n_params}, window={self.window}, sketch_dim={self.sketch_dim}, "
            f"seed={self.seed}, groups={len(self.layout.group_names)})"
        )

    def _make_plan(self) -> list[tuple[tuple[int, ...], int, int, int, int]]:
        """Pieces of work: (tensor indices, start, stop within the tensor or the pack, global start,
        group). Consecutive small tensors of one group at consecutive global indices are packed into one
        piece, so that a model of many biases costs a few torch calls per piece, not per tensor."""
        layout, size = self.layout, self.chunk_size
        plan: list[tuple[tuple[int, ...], int, int, int, int]] = []
        pack: list[int] = []
        pack_size = 0

        def close() -> None:
            nonlocal pack, pack_size
            if pack:
                group = layout.group_names.index(layout.groups[pack[0]])
                plan.append((tuple(pack), 0, pack_size, self.offsets[pack[0]], group))
            pack, pack_size = [], 0

        for t, numel in enumerate(layout.numels):
            if pack and (
                layout.groups[pack[-1]] != layout.groups[t]
                or self.offsets[pack[-1]] + layout.numels[pack[-1]] != self.offsets[t]
                or pack_size + numel > size
            ):
                close()
            if numel < size:
                pack.append(t)
                pack_size += numel
                continue
            close()
            group = layout.group_names.index(layout.groups[t])
            for lo in range(0, numel, size):
                plan.append(((t,), lo, min(lo + size, numel), self.offsets[t] + lo, group))
        close()
        return plan

    def _make_native_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The plan as the compiled operator reads it: segments (tensor, first element, count), pieces
        (first segment, end segment, global start, group, index of the piece's first key), and the segment
        keys K[q] of every piece (:func:`count_sketch_hash`), computed here once."""
        _, _, segment_key = _tables(self.seed)
        numels = self.layout.numels
        segments: list[tuple[int, int, int]] = []
        pieces: list[tuple[int, int, int, int, int]] = []
        keys: list[np.ndarray] = []
        n_keys = 0
        for idx, lo, hi, start, group in self._plan:
            first = len(segments)
            if len(idx) == 1:
                segments.append((idx[0], lo, hi - lo))
            else:  # a pack of whole tensors at consecutive global indices
                segments.extend((t, 0, numels[t]) for t in idx)
            pieces.append((first, len(segments), start, group, n_keys))
            if hi > lo:
                q0, q1 = start >> CHAR_BITS, (start + hi - lo - 1) >> CHAR_BITS
                keys.append(_stream(segment_key, q0, q1 - q0 + 1))
                n_keys += q1 - q0 + 1
        return (
            torch.tensor(segments, dtype=torch.int64).reshape(-1, 3),
            torch.tensor(pieces, dtype=torch.int64).reshape(-1, 5),
            torch.from_numpy(np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)),
        )

    # ------------------------------------------------------------------ state

    @property
    def nbytes(self) -> int:
        """Bytes of the sketched state: the W sketched rows and the (hi, lo) sketch of θ_prev, that is
        (W + 2)·m·8 per group, independent of P (the W × W Grams and the shared hash tables aside)."""
        n_groups = len(self.layout.group_names)
        return self._rows.nbytes + 2 * n_groups * self.sketch_dim * 8

    def spectra(self, *, half: bool) -> WindowEigen:
        """The eigen stage of a record (``tracking/_spectra.py``, with NumPy) for the sketched Grams.

        Args:
            half: also the halves' eigen-decompositions, for the half-window alignment (§28).
        """
        return window_spectra(
            self._gram, self._order, groups=len(self.layout.group_names) > 1, half=half, kernel=None
        )

    def principal_directions(self, k: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Not available: v_j = Xᵀu_j/σ_j needs the rows of X in parameter space, which a sketch does
        not keep (S is m × P with m ≪ P and has no inverse). Use an exact :class:`UpdateWindow`.

        Args:
            k: ignored.
        """
        raise ValueError(
            "a SketchedWindow cannot give principal directions in parameter space: it keeps only the "
            "sketched updates S·δ_t (m numbers each); use an exact UpdateWindow for directions"
        )

    def updates(self) -> torch.Tensor:
        """The (count, n_groups·m) *sketched* updates z_t = S δ_t in time order, oldest first, each row the
        groups' sketches side by side (so their dot products are the total Gram); a float64 copy."""
        rows = self._rows[:, self._order]  # (n_groups, count, m)
        count, width = len(self._order), self._rows.shape[0] * self.sketch_dim
        return torch.from_numpy(np.ascontiguousarray(rows.transpose(1, 0, 2).reshape(count, width)))

    def reset(self) -> None:
        """Forget the window and the snapshot; the next call must be :meth:`snapshot`."""
        self._rows[:] = 0.0
        self._gram[:] = 0.0
        self._order.clear()
        self._prev = None

    # ------------------------------------------------------------------ pushing

    def snapshot(self, tensors: Sequence[torch.Tensor], *, copy: bool = True) -> None:
        """Take S θ_prev, the sketch the next :meth:`push` subtracts.

        Args:
            tensors: current values in layout order (this process's shard under sharding).
            copy: accepted for :class:`UpdateWindow`'s interface; nothing is kept by reference here.
        """
        self._prev, _ = self._sketch_of(self._flatten(tensors))

    def push(self, tensors: Sequence[torch.Tensor], *, copy: bool = True, flag: bool = False) -> PushResult:
        """Push z = S θ − S θ_prev = S δ and keep S θ as the new snapshot (one read of θ).

        Args:
            tensors: current values θ in layout order.
            copy: as for :meth:`snapshot`.
            flag: as for :meth:`UpdateWindow.push` (sent with the sketch of θ).
        """
        if self._prev is None:
            raise RuntimeError("push() needs a snapshot first: call snapshot(tensors) at the start")
        y, flagged = self._sketch_of(self._flatten(tensors), flag)
        # (hi − hi') is exact or rounded once relative to z, and the lo parts are ~2⁻⁵³ of the hi parts.
        with np.errstate(over="ignore", invalid="ignore"):
            z = (y[0] - self._prev[0]) + (y[1] - self._prev[1])
        self._prev = y  # refreshed whatever the status, as the exact window's snapshot is
        return self._push_row(z, flagged)

    def push_update(self, update: Any) -> PushResult:
        """Push an explicit update δ (a flat (P,) array-like or tensors in layout order), sketched directly.
        Under sharding, δ is this process's part and the reducer sums the parts.

        Args:
            update: the update.

        Example:
            >>> win = SketchedWindow(3, window=2, sketch_dim=16)
            >>> win.push_update([1.0, 0.0, 0.0]).status, win.gram().tolist()
            ('pushed', [[1.0]])
        """
        if isinstance(update, (list, tuple)) and update and isinstance(update[0], torch.Tensor):
            flat = self._flatten(update)
        else:
            vector = update if isinstance(update, torch.Tensor) else torch.as_tensor(np.asarray(update))
            vector = vector.detach().reshape(-1)
            if vector.numel() != self.layout.n_params:
                raise ValueError(
                    f"update has {vector.numel()} elements, the layout has P={self.layout.n_params}"
                )
            flat = list(torch.split(vector, list(self.layout.numels)))
        y, flagged = self._sketch_of(flat)
        return self._push_row(y[0] + y[1], flagged)

    def _sketch_of(self, flat: list[torch.Tensor], flag: bool = False) -> tuple[np.ndarray, bool]:
        """(2, n_groups, m) S·v as (hi, lo) for the flat tensors, summed over the processes sharing the
        model, and whether any of them raised ``flag`` (sent as one more number with the sum)."""
        try:
            y = self._local_sketch(flat)
        except Exception as exc:
            if self.share is None:
                raise
            # The others wait in the all-reduce: take part with NaN, so every process rejects this update.
            warnings.warn(
                f"spectral-edge: this process's part of a sketched push failed ({exc!r}); every process "
                "skips the update and restarts its window",
                SpectrumWarning,
                stacklevel=4,
            )
            y = np.full((2, len(self.layout.group_names), self.sketch_dim), math.nan)
        if self.share is None:
            return y, flag
        summed = np.empty(y.size + 1)
        summed[:-1] = y.reshape(-1)
        summed[-1] = 1.0 if flag else 0.0
        self.share.reducer.all_reduce(summed, what="the sketch S·θ of the parameters")
        y = summed[:-1].reshape(y.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.stack(_two_sum(y[0], y[1]))
        return y, bool(summed[-1] > 0)

    def _local_sketch(self, flat: list[torch.Tensor]) -> np.ndarray:
        """(2, n_groups, m) S·v as (hi, lo) of this process's tensors: compiled where it applies."""
        if self._op is not None and all(t.device.type == "cpu" and t.dtype in COMPILED_DTYPES for t in flat):
            return self._compiled_sketch(flat)
        acc = _Accumulator(len(self.layout.group_names), self.sketch_dim)
        for idx, lo, hi, start, group in self._plan:
            values = flat[idx[0]][lo:hi] if len(idx) == 1 else torch.cat([flat[t] for t in idx])
            acc.add(group, values, start, self.sketch_dim, self.seed, self._workspace(values.device))
        return acc.result()

    def _compiled_sketch(self, flat: list[torch.Tensor]) -> np.ndarray:
        """:class:`_Accumulator`'s (hi, lo) result for CPU tensors, bit for bit, from the compiled operator."""
        assert self._native_plan is not None
        segments, pieces, keys = self._native_plan
        m = self.sketch_dim
        # One scratch of 4m sums per piece in flight: as many as threads, since a piece is one thread's.
        k = max(1, min(len(self._plan), torch.get_num_threads()))
        if self._scratch is None or self._scratch.shape[0] < k:
            self._scratch = torch.zeros(k, 4 * m, dtype=torch.float64)
        out = np.empty((2, len(self.layout.group_names), m))
        values = [t if t.is_contiguous() else t.contiguous() for t in flat]
        tables = _compiled_tables(self.seed)
        self._op(values, segments, pieces, tables, keys, m, torch.from_numpy(out), self._scratch[:k])
        return out

    def _workspace(self, device: torch.device) -> _Workspace:
        work = self._work.get(device)
        if work is None:
            work = self._work[device] = _Workspace(self._max_piece, device)
        return work

    def _push_row(self, z: np.ndarray, flagged: bool = False) -> PushResult:
        """Push the sketched update z (n_groups, m): the Gram row as the exact window writes it."""
        w = self.window
        dropping = len(self._order) == w
        target = self._order[0] if dropping else next(s for s in range(w) if s not in self._order)
        with np.errstate(invalid="ignore", over="ignore"):
            # torch's matmul, on torch's intra-op threads: NumPy's BLAS starts its own threads for m ≳ 10⁴,
            # which fight torch's (still spinning after the sketch) for the cores: measured 7.5 ms against
            # 2.2 ms a push at P = 10⁶, m = 65536 on two cores.
            rows, column = torch.from_numpy(self._rows), torch.from_numpy(z)[:, :, None]
            group_dots = torch.matmul(rows, column)[..., 0].numpy()  # (n_groups, W), slot-indexed
            group_sq = np.einsum("gm,gm->g", z, z)
        dots = group_dots.sum(axis=0)
        added_sq = float(group_sq.sum())
        dropped_sq = float(self._gram[:, target, target].sum())
        # The exact window overwrites the oldest row while it computes the dots, so a rejected update
        # costs it that row; the same happens here, so that both windows stay interchangeable.
        self._rows[:, target] = 0.0
        self._gram[:, target, :] = 0.0
        self._gram[:, :, target] = 0.0
        if not math.isfinite(added_sq) or added_sq == 0.0:
            return self._refused(added_sq, dropping=dropping, flagged=flagged)
        window_dots = dots[np.asarray(self._order, dtype=np.intp)]  # time order, before the push
        self._rows[:, target] = z
        self._gram[:, target, :] = group_dots
        self._gram[:, target, target] = group_sq
        self._gram[:, :, target] = self._gram[:, target, :]
        return self._admitted(
            target, added_sq, dropped_sq, float(dots[target]), window_dots, dropping=dropping, flagged=flagged
        )

    def _flatten(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(tensors) != len(self.layout.names):
            raise ValueError(f"expected {len(self.layout.names)} tensors in layout order, got {len(tensors)}")
        flat = []
        for t, name, numel in zip(tensors, self.layout.names, self.layout.numels, strict=True):
            if t.numel() != numel:
                raise ValueError(f"tensor {name!r} has {t.numel()} elements, the layout says {numel}")
            flat.append(t.detach().reshape(-1))
        return flat

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the sketched rows and Grams by slot with the slots' time order
        (kept as they lie, so that a resumed window computes its dot products in the same order and
        continues bit for bit), S θ_prev as (hi, lo), and the sketch's identity (seed, m, W, P,
        tensors, offsets)."""
        return {
            "kind": "sketch",
            "window": self.window,
            "sketch_dim": self.sketch_dim,
            "seed": self.seed,
            "n_params": self.layout.n_params,
            "names": list(self.layout.names),
            "groups": list(self.layout.groups),
            "offsets": list(self.offsets),
            "rows": torch.from_numpy(self._rows.copy()),  # (n_groups, W, m) by slot
            "grams": torch.from_numpy(self._gram.copy()),  # (n_groups, W, W) by slot
            "order": list(self._order),  # slots, oldest first
            "prev": None if self._prev is None else torch.from_numpy(self._prev.copy()),  # (2, n_groups, m)
            "pushes": self.pushes,
        }

    def load_state_dict(
        self, state: dict[str, Any], *, snapshot_device: torch.device | str | None = None
    ) -> None:
        """Restore :meth:`state_dict` output of a sketched window of the same seed, m, W, tensors and
        offsets; the resumed window continues bit for bit.

        Args:
            state: the saved state.
            snapshot_device: accepted for :class:`UpdateWindow`'s interface; the sketch lives on the host.
        """
        if state.get("kind") != "sketch":
            raise ValueError(
                "state was not saved by a SketchedWindow (an exact window's state has no sketch)"
            )
        mine = {
            "seed": self.seed,
            "sketch_dim": self.sketch_dim,
            "window": self.window,
            "n_params": self.layout.n_params,
        }
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(
                    f"state is for {key}={state[key]!r}, this window has {key}={value!r}: a sketch can only "
                    "be resumed with the same seed, sketch_dim, window and P"
                )
        if (
            list(state["names"]) != list(self.layout.names)
            or list(state["groups"]) != list(self.layout.groups)
            or list(state["offsets"]) != list(self.offsets)
        ):
            raise ValueError(
                "state was saved for other tensors, groups or offsets: the sketches do not match"
            )
        self.reset()
        self._rows[:] = state["rows"].numpy()
        self._gram[:] = state["grams"].numpy()
        self._order = [int(s) for s in state["order"]]
        self._prev = None if state["prev"] is None else state["prev"].numpy().copy()
        self.pushes = int(state["pushes"])
