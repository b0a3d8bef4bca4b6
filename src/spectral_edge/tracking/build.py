"""From a push's results to a :class:`~spectral_edge.tracking.record.SpectralRecord`: one pure function.

:func:`build_record` holds no state: it takes what a full window gives (:class:`PushedWindow`: the eigen
stage of its Gram matrices and the numbers of the newest push), the step, η and the settings, and returns
the record. :class:`~spectral_edge.tracking.tracker.SpectralTracker` calls it once per full window, online
and offline alike; the tests call it on fixed inputs against a dense float64 SVD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spectral_edge.spectrum.null import bbp_ratio, noise_level_from_spectrum
from spectral_edge.spectrum.stability import (
    adiabatic_parameter,
    alignment_from_half_eigen,
    davis_kahan_bound,
    stability_coefficients,
)
from spectral_edge.spectrum.window import DEFAULT_RANK_RTOL, gap_positions, spectrum_from_eigen
from spectral_edge.tracking._spectra import WindowEigen, window_spectra_numpy
from spectral_edge.tracking.config import MonitorConfig
from spectral_edge.tracking.record import GroupSpectrum, SpectralRecord
from spectral_edge.tracking.window import PushResult, UpdateWindow

if TYPE_CHECKING:  # the sketch imports nothing of this module; the annotation is for checkers
    from spectral_edge.tracking.sketch import SketchedWindow

__all__ = ["PushedWindow", "build_record"]

_DEFAULT_CONFIG = MonitorConfig()


@dataclass(frozen=True)
class PushedWindow:
    """What a full window holds once an update is pushed: everything :func:`build_record` reads.

    Attributes:
        eigen: the eigen stage of the window's Gram G = X Xᵀ (Def 1.3) in time order: its eigenvalues and
            eigenvectors, each group's eigenvalues (several groups only), the halves' (W ≥ 4, §28).
        update_norm: ‖δ_t‖ of the newest update.
        delta_c_fro: ‖ΔC‖_F = ‖a aᵀ − b bᵀ‖_F of the push (Prop 11.1): a the update pushed, b the one
            that left the window (‖a‖² when none left).
        n_params: P, the number of scalars (of the whole model, when each process holds a part).
        group_names: the groups' names, in the order of ``eigen.groups``.
        rank_rtol: eigenvalues below ``rank_rtol · λ_1`` are rounding (what the stored rows resolve).

    Example:
        >>> x = np.array([[3.0, 0.0], [0.0, 4.0]])  # W = 2 updates of P = 2 scalars, oldest first
        >>> pushed = PushedWindow.from_updates(x, dropped=[1.0, 0.0])
        >>> pushed.eigen.total, pushed.update_norm, round(pushed.delta_c_fro**2, 9)  # ‖a aᵀ − b bᵀ‖_F²
        ([16.0, 9.0], 4.0, 257.0)
    """

    eigen: WindowEigen
    update_norm: float
    delta_c_fro: float
    n_params: int
    group_names: tuple[str, ...] = ()
    rank_rtol: float = DEFAULT_RANK_RTOL

    @classmethod
    def read(cls, window: UpdateWindow | SketchedWindow, pushed: PushResult) -> PushedWindow:
        """The full ``window`` after the push that returned ``pushed`` (one eigen stage, compiled where built)."""
        if pushed.status != "pushed" or not window.full:
            raise ValueError(
                f"a record needs a full window after a push, got status {pushed.status!r} with "
                f"{window.count} of W={window.window} updates: push until window.full"
            )
        return cls(
            eigen=window.spectra(half=window.window >= 4),
            update_norm=float(pushed.update_norm),
            delta_c_fro=float(pushed.delta_c_fro or 0.0),
            n_params=window.total_params,
            group_names=tuple(window.layout.group_names),
            rank_rtol=window.rank_rtol,
        )

    @classmethod
    def from_updates(
        cls,
        updates: Any,
        *,
        dropped: Any = None,
        groups: Mapping[str, slice] | None = None,
        rank_rtol: float = DEFAULT_RANK_RTOL,
    ) -> PushedWindow:
        """The window whose rows are ``updates`` (W, P), oldest first, the last one just pushed; float64.

        Args:
            updates: (W, P) array-like X, rows δ_t in time order.
            dropped: the (P,) update that left the window at this push, if any (it enters ‖ΔC‖_F).
            groups: group name -> the columns of X it holds (two or more groups give group spectra).
            rank_rtol: as :attr:`rank_rtol`.
        """
        x = np.asarray(updates, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"updates must be a (W, P) array with W >= 2, got shape {x.shape}")
        parts = list((groups or {"all": slice(None)}).items())
        grams = np.stack([x[:, cols] @ x[:, cols].T for _, cols in parts])  # (n_groups, W, W)
        eigen = window_spectra_numpy(
            grams, list(range(x.shape[0])), groups=len(parts) > 1, half=x.shape[0] >= 4
        )
        a = x[-1]
        aa = float(a @ a)
        if dropped is None:
            delta_c = aa
        else:
            b = np.asarray(dropped, dtype=np.float64)
            ab, bb = float(a @ b), float(b @ b)
            delta_c = math.sqrt(max(aa * aa + bb * bb - 2.0 * ab * ab, 0.0))  # ‖a aᵀ − b bᵀ‖_F
        return cls(
            eigen=eigen,
            update_norm=math.sqrt(aa),
            delta_c_fro=delta_c,
            n_params=x.shape[1],
            group_names=tuple(name for name, _ in parts) if len(parts) > 1 else (),
            rank_rtol=rank_rtol,
        )


def build_record(
    pushed: PushedWindow,
    *,
    step: int,
    lr: float | None = None,
    metrics: Mapping[str, float] | None = None,
    config: MonitorConfig = _DEFAULT_CONFIG,
) -> SpectralRecord:
    """The record of one full window: the spectrum of G = X Xᵀ and everything read from it.

    From the eigenvalues λ_j = σ_j² of G (Def 1.3): the gap k* = argmax_j σ_j/σ_{j+1} (Def 6.1, eq 13),
    R = σ_k*/σ_k*+1 (Def 6.3, eq 15), g = σ_k* − σ_k*+1 (Def 8.1, eq 18), K_95 (Def 7.1, eq 17); from
    ‖ΔC‖_F of the push (Prop 11.1): α_j = max(0, 1 − c‖ΔC‖_F²/δ_j²) (Def 16.1, eq 77), the Davis–Kahan
    bound ‖ΔC‖_F/g_λ (Cor 9.2, eq 22) and, given η, 𝒜 = ‖ΔC‖_F/(η g²) with its regime (Prop 34.3); the
    noise level ν and σ_W/d_crit, d_crit = ν (PW)^{1/4} (Prop 4.1, eq 4). No state is read or kept.

    Args:
        pushed: the window after the push (:meth:`PushedWindow.read` of a live window, or
            :meth:`PushedWindow.from_updates` of a (W, P) matrix).
        step: the step the record is filed under.
        lr: η for 𝒜; None or ≤ 0 leaves 𝒜 and the regime out.
        metrics: scalars to keep with the record.
        config: the settings read: ``k95_threshold``, ``alpha_c``, ``gap_units``, ``regimes``,
            ``bbp_variant``.

    Example:
        >>> x = np.diag([4.0, 1.0, 0.5]) @ np.eye(3, 50)  # three orthogonal updates
        >>> rec = build_record(PushedWindow.from_updates(x), step=7, lr=0.1)
        >>> rec.step, rec.k_star, rec.gap_ratio, rec.singular_values.tolist(), rec.regime is not None
        (7, 1, 4.0, [4.0, 1.0, 0.5], True)
    """
    eig = pushed.eigen
    rtol = pushed.rank_rtol
    # Every eigensolve of the record (total, groups, halves) came in ``eig``; the float stage below is
    # spectrum/'s own, so the record equals analyze_gram_with_parts and half_window_alignment.
    spec, group_sigmas = spectrum_from_eigen(
        eig.total, eig.vectors, eig.groups, k95_threshold=config.k95_threshold, rank_rtol=rtol
    )
    p = pushed.n_params
    dc = pushed.delta_c_fro
    adiabatic = regime = None
    if lr is not None and lr > 0:
        adiabatic = adiabatic_parameter(
            dc, lr, gap=spec.gap, gap_lambda=spec.gap_lambda, units=config.gap_units
        )
        regime = config.regimes.classify(adiabatic, lr)
    else:
        lr = None
    nu = noise_level_from_spectrum(spec.eigenvalues, p)
    groups: dict[str, GroupSpectrum] = {}
    if group_sigmas is not None:
        for name, sigma, (k, r) in zip(
            _names(pushed.group_names, len(group_sigmas)),
            _read_only(group_sigmas),
            gap_positions(group_sigmas),
            strict=True,
        ):
            groups[name] = GroupSpectrum(k_star=k, gap_ratio=r, singular_values=sigma)
    return SpectralRecord(
        step=int(step),
        window=len(spec.singular_values),
        singular_values=spec.singular_values,
        ratios=spec.ratios,
        k_star=spec.k_star,
        gap_ratio=spec.gap_ratio,
        gap=spec.gap,
        gap_lambda=spec.gap_lambda,
        k95=spec.k95,
        k_star_weighted=spec.k_star_weighted,
        gap_ratio_weighted=spec.gap_ratio_weighted,
        g23=spec.g23,
        rank=spec.rank,
        effective_rank=spec.effective_rank,
        alpha=_read_only(stability_coefficients(spec.eigenvalues, dc, config.alpha_c)),
        alpha_half=_read_only(alignment_from_half_eigen(*eig.half, rank_rtol=rtol)) if eig.half else None,
        delta_c_fro=dc,
        davis_kahan=davis_kahan_bound(dc, spec.gap_lambda),
        adiabatic=adiabatic,
        regime=regime,
        lr=lr,
        update_norm=pushed.update_norm,
        noise_level=nu,
        bbp_ratio=bbp_ratio(spec.singular_values, nu, p, config.bbp_variant),
        groups=groups,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
    )


def _names(names: Sequence[str], n: int) -> Sequence[str]:
    if len(names) != n:
        raise ValueError(f"got {len(names)} group names for {n} group spectra")
    return names


def _read_only(array: np.ndarray) -> np.ndarray:
    """A record holds read-only arrays (see SpectralRecord): a sink or a store encoding it later sees
    what was measured."""
    array.setflags(write=False)
    return array
