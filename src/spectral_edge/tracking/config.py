"""The monitor's settings as one frozen, validated object: :class:`MonitorConfig`.

Every hyperparameter of :class:`~spectral_edge.tracking.monitor.SpectralMonitor`,
:class:`~spectral_edge.tracking.tracker.SpectralTracker` and the framework callbacks lives here, is checked
once, when the object is made (a bad argument found at step 40 000 is expensive), and is kept as given,
so ``repr`` and the run store's config show it. Each message says what was wrong (with the value), what
was expected, and how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch

from spectral_edge.spectrum.null import BBPVariant
from spectral_edge.spectrum.stability import AdiabaticRegimes, GapUnits
from spectral_edge.tracking.events import EventThresholds
from spectral_edge.tracking.window import STORAGE_DTYPES

__all__ = ["GroupSpec", "LearningRate", "MonitorConfig", "group_function", "resolve_config"]

GroupSpec = str | int | Callable[[str], str] | Mapping[str, Sequence[str]] | None
LearningRate = float | torch.optim.Optimizer | Callable[[], float | None] | None


def group_function(groups: GroupSpec) -> Callable[[str], str]:
    """The function name → group for a ``groups=`` argument.

    * ``"top"`` (default): the first component of the parameter name (one group per top-level module);
    * an int d: the first d components (``2`` puts ``blocks.0.*`` and ``blocks.1.*`` apart);
    * ``None`` or ``"all"``: one group;
    * a mapping ``{group: [name prefixes]}``: first matching prefix wins, unmatched names go to "other";
    * a callable: used as it is.

    Example:
        >>> group_function(2)("blocks.0.attn.q_proj.weight")
        'blocks.0'
    """
    if groups is None or groups == "all":
        return lambda name: "all"
    if groups == "top":
        return lambda name: name.split(".")[0]
    if isinstance(groups, int) and not isinstance(groups, bool):
        if groups < 1:
            raise ValueError(
                f"a group depth must be >= 1, got {groups}: pass groups=1 (top-level modules) or more"
            )
        return lambda name: ".".join(name.split(".")[:groups])
    if isinstance(groups, Mapping):
        table = [(prefix, group) for group, prefixes in groups.items() for prefix in prefixes]

        def by_prefix(name: str) -> str:
            # A prefix matches whole name components: "layer1" takes "layer1.weight", not "layer10.weight".
            return next(
                (g for prefix, g in table if name == prefix or name.startswith(prefix.rstrip(".") + ".")),
                "other",
            )

        return by_prefix
    if callable(groups):
        return groups
    raise ValueError(
        f"groups must be 'top', 'all', None, an int depth, a mapping of prefixes or a callable, got {groups!r}: "
        "pass groups='top' for one group per top-level module"
    )


@dataclass(frozen=True)
class MonitorConfig:
    """The settings of a spectral monitor: what it measures and how, checked when made, never changed.

    Pass it as ``SpectralMonitor(model, config=MonitorConfig(...))``, or pass its fields as keywords
    (``SpectralMonitor(model, window=10, lr=opt)``): both build this object. The quantities it tunes
    are the paper's: the window X of W updates (Def 1.2) and its Gram G = X Xᵀ (Def 1.3), K_95 (Def 7.1,
    eq 17), α_j = max(0, 1 − c‖ΔG‖_F²/δ_j²) (Def 16.1, eq 77), 𝒜 = ‖ΔG‖_F/(η g²) with g in σ units
    (Def 8.1, eq 18) or λ units and its regimes (Prop 34.3), and d_crit = ν (PW)^{1/4} (Prop 4.1, eq 4).

    Example:
        >>> config = MonitorConfig(window=8, lr=1e-3)
        >>> config.window, config.regimes.scale
        (8, 'lr')
        >>> MonitorConfig(window=1)
        Traceback (most recent call last):
        ...
        ValueError: window must be an int >= 2, got 1: a gap σ_k*/σ_k*+1 needs two updates; pass window=10 (the paper's W) or another int >= 2
    """

    window: int = 10  # W >= 2, updates per window (the paper uses 10)
    interval: int = 1  # take updates between snapshots this many step() calls apart (one record per interval)
    lr: LearningRate = None  # η for 𝒜: a float > 0, a zero-argument callable, an optimizer, or None (no 𝒜)
    groups: GroupSpec = "top"  # how parameters split into groups with their own Gram (see group_function)
    storage_dtype: torch.dtype = torch.float32  # dtype of the W × P window: float32, bfloat16 or float64
    storage_device: torch.device | str | None = None  # where the window lives; None: the parameters' device
    k95_threshold: float = 0.95  # cumulative-variance threshold of K_95 (Def 7.1), in (0, 1]
    alpha_c: float = 1.0  # the Davis–Kahan constant c of α_j (Def 16.1), > 0
    gap_units: GapUnits = "sigma"  # units of g in 𝒜: "sigma" (Def 8.1) or "lambda" (needs regimes)
    regimes: AdiabaticRegimes = field(default_factory=AdiabaticRegimes)  # cut-offs of the 𝒜 regimes
    events: EventThresholds = field(default_factory=EventThresholds)  # thresholds of the event detectors
    bbp_variant: BBPVariant = "PW"  # "PW" or "P(W-1)" in d_crit (Prop 4.1)
    strict: bool = False  # raise on non-finite updates, changed parameters, failing sinks, instead of warning
    history: int = 1000  # records kept in memory (mon.records); the run store keeps all of them
    chunk_size: int | None = None  # elements per chunk of the push loop; None: chosen by device
    threads: int | None = None  # deprecated and ignored (a FutureWarning): the threaded push was removed
    kernel: str = "auto"  # how a push runs: "auto", "fused" (C++ on the CPU) or "torch"
    sketch_dim: int | None = None  # m: keep CountSketches S·δ (W × m, float64) instead of X; None: exact
    sketch_seed: int = 0  # the sketch's seed (the same on every process of one model)
    user: Mapping[str, Any] = field(default_factory=dict)  # extra JSON-able settings saved beside these

    def __post_init__(self) -> None:
        _check_int(
            "window",
            self.window,
            2,
            "a gap σ_k*/σ_k*+1 needs two updates; pass window=10 (the paper's W) or another int >= 2",
        )
        _check_int("interval", self.interval, 1, "pass interval=1 to take the update of every step() call")
        self._check_lr()
        group_function(self.groups)  # raises on a bad spec
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"storage_dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}: pass "
                "torch.float32 (default), torch.bfloat16 (half the memory) or torch.float64"
            )
        if self.storage_device is not None:
            try:
                torch.device(self.storage_device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(
                    f"storage_device must name a torch device, got {self.storage_device!r} ({exc}): pass "
                    "'cpu', 'cuda', 'cuda:1', a torch.device, or None for the parameters' device"
                ) from None
        if not _is_number(self.k95_threshold) or not 0.0 < self.k95_threshold <= 1.0:
            raise ValueError(
                f"k95_threshold must be in (0, 1], got {self.k95_threshold!r}: pass 0.95 (K_95, Def 7.1) "
                "or 0.99 (K_99)"
            )
        if not _is_number(self.alpha_c) or not 0.0 < self.alpha_c < math.inf:
            raise ValueError(f"alpha_c must be a finite number > 0, got {self.alpha_c!r}: pass alpha_c=1.0")
        if self.gap_units not in ("sigma", "lambda"):
            raise ValueError(
                f"gap_units must be 'sigma' or 'lambda', got {self.gap_units!r}: pass 'sigma' (g = σ_k* − "
                "σ_k*+1, Def 8.1) or 'lambda' (g = λ_k* − λ_k*+1)"
            )
        # None stands for the defaults, as the monitor's keywords always allowed.
        if self.regimes is None:
            object.__setattr__(self, "regimes", AdiabaticRegimes())
        if self.events is None:
            object.__setattr__(self, "events", EventThresholds())
        if not isinstance(self.regimes, AdiabaticRegimes):
            raise ValueError(
                f"regimes must be an AdiabaticRegimes, got {type(self.regimes).__name__}: pass "
                "regimes=AdiabaticRegimes(low=..., high=..., scale=...) or None for the defaults"
            )
        if not isinstance(self.events, EventThresholds):
            raise ValueError(
                f"events must be an EventThresholds, got {type(self.events).__name__}: pass "
                "events=EventThresholds(open_ratio=..., ...) or None for the defaults"
            )
        if self.gap_units == "lambda" and self.regimes == AdiabaticRegimes():
            raise ValueError(
                "gap_units='lambda' makes 𝒜 scale with 1/σ², so the default regime cut-offs (made for η𝒜 with g "
                "in σ units) mean nothing: pass regimes=AdiabaticRegimes(low=..., high=..., scale=...) as well"
            )
        if self.bbp_variant not in ("PW", "P(W-1)"):
            raise ValueError(
                f"bbp_variant must be 'PW' or 'P(W-1)', got {self.bbp_variant!r}: pass 'PW' (d_crit = "
                "ν (PW)^{1/4}, Prop 4.1) or 'P(W-1)' (the author's code)"
            )
        if not isinstance(self.strict, bool):
            raise ValueError(f"strict must be True or False, got {self.strict!r}")
        _check_int("history", self.history, 0, "pass history=0 to keep no record in memory")
        if self.chunk_size is not None:
            _check_int("chunk_size", self.chunk_size, 1, "pass a positive int, or None to choose by device")
        if self.threads is not None:
            warnings.warn(
                f"threads={self.threads!r} is ignored: the threaded torch push was removed (the fused C++ "
                "kernel, the CPU default, was 2.6-4.7 times faster, docs/benchmarks.md); drop the argument",
                FutureWarning,
                stacklevel=3,
            )
        if self.kernel not in ("auto", "fused", "torch"):
            raise ValueError(
                f"kernel must be 'auto', 'fused' or 'torch', got {self.kernel!r}: pass 'auto' to use the "
                "fused C++ push where it applies"
            )
        if self.kernel == "fused" and self.storage_dtype != torch.float32:
            raise ValueError(
                f"kernel='fused' needs a float32 window, not {self.storage_dtype}: pass kernel='auto' or "
                "storage_dtype=torch.float32"
            )
        if self.sketch_dim is not None:
            _check_int(
                "sketch_dim",
                self.sketch_dim,
                1,
                "pass the sketch's rows m (e.g. 16384; tracking/sketch.py gives the error against m), or None "
                "for the exact window",
            )
        _check_int("sketch_seed", self.sketch_seed, 0, "pass a non-negative int seed")
        if not isinstance(self.user, Mapping):
            raise ValueError(
                f"user must be a mapping of JSON-able settings, got {type(self.user).__name__}: pass a dict"
            )
        object.__setattr__(self, "user", types.MappingProxyType(dict(self.user)))  # frozen all the way

    def _check_lr(self) -> None:
        lr = self.lr
        if _is_number(lr):
            if not lr > 0:
                raise ValueError(
                    f"lr must be > 0, got {lr!r}: pass the optimizer's learning rate, the optimizer itself, "
                    "or None to leave 𝒜 out"
                )
        elif lr is not None and not isinstance(lr, torch.optim.Optimizer) and not callable(lr):
            raise ValueError(
                f"lr must be a float, an optimizer, a callable or None, got {type(lr).__name__}: pass "
                "lr=optimizer to read η at each record"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able settings a run store saves (under ``"monitor"``, with the monitor's own facts).

        A learning rate that is not a number is named by its type; ``groups`` is left out (a callable is
        not JSON-able): the run store's ``"groups"`` holds the groups' sizes instead. ``user`` is saved
        beside, under ``"user"``.

        Example:
            >>> MonitorConfig(lr=0.1).to_dict()["lr"], MonitorConfig().to_dict()["storage_dtype"]
            (0.1, 'torch.float32')
        """
        lr = self.lr
        return {
            "window": self.window,
            "interval": self.interval,
            "lr": lr if _is_number(lr) else (type(lr).__name__ if lr is not None else None),
            "storage_dtype": str(self.storage_dtype),
            "storage_device": None if self.storage_device is None else str(self.storage_device),
            "k95_threshold": self.k95_threshold,
            "alpha_c": self.alpha_c,
            "gap_units": self.gap_units,
            "regimes": dataclasses.asdict(self.regimes),
            "events": dataclasses.asdict(self.events),
            "bbp_variant": self.bbp_variant,
            "strict": self.strict,
            "history": self.history,
            "chunk_size": self.chunk_size,
            "kernel": self.kernel,
            "sketch_dim": self.sketch_dim,
            "sketch_seed": self.sketch_seed,
        }


def resolve_config(
    config: MonitorConfig | Mapping[str, Any] | None, settings: Mapping[str, Any], *, caller: str
) -> MonitorConfig:
    """The :class:`MonitorConfig` of a ``config=`` argument and keyword settings.

    ``config`` may be a :class:`MonitorConfig` (keywords then override its fields), a mapping of extra
    JSON-able settings to save in the run store (``config=`` as it always was; it becomes
    :attr:`MonitorConfig.user`), or None.

    Raises:
        TypeError: a keyword that is no field of :class:`MonitorConfig` (the message suggests the nearest).
        ValueError: a field with a bad value (see :class:`MonitorConfig`).

    Example:
        >>> resolve_config(MonitorConfig(window=8), {"lr": 0.1}, caller="f").window
        8
        >>> resolve_config({"run": "a"}, {}, caller="f").user["run"]
        'a'
    """
    names = [f.name for f in dataclasses.fields(MonitorConfig)]
    unknown = [k for k in settings if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{caller}() got an unexpected keyword argument {unknown[0]!r}{hint}; its settings are the fields "
            f"of MonitorConfig: {', '.join(names)}"
        )
    if isinstance(config, MonitorConfig):
        return dataclasses.replace(config, **settings) if settings else config
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a MonitorConfig or a mapping of extra settings to save, got "
            f"{type(config).__name__}: pass config=MonitorConfig(window=..., ...)"
        )
    if config is not None and "user" in settings:
        raise TypeError("pass the extra settings once: as config={...} or as user={...}, not both")
    user: dict[str, Any] = {"user": config} if config is not None else {}
    return MonitorConfig(**settings, **user)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}: {fix}")
