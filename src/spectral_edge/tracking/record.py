"""What the monitor reports: one :class:`SpectralRecord` per full window, and :class:`SpectralEvent` s.

Both are frozen dataclasses of plain CPU values (floats, ints, read-only NumPy arrays), so a record never
keeps a GPU tensor or an autograd graph alive and can be serialised as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: Event kinds, in the order the run store documents them.
EVENT_KINDS = (
    "gap_opening",  # gap ratio rose above the opening threshold and stayed (Def 10.6)
    "gap_collapse",  # gap ratio fell below the collapse threshold and stayed (Def 10.4)
    "k_star_shift",  # the gap moved to a new position k* and stayed there (§22.1)
    "regime_change",  # the adiabatic regime changed: plateau / transition / forgetting (Prop 34.3)
    "nonfinite_update",  # an update held NaN or Inf and was skipped
    "zero_update",  # the parameters did not move since the last snapshot; nothing was pushed
    "parameters_changed",  # parameters were added, removed or reshaped; the window restarted
    "store_write_failed",  # the run store refused a write; it holds such writes in memory for retry
    "store_writes_lost",  # the run store's buffer of held writes is full: writes are being lost
)

#: The adiabatic regimes, from slow to fast change (Prop 34.3); ``log_scalars`` logs a regime as its index.
REGIMES = ("plateau", "transition", "forgetting")


@dataclass(frozen=True)
class GroupSpectrum:
    """The gap of one parameter group's Gram matrix (groups' Grams sum to the total Gram)."""

    k_star: int
    gap_ratio: float
    singular_values: np.ndarray  # (W,) descending

    def __repr__(self) -> str:
        """Short: the gap, not the arrays (``GroupSpectrum(k_star=2, gap_ratio=3.41, W=10)``)."""
        return f"GroupSpectrum(k_star={self.k_star}, gap_ratio={_short(self.gap_ratio)}, W={len(self.singular_values)})"


@dataclass(frozen=True)
class SpectralRecord:
    """Everything the monitor measured on one full window of W updates.

    Field names follow the paper: σ_j are the singular values of the trajectory matrix X (Def 1.2),
    λ_j = σ_j² the eigenvalues of G = X Xᵀ (Def 1.3); see docs/concepts.md for every field.
    """

    step: int  # optimizer step at which the newest update of the window was taken
    window: int  # W, the number of updates in the window
    singular_values: np.ndarray  # (W,) σ_1 ≥ … ≥ σ_W ≥ 0
    ratios: np.ndarray  # (W-1,) σ_j / σ_{j+1}
    k_star: int  # 1-based gap position, argmax of ratios (Def 6.1)
    gap_ratio: float  # R = σ_k* / σ_k*+1 (Def 6.3)
    gap: float  # g = σ_k* − σ_k*+1 (Def 8.1)
    gap_lambda: float  # g_λ = λ_k* − λ_k*+1
    k95: int  # cumulative-variance rank (Def 7.1)
    k_star_weighted: int  # argmax (σ_j/Σσ)(σ_j/σ_j+1)
    gap_ratio_weighted: float  # σ/σ ratio at k_star_weighted
    g23: float | None  # λ2 − λ3 (§27 Table 7); None when W < 3
    rank: int  # numerical rank of the window
    effective_rank: float  # exp of the entropy of λ/Σλ
    alpha: np.ndarray  # (W,) stability coefficients α_j (Def 16.1)
    alpha_half: np.ndarray | None  # (W//2,) half-window alignment |⟨v_j¹, v_j²⟩| (§28); None when W < 4
    delta_c_fro: float  # ‖ΔC‖_F of this window's rank-two update (Prop 11.1); ‖a‖² (rank one) on the
    # first record after the window (re)fills, when no update left it
    davis_kahan: float  # ‖ΔC‖_F / g_λ, bound on sin θ of the top-k* subspace (Cor 9.2)
    adiabatic: float | None  # 𝒜 = ‖ΔC‖_F / (η g²); None when no learning rate is known
    regime: str | None  # "plateau" | "transition" | "forgetting" from 𝒜; None without 𝒜
    lr: float | None  # η used for 𝒜
    update_norm: float  # ‖δ_t‖ of the newest update
    noise_level: float  # ν estimated from the bottom half of the spectrum (Prop 4.1)
    bbp_ratio: float  # σ_W / d_crit with d_crit = ν (P W)^{1/4}; ≫ 1 means BBP is vacuous
    groups: Mapping[str, GroupSpectrum] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line with the reading that matters, not the arrays; every field is still an attribute.

        Example:
            >>> rec = SpectralRecord(step=120, window=2, singular_values=np.array([2.0, 1.0]),
            ...     ratios=np.array([2.0]), k_star=1, gap_ratio=2.0, gap=1.0, gap_lambda=3.0, k95=2,
            ...     k_star_weighted=1, gap_ratio_weighted=2.0, g23=None, rank=2, effective_rank=1.6,
            ...     alpha=np.array([0.5, 0.0]), alpha_half=None, delta_c_fro=0.1, davis_kahan=0.03,
            ...     adiabatic=0.2, regime="transition", lr=0.1, update_norm=1.0, noise_level=0.1,
            ...     bbp_ratio=5.0, groups={"a": GroupSpectrum(1, 2.0, np.array([2.0, 1.0]))})
            >>> rec
            SpectralRecord(step=120, k_star=1, gap_ratio=2, gap=1, regime='transition', W=2, 1 group)
            >>> rec.groups["a"]
            GroupSpectrum(k_star=1, gap_ratio=2, W=2)
        """
        n = len(self.groups)
        groups = f", {n} group{'' if n == 1 else 's'}" if n else ""
        metrics = "".join(f", {k}={_short(v)}" for k, v in list(self.metrics.items())[:3])
        return (
            f"SpectralRecord(step={self.step}, k_star={self.k_star}, gap_ratio={_short(self.gap_ratio)}, "
            f"gap={_short(self.gap)}, regime={self.regime!r}, W={self.window}{groups}{metrics})"
        )

    @property
    def eigenvalues(self) -> np.ndarray:
        """λ_j = σ_j², descending, shape (W,)."""
        return self.singular_values**2

    def scalars(self) -> dict[str, Any]:
        """The scalar fields as plain Python values (what the run store keeps as columns)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (bool, int, float, str)) or value is None:
                out[f.name] = value
        return out

    def log_scalars(self, prefix: str = "spectral/", *, metric_prefix: str | None = None) -> dict[str, float]:
        """The record as flat ``name -> float`` pairs, the form metric loggers take.

        One place decides what every sink and framework callback logs: the numeric scalar fields
        (``None`` left out, the regime as its index in :data:`REGIMES`: 0 plateau, 1 transition,
        2 forgetting), σ_j and α_j per index (``sigma/1`` … ``sigma/W``, 1-based like the paper), each
        group's k* and R, and the metrics the record carries (passed to ``step(loss=...)``), named
        ``metric_prefix + name``: ``prefix`` when ``metric_prefix`` is None, so ``spectral/loss``; the
        sinks pass ``metric_prefix=""`` so that the user's ``loss`` is logged as ``loss``. Non-finite
        values (R = inf at a rank edge) are kept as float('inf'): drop them in the sink if its backend
        rejects them.

        Example:
            >>> rec = SpectralRecord(step=3, window=2, singular_values=np.array([2.0, 1.0]), ratios=np.array([2.0]),
            ...     k_star=1, gap_ratio=2.0, gap=1.0, gap_lambda=3.0, k95=2, k_star_weighted=1,
            ...     gap_ratio_weighted=2.0, g23=None, rank=2, effective_rank=1.6, alpha=np.array([0.5, 0.0]),
            ...     alpha_half=None, delta_c_fro=0.1, davis_kahan=0.03, adiabatic=None, regime=None, lr=None,
            ...     update_norm=1.0, noise_level=0.1, bbp_ratio=5.0, metrics={"loss": 0.7})
            >>> s = rec.log_scalars()
            >>> s["spectral/k_star"], s["spectral/sigma/2"], s["spectral/alpha/1"], s["spectral/loss"]
            (1.0, 1.0, 0.5, 0.7)
            >>> "spectral/step" in s, "spectral/g23" in s
            (False, False)
            >>> rec.log_scalars(metric_prefix="")["loss"]
            0.7
        """
        out: dict[str, float] = {}
        for name, value in self.scalars().items():
            if name in ("step", "window") or value is None:
                continue
            if name == "regime":
                out[prefix + name] = float(REGIMES.index(value))
            else:
                out[prefix + name] = float(value)
        for j, value in enumerate(self.singular_values, start=1):
            out[f"{prefix}sigma/{j}"] = float(value)
        for j, value in enumerate(self.alpha, start=1):
            out[f"{prefix}alpha/{j}"] = float(value)
        for group, spectrum in self.groups.items():
            out[f"{prefix}group/{group}/k_star"] = float(spectrum.k_star)
            out[f"{prefix}group/{group}/gap_ratio"] = float(spectrum.gap_ratio)
        own = prefix if metric_prefix is None else metric_prefix
        for name, value in self.metrics.items():
            out[own + name] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: arrays become lists, non-finite floats become strings ('inf')."""
        out = self.scalars()
        out = {k: json_float(v) for k, v in out.items()}
        out["singular_values"] = _json_list(self.singular_values)
        out["ratios"] = _json_list(self.ratios)
        out["alpha"] = _json_list(self.alpha)
        out["alpha_half"] = None if self.alpha_half is None else _json_list(self.alpha_half)
        out["groups"] = {
            name: {
                "k_star": g.k_star,
                "gap_ratio": json_float(g.gap_ratio),
                "singular_values": _json_list(g.singular_values),
            }
            for name, g in self.groups.items()
        }
        out["metrics"] = {k: json_float(v) for k, v in self.metrics.items()}
        return out


@dataclass(frozen=True)
class SpectralEvent:
    """A change in the spectrum worth telling the user about (see :data:`EVENT_KINDS`).

    ``ratio_before``/``ratio_after`` are gap ratios R, except for ``regime_change`` where they are the
    smoothed η𝒜 (the median the regime is read from) before and after.
    """

    step: int
    kind: str
    k_before: int | None = None
    k_after: int | None = None
    ratio_before: float | None = None
    ratio_after: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready fields (non-finite floats as strings, as the JSON sinks write them)."""
        return {f.name: json_float(getattr(self, f.name)) for f in fields(self)}


def json_float(value: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) as strings; everything else unchanged (records' ``to_dict``,
    the JSONL sink).

    Example:
        >>> json_float(float("inf")), json_float(2.5)
        ('inf', 2.5)
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(value: float | None) -> str:
    """A number in 4 significant digits for a repr (``3.412``, ``inf``, ``None``)."""
    return "None" if value is None else f"{value:.4g}"


def _json_list(array: np.ndarray) -> list[Any]:
    return [json_float(float(x)) for x in np.asarray(array, dtype=np.float64)]
