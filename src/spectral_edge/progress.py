"""A one-line progress bar for long commands (the demo's training, ``spectral-edge analyze``).

On a terminal the bar is redrawn in place, at most every 0.1 s; elsewhere (a CI log, a pipe) a plain line
is written every tenth of the work, so logs stay short. Callers pass it as ``progress=`` to functions that
take a ``progress(done, total, text)`` callable.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["ProgressBar", "bar_on_terminal"]


class ProgressBar:
    """``bar(step, total, text)``: one line of bar, step/total, elapsed, ETA and ``text``, redrawn in place
    at most every 0.1 s on a terminal; elsewhere (a CI log, a pipe) a new line every tenth of the run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.interactive = stream, bool(getattr(stream, "isatty", lambda: False)())
        self._start, self._last_draw, self._next_log = time.perf_counter(), -1.0, 0.0

    def __call__(self, step: int, total: int, text: str = "") -> None:
        """Show ``step`` of ``total`` with ``text`` (redrawn in place on a terminal, else a line now and then)."""
        now, fraction, done = time.perf_counter(), min(max(step / max(total, 1), 0.0), 1.0), step >= total
        elapsed = now - self._start
        eta = "?" if fraction == 0 else _clock(elapsed / fraction - elapsed)
        line = f"{step}/{total} [{_clock(elapsed)}<{eta}] {text}"
        if self.interactive and (done or now - self._last_draw >= 0.1):
            self._last_draw, filled = now, int(round(fraction * 28))
            bar = "█" * filled + "·" * (28 - filled)
            self.stream.write(f"\r{bar} {line}\033[K" + ("\n" if done else ""))
        elif not self.interactive and (done or fraction >= self._next_log):
            self._next_log = fraction + 0.1
            self.stream.write(line + "\n")
        else:
            return
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def bar_on_terminal(stream: TextIO | None = None, *, enabled: bool = True) -> ProgressBar | None:
    """A bar on ``stream`` (default stderr) when it is a terminal and ``enabled``, else None.

    For commands whose output may go to a pipe or a log (``analyze``, ``export``): there the table or
    the paths are the output, and a bar's lines would only be noise.
    """
    import sys

    stream = stream if stream is not None else sys.stderr
    if not enabled or not bool(getattr(stream, "isatty", lambda: False)()):
        return None
    return ProgressBar(stream)
