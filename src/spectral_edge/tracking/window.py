"""UpdateWindow: the last W flattened updates and their Gram matrix, kept incrementally.

The trajectory matrix X (W × P, Def 1.2) lives in one buffer of W rows on the storage device; the Gram
matrix G = X Xᵀ (W × W, Def 1.3) is kept in float64 on the host, one per parameter group (they sum to the
total because a dot product over all parameters is the sum of the dot products over disjoint groups).

One push costs one pass over the window (architecture.md, "The data path"): the parameters are walked in
chunks small enough to stay in cache, and for each chunk

1. a = θ − θ_prev is computed into a chunk-sized scratch buffer and θ_prev ← θ is refreshed,
2. the W dot products of a with the window's rows (including the oldest row b, about to leave, which gives
   aᵀb for ‖ΔC‖_F) and ‖a‖² are accumulated in float64 from the values as stored,
3. a is written over b's chunk (already consumed) in the storage dtype.

Why float64 accumulation whatever the storage: the product of two float32 values is exact in float64, so
the Gram is that of the stored window to about 1e-16 relative, and a float32 window reads like a float64
one down to what float32 storage itself supports (:func:`~spectral_edge.spectrum.window.storage_rank_rtol`).
Accumulated in float32, entries carried errors near 1e-7 of ‖x‖‖a‖, which hid every σ_j below about
1e-3·σ_1 and set them to zero, and updates near 1e-30 (or 1e19 at P = 300) underflowed (overflowed).
The pass still reads X once: the fused kernel converts each value in registers, the torch path in
cache-sized blocks.

So X is read once, θ once, θ_prev read and written once, and one row written: about (W + 4)·P values for
W·P in the bare read of the window. The chunk partial sums are added in float64 per group. X·Xᵀ and an SVD
of X are never computed. With bfloat16 storage the dot products use the rounded values actually stored,
so the Gram is that of the stored window.

An update that holds NaN/Inf, or is exactly zero, is not pushed. Because b's chunks were overwritten on
the way, the window then loses its oldest row and has W − 1 updates until the next push refills it.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from spectral_edge.errors import SpectrumWarning
from spectral_edge.spectrum.perturbation import delta_c_frobenius
from spectral_edge.spectrum.window import storage_rank_rtol
from spectral_edge.tracking._native import native_kernel
from spectral_edge.tracking._spectra import WindowEigen, window_spectra

#: Elements per chunk on a CPU storage device: 2^18 float32 values (1 MiB) keep θ, θ_prev and the
#: scratch chunk in a 2 MiB L2 while the W window rows stream past, and make few enough torch calls that
#: a model of many small tensors is not dominated by call overhead (benchmarks/monitor_step.py).
CPU_CHUNK = 1 << 18
#: On an accelerator, chunks only bound the scratch buffer: kernel launches, not cache, set the cost.
ACCELERATOR_CHUNK = 1 << 24

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
#: The environment variable that gives the record's eigen stage to NumPy: "numpy" (or "auto", the default).
EIGEN_ENV = "SPECTRAL_EDGE_EIGEN"
#: The rank cut where the sums can only be float32 (Apple's MPS has no float64): entries then carry
#: errors near 1e-7·‖x‖‖a‖, so eigenvalues below 1e-6·λ_1 are not resolved.
FLOAT32_SUMS_RANK_RTOL = 1e-6


def check_window(window: object) -> None:
    """Raise a clear ValueError unless ``window`` is an int W ≥ 2 (a gap needs two updates)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")


class GramReducer(Protocol):
    """Sums float64 arrays over the processes that each hold a part of the parameters (in place).

    :class:`~spectral_edge.tracking.distributed.ProcessGroupReducer` is the torch.distributed one.
    """

    def all_reduce(self, array: np.ndarray, *, what: str) -> None:
        """Replace ``array`` (C-contiguous float64) by its sum over the processes; ``what`` names it in errors."""


@dataclass(frozen=True)
class WindowShare:
    """What a window that holds one process's part of the parameters needs to know of the whole.

    The Gram of the model is the sum of the Grams of any partition of its coordinates (a dot product
    over all parameters is the sum of the dot products over disjoint parts), so each process pushes its
    own part and one all-reduce of the new Gram row completes it on every process.

    Attributes:
        reducer: sums each push's Gram row (n_groups·W + 1 float64 numbers) over the processes.
        total_params: P of the whole model (what d_crit and the record report).
        group_names: every group of the whole model, in one order on every process: the row summed is
            indexed by them, so a process holding none of a group's scalars still takes part.
        offsets: each local tensor's first element's index in the whole model's flat parameters (in the
            monitored order), by name, which a sketched window hashes
            (:class:`~spectral_edge.tracking.sketch.SketchedWindow`); None where a process cannot know it.
    """

    reducer: GramReducer
    total_params: int
    group_names: tuple[str, ...]
    offsets: Mapping[str, int] | None = None


def check_share(layout: ParameterLayout, share: WindowShare | None) -> None:
    """Raise a clear ValueError unless ``layout`` has the share's groups, in its order (the summed rows
    are indexed by them on every process)."""
    if share is not None and tuple(share.group_names) != tuple(layout.group_names):
        raise ValueError(
            f"the layout's groups {list(layout.group_names)} differ from the share's "
            f"{list(share.group_names)}: build the layout with all_groups=share.group_names"
        )


@dataclass(frozen=True)
class ParameterLayout:
    """Names, shapes and groups of the monitored tensors, in storage order (each group contiguous).

    Attributes:
        names: tensor names in storage order.
        shapes: their shapes.
        groups: the group name of each tensor.
        group_names: distinct group names in storage order.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[str, ...]
    group_names: tuple[str, ...]

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        shapes: Sequence[Sequence[int]],
        group_of: Callable[[str], str],
        *,
        all_groups: Sequence[str] | None = None,
    ) -> tuple[ParameterLayout, list[int]]:
        """A layout with each group contiguous, and the permutation from input order to storage order.

        Args:
            names: the tensors' names (unique).
            shapes: their shapes.
            group_of: the group of a name.
            all_groups: the group names in order, including groups with no tensor here (a process's part
                of a sharded model, see :class:`WindowShare`); default the groups of ``names``, in order.
        """
        if len(names) != len(shapes):
            raise ValueError(f"got {len(names)} names for {len(shapes)} shapes")
        if len(set(names)) != len(names):
            raise ValueError("tensor names must be unique")
        groups_in = [group_of(n) for n in names]
        group_names = tuple(dict.fromkeys(groups_in)) if all_groups is None else tuple(all_groups)
        missing = set(groups_in) - set(group_names)
        if missing:
            raise ValueError(f"groups {sorted(missing)} are not among all_groups={list(group_names)}")
        order = sorted(range(len(names)), key=lambda i: (group_names.index(groups_in[i]), i))
        layout = cls(
            names=tuple(names[i] for i in order),
            shapes=tuple(tuple(int(d) for d in shapes[i]) for i in order),
            groups=tuple(groups_in[i] for i in order),
            group_names=group_names,
        )
        return layout, order

    @classmethod
    def of(cls, layout: ParameterLayout | int) -> ParameterLayout:
        """``layout`` itself, or for an int P a single flat vector of P scalars in one group "all"."""
        if isinstance(layout, ParameterLayout):
            return layout
        if layout < 1:
            raise ValueError(f"the number of parameters must be >= 1, got {layout}")
        return cls(names=("all",), shapes=((layout,),), groups=("all",), group_names=("all",))

    @functools.cached_property  # read at every push and record; the layout is frozen
    def numels(self) -> tuple[int, ...]:
        """Number of scalars of each tensor, in storage order."""
        return tuple(math.prod(s) for s in self.shapes)

    @functools.cached_property
    def n_params(self) -> int:
        """P, the total number of scalars."""
        return sum(self.numels)

    def group_sizes(self) -> dict[str, int]:
        """Number of scalars per group."""
        sizes = dict.fromkeys(self.group_names, 0)
        for g, n in zip(self.groups, self.numels, strict=True):
            sizes[g] += n
        return sizes


@dataclass(frozen=True)
class PushResult:
    """What one push did.

    Attributes:
        status: "pushed", "nonfinite" (NaN/Inf, not pushed) or "zero" (all-zero update, not pushed).
        update_norm: ‖a‖ of the update (NaN/Inf for a non-finite one).
        dropped: True if the oldest update b left the window (it was full before this push).
        delta_c_fro: ‖ΔC‖_F = ‖a aᵀ − b bᵀ‖_F of this push (‖a‖² when nothing was dropped); None unless pushed.
        added_dot_dropped: aᵀb, None unless pushed and dropped.
        window_dots: (W,) float64 ⟨x_i, a⟩ with the rows x_i of the window *before* the push, in time order.
        flagged: some process passed ``flag=True`` to this push (one process alone: its own flag). The
            processes sharing a model agree through it on what each would otherwise decide alone.
    """

    status: Literal["pushed", "nonfinite", "zero"]
    update_norm: float
    dropped: bool
    delta_c_fro: float | None = None
    added_dot_dropped: float | None = None
    window_dots: np.ndarray | None = None
    flagged: bool = False


class GramSlots:
    """What every window shares: the groups' W × W Grams indexed by slot, and the slots in time order.

    :class:`UpdateWindow` (the exact rows of X) and
    :class:`~spectral_edge.tracking.sketch.SketchedWindow` (their sketches) fill ``_gram`` (n_groups, W, W)
    and ``_order`` (the slots holding updates, oldest first) their own way; these reads are the same.
    """

    window: int
    layout: ParameterLayout
    share: WindowShare | None
    _gram: np.ndarray
    _order: list[int]
    _prev: Any
    pushes: int

    @property
    def count(self) -> int:
        """Number of updates in the window now (≤ W)."""
        return len(self._order)

    @property
    def full(self) -> bool:
        """True once the window holds W updates (a record needs a full window)."""
        return len(self._order) == self.window

    @property
    def has_snapshot(self) -> bool:
        """True once ``snapshot`` has taken the reference of the next update (until ``reset``)."""
        return self._prev is not None

    @property
    def total_params(self) -> int:
        """P of the whole model: this window's own P, or the share's total when it holds one part."""
        return self.share.total_params if self.share is not None else self.layout.n_params

    def gram(self, group: str | None = None) -> np.ndarray:
        """The (count, count) Gram matrix of the window in time order, oldest first (a float64 copy).

        Args:
            group: a group name for that group's Gram; None for the total (sum over groups).
        """
        idx = np.asarray(self._order, dtype=np.intp)
        g = self._gram.sum(axis=0) if group is None else self._gram[self.layout.group_names.index(group)]
        return g[np.ix_(idx, idx)].copy()

    def group_grams(self) -> dict[str, np.ndarray]:
        """Every group's Gram matrix in time order (one gather for all of them)."""
        return dict(zip(self.layout.group_names, self.stacked_group_grams(), strict=True))

    def stacked_group_grams(self) -> np.ndarray:
        """The groups' Gram matrices in time order as one (n_groups, count, count) float64 array, in the
        order of ``layout.group_names`` (a copy)."""
        idx = np.asarray(self._order, dtype=np.intp)
        return self._gram[:, idx[:, None], idx[None, :]]

    def _refused(self, added_sq: float, *, dropping: bool, flagged: bool) -> PushResult:
        """The outcome of an update not pushed (‖a‖² zero or not finite), its slot already cleared: the
        oldest update left the window if it was full."""
        status: Literal["zero", "nonfinite"] = "zero" if added_sq == 0.0 else "nonfinite"
        if dropping:
            self._order.pop(0)
        norm = math.sqrt(added_sq) if added_sq >= 0.0 else float("nan")
        return PushResult(status=status, update_norm=norm, dropped=dropping, flagged=flagged)

    def _admitted(
        self,
        target: int,
        added_sq: float,
        dropped_sq: float,
        a_dot_b: float,
        window_dots: np.ndarray,
        *,
        dropping: bool,
        flagged: bool,
    ) -> PushResult:
        """Slot ``target`` holds the pushed update a: it becomes the newest, the oldest b leaves if the
        window was full, and ‖ΔC‖_F = ‖a aᵀ − b bᵀ‖_F (Prop 11.1) comes from ‖a‖², ‖b‖² and aᵀb."""
        dropped: float | None = None
        if dropping:
            dropped, dc = a_dot_b, delta_c_frobenius(added_sq, dropped_sq, a_dot_b)
            self._order.pop(0)
        else:
            dc = added_sq  # ΔC = a aᵀ: ‖ΔC‖_F = ‖a‖²
        self._order.append(target)
        self.pushes += 1
        return PushResult(
            status="pushed",
            update_norm=math.sqrt(added_sq),
            dropped=dropping,
            delta_c_fro=dc,
            added_dot_dropped=dropped,
            window_dots=window_dots,
            flagged=flagged,
        )


class UpdateWindow(GramSlots):
    """Ring buffer of the last W updates with an incrementally maintained float64 Gram matrix.

    Args:
        layout: the tensors' names, shapes and groups (see :meth:`ParameterLayout.build`), or an int P for
            a single flat vector in one group called "all".
        window: W ≥ 2, number of updates kept.
        storage_dtype: dtype of the stored window: torch.float32 (default), torch.bfloat16 (half the
            memory; each update rounded to 8 bits of mantissa) or torch.float64 (tests, small models).
        storage_device: where the W × P buffer lives; default CPU. Put it on the training GPU for speed,
            or on the CPU to spare GPU memory (each chunk of the update is then copied over).
        chunk_size: elements per chunk of the push loop; default 2^18 on CPU, 2^24 on accelerators.
        kernel: how a push runs: "fused" (one C++ call over all tensors, see ``csrc/fused_push.cpp``; float32
            storage and parameters on the CPU), "torch" (torch calls per piece; any dtype and device), or
            "auto" (default: "fused" where it applies and builds, else "torch"). With "fused" the record's
            eigen stage is compiled too (``csrc/window_spectra.cpp``) unless the environment variable
            environment variable ``SPECTRAL_EDGE_EIGEN`` is ``numpy`` at the record (see :attr:`eigen`).
        threads: deprecated and ignored (a FutureWarning when given). It shared a torch-path push among
            host threads, which on the CPU was 2.6–4.7 times slower than the fused kernel, the default
            there (docs/benchmarks.md), so it was removed.
        share: for one process's part of a model trained on several (:class:`WindowShare`): each push's
            Gram row is summed over the processes, so the Grams, the record and the push's norms are the
            whole model's on every process while X holds only this part. None (default): the whole model.

    Example:
        >>> win = UpdateWindow(4, window=2, storage_dtype=torch.float64)
        >>> win.snapshot([torch.zeros(4)])
        >>> _ = win.push([torch.tensor([1.0, 0, 0, 0])]); _ = win.push([torch.tensor([1.0, 2, 0, 0])])
        >>> win.gram().tolist()
        [[1.0, 0.0], [0.0, 4.0]]
    """

    def __init__(
        self,
        layout: ParameterLayout | int,
        *,
        window: int = 10,
        storage_dtype: torch.dtype = torch.float32,
        storage_device: torch.device | str | None = None,
        chunk_size: int | None = None,
        threads: int | None = None,
        kernel: str = "auto",
        share: WindowShare | None = None,
    ) -> None:
        layout = ParameterLayout.of(layout)
        check_window(window)
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}")
        device = torch.device(storage_device if storage_device is not None else "cpu")
        if chunk_size is None:
            chunk_size = CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if threads is not None:
            warnings.warn(
                f"UpdateWindow(threads={threads!r}) is ignored: the threaded torch push was removed (the fused "
                "kernel, the CPU default, was 2.6-4.7 times faster); drop the argument",
                FutureWarning,
                stacklevel=2,
            )
        if kernel not in ("auto", "fused", "torch"):
            raise ValueError(f"kernel must be 'auto', 'fused' or 'torch', got {kernel!r}")
        fused_applies = device.type == "cpu" and storage_dtype == torch.float32
        if kernel == "fused" and not fused_applies:
            raise ValueError(
                f"kernel='fused' needs a float32 window on the CPU, not {storage_dtype} on {device}: "
                "use kernel='auto' or 'torch'"
            )

        check_share(layout, share)
        self.layout = layout
        self.share = share
        self.window = window
        self.storage_dtype = storage_dtype
        self.storage_device = device
        self.chunk_size = chunk_size
        # Dot products and ‖δ‖² always accumulate in float64 (see the module docstring); δ itself is formed
        # in float32 (float64 for a float64 window), the precision the window stores it in or better.
        # Apple's MPS has no float64: there the sums stay float32, with the coarser cut they support.
        self.compute_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.delta_dtype = torch.float64 if storage_dtype == torch.float64 else torch.float32
        #: Eigenvalues below rank_rtol·λ_1 cannot be told from the rounding of the stored rows.
        self.rank_rtol = storage_rank_rtol(torch.finfo(storage_dtype).eps / 2, window)
        if self.compute_dtype == torch.float32:
            self.rank_rtol = max(self.rank_rtol, FLOAT32_SUMS_RANK_RTOL)

        p = layout.n_params
        self._x = torch.zeros(window, p, dtype=storage_dtype, device=device)  # (W, P) rows are slots
        n_groups = len(layout.group_names)
        self._gram = np.zeros((n_groups, window, window))  # per group, indexed by slot
        self._gram_tensor = torch.from_numpy(self._gram)  # a view, for the compiled push and eigen stage
        self._order: list[int] = []  # slots of the window, oldest first
        # θ_prev per piece of the plan (flat, in the parameters' dtype and device); a pack also has a spare
        # buffer of its size, so that θ is gathered into the spare and the two are swapped: no copy back.
        self._prev: list[torch.Tensor] | None = None
        self._spare: list[torch.Tensor | None] = []
        self._flat_key: list[tuple[int, int]] | None = None  # (id, data_ptr) of the tensors last flattened
        self._flat_cache: list[torch.Tensor] = []
        self._scratch: dict[torch.device, torch.Tensor] = {}  # one piece of δ, per parameters' device
        self._wide: torch.Tensor | None = None  # (W + 1, block) in the compute dtype, see _wide_dots
        self.pushes = 0  # updates pushed since construction

        # The plan: pieces of the flat parameter vector, each (tensor indices, start, stop, first column
        # in X). A large tensor is cut into chunks of `chunk_size`; consecutive small tensors of one group
        # are packed into one piece, so that a model with many biases and norms costs a few torch calls
        # per piece rather than per tensor. Pieces never straddle a group, so each group's dot products
        # are sums over its own pieces.
        plan: list[tuple[str, tuple[int, ...], int, int, int]] = []
        chunk_group: list[int] = []
        offset = 0
        pack: list[int] = []
        pack_size = pack_col = 0

        def close_pack() -> None:
            nonlocal pack, pack_size
            if pack:
                plan.append(("pack", tuple(pack), 0, pack_size, pack_col))
                chunk_group.append(layout.group_names.index(layout.groups[pack[0]]))
            pack, pack_size = [], 0

        for t, (numel, group) in enumerate(zip(layout.numels, layout.groups, strict=True)):
            if pack and (layout.groups[pack[0]] != group or pack_size + numel > chunk_size):
                close_pack()
            if numel < chunk_size:
                if not pack:
                    pack_col = offset
                pack.append(t)
                pack_size += numel
            else:
                close_pack()
                for lo in range(0, numel, chunk_size):
                    hi = min(lo + chunk_size, numel)
                    plan.append(("slice", (t,), lo, hi, offset + lo))
                    chunk_group.append(layout.group_names.index(group))
            offset += numel
        close_pack()
        self._plan = plan
        self._max_piece = max(hi - lo for _, _, lo, hi, _ in plan)
        self._chunk_group = np.asarray(chunk_group, dtype=np.intp)
        self._partials = torch.zeros(len(plan), window + 1, dtype=self.compute_dtype, device=device)
        self._kernel: Any = None  # the compiled extension (tracking/_native.py), where it applies
        if kernel != "torch" and fused_applies:
            self._kernel = native_kernel()
            if self._kernel is None and kernel == "fused":
                raise RuntimeError(
                    "kernel='fused' was asked for but the fused CPU kernel could not be built (see the "
                    "warning logged by spectral_edge); install a C++ compiler and ninja, or use kernel='auto'"
                )
        self.kernel = "fused" if self._kernel is not None else "torch"
        eigen = os.environ.get(EIGEN_ENV, "auto")
        if eigen not in ("auto", "numpy"):
            raise ValueError(
                f"{EIGEN_ENV} must be 'auto' or 'numpy', got {eigen!r}: unset it to use the compiled "
                "eigen stage where the fused kernel is built"
            )
        self._fused_key: tuple[int, ...] | None = None
        self._fused_args: tuple[list[torch.Tensor], list[torch.Tensor], list[int], list[int]] | None = None

    # ------------------------------------------------------------------ state

    @property
    def nbytes(self) -> int:
        """Bytes held on the storage device by the window rows."""
        return self._x.element_size() * self._x.nelement()

    @property
    def eigen(self) -> str:
        """How a record's eigen stage runs now: "compiled" (windows with the fused push, unless
        ``SPECTRAL_EDGE_EIGEN=numpy``) or "numpy" (LAPACK, ``tracking/_spectra.py``)."""
        return "compiled" if self._eigen_kernel() is not None else "numpy"

    def _eigen_kernel(self) -> Any:
        # Read at every record (a dict lookup, well under 1 µs against the stage's ~60 µs) so that the
        # benchmark can compare both stages on one window, whose buffers then stay the same.
        return self._kernel if os.environ.get(EIGEN_ENV) != "numpy" else None

    def spectra(self, *, half: bool) -> WindowEigen:
        """The eigen stage of a record for the full window: the eigenvalues and eigenvectors of the total
        Gram in time order, each group's eigenvalues (when there are several groups) and, with ``half``,
        the halves' eigen-decompositions for the half-window alignment (see ``tracking/_spectra.py``).
        Compiled where the fused kernel is built, else with NumPy (:attr:`eigen` says which)."""
        return window_spectra(
            self._gram,
            self._order,
            groups=len(self.layout.group_names) > 1,
            half=half,
            kernel=self._eigen_kernel(),
            grams_tensor=self._gram_tensor,
        )

    def principal_directions(self, k: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The top-k right singular vectors of X: unit directions in parameter space, v_j = Xᵀu_j/σ_j.

        These are the trajectory's principal directions (Def 1.2), the v_j of the signal- and gap-flow
        equations (eqs 38, 67–68) along which h_j = v_jᵀHv_j and G_j = ⟨v_j, ∇L⟩ are measured (see
        :mod:`spectral_edge.curvature`). u_j come from the float64 Gram; the rows of X are combined in
        one chunked pass over the window, in the compute dtype. Directions with σ_j = 0 are left out.

        Args:
            k: how many (default all with σ_j > 0).

        Returns:
            ``(directions, singular_values)``: a (k', P) tensor on the storage device, flat in layout
            order, and the k' singular values σ_j, descending.

        Example:
            >>> win = UpdateWindow(3, window=2, storage_dtype=torch.float64)
            >>> _ = win.push_update([3.0, 0.0, 0.0]); _ = win.push_update([0.0, 0.0, 1.0])
            >>> v, s = win.principal_directions()
            >>> v.tolist(), s.tolist()
            ([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [3.0, 1.0])
        """
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not self._order:
            raise ValueError("the window is empty: push updates before asking for its directions")
        lam, u = np.linalg.eigh(self.gram())  # time order, ascending
        lam, u = lam[::-1], u[:, ::-1]
        # Eigenvalues below what the stored rows resolve are rounding, not directions.
        rank = int(np.count_nonzero(lam > self.rank_rtol * max(float(lam[0]), 0.0)))
        n = rank if k is None else min(k, rank)
        sigma = np.sqrt(lam[:n])
        coef = np.zeros((self.window, n))
        coef[np.asarray(self._order, dtype=np.intp)] = u[:, :n] / sigma  # slot-indexed u_j / σ_j
        coef_t = torch.as_tensor(coef.T.copy(), dtype=self.delta_dtype, device=self.storage_device)
        out = torch.empty(n, self.layout.n_params, dtype=self.delta_dtype, device=self.storage_device)
        for lo in range(0, self.layout.n_params, self.chunk_size):
            cols = slice(lo, min(lo + self.chunk_size, self.layout.n_params))
            torch.mm(coef_t, self._x[:, cols].to(self.delta_dtype), out=out[:, cols])
        return out, sigma

    def updates(self) -> torch.Tensor:
        """The (count, P) window in time order, oldest first, as stored (a copy; for checks and analysis)."""
        return self._x[self._order].clone()

    def reset(self) -> None:
        """Forget the window and the snapshot; the next call must be :meth:`snapshot`."""
        self._x.zero_()
        self._gram[:] = 0.0
        self._order.clear()
        self._prev, self._spare = None, []

    # ------------------------------------------------------------------ pushing

    def snapshot(self, tensors: Sequence[torch.Tensor], *, copy: bool = True) -> None:
        """Take θ_prev: the reference the next :meth:`push` subtracts.

        Args:
            tensors: current values in layout order.
            copy: copy them (a live model's parameters change in place); ``False`` keeps references where
                it can, for tensors that will not change (checkpoints loaded from disk).
        """
        flat = self._flatten(tensors)
        prev: list[torch.Tensor] = []
        spare: list[torch.Tensor | None] = []
        for kind, idx, lo, hi, _ in self._plan:
            if kind == "pack":
                gathered = torch.cat([flat[t] for t in idx])
                prev.append(gathered)
                spare.append(torch.empty_like(gathered))
            else:
                part = flat[idx[0]][lo:hi]
                prev.append(part.clone() if copy else part)
                spare.append(None)
        self._prev, self._spare = prev, spare

    def push(self, tensors: Sequence[torch.Tensor], *, copy: bool = True, flag: bool = False) -> PushResult:
        """Push the update δ = θ − θ_prev and make θ the new snapshot (one pass over the window).

        Args:
            tensors: current values θ in layout order.
            copy: as for :meth:`snapshot`.
            flag: raised with this push; :attr:`PushResult.flagged` says whether any process sharing the
                model raised it (summed with the Gram row, at no extra collective).
        """
        if self._prev is None:
            raise RuntimeError("push() needs a snapshot first: call snapshot(tensors) at the start")
        return self._push(self._flatten(tensors), from_snapshot=True, keep_references=not copy, flag=flag)

    def push_update(self, update: Any) -> PushResult:
        """Push an explicit update δ: a flat (P,) array-like, or a sequence of tensors in layout order.

        Example:
            >>> win = UpdateWindow(3, window=2, storage_dtype=torch.float64)
            >>> win.push_update([1.0, 0.0, 0.0]).status
            'pushed'
        """
        if isinstance(update, (list, tuple)) and update and isinstance(update[0], torch.Tensor):
            flat = self._flatten(update)
        else:
            vector = torch.as_tensor(np.asarray(update) if not isinstance(update, torch.Tensor) else update)
            vector = vector.detach().reshape(-1)
            if vector.numel() != self.layout.n_params:
                raise ValueError(
                    f"update has {vector.numel()} elements, the layout has P={self.layout.n_params}"
                )
            flat = list(torch.split(vector, list(self.layout.numels)))
        return self._push(flat, from_snapshot=False, keep_references=False)

    def _push(
        self, current: list[torch.Tensor], *, from_snapshot: bool, keep_references: bool, flag: bool = False
    ) -> PushResult:
        w = self.window
        dropping = len(self._order) == w
        target = self._order[0] if dropping else self._free_slot()
        x = self._x
        # Row and column `target` of each group's Gram become the update's dots with the other slots and
        # ‖a‖² on the diagonal (an empty slot's row of X is zero, so its dot with a finite update is exactly
        # 0: no mask is needed); ‖b‖² of the leaving update is read off the old diagonal first.
        try:
            fused = self._fused_segments(current) if from_snapshot and not keep_references else None
            if fused is not None:
                # The kernel also sums the groups and writes the Gram rows: the W + 1 totals and ‖b‖².
                *total, dropped_sq = self._kernel.fused_push(*fused, x, target, self._gram_tensor)
            else:
                total, dropped_sq = self._torch_pass(current, target, from_snapshot, keep_references)
        except Exception as exc:
            if self.share is None:
                raise
            # The other processes wait in the all-reduce below: take part with a NaN row, so that every
            # process rejects this update alike (as non-finite) and the windows stay one model's.
            warnings.warn(
                f"spectral-edge: this process's part of a push failed ({exc!r}); every process skips the "
                "update and restarts its window",
                SpectrumWarning,
                stacklevel=3,
            )
            self._gram[:, target, :] = math.nan
            total = [math.nan] * (w + 1)
        flagged = flag
        if self.share is not None:
            total, flagged = self._sum_row_over_processes(target, total, flag)
        added_sq = total[w]

        if not math.isfinite(added_sq) or added_sq == 0.0:
            # The target slot now holds the rejected update (and b is gone if it was the oldest): clear it.
            x[target].zero_()
            self._gram[:, target, :] = 0.0
            self._gram[:, :, target] = 0.0
            return self._refused(added_sq, dropping=dropping, flagged=flagged)
        window_dots = np.array([total[i] for i in self._order])  # ⟨x_i, a⟩ in time order, before the push
        return self._admitted(
            target, added_sq, dropped_sq, total[target], window_dots, dropping=dropping, flagged=flagged
        )

    def _torch_pass(
        self, current: list[torch.Tensor], target: int, from_snapshot: bool, keep_references: bool
    ) -> tuple[list[float], float]:
        """The push's pass as torch calls per piece (any dtype and device): δ into row ``target`` of X,
        the Gram rows written as the fused kernel writes them; returns the W + 1 totals (the dots with
        every slot, then ‖a‖²) and the leaving update's ‖b‖², as the kernel does."""
        w = self.window
        partials = self._partials
        x = self._x
        row = x[target]

        for i, (kind, idx, lo, hi, col) in enumerate(self._plan):
            scratch = self._delta_scratch(current[idx[0]].device)
            if kind == "pack":
                a = self._delta_of_pack(current, i, idx, hi, from_snapshot, scratch)
            else:
                a = self._delta_of_slice(current, i, idx[0], lo, hi, from_snapshot, keep_references, scratch)
            if a.device != self.storage_device:
                a = a.to(self.storage_device)
            cols = slice(col, col + hi - lo)
            stored = a if a.dtype == self.storage_dtype else a.to(self.storage_dtype)  # what X will hold
            if stored.dtype == torch.float64:
                torch.mv(x[:, cols], stored, out=partials[i, :w])
                torch.dot(stored, stored, out=partials[i, w])
            else:
                self._wide_dots(col, stored, partials[i])
            row[cols].copy_(stored)  # after the dots: the target row held b until now
        chunk_rows = partials.to(device="cpu", dtype=torch.float64).numpy()  # (n_chunks, W + 1)
        group_rows = np.zeros((len(self.layout.group_names), w + 1))
        np.add.at(group_rows, self._chunk_group, chunk_rows)
        gram = self._gram
        dropped_sq = float(gram[:, target, target].sum())
        gram[:, target, :] = group_rows[:, :w]
        gram[:, target, target] = group_rows[:, w]
        gram[:, :, target] = gram[:, target, :]
        return group_rows.sum(axis=0).tolist(), dropped_sq

    def _sum_row_over_processes(
        self, target: int, total: list[float], flag: bool
    ) -> tuple[list[float], bool]:
        """Complete the push's Gram row with the other processes' parts (see :class:`WindowShare`).

        Summed, in one all-reduce of n_groups·W + 2 float64 numbers: each group's new row as the pass
        wrote it (‖a‖² on the diagonal), aᵀb, the update's dot with the row it replaces (which the row
        no longer holds), and the processes' flags. ‖b‖² needs nothing: the diagonal it was read from was
        already summed. Returns the W + 1 totals as the pass returns them (the dots with every slot, then
        ‖a‖²) and whether any process raised its flag.
        """
        assert self.share is not None
        gram = self._gram
        n_groups, w = gram.shape[0], self.window
        row = np.empty(n_groups * w + 2)
        row[:-2] = gram[:, target, :].reshape(-1)
        row[-2] = total[target]
        row[-1] = 1.0 if flag else 0.0
        self.share.reducer.all_reduce(row, what="a push's Gram row")
        groups = row[:-2].reshape(n_groups, w)
        gram[:, target, :] = groups
        gram[:, :, target] = groups
        summed = groups.sum(axis=0)
        out = summed.tolist()
        out.append(out[target])  # the diagonal: ‖a‖²
        out[target] = float(row[-2])  # aᵀb
        return out, bool(row[-1] > 0)

    def _wide_dots(self, col: int, stored: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` = (⟨x_0, a⟩, …, ⟨x_{W−1}, a⟩, ‖a‖²) in float64 for the stored values ``a`` of one piece,
        whose columns in X start at ``col``.

        The window's columns and ``a`` are widened to float64 a block at a time into a scratch of about
        1 MiB on the CPU, which stays in cache, so X is still read once from memory (on an accelerator
        the scratch is up to 2^24 values, 128 MiB: launches, not cache, set the cost there); one ``addmv``
        per block gives the W dots and ‖a‖² together (``a`` is the scratch's last row).
        """
        w = self.window
        wide = self._wide
        if wide is None or wide.device != stored.device:
            budget = (1 << 17) if stored.device.type == "cpu" else (1 << 24)  # float64 values
            block = max(1024, min(self._max_piece, budget // (w + 1)))
            wide = torch.empty(w + 1, block, dtype=self.compute_dtype, device=stored.device)
            self._wide = wide
        out.zero_()
        n, block = stored.numel(), wide.shape[1]
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            part = wide[:, : hi - lo]
            part[:w].copy_(self._x[:, col + lo : col + hi])
            part[w].copy_(stored[lo:hi])
            out.addmv_(part, part[w])

    def _fused_segments(
        self, current: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int], list[int]] | None:
        """The fused kernel's arguments for ``current``: one segment per tensor (or slice of one), with
        its θ_prev view, first column and group (whose Gram its dot products go to); None when the kernel does
        not apply to these tensors.

        Cached while the parameters keep their identity and the snapshot its buffers, so a push costs
        one C++ call and no Python work per tensor.
        """
        if self._kernel is None or self._prev is None:
            return None
        key = (id(current), *map(id, self._prev))
        if key == self._fused_key:
            return self._fused_args
        if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in current):
            return None
        if not all(p.dtype == torch.float32 and p.is_contiguous() for p in self._prev):
            return None
        thetas: list[torch.Tensor] = []
        prevs: list[torch.Tensor] = []
        cols: list[int] = []
        rows: list[int] = []
        numels = self.layout.numels
        for i, (kind, idx, lo, hi, col) in enumerate(self._plan):
            if kind == "slice":
                thetas.append(current[idx[0]][lo:hi])
                prevs.append(self._prev[i])
                cols.append(col)
                rows.append(int(self._chunk_group[i]))
                continue
            offset = 0
            for t in idx:
                thetas.append(current[t])
                prevs.append(self._prev[i][offset : offset + numels[t]])
                cols.append(col + offset)
                rows.append(int(self._chunk_group[i]))
                offset += numels[t]
        if not all(t.is_contiguous() for t in thetas):
            return None
        # Only a cached flat list (the live parameters' views) keeps its identity between pushes.
        self._fused_key = key if current is self._flat_cache else None
        self._fused_args = (thetas, prevs, cols, rows)
        return self._fused_args

    def _delta_of_slice(
        self,
        current: list[torch.Tensor],
        i: int,
        t: int,
        lo: int,
        hi: int,
        from_snapshot: bool,
        keep_references: bool,
        scratch: torch.Tensor,
    ) -> torch.Tensor:
        """δ for elements [lo, hi) of tensor t (piece i), in the scratch buffer; refreshes the snapshot."""
        theta = current[t][lo:hi]
        a = scratch[: hi - lo]
        if not from_snapshot:
            a.copy_(theta)
            return a
        assert self._prev is not None
        old = self._prev[i]
        _subtract(theta, old, out=a)
        if keep_references:
            self._prev[i] = theta
        else:
            old.copy_(theta)
        return a

    def _delta_of_pack(
        self,
        current: list[torch.Tensor],
        i: int,
        idx: tuple[int, ...],
        size: int,
        from_snapshot: bool,
        scratch: torch.Tensor,
    ) -> torch.Tensor:
        """δ of several whole small tensors (piece i): gather θ into the spare, subtract, swap."""
        thetas = [current[t] for t in idx]
        a = scratch[:size]
        if not from_snapshot:
            if all(th.dtype == a.dtype for th in thetas):
                torch.cat(thetas, out=a)
            else:
                a.copy_(torch.cat(thetas))
            return a
        assert self._prev is not None
        old, gathered = self._prev[i], self._spare[i]
        assert gathered is not None
        torch.cat(thetas, out=gathered)
        _subtract(gathered, old, out=a)
        self._prev[i], self._spare[i] = gathered, old
        return a

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the window rows (time order, as stored), the Grams and the snapshot."""
        idx = np.asarray(self._order, dtype=np.intp)
        return {
            "window": self.window,
            "n_params": self.layout.n_params,
            "names": list(self.layout.names),
            "groups": list(self.layout.groups),
            "storage_dtype": str(self.storage_dtype),
            "grams": torch.from_numpy(self._gram[:, idx][:, :, idx].copy()),
            "group_names": list(self.layout.group_names),
            "rows": self._x[self._order].to("cpu").clone(),
            "prev": None
            if self._prev is None
            else [p.to("cpu").clone() for p in self._snapshot_per_tensor()],
            "pushes": self.pushes,
        }

    def load_state_dict(
        self, state: dict[str, Any], *, snapshot_device: torch.device | str | None = None
    ) -> None:
        """Restore :meth:`state_dict` output saved from a window of the same W and tensors.

        With the same tensors, groups and storage dtype the saved Grams are taken as they are, so a resumed
        window continues bit for bit. Otherwise (another ``groups=`` or ``storage_dtype``) the rows are
        cast to this window's dtype and every group's Gram is recomputed from them in float64 (one X·Xᵀ,
        once), so the Gram always equals that of the stored window.

        Args:
            state: the saved state.
            snapshot_device: where the snapshot θ_prev goes (the parameters' device); default the storage device.
        """
        problem: Exception | None = None
        try:
            rows, saved_names = self._rows_in_layout_order(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            problem = exc
        same_layout = problem is None and (
            saved_names == list(self.layout.names)
            and list(state.get("groups", [])) == list(self.layout.groups)
            and list(state.get("group_names", self.layout.group_names)) == list(self.layout.group_names)
        )
        reuse = same_layout and state.get("storage_dtype") == str(self.storage_dtype) and "grams" in state
        if self.share is not None:
            # Every process loads, or none does (a process that cannot would leave the others' windows
            # holding rows it lacks); and every process recomputes and sums its Grams, or none does.
            votes = np.array([0.0 if reuse else 1.0, 0.0 if problem is None else 1.0])
            self.share.reducer.all_reduce(votes, what="agreeing on loading the window")
            if votes[1] > 0 and problem is None:
                problem = ValueError(
                    "another process could not load its part of the window (its error says why)"
                )
            reuse = bool(votes[0] == 0.0)
        if problem is not None:
            raise problem
        n = rows.shape[0]
        self.reset()
        self._x[:n].copy_(rows.to(self.storage_device, self.storage_dtype))
        self._order = list(range(n))
        if reuse:
            self._gram[:, :n, :n] = state["grams"].numpy()
        else:
            stored = self._x[:n].to(device="cpu", dtype=torch.float64)
            for g, (lo, hi) in enumerate(self._group_columns()):
                block = stored[:, lo:hi]
                self._gram[g, :n, :n] = (block @ block.T).numpy()
            if self.share is not None:  # this process's part only: sum the parts
                grams = np.ascontiguousarray(self._gram[:, :n, :n])
                self.share.reducer.all_reduce(grams, what="the Grams recomputed from a loaded window")
                self._gram[:, :n, :n] = grams
        if state["prev"] is not None:
            device = torch.device(snapshot_device) if snapshot_device is not None else self.storage_device
            by_name = dict(zip(saved_names, state["prev"], strict=True))
            # copy=True: the snapshot is refreshed in place on every push and must not alias the caller's state.
            self.snapshot([by_name[name].to(device) for name in self.layout.names], copy=True)
        self.pushes = int(state["pushes"])

    # ------------------------------------------------------------------ helpers

    def _rows_in_layout_order(self, state: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        """The saved rows with their columns in this layout's order, and the saved tensor order; a
        ValueError when the state was saved for another W, P or set of tensors."""
        if state["window"] != self.window or state["n_params"] != self.layout.n_params:
            raise ValueError(
                f"state is for W={state['window']}, P={state['n_params']}; this window has "
                f"W={self.window}, P={self.layout.n_params}"
            )
        saved_names = list(state["names"])
        if sorted(saved_names) != sorted(self.layout.names):
            raise ValueError("state was saved for a different set of tensors")
        rows = state["rows"]
        if saved_names != list(self.layout.names):
            saved_cols = dict(zip(saved_names, _column_ranges(state_numels(state, self.layout)), strict=True))
            rows = torch.cat([rows[:, slice(*saved_cols[n])] for n in self.layout.names], dim=1)
        return rows, saved_names

    def _flatten(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat views of ``tensors``; the views of a live model's parameters are made once and reused
        for as long as each parameter keeps its identity and storage."""
        if len(tensors) != len(self.layout.names):
            raise ValueError(f"expected {len(self.layout.names)} tensors in layout order, got {len(tensors)}")
        key = [(id(t), t.data_ptr()) for t in tensors]
        if key == self._flat_key:
            return self._flat_cache
        flat = []
        for t, name, numel in zip(tensors, self.layout.names, self.layout.numels, strict=True):
            if t.numel() != numel:
                raise ValueError(f"tensor {name!r} has {t.numel()} elements, the layout says {numel}")
            flat.append(t.detach().reshape(-1))
        # Only views can be reused: a non-contiguous tensor's reshape is a copy that would go stale.
        if all(f.data_ptr() == t.data_ptr() for f, t in zip(flat, tensors, strict=True)):
            self._flat_key, self._flat_cache = key, flat
        else:
            self._flat_key, self._flat_cache = None, []
        return flat

    def _snapshot_per_tensor(self) -> list[torch.Tensor]:
        """θ_prev as one flat tensor per layout tensor (the pieces put back together)."""
        assert self._prev is not None
        parts: list[list[torch.Tensor]] = [[] for _ in self.layout.names]
        numels = self.layout.numels
        for (kind, idx, _, _, _), prev in zip(self._plan, self._prev, strict=True):
            if kind == "pack":
                for t, part in zip(idx, torch.split(prev, [numels[t] for t in idx]), strict=True):
                    parts[t].append(part)
            else:
                parts[idx[0]].append(prev)
        return [p[0] if len(p) == 1 else torch.cat(p) for p in parts]

    def _group_columns(self) -> list[tuple[int, int]]:
        """Column range of each group in X (groups are contiguous in storage order)."""
        ranges, offset = [], 0
        sizes = self.layout.group_sizes()
        for name in self.layout.group_names:
            ranges.append((offset, offset + sizes[name]))
            offset += sizes[name]
        return ranges

    def _free_slot(self) -> int:
        used = set(self._order)
        return next(s for s in range(self.window) if s not in used)

    def _delta_scratch(self, device: torch.device) -> torch.Tensor:
        """A buffer for δ of the largest piece, on the parameters' device."""
        buf = self._scratch.get(device)
        if buf is None:
            buf = torch.empty(self._max_piece, dtype=self.delta_dtype, device=device)
            self._scratch[device] = buf
        return buf


def state_numels(state: dict[str, Any], layout: ParameterLayout) -> list[int]:
    """Element counts of the saved tensors, in the saved order (taken from the saved snapshot or layout)."""
    if state.get("prev") is not None:
        return [p.numel() for p in state["prev"]]
    numel = dict(zip(layout.names, layout.numels, strict=True))
    return [numel[name] for name in state["names"]]


def _column_ranges(numels: list[int]) -> list[tuple[int, int]]:
    ranges, offset = [], 0
    for n in numels:
        ranges.append((offset, offset + n))
        offset += n
    return ranges


def _subtract(theta: torch.Tensor, old: torch.Tensor, *, out: torch.Tensor) -> None:
    """Write θ − θ_prev into ``out``, in the wider of the two dtypes, rounding only the difference.

    bfloat16 parameters are widened first (their difference is exact in float32, not in bfloat16);
    float64 parameters are subtracted in float64 and only δ is rounded to float32.
    """
    wide = torch.promote_types(theta.dtype, out.dtype)
    if theta.dtype == wide:
        torch.sub(theta, old, out=out)
    else:
        torch.sub(theta.to(wide), old.to(wide), out=out)
