"""Wall times for the studies' summaries. (The progress bar is ``spectral_edge.progress.ProgressBar``.)"""

from __future__ import annotations

import math
from typing import Any


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
