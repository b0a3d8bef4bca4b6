"""Static figures of monitored runs, drawn from their run stores (needs matplotlib: the ``demo`` extra).

:func:`plot_run` is the three-panel figure of one run (the demo's PNG, :func:`save_run_figure`);
:func:`write_static_figures` draws the HTML report's panels for papers (PNG, SVG or PDF), overlaying
several runs.

Every figure is a :class:`matplotlib.figure.Figure` made without ``pyplot``: nothing here selects a
backend or registers a figure with pyplot's global state, so a notebook's inline plots keep working and
nothing is left open. In a notebook, ``plot_run("runs/x")`` as a cell's last line shows the figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spectral_edge._imports import require
from spectral_edge.report.data import RunData
from spectral_edge.report.style import REGIME_COLORS, RUN_COLORS, event_style, short_labels
from spectral_edge.store import RunStore

__all__ = ["STATIC_FORMATS", "plot_run", "save_run_figure", "write_static_figures"]

#: Colours of the event kinds in figures.
EVENT_COLORS = {
    "gap_opening": "tab:green",
    "gap_collapse": "tab:red",
    "k_star_shift": "tab:purple",
    "regime_change": "tab:orange",
}


def plot_run(run: str | Path, *, title: str | None = None) -> Any:
    """Three panels over training steps: σ_j (log scale), the gap ratio R with k* and events, accuracy.

    Args:
        run: the run directory (or its ``run.db``).
        title: figure title; default the run directory's name.

    Returns:
        A :class:`matplotlib.figure.Figure` (not registered with pyplot; the backend is left alone).
        ``fig.savefig("x.png")`` writes it; :func:`save_run_figure` does that for the demo.

    Raises:
        ValueError: the run has no records yet.
        MissingExtraError: matplotlib is not installed (the ``demo`` extra).
    """
    plt = _figures("Figures")

    with RunStore(run, mode="r") as store:
        arrays = store.record_arrays()
        events = store.events()
        evals = store.evals()
        run_dir = Path(store.path).parent
    if not len(arrays.get("step", [])):
        raise ValueError(f"run {run} has no records yet: nothing to plot")
    steps = np.asarray(arrays["step"], dtype=float)
    sigma = np.asarray(arrays["singular_values"], dtype=float)  # (n, W)
    ratio = np.asarray(arrays["gap_ratio"], dtype=float)
    k_star = np.asarray(arrays["k_star"], dtype=float)

    fig, (ax_s, ax_r, ax_a) = plt.subplots(3, 1, figsize=(10, 9), sharex=True, constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    w = sigma.shape[1]
    for j in range(w):
        ax_s.plot(
            steps,
            np.where(sigma[:, j] > 0, sigma[:, j], np.nan),
            lw=0.9,
            color=cmap(j / max(w - 1, 1)),
            label=f"σ{j + 1}" if j in (0, 1, 2, w - 1) else None,
        )
    ax_s.set_yscale("log")
    ax_s.set_ylabel("singular values σ_j of X")
    ax_s.legend(loc="upper right", fontsize=8, ncol=4)

    finite = np.isfinite(ratio)
    ax_r.plot(steps[finite], ratio[finite], color="black", lw=0.9, label="gap ratio R = σ_k*/σ_k*+1")
    ax_r.set_yscale("log")
    ax_r.set_ylabel("gap ratio R")
    ax_k = ax_r.twinx()
    ax_k.plot(steps, k_star, color="tab:blue", lw=0, marker=".", ms=2, alpha=0.5, label="k*")
    ax_k.set_ylabel("k*", color="tab:blue")
    ax_k.set_ylim(0.5, w - 0.5)
    seen: set[str] = set()
    for event in events:
        color = EVENT_COLORS.get(event.kind)
        if color is None:
            continue
        label = event.kind.replace("_", " ") if event.kind not in seen else None
        seen.add(event.kind)
        for ax in (ax_r, ax_a):
            ax.axvline(
                event.step, color=color, ls="--", lw=1.0, alpha=0.8, label=label if ax is ax_r else None
            )
    ax_r.legend(loc="upper left", fontsize=8)

    accuracy: list[str] = [name for name in ("test_acc", "train_acc") if name in evals]
    # The grokking demo's accuracies when they are there, else every evaluation the run logged.
    for name in accuracy or sorted(evals):
        s, v = evals[name]
        style = {"test_acc": ("-", "tab:red"), "train_acc": (":", "tab:gray")}.get(name, ("-", None))
        ax_a.plot(s, v, style[0], color=style[1], label=name.replace("_", " "))
    if accuracy:
        ax_a.set_ylim(-0.02, 1.02)
    ax_a.set_ylabel("accuracy" if accuracy else "evaluations")
    ax_a.set_xlabel("optimizer step")
    if evals:
        ax_a.legend(loc="center right", fontsize=8)
    fig.suptitle(title or run_dir.name)
    return fig


def save_run_figure(run: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write :func:`plot_run`'s figure as a PNG (the demo's ``spectrum.png``).

    Args:
        run: the run directory (or its ``run.db``).
        out: PNG path; default ``spectrum.png`` in the run directory.
        title: figure title; default the run directory's name.

    Returns:
        The path of the PNG written.
    """
    fig = plot_run(run, title=title)
    if out is None:
        with RunStore(run, mode="r") as store:
            out = Path(store.path).parent / "spectrum.png"
    fig.savefig(out, dpi=110)
    return Path(out)


# -- static figures for papers: the HTML report's panels, drawn with matplotlib -----------------------------

#: Formats :func:`write_static_figures` writes.
STATIC_FORMATS = ("png", "svg", "pdf")


def write_static_figures(
    runs: Sequence[RunData], out_dir: str | Path, *, fmt: str = "png", dpi: int = 150
) -> list[Path]:
    """The HTML report's panels as static figures (one file per panel), from the same loaded runs.

    Files, each written only when the runs hold its data: ``sigma`` (σ_j, log scale), ``gap_ratio``
    (R and k* with the events), ``adiabatic`` (η𝒜 with the regime bands and each run's regime strip),
    ``alpha`` (one α_j heat map per run), ``groups`` (per-group k*), ``metrics`` (training metrics) and
    ``evals`` (evaluation curves). Several runs overlay with the report's colours. Infinite R or η𝒜 are
    drawn at the top of the axis as ×, as in the HTML report.

    Args:
        runs: runs loaded with :func:`~spectral_edge.report.data.load_runs`.
        out_dir: folder to write into (created).
        fmt: ``"png"``, ``"svg"`` or ``"pdf"``.
        dpi: resolution of PNGs (and of the rasterised heat maps in SVG/PDF).

    Returns:
        The paths written, in the order above.
    """
    if fmt not in STATIC_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(STATIC_FORMATS)}, got {fmt!r}")
    plt = _figures("Static figures")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = {r.name: RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(runs)}
    with_records = [r for r in runs if r.has_records]
    written: list[Path] = []
    panels = (
        ("sigma", _static_sigma),
        ("gap_ratio", _static_gap),
        ("adiabatic", _static_adiabatic),
        ("alpha", _static_alpha),
        ("groups", _static_groups),
        ("metrics", _static_metrics),
        ("evals", _static_evals),
    )
    rc = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "svg.fonttype": "none"}
    with plt.rc_context(rc):
        for name, draw in panels:
            fig = draw(plt, runs, with_records, colors)
            if fig is None:
                continue
            path = out / f"{name}.{fmt}"
            fig.savefig(path, dpi=dpi)
            written.append(path)
    return written


class _Figures:
    """The few pyplot calls the panels use, made on bare :class:`~matplotlib.figure.Figure` objects.

    Why: pyplot keeps every figure in a global registry and ``matplotlib.use`` switches the backend for
    the whole process (a notebook's inline plots stop showing). A bare Figure has neither side effect;
    ``savefig`` picks a file writer from the extension, and Jupyter still displays it.
    """

    def __init__(self, matplotlib: Any) -> None:
        self._figure = require("matplotlib.figure", "Figures").Figure
        self.Line2D = require("matplotlib.lines", "Figures").Line2D
        self.rc_context = matplotlib.rc_context
        self._colormaps = matplotlib.colormaps

    def subplots(
        self, *args: Any, figsize: tuple[float, float], constrained_layout: bool = False, **kwargs: Any
    ) -> tuple[Any, Any]:
        fig = self._figure(figsize=figsize, layout="constrained" if constrained_layout else None)
        return fig, fig.subplots(*args, **kwargs)

    def get_cmap(self, name: str) -> Any:
        return self._colormaps[name]


def _figures(what: str) -> _Figures:
    return _Figures(require("matplotlib", what))


def _event_lines(ax: Any, run: RunData, index: int, kinds: Callable[[str], bool]) -> None:
    dashes = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))
    for event in run.events:
        if kinds(event.kind):
            ax.axvline(
                event.step,
                color=event_style(event.kind)[1],
                lw=0.8,
                ls=dashes[index % len(dashes)],
                alpha=0.7,
            )


def _ticker() -> Any:
    return require("matplotlib.ticker", "Static figures")


def _finite_cap(arrays: Sequence[np.ndarray]) -> float | None:
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    return float(finite.max()) * 1.5 if len(finite) else None


def _static_sigma(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    if not with_records:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    single = len(with_records) == 1
    for run in with_records:
        w = run.sigma.shape[1]
        for j in range(w):
            y = np.where(run.sigma[:, j] > 0, run.sigma[:, j], np.nan)
            color = cmap(0.9 * j / max(w - 1, 1)) if single else colors[run.name]
            alpha = 1.0 if single else (1.0, 0.75)[j] if j < 2 else 0.3
            label = (
                (f"$\\sigma_{{{j + 1}}}$" if j in (0, 1, w - 1) else None)
                if single
                else (run.name if j == 0 else None)
            )
            ax.plot(run.steps, y, color=color, lw=(1.2, 0.9)[j] if j < 2 else 0.6, alpha=alpha, label=label)
    ax.set_yscale("log")
    ax.set_ylabel(r"singular values $\sigma_j$ of $X$")
    ax.set_xlabel("optimizer step")
    ax.legend(loc="best", ncol=3 if single else 1)
    return fig


def _static_gap(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    if not with_records:
        return None
    fig, (ax_r, ax_k) = plt.subplots(
        2, 1, figsize=(7.5, 4.8), sharex=True, height_ratios=[2, 1.1], constrained_layout=True
    )
    cap = _finite_cap([r.gap_ratio for r in with_records]) or 10.0
    n = len(with_records)
    seen: set[str] = set()
    for i, run in enumerate(with_records):
        color = colors[run.name]
        inf = np.isposinf(run.gap_ratio)
        ax_r.plot(run.steps, np.where(inf, np.nan, run.gap_ratio), color=color, lw=0.8, label=run.name)
        if inf.any():
            ax_r.plot(run.steps[inf], np.full(inf.sum(), cap), "x", color=color, ms=4)
        offset = 0.0 if n == 1 else 0.36 * (i / (n - 1) - 0.5)
        ax_k.plot(run.steps, run.k_star + offset, ".", color=color, ms=1.5, alpha=0.5, rasterized=True)
        gap_kinds = lambda kind: kind != "regime_change"  # noqa: E731
        _event_lines(ax_r, run, i, gap_kinds)
        _event_lines(ax_k, run, i, gap_kinds)
        for event in run.events:
            if not gap_kinds(event.kind):
                continue
            label, ecolor, _, marker = event_style(event.kind)
            at = min(int(np.searchsorted(run.steps, event.step)), len(run.steps) - 1)
            y = run.gap_ratio[at] if np.isfinite(run.gap_ratio[at]) else cap
            ax_r.plot(
                [event.step],
                [y],
                marker,
                color=ecolor,
                mec=color,
                ms=6,
                label=None if label in seen else label,
            )
            seen.add(label)
    thresholds = with_records[0].event_thresholds
    for value in (thresholds.open_ratio, thresholds.collapse_ratio):
        ax_r.axhline(value, color="0.5", lw=0.7, ls=":")
    ax_r.set_yscale("log")
    plain = _ticker().FuncFormatter(lambda v, _: f"{v:g}")
    ax_r.yaxis.set_major_formatter(plain)
    ax_r.yaxis.set_minor_formatter(plain)
    ax_r.set_ylabel(r"gap ratio $R = \sigma_{k^*}/\sigma_{k^*+1}$")
    ax_r.legend(loc="upper left", ncol=2)
    w = max(r.window for r in with_records)
    ax_k.set_ylim(0.5, max(w - 1, 1) + 0.5)
    ax_k.set_ylabel(r"$k^*$")
    ax_k.set_xlabel("optimizer step")
    return fig


def _static_adiabatic(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    with_a = [r for r in with_records if r.eta_adiabatic is not None]
    if not with_a:
        return None
    regimes = with_a[0].regimes
    fig, (ax, ax_s) = plt.subplots(
        2,
        1,
        figsize=(7.5, 4.2 + 0.25 * len(with_a)),
        sharex=True,
        height_ratios=[4, 0.5 + 0.35 * len(with_a)],
        constrained_layout=True,
    )
    values = np.concatenate([r.eta_adiabatic for r in with_a])
    finite = values[np.isfinite(values) & (values > 0)]
    lo = min(float(finite.min()) if len(finite) else regimes.low, regimes.low) / 2
    hi = max(float(finite.max()) if len(finite) else regimes.high, regimes.high) * 2
    for name, y0, y1 in (
        ("plateau", lo, regimes.low),
        ("transition", regimes.low, regimes.high),
        ("forgetting", regimes.high, hi),
    ):
        ax.axhspan(y0, y1, color=REGIME_COLORS[name], alpha=0.1, lw=0)
        ax.text(1.005, np.sqrt(y0 * y1), name, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    for i, run in enumerate(with_a):
        color = colors[run.name]
        eta, eta_median = run.eta_adiabatic, run.eta_adiabatic_median
        if eta is None or eta_median is None:  # with_a holds only runs that have both
            continue
        raw = np.where(np.isposinf(eta), hi, eta)
        ax.plot(run.steps, np.where(raw > 0, raw, np.nan), color=color, lw=0.4, alpha=0.25, rasterized=True)
        med = np.where(np.isposinf(eta_median), hi, eta_median)
        ax.plot(
            run.steps,
            np.where(med > 0, med, np.nan),
            color=color,
            lw=1.4,
            label=f"{run.name} (median of {run.regime_smoothing})",
        )
        for start, end, regime in run.regime_spans():
            ax_s.barh(i, end - start, left=start, height=0.76, color=REGIME_COLORS[regime], lw=0)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_ylabel(r"$\eta\mathcal{A} = \|\Delta C\|_F / g^2$" if regimes.scale == "lr" else r"$\mathcal{A}$")
    ax.legend(loc="lower left")
    ax_s.set_yticks(range(len(with_a)))
    ax_s.set_yticklabels(short_labels([r.name for r in with_a]))
    ax_s.set_ylim(len(with_a) - 0.5, -0.5)
    ax_s.set_xlabel("optimizer step")
    ax_s.set_title("regime, as the regime-change events report it", fontsize=8, loc="left")
    return fig


def _static_alpha(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    if not with_records:
        return None
    fig, axes = plt.subplots(
        len(with_records),
        1,
        figsize=(7.5, 0.6 + 1.9 * len(with_records)),
        squeeze=False,
        constrained_layout=True,
    )
    mesh = None
    for ax, run in zip(axes[:, 0], with_records, strict=True):
        w = run.alpha.shape[1]
        edges = _edges(run.steps)
        mesh = ax.pcolormesh(
            edges,
            np.arange(0.5, w + 1),
            run.alpha.T,
            vmin=0,
            vmax=1,
            cmap="viridis",
            rasterized=True,
            shading="flat",
        )
        ax.set_ylim(w + 0.5, 0.5)
        ax.set_ylabel("j")
        ax.set_title(run.name, loc="left", color=colors[run.name])
    axes[-1, 0].set_xlabel("optimizer step")
    fig.colorbar(mesh, ax=axes[:, 0], label=r"$\alpha_j$", shrink=0.9)
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each step (midpoints), so a thinned run's heat map has no gaps."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _static_groups(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    names: list[str] = []
    for run in with_records:
        names += [g for g in run.groups if g not in names]
    if not names:
        return None
    fig, axes = plt.subplots(
        len(names),
        1,
        figsize=(7.5, 0.5 + 1.1 * len(names)),
        sharex=True,
        squeeze=False,
        constrained_layout=True,
    )
    w = max(r.window for r in with_records)
    n = len(with_records)
    for ax, group in zip(axes[:, 0], names, strict=True):
        for i, run in enumerate(with_records):
            if group in run.groups:
                offset = 0.0 if n == 1 else 0.36 * (i / (n - 1) - 0.5)
                k = run.groups[group][0]
                ax.plot(
                    run.steps, k + offset, ".", ms=1.2, alpha=0.5, color=colors[run.name], rasterized=True
                )
        ax.set_ylim(0.5, max(w - 1, 1) + 0.5)
        ax.yaxis.set_major_locator(_ticker().MaxNLocator(integer=True, nbins=4))
        ax.set_ylabel(r"$k^*$")
        ax.set_title(group, loc="left", fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    if n > 1:
        handles = [
            plt.Line2D([], [], color=colors[r.name], marker="o", ls="", label=r.name) for r in with_records
        ]
        axes[0, 0].legend(handles=handles, loc="upper right", fontsize=7)
    return fig


def _static_curves(
    plt: Any, series: dict[str, list[tuple[RunData, np.ndarray, np.ndarray]]], colors: Any
) -> Any:
    names = list(series)
    cols = 1 if len(names) == 1 else 2
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(7.5, 0.4 + 2.0 * rows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        finite = []
        for run, steps, values in series[name]:
            values = np.asarray(values, dtype=np.float64)
            finite.append(values[np.isfinite(values)])
            ax.plot(
                steps,
                np.where(np.isfinite(values), values, np.nan),
                color=colors[run.name],
                lw=0.9,
                label=run.name,
            )
        all_finite = np.concatenate(finite) if finite else np.zeros(0)
        if (
            "acc" not in name.lower()
            and len(all_finite)
            and all_finite.min() > 0
            and all_finite.max() / all_finite.min() > 100
        ):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimizer step")
    if len({r.name for s in series.values() for r, _, _ in s}) > 1:
        axes.flat[0].legend(fontsize=7)
    return fig


def _static_metrics(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    names: list[str] = []
    for run in with_records:
        names += [m for m in run.metrics if m not in names]
    if not names:
        return None
    series = {m: [(r, r.steps, r.metrics[m]) for r in with_records if m in r.metrics] for m in names}
    return _static_curves(plt, series, colors)


def _static_evals(plt: Any, runs: Sequence[RunData], with_records: Sequence[RunData], colors: Any) -> Any:
    names: list[str] = []
    for run in runs:
        names += [m for m in run.evals if m not in names]
    if not names:
        return None
    series = {m: [(r, r.evals[m][0], r.evals[m][1]) for r in runs if m in r.evals] for m in names}
    return _static_curves(plt, series, colors)
