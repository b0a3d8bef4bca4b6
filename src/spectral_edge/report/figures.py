"""Static figures of a monitored run, drawn from its run store (needs the ``demo`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectral_edge._imports import require
from spectral_edge.store import RunStore

#: Colours of the event kinds in figures.
EVENT_COLORS = {
    "gap_opening": "tab:green",
    "gap_collapse": "tab:red",
    "k_star_shift": "tab:purple",
    "regime_change": "tab:orange",
}


def plot_run(run: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Three panels over training steps: σ_j (log scale), the gap ratio R with k* and events, accuracy.

    Args:
        run: the run directory (or its ``run.db``).
        out: PNG path; default ``spectrum.png`` in the run directory.
        title: figure title; default the run directory's name.

    Returns:
        The path of the PNG written.
    """
    matplotlib = require("matplotlib", "Figures")
    matplotlib.use("Agg")  # files only: no display needed, and no GUI backend is ever started
    plt = require("matplotlib.pyplot", "Figures")

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

    for name, style in (("test_acc", "-"), ("train_acc", ":")):
        if name in evals:
            s, v = evals[name]
            ax_a.plot(
                s,
                v,
                style,
                color="tab:red" if name == "test_acc" else "tab:gray",
                label=name.replace("_", " "),
            )
    ax_a.set_ylim(-0.02, 1.02)
    ax_a.set_ylabel("accuracy")
    ax_a.set_xlabel("optimizer step")
    ax_a.legend(loc="center right", fontsize=8)
    fig.suptitle(title or run_dir.name)

    out = Path(out) if out is not None else run_dir / "spectrum.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
