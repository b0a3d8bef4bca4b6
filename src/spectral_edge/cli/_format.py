"""Plain-text building blocks shared by the view commands: numbers, aligned tables, event lines."""

from __future__ import annotations

import math
import numbers
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def number(value: Any, digits: int = 4) -> str:
    """A number for a terminal: ``digits`` significant digits, ``inf``/``nan`` spelled out, ``-`` for None.

    Example:
        >>> number(2.718281), number(3), number(float("inf")), number(None), number(1.5e-7)
        ('2.718', '3', 'inf', '-', '1.5e-07')
    """
    if value is None:
        return "-"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    x = float(value)
    return str(x) if not math.isfinite(x) else f"{x:.{digits}g}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align: str = "", indent: str = "") -> str:
    """Rows as aligned columns; ``align`` has one ``l`` or ``r`` per column (default: first left, rest right).

    Example:
        >>> print(table(["kind", "n"], [["gap_opening", 2], ["k_star_shift", 10]]))
        kind          n
        gap_opening   2
        k_star_shift 10
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append((indent + " ".join(parts)).rstrip())
    return "\n".join(lines)


def events_table(events: Sequence[Mapping[str, Any]], *, indent: str = "  ") -> str:
    """Events (dicts with ``step``, ``kind``, ``message``) as a step / kind / message table."""
    rows = [[e["step"], e["kind"], e.get("message") or ""] for e in events]
    return table(["step", "kind", "message"], rows, align="rll", indent=indent)


def monitor_line(monitor: Mapping[str, Any]) -> str:
    """The monitor's settings from a run's config, on one line: W, interval, P, lr, storage, groups."""
    parts = {
        "W": monitor.get("window"),
        "interval": monitor.get("interval"),
        "P": monitor.get("n_params"),
        "lr": monitor.get("lr"),
        "storage": monitor.get("storage_dtype"),
    }
    text = " · ".join(
        f"{k}={v if isinstance(v, str) else number(v)}" for k, v in parts.items() if v is not None
    )
    groups = monitor.get("groups")
    if isinstance(groups, Mapping) and groups:
        text += " · groups " + ", ".join(f"{g} ({n})" for g, n in groups.items())
    return text


def key_values(pairs: Mapping[str, Any], *, sep: str = " · ") -> str:
    """``k v · k v`` for a mapping of already-formatted values."""
    return sep.join(f"{k} {v}" for k, v in pairs.items())


def paragraph(text: str, width: int = 88) -> str:
    """``text`` wrapped for an argparse description (the view commands keep their epilogs' layout raw)."""
    return textwrap.fill(" ".join(text.split()), width)
