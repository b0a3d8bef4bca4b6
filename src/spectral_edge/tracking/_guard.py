"""The one failure guard: monitoring code that fails costs one warning, never an exception into training.

:class:`Guard` serves the monitor (its sinks, the run store, ``log_eval``, its internal errors), the
fan-out and the framework callbacks alike. Outside strict mode an exception becomes one
:class:`~spectral_edge.errors.SpectrumWarning` per place and error type; ``strict=True`` raises it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TypeVar

from spectral_edge.errors import SpectrumWarning

__all__ = ["Guard", "WarnOnce"]

T = TypeVar("T")


class WarnOnce:
    """Issues each warning once per key: a condition that lasts (a NaN streak, a failing sink) warns once.

    Example:
        >>> import warnings
        >>> warn = WarnOnce()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = [warn("disk", "the disk is full") for _ in range(3)]
        >>> len(caught)
        1
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(
        self, key: str, message: str, category: type[Warning] = SpectrumWarning, *, stacklevel: int = 4
    ) -> bool:
        """Warn with ``message`` unless ``key`` warned before; return whether it warned."""
        if key in self._seen:
            return False
        self._seen.add(key)
        warnings.warn(message, category, stacklevel=stacklevel)
        return True


class Guard:
    """Runs monitoring code so that a failure is one warning, never an exception into training.

    Args:
        strict: raise failures instead of warning.
        note: a sentence added to each warning (what is still kept, for instance).

    Example:
        >>> import warnings
        >>> guard = Guard(strict=False)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     guard("the sink S", lambda: 1 / 0), guard("the sink S", lambda: 1 / 0), guard("x", lambda: 2)
        (None, None, 2)
        >>> [str(w.message).split(" (")[0] for w in caught]
        ['spectral-edge: the sink S failed']
    """

    def __init__(self, *, strict: bool, note: str = "") -> None:
        self.strict = strict
        self.note = note
        self.warn_once = WarnOnce()

    def __call__(
        self,
        what: str,
        action: Callable[[], T],
        *,
        handlers: Mapping[type[Exception], Callable[[Exception], object]] | None = None,
    ) -> T | None:
        """Run ``action`` and return its result; on a failure outside strict mode return None.

        Args:
            what: names the failing part in the warning ("the sink WandbSink", "log_eval").
            action: the code to run.
            handlers: exception type -> what to do instead of the generic warning (the run store's refused
                writes have their own report). Strict mode raises before any handler.
        """
        try:
            return action()
        except Exception as exc:
            if self.strict:
                raise
            for kind, handle in (handlers or {}).items():
                if isinstance(exc, kind):
                    handle(exc)
                    return None
            note = f" {self.note}" if self.note else ""
            self.warn_once(
                f"{what}:{type(exc).__name__}",
                f"spectral-edge: {what} failed ({exc!r}); training continues.{note} Pass strict=True to raise "
                "instead.",
            )
            return None
