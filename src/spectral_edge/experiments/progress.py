"""A dependency-free progress line for long runs: redrawn in place on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


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
