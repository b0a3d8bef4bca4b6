"""A dependency-free progress line for long runs: redrawn in place on a terminal, periodic lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_duration(seconds: Any) -> str:
    """A wall time for a summary: ``"42 s"``, ``"3 min 05 s"``, ``"1 h 52 min"``; ``"?"`` if unknown.

    Example:
        >>> format_duration(6748.35), format_duration(185), format_duration(None), format_duration(float("nan"))
        ('1 h 52 min', '3 min 05 s', '?', '?')
    """
    if seconds is None or not math.isfinite(float(seconds)):
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressBar:
    """``bar(step, total, text)`` redraws one line: bar, step/total, elapsed, ETA and a status text.

    On a terminal the line is redrawn at most every ``min_interval`` seconds; when the stream is not a
    terminal (a CI log, a pipe) a plain line is printed every ``log_every`` fraction of the run instead.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        width: int = 28,
        min_interval: float = 0.1,
        log_every: float = 0.1,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.log_every = log_every
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = -1.0
        self._next_log = 0.0

    def __call__(self, step: int, total: int, text: str = "") -> None:
        now = time.perf_counter()
        fraction = min(max(step / max(total, 1), 0.0), 1.0)
        done = step >= total
        if self.interactive:
            if not done and now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
            filled = int(round(fraction * self.width))
            bar = "█" * filled + "·" * (self.width - filled)
            self.stream.write(f"\r{bar} {self._line(step, total, fraction, now, text)}\033[K")
            if done:
                self.stream.write("\n")
        else:
            if not done and fraction < self._next_log:
                return
            self._next_log = fraction + self.log_every
            self.stream.write(self._line(step, total, fraction, now, text) + "\n")
        self.stream.flush()

    def _line(self, step: int, total: int, fraction: float, now: float, text: str) -> str:
        elapsed = now - self._start
        eta = elapsed / fraction - elapsed if fraction > 0 else float("nan")
        return f"{step}/{total} [{_clock(elapsed)}<{_clock(eta)}] {text}"


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: no estimate yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


ProgressFn = Callable[[int, int, str], None]
