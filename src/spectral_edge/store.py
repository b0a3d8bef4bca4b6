"""The run store: one SQLite file per run, written while training runs and read by reports.

A run is a directory holding ``run.db``. The database is in WAL mode with ``synchronous=NORMAL``, so a
reader (a report, a notebook) can read while training writes, and every committed transaction survives a
killed process: each :meth:`RunStore.add_record`, :meth:`RunStore.add_event` and :meth:`RunStore.add_eval`
call is one transaction, so a killed run loses at most the write in flight. (A power loss or OS crash may
lose the last few commits: NORMAL syncs at checkpoints, not at every commit.)

One writer at a time: a store opened to write (``mode="w"`` or ``"a"``) holds an exclusive ``flock`` on
``run.db.lock`` beside the database, which names its holder's pid. A second writer on the same path, in
this process or another, gets a :class:`~spectral_edge.errors.RunStoreError` naming that pid, and nothing
is deleted: two writers used to lose one of them's records (a ``mode="w"`` writer unlinked the file the
other was writing into). The operating system drops the lock when its process dies, SIGKILL included,
so a killed writer never blocks the next one. Readers (``mode="r"``) take no lock. (Where ``fcntl`` is
missing, on Windows, the lock is not taken.)

A write that SQLite refuses for want of room or permission (a full disk, a file it may not write, an I/O
error, a lock held too long) is not dropped: the store holds it in memory, up to ``max_held`` writes,
and retries the held ones, oldest first, before each later write and at :meth:`RunStore.close`; it
raises :class:`~spectral_edge.errors.StoreWriteError`, which says how many writes are held and how many
were lost (written neither then nor later, because the buffer was full or close could not write them).
:meth:`RunStore.backlog` gives the same counts.

Tables:

* ``meta(key, value)``: ``format``, ``schema_version``, ``created`` (ISO 8601, UTC), and the versions of
  ``python``, ``torch``, ``numpy``, ``spectral_edge`` ("unknown" when not installed), ``platform``; and
  ``finished_at`` (ISO 8601, UTC) once the run is over (:meth:`RunStore.mark_finished`).
* ``config(id, json, wall_time)``: one JSON document, replaced by each :meth:`RunStore.write_config`.
* ``records``: one row per :class:`~spectral_edge.tracking.record.SpectralRecord`: ``id``, ``step``,
  ``wall_time`` (Unix seconds when stored), ``nan_fields``, one column per scalar field (``REAL``,
  ``INTEGER`` or ``TEXT`` from the field's annotation, else from its value) and one ``JSON TEXT`` column
  per array or mapping field (``singular_values``, ``ratios``, ``alpha``, ``alpha_half``, ``groups``,
  ``metrics``). Columns come from :func:`dataclasses.fields`, so a new field needs no change here: a
  column the table lacks is added with ``ALTER TABLE`` when the first record holding it is appended;
  older rows read back ``None`` for it.
* ``events``: one row per :class:`~spectral_edge.tracking.record.SpectralEvent`, columns built the same
  way (``step``, ``kind``, ``k_before``, ``k_after``, ``ratio_before``, ``ratio_after``, ``message``).
* ``evals(id, step, name, value, wall_time)``: the user's losses and accuracies, long format.

Non-finite floats: ``±inf`` is stored as an SQL ``REAL`` infinity. SQLite cannot store NaN (it becomes
``NULL``), so a NaN scalar is stored as ``NULL`` and its name is listed in the row's ``nan_fields`` JSON
column; the reading methods give it back as ``float('nan')`` while a ``NULL`` not listed there reads back
as ``None``. Inside JSON columns non-finite floats are the strings ``'inf'``, ``'-inf'``, ``'nan'``, as in
:meth:`SpectralRecord.to_dict`, and are turned back into floats on reading. In ``evals`` a ``NULL`` value
is a NaN (an eval value is never ``None``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import re
import socket
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from spectral_edge._imports import require
from spectral_edge.errors import RunStoreError, StoreWriteError
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so one writer per path is not enforced
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DB_NAME",
    "LOCK_SUFFIX",
    "MAX_HELD",
    "SCHEMA_VERSION",
    "RunStore",
    "StoreBacklog",
    "export_paths",
    "export_run",
]

_T = TypeVar("_T")

#: File name of the database inside a run directory.
DB_NAME = "run.db"
#: Version of the table layout; a store written with a newer one is refused.
SCHEMA_VERSION = 1
#: The writer's lock file is the database's name with this suffix (``run.db.lock``).
LOCK_SUFFIX = ".lock"
#: Default of ``RunStore(max_held=...)``: writes held in memory while the disk refuses them.
MAX_HELD = 1000

_FORMAT = "spectral-edge run"  # meta["format"]: tells a run from any other SQLite file
_TABLES = ("meta", "config", "records", "events", "evals")
_JSON_TYPE = "JSON TEXT"  # TEXT affinity (the name contains TEXT), so SQLite never coerces the JSON
_RESERVED = frozenset({"id", "wall_time", "nan_fields"})  # columns the store itself owns
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
# Prefixes of the flattened columns (export_run, RunStore.record_arrays); other columns use their name.
_ARRAY_PREFIX = {"singular_values": "sigma", "ratios": "ratio", "alpha": "alpha", "alpha_half": "alpha_half"}
_MAPPING_PREFIX = {"groups": "group", "metrics": "metric"}
# SQLite's primary result codes for a write refused by the disk rather than by the data: BUSY, LOCKED,
# NOMEM, READONLY, IOERR, FULL, CANTOPEN. Such a write may succeed later, so the store holds and retries it.
_RETRYABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14})
# Python < 3.11 gives no error code: the messages SQLite has for READONLY, IOERR and FULL.
_RETRYABLE_MESSAGES = ("readonly database", "disk i/o error", "database or disk is full")
_RECOVER_HINT = (
    "restore it from a copy, or save what is still readable with the sqlite3 command-line tool: "
    "sqlite3 {db} .recover > recovered.sql"
)


@dataclasses.dataclass(frozen=True)
class StoreBacklog:
    """Writes a run store could not commit: held in memory for retry, or lost for good.

    Attributes:
        held: kind (``"record"``, ``"event"``, ``"eval"``, ``"array"``) -> writes held and retried.
        lost: kind -> writes that will not be stored: the buffer of ``max_held`` writes was full when
            they came, or :meth:`RunStore.close` could not write them either.
        max_held: the size of that buffer.
        error: SQLite's last refusal (``None`` if no write failed).

    Example:
        >>> StoreBacklog(held={"record": 3, "event": 1}, lost={}, max_held=1000).describe()
        'held for retry: 3 records, 1 event; lost: none'
    """

    held: Mapping[str, int]
    lost: Mapping[str, int]
    max_held: int
    error: str | None = None

    @property
    def n_held(self) -> int:
        """Writes held in memory for retry, all kinds together."""
        return sum(self.held.values())

    @property
    def n_lost(self) -> int:
        """Writes given up for good, all kinds together."""
        return sum(self.lost.values())

    def describe(self) -> str:
        """One line for a warning: ``held for retry: 3 records; lost: none``."""
        return f"held for retry: {_count_words(self.held)}; lost: {_count_words(self.lost)}"


class RunStore:
    """Read and write one run: config, spectral records, events and evaluations, in SQLite (WAL).

    Args:
        path: the run directory (it holds ``run.db``) or the path of the ``.db`` file itself.
        mode: ``"r"`` (default) opens an existing run read-only and never creates anything; ``"w"``
            creates a new run (the directory too); ``"a"`` appends to an existing run or creates it.
            ``"w"`` and ``"a"`` take the path's writer lock (see the module's notes): one writer at a
            time.
        overwrite: with ``mode="w"``, replace an existing run that already holds records (or a database
            that is not a run). Without it, ``"w"`` refuses such a file; a run without records, or an
            empty half-written database, is replaced silently since nothing would be lost.
        write_behind: commit :meth:`add_record`, :meth:`add_event`, :meth:`add_eval` and
            :meth:`add_array` on a writer thread, so that a training loop does not wait for SQLite: each
            call hands its write over and returns, after waiting for the previous write to finish. At
            most one write is ever in flight, so a killed process still loses at most that one. A write's
            error is raised by the next write, :meth:`flush`, a read or :meth:`close`. A record is encoded
            when it is committed. Reads through this object see every write handed over; another
            connection sees a write once it is committed, normally while the next training step runs,
            and the last one once the store is flushed or closed. The monitor opens its stores this way.
        max_held: writes held in memory while SQLite refuses them (a full disk, a read-only file) and
            retried before each later write and at :meth:`close`; further writes are lost, and counted.

    Raises:
        RunStoreError: the run is missing (``"r"``), is not a spectral-edge run, is damaged or is
            half-written (created but killed before its tables were), was written by a newer schema,
            ``"w"`` would overwrite records, or another writer holds the path (``"w"``, ``"a"``).
        ValueError: ``mode`` is not one of ``"w"``, ``"a"``, ``"r"``, or ``max_held`` is not an int >= 0.

    Every write commits its own transaction, so a reader opened with ``mode="r"`` (in this or another
    process) sees each record as soon as :meth:`add_record` returns (without ``write_behind``). A
    read-only reader may leave ``run.db-wal``/``run.db-shm`` beside the database: that is how SQLite
    readers share a WAL.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with RunStore(f"{tmp.name}/exp1", mode="w") as store:
        ...     store.write_config({"lr": 0.1, "window": 10})
        ...     store.add_eval(100, {"loss": 0.5, "accuracy": 0.75})
        >>> with RunStore(f"{tmp.name}/exp1", mode="r") as store:
        ...     print(store.config(), len(store), store.evals()["loss"])
        {'lr': 0.1, 'window': 10} 0 (array([100]), array([0.5]))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: Literal["w", "a", "r"] = "r",
        *,
        overwrite: bool = False,
        write_behind: bool = False,
        max_held: int = MAX_HELD,
    ) -> None:
        if mode not in ("w", "a", "r"):
            raise ValueError(f"mode must be 'w' (create), 'a' (append) or 'r' (read-only), got {mode!r}")
        if not isinstance(max_held, int) or isinstance(max_held, bool) or max_held < 0:
            raise ValueError(f"max_held must be an int >= 0 (writes held for retry), got {max_held!r}")
        self.path = _db_path(path)
        self.mode = mode
        self.overwrite = overwrite
        self.max_held = max_held
        self._lock = threading.RLock()
        # Writes SQLite refused, oldest first, as (kind, write); guarded by _held_lock, which a retry
        # holds while it writes them so that two threads never write one twice.
        self._held: deque[tuple[str, Callable[[], None]]] = deque()
        self._held_lock = threading.RLock()
        self._lost: Counter[str] = Counter()
        self._failing = False  # a write failed and none has succeeded since
        self._lost_this_run = 0  # writes lost since the last success: the first one is reported
        self._last_error: str | None = None
        self._close_reported = False
        self._writer_lock: _WriterLock | None = None
        self._conn: sqlite3.Connection | None = None
        self._column_types: dict[str, dict[str, str]] = {}  # table -> column -> declared type
        # write_behind: one writer thread and the one write handed to it (guarded by _pending_lock, not
        # _lock, which the writer itself takes).
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._pending_lock = threading.Lock()
        if write_behind and mode != "r":
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spectral-edge-store")
        if mode == "r":
            self._conn = _open_readonly(self.path)
            try:
                _check_schema(self._conn, self.path)
            except BaseException:
                self.close()
                raise
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The lock first: a second writer must be refused before it deletes or opens anything.
            self._writer_lock = _WriterLock(self.path)
            if mode == "w":
                _clear_for_writing(self.path, overwrite=overwrite)
            self._conn = _connect(self.path)
            self._setup_writer()
        except sqlite3.Error as exc:
            self.close()
            raise _read_error(self.path, exc, doing="open for writing") from exc
        except BaseException:
            self.close()
            raise

    def _setup_writer(self) -> None:
        conn = self._require_open()
        tables = _table_names(conn)
        if tables:  # checked before any PRAGMA, so another program's database is left untouched
            _check_schema(conn, self.path)
        journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise RunStoreError(
                f"could not put {self.path} in WAL mode (SQLite answered journal_mode={journal!r}); the run "
                "store needs a local filesystem that supports WAL: choose a run directory on a local disk"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        if not tables:  # a new file, or one killed before its schema was committed: nothing to lose
            with self._transaction():
                _create_schema(conn)
        else:
            with self._transaction():
                if "arrays" not in tables:
                    _create_arrays_table(conn)
                # Written to again: no longer finished (mark_finished sets it anew at the end).
                conn.execute("DELETE FROM meta WHERE key = 'finished_at'")
        for table in ("records", "events"):
            self._column_types[table] = _table_columns(conn, table)

    # -- lifecycle ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the write in flight, retry the held writes once more, close the database and release
        the writer lock; safe to call twice. Reads and writes afterwards raise RunStoreError.

        Raises, once the database is closed:
            StoreWriteError: writes were lost over the store's life, the held ones this last retry could
                not write included (:meth:`backlog` then gives the final counts); raised by the first
                close only.
            Exception: otherwise, with ``write_behind``, the error of the last write.
        """
        error: BaseException | None = None
        lost: StoreWriteError | None = None
        try:
            error = self._finish_pending()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            try:
                lost = self._give_up_held()
            finally:
                with self._lock:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                if self._writer_lock is not None:
                    self._writer_lock.release()
                    self._writer_lock = None
        if lost is not None:
            raise lost from error
        if error is not None and not isinstance(error, StoreWriteError):
            raise error  # a held write's error is settled by the final retry above

    def backlog(self) -> StoreBacklog:
        """The writes SQLite refused so far: how many are held for retry and how many were lost.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     store.add_eval(1, {"loss": 0.5})
            ...     print(store.backlog().describe())
            held for retry: none; lost: none
            >>> tmp.cleanup()
        """
        with self._held_lock:
            return self._backlog_locked()

    def _backlog_locked(self) -> StoreBacklog:
        held = Counter(kind for kind, _ in self._held)
        return StoreBacklog(
            held=dict(held), lost=dict(self._lost), max_held=self.max_held, error=self._last_error
        )

    def flush(self) -> None:
        """Wait until the write handed to the writer thread is committed (``write_behind``), and raise its
        error if it failed; without ``write_behind`` every write is already committed."""
        error = self._finish_pending()
        if error is not None:
            raise error

    def _finish_pending(self, then: Callable[[], None] | None = None) -> BaseException | None:
        """Wait for the write in flight, hand ``then`` to the writer thread if given, and return the
        finished write's error, if any (each error is returned once).

        It waits holding ``_pending_lock``, so no other thread hands a second write over or reads past
        the unfinished one meanwhile; the writer thread never takes that lock, so this cannot deadlock.
        """
        with self._pending_lock:
            pending, self._pending = self._pending, None
            error = pending.exception() if pending is not None else None
            if then is not None:
                assert self._writer is not None
                self._pending = self._writer.submit(then)
            return error

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, mode={self.mode!r})"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run: reads and writes then raise RunStoreError."""
        return self._conn is None

    def __len__(self) -> int:
        """The number of records."""
        with self._reading():
            return self._require_open().execute("SELECT COUNT(*) FROM records").fetchone()[0]

    # -- writes ---------------------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any] | Any) -> None:
        """Store the run's configuration, replacing any earlier one.

        Args:
            config: a mapping, or a dataclass instance (stored as its fields), of JSON-able values:
                numbers, strings, ``None``, lists, dicts, NumPy scalars and arrays, paths (stored as
                strings). Non-finite floats are stored as ``'inf'``/``'nan'`` strings and read back as
                floats.
        """
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping or a dataclass instance, got {type(config).__name__}")
        text = _STRICT_JSON.encode(_jsonable(config, "config"))

        def replace() -> None:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO config (id, json, wall_time) VALUES (1, ?, ?)",
                    (text, time.time()),
                )

        self._write_now(replace)

    def add_record(self, record: SpectralRecord, *, wall_time: float | None = None) -> None:
        """Append one record, committed at once.

        Args:
            record: a :class:`SpectralRecord` (or an instance of a subclass with extra fields: their
                columns are added to the table).
            wall_time: Unix time to store with it; now when ``None``.
        """
        if not isinstance(record, SpectralRecord):
            raise TypeError(f"add_record expects a SpectralRecord, got {type(record).__name__}")
        now = time.time() if wall_time is None else float(wall_time)  # when filed, not when committed
        self._write(lambda: self._insert("records", record, now), "record")

    def add_event(self, event: SpectralEvent, *, wall_time: float | None = None) -> None:
        """Append one event, committed at once (``wall_time`` as in :meth:`add_record`)."""
        if not isinstance(event, SpectralEvent):
            raise TypeError(f"add_event expects a SpectralEvent, got {type(event).__name__}")
        now = time.time() if wall_time is None else float(wall_time)
        self._write(lambda: self._insert("events", event, now), "event")

    def add_eval(self, step: int, metrics: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Append evaluation values logged at ``step`` (one row per name), committed as one transaction.

        Args:
            step: optimizer step the values belong to.
            metrics: name -> value, e.g. ``{"val_loss": 0.31, "val_acc": 0.92}``; NaN is stored as NULL
                and read back as NaN.
            wall_time: seconds since the epoch to store with the rows; default now.
        """
        step = _as_int(step, "step")
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping name -> float, got {type(metrics).__name__}")
        rows = []
        now = time.time() if wall_time is None else float(wall_time)
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"eval names must be non-empty strings, got {name!r}")
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"eval {name!r} must be a number, got {value!r}") from exc
            rows.append((step, name, None if math.isnan(number) else number, now))
        if not rows:
            return

        def insert() -> None:
            with self._transaction() as conn:
                conn.executemany("INSERT INTO evals (step, name, value, wall_time) VALUES (?, ?, ?, ?)", rows)

        self._write(insert, "eval")

    def add_array(self, step: int, name: str, values: Any, *, wall_time: float | None = None) -> None:
        """Store a 1-D array under ``name`` at ``step`` (e.g. the σ vector of W_Q at an evaluation).

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     store.add_array(100, "wq0_sigma", [3.0, 2.0, 1.0])
            ...     store.add_array(200, "wq0_sigma", [4.0, 1.0, 0.5])
            ...     steps, block = store.arrays()["wq0_sigma"]
            >>> steps.tolist(), block[:, 0].tolist()
            ([100, 200], [3.0, 4.0])
            >>> tmp.cleanup()
        """
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        payload = json.dumps(array.tolist())  # NaN/Infinity tokens: Python's json reads them back
        row = (int(step), str(name), payload, time.time() if wall_time is None else float(wall_time))

        def insert() -> None:
            with self._transaction() as conn:
                conn.execute("INSERT INTO arrays (step, name, json, wall_time) VALUES (?, ?, ?, ?)", row)

        self._write(insert, "array")

    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each array's name -> (steps int64 (n,), values float64 (n, width)), padded with NaN where widths differ."""
        with self._reading():
            conn = self._require_open()
            if "arrays" not in _table_names(conn):  # a run written before arrays existed
                return {}
            rows = conn.execute("SELECT name, step, json FROM arrays ORDER BY step, id").fetchall()
        grouped: dict[str, tuple[list[int], list[list[float]]]] = {}
        for name, step, payload in rows:
            steps, values = grouped.setdefault(name, ([], []))
            steps.append(step)
            values.append([float(v) for v in self._json(payload, f"the array {name!r} at step {step}")])
        out = {}
        for name, (steps, values) in grouped.items():
            width = max(len(v) for v in values)
            block = np.full((len(values), width), np.nan)
            for i, v in enumerate(values):
                block[i, : len(v)] = v
            out[name] = (np.asarray(steps, dtype=np.int64), block)
        return out

    def truncate_after(self, step: int) -> int:
        """Delete the records, events and evaluations filed after ``step``; return how many rows went.

        For resuming a run from a checkpoint at ``step`` into the same store: the interrupted run may
        have written past its last checkpoint, and those rows would otherwise appear twice.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     for s in (10, 20, 30):
            ...         store.add_eval(s, {"loss": 1.0 / s})
            ...     print(store.truncate_after(20), store.evals()["loss"][0].tolist())
            1 [10, 20]
            >>> tmp.cleanup()
        """

        def delete() -> int:
            with self._transaction() as conn:
                return sum(
                    conn.execute(f"DELETE FROM {table} WHERE step > ?", (int(step),)).rowcount
                    for table in ("records", "events", "evals", "arrays")
                )

        return self._write_now(delete)

    def mark_finished(self, when: datetime | None = None) -> None:
        """Record that the run is over: ``meta()["finished_at"]``, an ISO 8601 UTC time (now by default).

        :meth:`SpectralMonitor.close <spectral_edge.tracking.monitor.SpectralMonitor.close>` calls it
        through its store sink, and ``spectral-edge watch`` shows the run as finished. Opening the store
        to write again (``mode="a"``) removes the mark.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     store.mark_finished(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
            >>> RunStore(f"{tmp.name}/run").meta()["finished_at"]
            '2026-01-02T03:04:05+00:00'
            >>> RunStore(f"{tmp.name}/run", mode="a").meta().get("finished_at") is None
            True
            >>> tmp.cleanup()
        """
        stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")

        def mark() -> None:
            with self._transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('finished_at', ?)", (stamp,))

        self._write_now(mark)

    def _write(self, write: Callable[[], None], kind: str) -> None:
        """Run ``write`` now, or with ``write_behind`` hand it to the writer thread once the previous
        write has finished; an error of that previous write is raised after this one is handed over.
        A write SQLite refuses for want of room or permission is held for retry (:meth:`_attempt`)."""
        attempt = functools.partial(self._attempt, kind, write)
        if self._writer is None:
            attempt()
            return
        self._require_writable()  # a closed or read-only store fails here, not on the writer thread
        error = self._finish_pending(then=attempt)
        if error is not None:
            raise error

    def _attempt(self, kind: str, write: Callable[[], None]) -> None:
        """Write the held writes, oldest first, then ``write``; hold ``write`` if SQLite refuses it (or
        if a held one is still refused: writes keep their order), and raise StoreWriteError then."""
        if self._held and not self._retry_held():
            raise self._hold(kind, write, None)
        try:
            write()
        except sqlite3.Error as exc:
            if not _retryable(exc):
                raise
            raise self._hold(kind, write, exc) from exc
        if self._failing:
            with self._held_lock:
                self._failing, self._lost_this_run = False, 0

    def _retry_held(self) -> bool:
        """Write the held writes, oldest first, until SQLite refuses one; True once none is left."""
        with self._held_lock:
            while self._held:
                kind, write = self._held[0]
                try:
                    write()
                except sqlite3.Error as exc:
                    self._last_error = _sqlite_message(exc)
                    if _retryable(exc):
                        return False
                    self._lost[kind] += 1  # refused for its content now: no retry will store it
                self._held.popleft()
            return True

    def _hold(self, kind: str, write: Callable[[], None], exc: sqlite3.Error | None) -> StoreWriteError:
        """Keep a refused write for retry, or count it lost when ``max_held`` are held already."""
        with self._held_lock:
            if exc is not None:
                self._last_error = _sqlite_message(exc)
            started, self._failing = not self._failing, True
            kept = len(self._held) < self.max_held
            if kept:
                self._held.append((kind, write))
            else:
                self._lost[kind] += 1
                self._lost_this_run += 1
            first_loss = not kept and self._lost_this_run == 1
            backlog = self._backlog_locked()
        where = f"the run store {self.path} could not commit {_ONE[kind]} ({backlog.error})"
        fix = f"free disk space, or make {self.path.parent} writable, and the held writes are stored"
        if kept:
            message = (
                f"{where}; it is held in memory and retried before each later write and at close "
                f"({backlog.describe()}; once {self.max_held} are held, later writes are lost): {fix}"
            )
        else:
            message = (
                f"{where} and its {self.max_held} held writes fill the buffer, so it is lost "
                f"({backlog.describe()}): {fix}"
            )
        return StoreWriteError(message, backlog=backlog, started=started, first_loss=first_loss)

    def _give_up_held(self) -> StoreWriteError | None:
        """For close(): retry the held writes once more; those still refused are lost. The error that
        reports every write lost over the store's life, the first time only."""
        if self.mode == "r" or self._close_reported:
            return None
        self._close_reported = True
        with self._held_lock:
            if self._held and self._conn is not None:
                self._retry_held()
            for kind, _ in self._held:
                self._lost[kind] += 1
            self._held.clear()
            backlog = self._backlog_locked()
        if not backlog.n_lost:
            return None
        return StoreWriteError(
            f"the run store {self.path} is closed without storing {_count_words(backlog.lost)}: SQLite refused "
            f"them ({backlog.error}) and they did not fit the buffer of {self.max_held} held writes, or were "
            "still refused at close. What was committed before is intact.",
            backlog=backlog,
            started=False,
            first_loss=False,
            closed=True,
        )

    def _write_now(self, write: Callable[[], _T]) -> _T:
        """Run ``write`` on this thread, in order after the writes handed over before it; an error of
        those is raised after ``write`` has run, as :meth:`_write` raises it after the hand-over."""
        error = self._finish_pending()
        try:
            result = write()
        finally:  # an earlier write's error is never dropped, even when this one fails too
            if error is not None:
                raise error
        return result

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for a read, after the writes handed over so far are committed (writes held for
        retry are not: they are not in the file). An SQLite error is a RunStoreError naming the file."""
        self.flush()
        with self._lock:
            try:
                yield self._require_open()
            except sqlite3.Error as exc:
                raise _read_error(self.path, exc) from exc

    def _json(self, text: str, where: str) -> Any:
        """``json.loads`` of a stored value; text that does not parse means the file is damaged."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise RunStoreError(
                f"{self.path} is damaged: {where} is not valid JSON ({exc}); "
                + _RECOVER_HINT.format(db=self.path)
            ) from exc

    def _insert(self, table: str, obj: Any, wall_time: float) -> None:
        self._require_writable()
        values: dict[str, Any] = {"wall_time": float(wall_time)}
        new_columns: dict[str, str] = {}
        nan_fields: list[str] = []
        rows = _row_of(obj)  # JSON encoding outside the lock
        # The column cache is read and extended under the lock: two writer threads must not both add a column.
        with self._lock:
            self._insert_locked(table, rows, values, new_columns, nan_fields)

    def _insert_locked(
        self,
        table: str,
        rows: list[tuple[str, str, Any]],
        values: dict[str, Any],
        new_columns: dict[str, str],
        nan_fields: list[str],
    ) -> None:
        known = self._column_types[table]
        for name, sql_type, value in rows:
            if name not in known:
                new_columns[name] = sql_type
            if isinstance(value, float) and math.isnan(value):
                nan_fields.append(name)
                value = None
            values[name] = value
        values["nan_fields"] = json.dumps(nan_fields) if nan_fields else None
        insert = _insert_statement(table, tuple(values))
        if not new_columns:
            # The connection is in autocommit mode: one statement is one transaction, committed on return.
            self._require_writable().execute(insert, tuple(values.values()))
            return
        with self._transaction() as conn:
            for name, sql_type in new_columns.items():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)} {sql_type}")
            conn.execute(insert, tuple(values.values()))
        known.update(new_columns)  # only once committed: a rolled-back ALTER added nothing

    # -- reads ----------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The stored configuration (``{}`` when none was written)."""
        with self._reading() as conn:
            row = conn.execute("SELECT json FROM config WHERE id = 1").fetchone()
        return {} if row is None else _from_json(self._json(row[0], "the config"), arrays=False)

    def meta(self) -> dict[str, Any]:
        """Format, schema version (an int), creation time and library versions, as stored."""
        with self._reading() as conn:
            rows = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        out: dict[str, Any] = dict(rows)
        try:
            out["schema_version"] = int(out["schema_version"])
        except (KeyError, ValueError) as exc:
            raise RunStoreError(
                f"{self.path} is damaged: its meta table has no schema version ({exc!r}); "
                + _RECOVER_HINT.format(db=self.path)
            ) from exc
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every record in insertion order, as dicts.

        Keys: ``step``, ``wall_time`` and one per stored field. Array fields are float64 NumPy arrays
        (``alpha_half`` may be ``None``), ``groups`` is ``{name: {"k_star", "gap_ratio",
        "singular_values"}}``, ``metrics`` is ``{name: float}``; non-finite values are floats again.
        """
        return self._read("records", "SELECT * FROM records ORDER BY id")

    def last_record(self) -> dict[str, Any] | None:
        """The most recently stored record as in :meth:`records`, or ``None`` when there is none."""
        rows = self._read("records", "SELECT * FROM records ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` records, oldest first, as in :meth:`records`; reads only those rows (a LIMIT
        query), so a watcher polling a long run does not read it all.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     print(store.tail(3))
            []
            >>> tmp.cleanup()
        """
        n = _as_int(n, "n")
        if n < 0:
            raise ValueError(f"n must be an int >= 0 (records to read), got {n}")
        rows = self._read("records", f"SELECT * FROM records ORDER BY id DESC LIMIT {n}")
        return rows[::-1]

    def to_pandas(self) -> Any:
        """The run as three pandas DataFrames (needs the ``pandas`` extra): a :class:`~spectral_edge.frames.RunFrames`.

        * ``records``: one row per record, the columns of :func:`export_run`: ``step``, ``wall_time``,
          every scalar column (int64 where a column has no gap, float64 with NaN for ``None``, text as
          strings), ``sigma_1 … sigma_W``, ``ratio_…``, ``alpha_…``, ``alpha_half_…`` (NaN where a
          record's window is shorter), ``group.<name>.k_star``, ``group.<name>.gap_ratio`` and
          ``metric.<name>`` (NaN where a record lacks it). Values equal :meth:`record_arrays`.
        * ``events``: one row per event, a column per field, plus ``wall_time``.
        * ``evals``: long format, one row per logged value: ``step``, ``name``, ``value`` (NaN kept),
          ``wall_time``; ``evals.pivot_table(index="step", columns="name", values="value")`` makes it wide.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     store.add_eval(10, {"loss": 0.5})
            ...     frames = store.to_pandas()
            >>> frames.evals[["step", "name", "value"]].values.tolist(), len(frames.records)
            ([[10, 'loss', 0.5]], 0)
            >>> tmp.cleanup()
        """
        from spectral_edge.frames import RunFrames, _frame

        require("pandas", "RunStore.to_pandas")  # before reading a long run, not after
        records, evals, events = self._flat_tables()
        return RunFrames(records=_frame(records), events=_frame(events), evals=_frame(evals))

    def _flat_tables(self) -> tuple[_Columns, _Columns, _Columns]:
        """The records, evals and events as flat columns (name, kind, values): what export_run writes."""
        rows = self.records()
        records = _record_columns(rows, self._column_types["records"])
        with self._reading() as conn:
            eval_rows = conn.execute(
                "SELECT step, name, value, wall_time FROM evals ORDER BY step, id"
            ).fetchall()
        evals: _Columns = [
            ("step", "int", [r[0] for r in eval_rows]),
            ("name", "str", [r[1] for r in eval_rows]),
            ("value", "float", [math.nan if r[2] is None else r[2] for r in eval_rows]),
            ("wall_time", "float", [r[3] for r in eval_rows]),
        ]
        event_rows = self._read("events", "SELECT * FROM events ORDER BY id")
        event_types = self._column_types["events"]
        events: _Columns = [
            (n, _kind_of([r.get(n) for r in event_rows], event_types[n]), [r.get(n) for r in event_rows])
            for n in event_types
            if n not in ("id", "nan_fields")
        ]
        return records, evals, events

    def record_arrays(self) -> dict[str, np.ndarray]:
        """The records as columns of NumPy arrays, for plotting.

        Returns:
            ``step``, ``wall_time`` and each scalar column, shape (n,): int64 for integer columns without
            gaps, float64 for numbers (``None`` and NaN both become NaN), object for text.
            ``singular_values``, ``ratios``, ``alpha``, ``alpha_half``: (n, W_max) float64, padded with
            NaN where a record's window is shorter (or ``alpha_half`` is ``None``).
            ``group.<name>.k_star``, ``group.<name>.gap_ratio`` and ``metric.<name>``: (n,), NaN where a
            record lacks that group or metric.
        """
        rows = self.records()
        types = self._column_types["records"]
        out: dict[str, np.ndarray] = {}
        for name, kind, values in _flatten(rows, types):
            if kind == "array":
                width = max((len(v) for v in values if v is not None), default=0)
                block = np.full((len(values), width), np.nan)
                for i, v in enumerate(values):
                    if v is not None:
                        block[i, : len(v)] = v
                out[name] = block
            else:
                out[name] = _to_numpy(values, kind)
        return out

    def events(self) -> list[SpectralEvent]:
        """Every event in insertion order (columns the current :class:`SpectralEvent` lacks are dropped)."""
        names = {f.name for f in dataclasses.fields(SpectralEvent)}
        return [
            SpectralEvent(**{k: v for k, v in row.items() if k in names})
            for row in self._read("events", "SELECT * FROM events ORDER BY id")
        ]

    def evals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each metric's name -> (steps int64 (n,), values float64 (n,)), ordered by step then insertion."""
        with self._reading() as conn:
            rows = conn.execute("SELECT name, step, value FROM evals ORDER BY step, id").fetchall()
        grouped: dict[str, tuple[list[int], list[float]]] = {}
        for name, step, value in rows:
            steps, values = grouped.setdefault(name, ([], []))
            steps.append(step)
            values.append(math.nan if value is None else value)
        return {
            name: (np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))
            for name, (steps, values) in grouped.items()
        }

    def check(self) -> None:
        """Read the whole store once; raise RunStoreError, naming the file, if any of it is damaged.

        Runs SQLite's ``PRAGMA quick_check`` (every page and cell of every table) and decodes every row,
        which also finds what quick_check cannot: text that is not UTF-8, JSON cut short. A read of the
        whole file: about a second per 100 MB. ``spectral-edge watch --once`` runs it.

        Example:
            >>> import tempfile
            >>> tmp = tempfile.TemporaryDirectory()
            >>> with RunStore(f"{tmp.name}/run", mode="w") as store:
            ...     store.add_eval(1, {"loss": 0.5})
            >>> with RunStore(f"{tmp.name}/run", mode="r") as store:
            ...     store.check()
            >>> tmp.cleanup()
        """
        with self._reading() as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise RunStoreError(
                f"{self.path} is damaged: SQLite's quick_check finds {len(problems)} problem(s), the first: "
                f"{_one_line(problems[0])}; " + _RECOVER_HINT.format(db=self.path)
            )
        self.meta()
        self.config()
        self.records()
        self.events()
        self.evals()
        self.arrays()

    def _read(self, table: str, sql: str) -> list[dict[str, Any]]:
        with self._reading() as conn:
            # Refreshed on every read: a writer in another process may have added columns.
            types = self._column_types[table] = _table_columns(conn, table)
            cursor = conn.execute(sql)
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        out = []
        for row in rows:
            raw = dict(zip(names, row, strict=True))
            where = f"the {table[:-1]} at step {raw.get('step')} (row id {raw.get('id')})"
            nan_fields = set(self._json(raw["nan_fields"], where)) if raw.get("nan_fields") else set()
            item: dict[str, Any] = {}
            for name in names:
                value = raw[name]
                if name in ("id", "nan_fields"):
                    continue
                if name in nan_fields:
                    value = math.nan
                elif value is not None and types.get(name) == _JSON_TYPE:
                    value = _from_json(self._json(value, f"column {name!r} of {where}"), arrays=True)
                item[name] = value
            out.append(item)
        return out

    # -- plumbing -------------------------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RunStoreError(
                f"the run store {self.path} is closed; open it again with RunStore(path, mode)"
            )
        return self._conn

    def _require_writable(self) -> sqlite3.Connection:
        conn = self._require_open()
        if self.mode == "r":
            raise RunStoreError(
                f"the run store {self.path} was opened read-only (mode='r'); open it with mode='a' to write"
            )
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._require_writable()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT too: an open transaction would swallow the next autocommit INSERTs.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


def export_run(
    run_path: str | os.PathLike[str],
    fmt: Literal["csv", "parquet"] = "csv",
    out: str | os.PathLike[str] | None = None,
    *,
    progress: Callable[[int, int, str], object] | None = None,
) -> Path:
    """Export a run's records as one flat table, with its evals and events beside it.

    Record columns: ``step``, ``wall_time``, every scalar column, then ``sigma_1 … sigma_W``,
    ``ratio_1 …``, ``alpha_1 …``, ``alpha_half_1 …`` (as many as the widest record; shorter records are
    left empty), ``group.<name>.k_star``, ``group.<name>.gap_ratio`` and ``metric.<name>``. Two more files
    are written next to it, with the same format: ``<stem>_evals.<ext>`` (``step, name, value,
    wall_time``, long format) and ``<stem>_events.<ext>`` (one row per event). In CSV a missing value is
    an empty cell and non-finite floats are ``inf``, ``-inf``, ``nan``; in Parquet a missing value is
    null and NaN stays NaN.

    Args:
        run_path: the run directory or its ``run.db``.
        fmt: ``"csv"`` (standard library) or ``"parquet"`` (needs ``pyarrow``: the ``parquet`` extra).
        out: path of the records file (one with a suffix, ``flat.csv``), or a directory to put
            ``records.<ext>`` and the other two in: an existing directory, a path that ends with a
            separator (``out/``) or one without a suffix (``out``), created if missing. Defaults to
            ``records.<ext>`` in the run directory.
        progress: called as ``progress(done, total, text)`` after reading the run and after each file
            (a :class:`~spectral_edge.progress.ProgressBar` draws a bar).

    Returns:
        The path of the records file; :func:`export_paths` gives all three.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with RunStore(f"{tmp.name}/exp1", mode="w") as store:
        ...     store.add_eval(10, {"loss": 0.5})
        >>> path = export_run(f"{tmp.name}/exp1", "csv")
        >>> path.name, path.with_name("records_evals.csv").read_text().splitlines()[0]
        ('records.csv', 'step,name,value,wall_time')
        >>> tmp.cleanup()
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    writer = _write_csv if fmt == "csv" else _write_parquet
    if fmt == "parquet":
        require("pyarrow.parquet", "Parquet export")  # fail before writing anything
    with RunStore(run_path, mode="r") as store:
        target = store.path.parent / f"records.{fmt}" if out is None else Path(out)
        if out is not None and _names_a_directory(out):
            target = target / f"records.{fmt}"
        columns, evals, events = store._flat_tables()
    target.parent.mkdir(parents=True, exist_ok=True)
    files = export_paths(target)
    if progress is not None:
        progress(1, 1 + len(files), "read the run")
    for done, (path, table) in enumerate(zip(files, (columns, evals, events), strict=True), start=2):
        writer(path, table)
        if progress is not None:
            progress(done, 1 + len(files), f"wrote {path.name}")
    return target


def export_paths(records_file: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The three files :func:`export_run` writes for the records file ``records_file``: it, then
    ``<stem>_evals<ext>`` and ``<stem>_events<ext>`` beside it.

    Example:
        >>> [p.name for p in export_paths("out/records.csv")]
        ['records.csv', 'records_evals.csv', 'records_events.csv']
    """
    target = Path(records_file)
    return (
        target,
        target.with_name(f"{target.stem}_evals{target.suffix}"),
        target.with_name(f"{target.stem}_events{target.suffix}"),
    )


def _names_a_directory(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` of :func:`export_run` is a folder: it is one, ends with a separator, or has no suffix."""
    text = os.fspath(out)
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    return Path(text).is_dir() or text.endswith(seps) or not Path(text).suffix


# -- paths and connections ----------------------------------------------------------------------------


def _db_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        return p / DB_NAME
    if p.suffix == ".db" or p.is_file():
        return p
    return p / DB_NAME


def _connect(db: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per write.
    # check_same_thread=False: a sink thread may write; RunStore serialises access with its lock.
    return sqlite3.connect(db, timeout=10.0, isolation_level=None, check_same_thread=False)


def _open_readonly(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise RunStoreError(
            f"no spectral-edge run at {db.parent if db.name == DB_NAME else db}: expected a run directory "
            f"containing {DB_NAME} (or the path of a {DB_NAME}), as written by RunStore(path, mode='w'); "
            f"{db} does not exist"
        )
    uri = db.resolve().as_uri() + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:  # pragma: no cover - permissions and the like
        raise RunStoreError(f"could not open the run store {db} read-only: {exc}") from exc


class _WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``, held while a RunStore may write ``<db>``.

    ``flock`` rather than a file whose existence is the lock: the operating system drops it when the
    holding process ends, however it ends, so a killed writer never blocks the next one. The lock file
    stays when released (removing it would race with a process that has just opened it); it holds the
    holder's pid and host, for the error the next writer gets. A child forked while the lock is held
    closes its copy (``os.register_at_fork``), so that the lock ends with its holder, not with, say, a
    DataLoader worker.
    """

    _live: weakref.WeakSet[_WriterLock] = weakref.WeakSet()

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + LOCK_SUFFIX)
        self.fd: int | None = None
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunStoreError(
                f"could not open the writer lock {self.path} ({exc}); a run store is written in a "
                "directory this process may write to: choose another run directory"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunStoreError(
                f"the run store {db} is already open for writing by {holder} (the lock {self.path} is "
                "held). A run store takes one writer at a time: a second would lose the first one's "
                "records. Close the other SpectralMonitor or RunStore (or let that process finish), or "
                "write to another run directory. Reading works meanwhile: RunStore(path, mode='r'), "
                "spectral-edge summary, watch, report, export"
            ) from None
        except OSError as exc:  # a filesystem without flock (ENOLCK): one writer could not be ensured
            os.close(fd)
            raise RunStoreError(
                f"could not lock {self.path} ({exc}); the run store needs a filesystem that supports "
                "flock: choose a run directory on a local disk"
            ) from exc
        with contextlib.suppress(OSError):  # the pid only names the holder: a full disk must not stop it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        _WriterLock._live.add(self)
        # A store dropped without close() (a notebook cell rerun, a constructor that failed after
        # opening it) must not keep its path locked until the process ends.
        self._finalizer = weakref.finalize(self, _close_quietly, fd)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        self._finalizer.detach()  # closed here; a later finalizer must not close a reused fd number
        _WriterLock._live.discard(self)
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for a writer that races the next holder
            fcntl.flock(fd, fcntl.LOCK_UN)  # unlocks a forked child's copy of the descriptor too
        finally:
            os.close(fd)

    @classmethod
    def forget_in_child(cls) -> None:
        """After fork, in the child: close the inherited descriptors without unlocking (the lock is
        the parent's), so that the parent's lock does not outlive the parent."""
        for lock in list(cls._live):
            fd, lock.fd = lock.fd, None
            lock._finalizer.detach()
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        cls._live = weakref.WeakSet()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor drops its flock


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WriterLock.forget_in_child)


def _lock_holder(fd: int) -> str:
    """Who holds a writer lock, from the pid and host its holder wrote into the file."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if not text or not text[0].isdigit():
        return "another writer (its pid is not written yet)"
    pid = int(text[0])
    host = text[1] if len(text) > 1 else "?"
    if pid == os.getpid() and host == socket.gethostname():
        return f"another SpectralMonitor or RunStore in this process (pid {pid})"
    return f"process {pid} on host {host}"


def _retryable(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused a write for want of room or permission (it may succeed later), not for
    what it holds."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _RETRYABLE_CODES
    if sys.version_info >= (3, 11):  # an error raised without a code (not by SQLite itself)
        return False
    return isinstance(exc, sqlite3.OperationalError) and any(
        m in str(exc).lower() for m in _RETRYABLE_MESSAGES
    )


def _sqlite_message(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return _one_line(str(exc)) + (f", {name}" if name else "")


def _one_line(text: str, limit: int = 200) -> str:
    """A message on one line, cut at ``limit`` characters (SQLite quotes undecodable text at length)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_error(db: Path, exc: sqlite3.Error, *, doing: str = "read") -> RunStoreError:
    """A RunStoreError naming ``db`` for an SQLite error: not a database, damaged, or another failure."""
    # Python's UTF-8 error quotes the undecodable text at length: the column is what helps.
    message = _one_line(str(exc).split(" with text ", 1)[0])
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary == 26 or "file is not a database" in message:  # SQLITE_NOTADB
        return RunStoreError(f"{db} is not an SQLite database ({message}); expected a spectral-edge run.db")
    if primary == 11 or "malformed" in message or "Could not decode" in message:  # SQLITE_CORRUPT
        return RunStoreError(
            f"{db} is damaged: SQLite cannot {doing} it ({message}); " + _RECOVER_HINT.format(db=db)
        )
    return RunStoreError(f"could not {doing} the run store {db}: {_sqlite_message(exc)}")


def _count_words(counts: Mapping[str, int]) -> str:
    """'3 records, 1 event' for {'record': 3, 'event': 1}; 'none' when every count is 0."""
    words = {"record": "record", "event": "event", "eval": "evaluation", "array": "array"}
    kinds = [k for k in words if k in counts] + [k for k in counts if k not in words]
    parts = [f"{counts[k]} {words.get(k, k)}{'' if counts[k] == 1 else 's'}" for k in kinds if counts[k]]
    return ", ".join(parts) or "none"


_ONE = {"record": "a record", "event": "an event", "eval": "an evaluation", "array": "an array"}


def _table_names(conn: sqlite3.Connection) -> set[str]:
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _read_error(Path(_db_of(conn)), exc) from exc
    return {r[0] for r in rows}


def _db_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "the database"


def _check_schema(conn: sqlite3.Connection, db: Path) -> None:
    try:
        _check_tables(conn, db)
    except sqlite3.Error as exc:
        raise _read_error(db, exc) from exc


def _check_tables(conn: sqlite3.Connection, db: Path) -> None:
    tables = _table_names(conn)
    missing = [t for t in _TABLES if t not in tables]
    if not tables:
        raise RunStoreError(
            f"{db} is an empty database, not a spectral-edge run: it is half-written (the writer was "
            "killed before creating its tables) or was not made by RunStore. Expected the tables "
            f"{', '.join(_TABLES)}; remove it or recreate it with RunStore(path, mode='w')"
        )
    fmt = None
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        fmt = row and row[0]
    if fmt != _FORMAT or missing:
        what = f"lacks the tables {', '.join(missing)}" if missing else "has no spectral-edge format marker"
        raise RunStoreError(
            f"{db} is not a spectral-edge run: it {what} (found tables: {', '.join(sorted(tables))}). "
            f"Expected a {DB_NAME} written by RunStore; it may be half-written or another program's "
            "database. Point at a run directory, or create one with RunStore(path, mode='w')"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(row[0])
    except (TypeError, ValueError) as exc:
        raise RunStoreError(
            f"{db} is damaged: its meta table holds no schema version ({row!r}); "
            + _RECOVER_HINT.format(db=db)
        ) from exc
    if version > SCHEMA_VERSION:
        raise RunStoreError(
            f"{db} has schema version {version}, but this spectral-edge reads up to version "
            f"{SCHEMA_VERSION}: upgrade spectral-edge (pip install -U spectral-edge)"
        )


def _clear_for_writing(db: Path, *, overwrite: bool) -> None:
    """For mode='w': remove an existing database unless that would lose records the user did not give up."""
    if not db.exists():
        return
    if not overwrite:
        conn = _open_readonly(db)
        try:
            tables = _table_names(conn)
            if tables:
                _check_schema(conn, db)  # a foreign database is never removed without overwrite=True
                try:
                    n = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                except sqlite3.Error as exc:
                    raise _read_error(db, exc) from exc
                if n:
                    raise RunStoreError(
                        f"{db} already holds a run with {n} records; mode='w' would erase them. Use "
                        "mode='a' to append, overwrite=True to replace it, or another run directory"
                    )
        finally:
            conn.close()
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE config (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL, wall_time REAL NOT NULL)"
    )
    for table, cls in (("records", SpectralRecord), ("events", SpectralEvent)):
        columns = [
            "id INTEGER PRIMARY KEY",
            "step INTEGER NOT NULL",
            "wall_time REAL NOT NULL",
            "nan_fields TEXT",
        ]
        for name, sql_type in _annotated_columns(cls):
            if name != "step":
                columns.append(f"{_quote(name)} {sql_type}")
        conn.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        conn.execute(f"CREATE INDEX {table}_step ON {table} (step)")
    conn.execute(
        "CREATE TABLE evals (id INTEGER PRIMARY KEY, step INTEGER NOT NULL, name TEXT NOT NULL, "
        "value REAL, wall_time REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX evals_name_step ON evals (name, step)")
    _create_arrays_table(conn)
    meta = {
        "format": _FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # Tells this run from one written anew at the same path (whose file may reuse the inode).
        "run_id": uuid.uuid4().hex,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "spectral_edge": _version("spectral-edge"),
        "platform": platform.platform(),
    }
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())


def _create_arrays_table(conn: sqlite3.Connection) -> None:
    """Arrays logged at a step (e.g. the singular values of a weight matrix at each evaluation).

    Added after schema version 1 shipped without it: a run written before has no such table, so writers
    create it on demand and readers treat its absence as no arrays.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS arrays (id INTEGER PRIMARY KEY, step INTEGER NOT NULL, name TEXT NOT NULL, "
        "json TEXT NOT NULL, wall_time REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS arrays_name_step ON arrays (name, step)")


def _table_columns(conn: sqlite3.Connection, table: str) -> dict[str, str]:
    return {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({table})")}


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=64)
def _insert_statement(table: str, columns: tuple[str, ...]) -> str:
    """The INSERT for these columns; cached, as every record of a run has the same ones."""
    return f"INSERT INTO {table} ({', '.join(map(_quote, columns))}) VALUES ({', '.join('?' * len(columns))})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- dataclass <-> row --------------------------------------------------------------------------------


def _annotation_type(annotation: Any) -> str | None:
    """SQL type for a field annotation: REAL/INTEGER/TEXT for scalars, JSON for containers, None if unsure.

    Annotations are strings under ``from __future__ import annotations``; parsing the text (rather than
    ``typing.get_type_hints``) also works for dataclasses defined where their names do not resolve.
    """
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation)
    text = text.replace("typing.", "").replace("numpy.", "np.").strip()
    optional = re.fullmatch(r"Optional\[(.*)\]", text)
    if optional:
        text = f"{optional[1]} | None"
    parts = {p.strip() for p in text.split("|")} - {"None", "NoneType"}
    if parts and parts <= {"bool", "int", "float", "str"}:
        if parts == {"str"}:
            return "TEXT"
        if "str" in parts:
            return None
        return "REAL" if "float" in parts else "INTEGER"
    if re.search(r"ndarray|Mapping|dict|list|tuple|Sequence|ArrayLike", text, re.IGNORECASE):
        return _JSON_TYPE
    return None


@functools.cache
def _annotated_columns(cls: type) -> tuple[tuple[str, str], ...]:
    """Column name and SQL type of each annotated field; cached per class (it runs once per record)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in _RESERVED:
            raise RunStoreError(
                f"{cls.__name__} has a field named {f.name!r}, a column the run store reserves"
            )
        sql_type = _annotation_type(f.type)
        if sql_type is not None:
            out.append((f.name, sql_type))
    return tuple(out)


#: JSON with NaN and Inf refused (_jsonable has already spelled them as strings); one encoder for all
#: writes, since json.dumps with a keyword builds a new one per call, at every record.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def _row_of(obj: Any) -> list[tuple[str, str, Any]]:
    """(column, SQL type, value to bind) per field of a dataclass instance; NaN stays a float here."""
    annotated = dict(_annotated_columns(obj.__class__))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        sql_type = annotated.get(f.name) or _value_type(value)
        if sql_type is None:  # unknown annotation and a None value: the column's NULL default says it all
            continue
        if sql_type == _JSON_TYPE:
            bound = None if value is None else _STRICT_JSON.encode(_jsonable(value, f.name))
        else:
            bound = value.item() if isinstance(value, np.generic) else value
            if not (bound is None or isinstance(bound, (bool, int, float, str))):
                raise TypeError(
                    f"field {f.name!r} of {type(obj).__name__} should hold a {sql_type} scalar, got "
                    f"{type(value).__name__}: {value!r}"
                )
        out.append((f.name, sql_type, bound))
    return out


def _value_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bool, int, np.bool_, np.integer)):
        return "INTEGER"
    if isinstance(value, (float, np.floating)):
        return "REAL"
    if isinstance(value, str):
        return "TEXT"
    return _JSON_TYPE


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values, with non-finite floats as 'inf'/'-inf'/'nan' strings (as SpectralRecord.to_dict)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, np.ndarray):
        items = value.tolist()
        if value.ndim == 1 and value.dtype.kind == "f":  # a record's vectors: one pass, no recursion
            return [x if math.isfinite(x) else str(x) for x in items]
        return [_jsonable(x, where) for x in items]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON keys must be strings"
                )
            out[key] = _jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(x, f"{where}[{i}]") for i, x in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            name: _jsonable(getattr(value, name), f"{where}.{name}") for name in _field_names(type(value))
        }
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"cannot store {where} (a {type(value).__name__}) as JSON: use numbers, strings, lists, dicts or "
        "NumPy arrays (convert tensors with .item() or .tolist() first)"
    )


def _from_json(value: Any, *, arrays: bool) -> Any:
    """Inverse of :func:`_jsonable`: 'inf'/'nan' strings become floats; numeric lists become float64 arrays."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, list):
        items = [_from_json(x, arrays=arrays) for x in value]
        if arrays and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            return np.asarray(items, dtype=np.float64)
        return items
    if isinstance(value, dict):
        return {k: _from_json(v, arrays=arrays) for k, v in value.items()}
    return value


# -- flattening (record_arrays, export_run) ----------------------------------------------------------


def _flatten(rows: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> list[tuple[str, str, list[Any]]]:
    """Columns (name, kind, values) of decoded records; kind is int/float/str/object, or array (list of 1-D)."""
    names = ["step", "wall_time"] + [n for n in types if n not in ("id", "nan_fields", "step", "wall_time")]
    out: list[tuple[str, str, list[Any]]] = []
    for name in names:
        values = [row.get(name) for row in rows]
        if types.get(name) != _JSON_TYPE:
            out.append((name, _kind_of(values, types.get(name, "")), values))
        elif all(v is None or isinstance(v, np.ndarray) for v in values):
            out.append((name, "array", [None if v is None else np.ravel(v) for v in values]))
        elif all(v is None or isinstance(v, Mapping) for v in values):
            prefix = _MAPPING_PREFIX.get(name, name)
            keys: dict[tuple[str, str], None] = {}  # ordered set: column order is first appearance
            for v in values:
                for key, item in (v or {}).items():
                    if isinstance(item, Mapping):
                        keys.update({(key, sub): None for sub, x in item.items() if _is_scalar(x)})
                    elif _is_scalar(item):
                        keys[(key, "")] = None
            for outer, inner in keys:
                cells = [_dig(v, outer, inner) for v in values]
                label = f"{prefix}.{outer}.{inner}" if inner else f"{prefix}.{outer}"
                out.append((label, _kind_of(cells, ""), cells))
        # Any other JSON shape (lists of strings, ...) has no flat form; it stays in records().
    return out


_Columns = list[tuple[str, str, list[Any]]]  # (name, kind, values): kind is int/float/str/object


def _record_columns(
    rows: Sequence[Mapping[str, Any]], types: Mapping[str, str], *, wall_time: bool = True
) -> _Columns:
    """:func:`_flatten` with each array column spread over ``<prefix>_1 … <prefix>_W`` (shorter records
    get ``None``): the flat records table of :func:`export_run` and :meth:`RunStore.to_pandas`."""
    columns: _Columns = []
    for name, kind, values in _flatten(rows, types):
        if name == "wall_time" and not wall_time:
            continue
        if kind == "array":
            width = max((len(v) for v in values if v is not None), default=0)
            prefix = _ARRAY_PREFIX.get(name, name)
            for j in range(width):
                cells = [float(v[j]) if v is not None and j < len(v) else None for v in values]
                columns.append((f"{prefix}_{j + 1}", "float", cells))
        else:
            columns.append((name, kind, values))
    return columns


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _dig(value: Mapping[str, Any] | None, outer: str, inner: str) -> Any:
    if value is None or outer not in value:
        return None
    item = value[outer]
    if inner:
        return item.get(inner) if isinstance(item, Mapping) else None
    return item


def _kind_of(values: Sequence[Any], sql_type: str) -> str:
    present = [v for v in values if v is not None]
    if sql_type == "TEXT" or (present and all(isinstance(v, str) for v in present)):
        return "str"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return "int"
    if all(isinstance(v, (int, float)) for v in present):
        return "float"
    return "object"


def _to_numpy(values: list[Any], kind: str) -> np.ndarray:
    if kind == "int" and all(v is not None for v in values):
        return np.asarray(values, dtype=np.int64)
    if kind in ("int", "float"):
        return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact form; 'inf', '-inf', 'nan' parse back with float()
    return value


def _write_csv(path: Path, columns: Sequence[tuple[str, str, list[Any]]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _, _ in columns])
        n = len(columns[0][2]) if columns else 0
        for i in range(n):
            writer.writerow([_csv_cell(values[i]) for _, _, values in columns])


def _write_parquet(path: Path, columns: Sequence[tuple[str, str, list[Any]]]) -> None:
    pa = require("pyarrow", "Parquet export")
    pq = require("pyarrow.parquet", "Parquet export")
    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    arrays, names = [], []
    for name, kind, values in columns:
        if kind == "object":  # mixed types: keep a faithful textual form rather than fail the export
            values, kind = [None if v is None else str(v) for v in values], "str"
        if kind == "float":
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=types[kind]))
        names.append(name)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
