"""Colours and markers shared by the HTML report and the static figures, so both read the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["EVENT_STYLE", "REGIME_COLORS", "RUN_COLORS", "RUN_DASHES", "event_style", "short_labels"]

#: One colour per run, in the order the runs are given; none of them is an event kind's or a regime's colour.
RUN_COLORS = ("#1f77b4", "#222222", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#393b79")
#: Line dash of each run's event lines (plotly names), in run order.
RUN_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
#: Event kind -> (label, colour, plotly marker symbol, matplotlib marker).
EVENT_STYLE = {
    "gap_opening": ("gap opening", "#2ca02c", "triangle-up", "^"),
    "gap_collapse": ("gap collapse", "#d62728", "triangle-down", "v"),
    "k_star_shift": ("k* shift", "#9467bd", "diamond", "D"),
    "regime_change": ("regime change", "#ff7f0e", "square", "s"),
    "nonfinite_update": ("non-finite update", "#7f7f7f", "x", "x"),
    "zero_update": ("zero update", "#7f7f7f", "circle-open", "o"),
    "parameters_changed": ("parameters changed", "#7f7f7f", "star", "*"),
}
#: Regime -> fill colour of its band and of its stretches in the regime strip.
REGIME_COLORS = {"plateau": "#2ca02c", "transition": "#f2b701", "forgetting": "#d62728"}


def event_style(kind: str) -> tuple[str, str, str, str]:
    """(label, colour, plotly symbol, matplotlib marker) of an event kind; grey crosses for unknown kinds."""
    return EVENT_STYLE.get(kind, (kind.replace("_", " "), "#7f7f7f", "x", "x"))


def short_labels(names: Sequence[str], limit: int = 24) -> list[str]:
    """Short axis labels: the names without the prefix they all share (cut at a separator), at most ``limit``.

    Example:
        >>> short_labels(["grokking-div-p97-wd1-seed42", "grokking-div-p97-wd0-seed42"])
        ['wd1-seed42', 'wd0-seed42']
    """
    cut = 0
    if len(names) > 1:
        prefix = os.path.commonprefix(list(names))
        cut = max((prefix.rfind(c) + 1 for c in "-_/. "), default=0)
    out = [n[cut:] or n for n in names]
    return [s if len(s) <= limit else "…" + s[-(limit - 1) :] for s in out]
