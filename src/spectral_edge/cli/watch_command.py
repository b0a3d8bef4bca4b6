"""``spectral-edge watch RUN``: follow a run while it trains, read from its run store.

Examples::

    spectral-edge watch runs/exp1                  # redrawn in place every second; Ctrl-C to stop
    spectral-edge watch runs/exp1 --interval 5     # poll every 5 seconds
    spectral-edge watch runs/exp1 --once           # print the current state once and exit (scripts)
    spectral-edge watch runs/exp1 --timeout 3600 > watch.log   # plain appended lines when not a terminal
    spectral-edge watch runs/exp1 --until-finished > watch.log # ... and exit 0 once the monitor closes
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from spectral_edge.cli._format import events_table, monitor_line, number, paragraph

_EXAMPLES = __doc__.split("Examples::", 1)[1]
_HOME, _CLEAR_LINE, _CLEAR_BELOW, _CLEAR_SCREEN = "\033[H", "\033[K", "\033[J", "\033[2J"
_N_SIGMAS = 5  # leading singular values shown
TREND = 40  # records in the sparklines (read with RunStore.tail: a poll never reads the whole run)
_BLOCKS = "▁▂▃▄▅▆▇█"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spectral-edge watch`` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "watch",
        help="follow a run while it trains: the latest record, evaluations and events",
        description=paragraph(
            "Follow a run while it trains, reading its run store read-only: the latest record "
            "(step, k*, R, gap, adiabatic regime, leading singular values, per-group k*), sparklines of R "
            "and k* over the last 40 records, steps per second, the latest "
            "evaluation and the latest events, and whether the run is finished (its monitor closed). On a "
            "terminal the view is redrawn in place; otherwise one line "
            "per new record (and per new event or evaluation) is appended. Waits for the run store and for "
            "its first record to appear."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _EXAMPLES,
    )
    parser.add_argument("run", type=Path, help="run directory (or its run.db); it may not exist yet")
    parser.add_argument(
        "--interval",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="seconds between polls (default: %(default)s)",
    )
    parser.add_argument(
        "--once", action="store_true", help="check the whole store, print the current state once and exit"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: never)",
    )
    parser.add_argument(
        "--events", type=int, default=5, metavar="N", help="latest events shown (default: %(default)s)"
    )
    parser.add_argument(
        "--until-finished",
        action="store_true",
        help="exit (status 0) once the run is finished, i.e. its monitor closed it; without it watch keeps "
        "following, since a finished run may be resumed",
    )
    parser.set_defaults(handler=_watch)


def _watch(args: argparse.Namespace) -> int:
    if args.events < 0:
        raise ValueError(f"--events must be >= 0, got {args.events}")
    return watch(
        args.run,
        interval=args.interval,
        once=args.once,
        timeout=args.timeout,
        n_events=args.events,
        until_finished=args.until_finished,
    )


def watch(
    run: str | Path,
    *,
    interval: float = 1.0,
    once: bool = False,
    timeout: float | None = None,
    n_events: int = 5,
    until_finished: bool = False,
    stream: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll the run store every ``interval`` seconds and show what is new; returns the exit status.

    ``once`` checks the whole store (:meth:`~spectral_edge.store.RunStore.check`), shows the current
    state and returns (a missing, foreign or damaged run is then an error, a run without records is
    shown as such). Otherwise it waits for the run store and its records, and stops on
    Ctrl-C (status 0), after ``timeout`` seconds (an error if no record was seen by then), or, with
    ``until_finished``, once the run is finished (``meta()["finished_at"]``, written when its monitor
    closes; status 0).
    """
    from spectral_edge.errors import RunStoreError
    from spectral_edge.summary import open_run

    stream = stream if stream is not None else sys.stdout
    run = Path(run)
    if once:
        # The clear errors for a missing path or a directory that is not a run, and a read of the whole
        # store: a script that runs --once learns of damage from the exit status, not from a later summary.
        with open_run(run) as store:
            store.check()
    live = not once and bool(getattr(stream, "isatty", lambda: False)())
    follower = _Follower(run)
    plain = _PlainLog(run, stream)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen_record = False
    first_draw = True
    try:
        while True:
            state = follower.poll()
            seen_record = seen_record or state.n_records > 0
            if once:
                stream.write(render(run, state, n_events=n_events) + "\n")
                return 0
            if live:
                view = render(run, state, n_events=n_events, interval=interval)
                lines = "".join(line + _CLEAR_LINE + "\n" for line in view.splitlines())
                stream.write((_CLEAR_SCREEN if first_draw else "") + _HOME + lines + _CLEAR_BELOW)
                first_draw = False
            else:
                plain.update(state)
            stream.flush()
            if until_finished and state.finished_at is not None:
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                break
            sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    except KeyboardInterrupt:
        stream.write("\n")
        stream.flush()
        return 0
    finally:
        follower.close()
    if not seen_record:
        what = "no record was written" if follower.db_seen else "no run store appeared"
        raise RunStoreError(
            f"{what} at {run} within --timeout {timeout:g} s; check that training runs and writes to this "
            "directory (SpectralMonitor(..., store=...)), or wait longer"
        )
    return 0


# -- reading the store --------------------------------------------------------------------------------


@dataclass
class _State:
    """What one poll of the run store found."""

    status: Literal["missing", "creating", "ready"]
    db: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    n_records: int = 0
    last: Mapping[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    eval_step: int | None = None
    evals: dict[str, float] = field(default_factory=dict)  # the values logged at eval_step
    replaced: bool = False  # the run store was deleted and written anew since the last poll
    recent: Sequence[Mapping[str, Any]] = field(default_factory=list)  # the last TREND records, oldest first
    finished_at: str | None = None  # meta's finished_at: the monitor closed the run


class _Follower:
    """Keeps the run store open read-only across polls; reopens it when a new run replaces the file."""

    def __init__(self, run: Path) -> None:
        from spectral_edge.store import DB_NAME

        self.db = run if run.suffix == ".db" or run.is_file() else run / DB_NAME
        self.identity: tuple[int, str | None] | None = None  # the run last read: (inode, run id)
        self.db_seen = False

    def poll(self) -> _State:
        """One look at the run store, through a connection opened for this poll alone.

        A read connection kept open across polls could be opened while the writer was still creating the
        database (before its switch to WAL) and then outlive the writer's close, which removes the WAL
        files under it: such a connection went on reading a stale snapshot, and watch never showed the
        run's last records (a subprocess test hung until its watchdog). Opening costs a few milliseconds.
        """
        from spectral_edge.errors import RunStoreError
        from spectral_edge.store import RunStore

        try:
            inode = self.db.stat().st_ino
        except FileNotFoundError:
            self.close()
            return _State("missing", self.db)
        self.db_seen = True
        try:
            store = RunStore(self.db, mode="r")
        except RunStoreError as exc:
            if _being_created(self.db) or _busy(exc):
                return _State("creating", self.db)
            # The writer commits its whole schema in one transaction, which may have landed between
            # the two looks: one more open tells a run that has just appeared from a foreign file.
            try:
                store = RunStore(self.db, mode="r")
            except RunStoreError as again:
                if _busy(again):
                    return _State("creating", self.db)
                raise
        with store:
            meta = store.meta()
            # The inode alone does not tell a run written anew: the new file may reuse the old one's.
            identity = (inode, meta.get("run_id") or meta.get("created"))
            replaced = self.identity is not None and identity != self.identity
            self.identity = identity
            n = len(store)
            recent = store.tail(TREND) if n else []
            evals = store.evals()
            eval_step = max((int(steps[-1]) for steps, _ in evals.values()), default=None)
            latest = {
                name: float(values[steps == eval_step][-1])
                for name, (steps, values) in evals.items()
                if eval_step is not None and (steps == eval_step).any()
            }
            return _State(
                "ready",
                self.db,
                config=store.config(),
                n_records=n,
                last=recent[-1] if recent else None,
                events=[e.to_dict() for e in store.events()],
                eval_step=eval_step,
                evals=latest,
                replaced=replaced,
                recent=recent,
                finished_at=meta.get("finished_at"),
            )

    def close(self) -> None:
        self.identity = None


def _busy(exc: BaseException) -> bool:
    """True when SQLite refused a read for a moment (the writer held a lock it may not wait on, as while
    it switches a new database to WAL): the next poll will read, so this one waits instead of failing."""
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and any(
        word in str(cause).lower() for word in ("locked", "busy")
    )


def _being_created(db: Path) -> bool:
    """True while a writer has created ``db`` but not yet committed its tables (RunStore's first moments).

    Any other database that is not a run (another program's, a newer schema) is an error, not a wait.
    """
    try:
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            return not conn.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError:
        return False


# -- the views ----------------------------------------------------------------------------------------


def render(run: Path, state: _State, *, n_events: int = 5, interval: float | None = None) -> str:
    """The full view of one poll (what the terminal shows, and what ``--once`` prints)."""
    now = datetime.now().strftime("%H:%M:%S")
    head = f"spectral-edge watch {run} · {now}"
    if interval is not None:
        head += f" · every {interval:g} s · Ctrl-C to stop"
    lines = [head, ""]
    if state.status == "missing":
        return "\n".join([*lines, f"waiting for the run store {state.db} to appear"])
    if state.status == "creating":
        return "\n".join([*lines, f"waiting: the run store {state.db} is being created"])
    if state.finished_at is not None:
        lines.append(f"run       finished at {_when(state.finished_at)} (its monitor closed it)")
    monitor = state.config.get("monitor")
    if isinstance(monitor, Mapping):
        lines.append(f"monitor   {monitor_line(monitor)}")
    last = state.last
    if last is None:
        window = monitor.get("window", "W") if isinstance(monitor, Mapping) else "W"
        lines.append(f"records   0: waiting for the first record (one full window of W={window} updates)")
        return "\n".join(lines)
    ago = time.time() - last["wall_time"] if last.get("wall_time") is not None else math.nan
    rate = steps_per_second(state.recent)
    lines += [
        f"records   {state.n_records} · latest at step {last['step']}, written {_ago(ago)}"
        + (f" · {number(rate, 3)} steps/s" if rate is not None else ""),
        *_trend_lines(state.recent),
        "",
        f"step {last['step']}   k* {last['k_star']}   R {number(last.get('gap_ratio'))}   "
        f"gap {number(last.get('gap'))}   {_regime(last)}",
        "σ         " + _sigmas(last.get("singular_values")),
    ]
    groups = last.get("groups") or {}
    if groups:
        lines.append(
            "groups    "
            + " · ".join(f"{g}: k* {v['k_star']}, R {number(v['gap_ratio'])}" for g, v in groups.items())
        )
    metrics = last.get("metrics") or {}
    if metrics:
        lines.append("metrics   " + " · ".join(f"{k} {number(v)}" for k, v in metrics.items()))
    if state.eval_step is not None:
        lines.append(
            f"evals     step {state.eval_step}: "
            + " · ".join(f"{k} {number(v)}" for k, v in state.evals.items())
        )
    shown = state.events[-n_events:] if n_events else []
    lines += ["", f"events    {len(state.events)}" + (f" (latest {len(shown)})" if shown else "")]
    if shown:
        lines.append(events_table(shown))
    return "\n".join(lines)


class _PlainLog:
    """Appended lines for a log or a pipe: state changes, one line per poll with new records, new events."""

    def __init__(self, run: Path, stream: TextIO) -> None:
        self.run = run
        self.stream = stream
        self.status: str | None = None
        self.told_empty = False
        self.n_records = 0
        self.n_events = 0
        self.eval_step: int | None = None
        self.finished_at: str | None = None

    def update(self, state: _State) -> None:
        out = []
        if state.replaced:
            out.append(f"the run store {state.db} was replaced by a new run; following the new one")
            self.n_records = self.n_events = 0
            self.eval_step = None
            self.told_empty = False
            self.finished_at = None
        if state.status != self.status:
            if state.status == "missing":
                out.append(f"waiting for the run store {state.db} to appear (Ctrl-C to stop)")
            elif state.status == "creating":
                out.append(f"the run store {state.db} is being created")
            else:
                monitor = state.config.get("monitor")
                settings = f": {monitor_line(monitor)}" if isinstance(monitor, Mapping) else ""
                out.append(f"watching {self.run}{settings}")
            self.status = state.status
        if state.status == "ready":
            if state.n_records == 0 and not self.told_empty:
                self.told_empty = True
                out.append("no records yet: waiting for the first full window of updates")
            if state.last is not None and state.n_records != self.n_records:
                new = state.n_records - self.n_records
                out.append(_record_line(state.last) + (f" (+{new - 1} more records)" if new > 1 else ""))
                self.n_records = state.n_records
            if state.eval_step is not None and state.eval_step != self.eval_step:
                values = " · ".join(f"{k} {number(v)}" for k, v in state.evals.items())
                out.append(f"  eval  step {state.eval_step}: {values}")
                self.eval_step = state.eval_step
            for event in state.events[self.n_events :]:
                out.append(
                    f"  event step {event['step']} {event['kind']}: {event.get('message') or ''}".rstrip()
                )
            self.n_events = len(state.events)
            if state.finished_at is not None and state.finished_at != self.finished_at:
                rate = steps_per_second(state.recent)
                speed = f", {number(rate, 3)} steps/s at the end" if rate is not None else ""
                out.append(
                    f"finished at {_when(state.finished_at)}: {state.n_records} records{speed}; the monitor "
                    "closed the run"
                )
            self.finished_at = state.finished_at
        if out:
            self.stream.write("\n".join(out) + "\n")


def _record_line(last: Mapping[str, Any]) -> str:
    parts = [
        f"step {last['step']}",
        f"k* {last['k_star']}",
        f"R {number(last.get('gap_ratio'))}",
        f"gap {number(last.get('gap'))}",
        _regime(last),
        "σ " + _sigmas(last.get("singular_values"), n=3),
    ]
    groups = last.get("groups") or {}
    if groups:
        parts.append(
            "groups "
            + "; ".join(f"{g}: k* {v['k_star']} R {number(v['gap_ratio'])}" for g, v in groups.items())
        )
    return " · ".join(p for p in parts if p)


def sparkline(values: Sequence[Any], *, log: bool = False) -> str:
    """One block character per value, ``▁`` at the smallest and ``█`` at the largest finite one.

    ``log`` spaces the levels by the logarithm (for R = σ_k*/σ_k*+1 ≥ 1, whose spikes would flatten the
    rest). +inf is ``█``, -inf ``▁``; NaN and None are a space. All equal: every value is ``▁``.

    Example:
        >>> sparkline([1, 2, 3, 4, 5, 6, 7, 8]), sparkline([1.0, float("inf"), None, 1.0])
        ('▁▂▃▄▅▆▇█', '▁█ ▁')
        >>> sparkline([1.0, 10.0, 100.0], log=True)
        '▁▅█'
    """
    numbers: list[float | None] = []
    for v in values:
        x = math.nan if v is None else float(v)
        if log and math.isfinite(x):
            x = math.log(x) if x > 0 else -math.inf
        numbers.append(x)
    finite = [x for x in numbers if x is not None and math.isfinite(x)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    top = len(_BLOCKS) - 1
    out = []
    for y in numbers:
        if y is None or math.isnan(y):
            out.append(" ")
        elif math.isinf(y):
            out.append(_BLOCKS[top] if y > 0 else _BLOCKS[0])
        else:
            level = 0 if high == low else round((y - low) / (high - low) * top)
            out.append(_BLOCKS[level])
    return "".join(out)


def steps_per_second(recent: Sequence[Mapping[str, Any]]) -> float | None:
    """Training speed over ``recent`` records: steps between the first and the last per second of wall
    time between their writes; None with fewer than two records or no time between them.

    Example:
        >>> steps_per_second([{"step": 10, "wall_time": 100.0}, {"step": 50, "wall_time": 104.0}])
        10.0
    """
    if len(recent) < 2:
        return None
    first, last = recent[0], recent[-1]
    try:
        seconds = float(last["wall_time"]) - float(first["wall_time"])
        steps = int(last["step"]) - int(first["step"])
    except (KeyError, TypeError, ValueError):
        return None
    return steps / seconds if seconds > 0 else None


def _trend_lines(recent: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sparklines of R (log-spaced) and k* over the recent records, with their ranges."""
    if len(recent) < 2:
        return []
    ratios = [r.get("gap_ratio") for r in recent]
    ks = [r.get("k_star") for r in recent]
    finite = [float(x) for x in ratios if x is not None and math.isfinite(float(x))]
    r_range = f"{number(min(finite))} … {number(max(finite))}" if finite else "-"
    k_values = [int(k) for k in ks if k is not None]
    k_range = f"{min(k_values)} … {max(k_values)}" if k_values else "-"
    return [
        f"R trend   {sparkline(ratios, log=True)}  {r_range} (last {len(recent)} records, log scale)",
        f"k* trend  {sparkline(ks)}  {k_range}",
    ]


def _when(stamp: str) -> str:
    """An ISO 8601 time of the store as local time with how long ago: ``16:05:01 (2 min ago)``."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        return stamp
    return f"{moment.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({_ago(time.time() - moment.timestamp())})"


def _regime(last: Mapping[str, Any]) -> str:
    adiabatic, lr = last.get("adiabatic"), last.get("lr")
    if adiabatic is None or lr is None:
        return "𝒜 - (no learning rate)"
    return f"𝒜 {number(adiabatic)} (η𝒜 {number(adiabatic * lr)}) {last.get('regime') or ''}".rstrip()


def _sigmas(values: Any, n: int = _N_SIGMAS) -> str:
    if values is None:
        return "-"
    shown = " ".join(number(v, 3) for v in list(values)[:n])
    return shown + (f" … ({len(values)} in all)" if len(values) > n else "")


def _ago(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "at an unknown time"
    if seconds < 120:
        return f"{max(seconds, 0):.1f} s ago"
    return f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.1f} h ago"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value
