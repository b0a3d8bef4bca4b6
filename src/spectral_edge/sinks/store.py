"""The run store as a sink: :class:`StoreSink`, the first stop of every monitor's fan-out.

A :class:`~spectral_edge.store.RunStore` keeps everything the other sinks keep and more (the config, every
record, event and evaluation, in SQLite); through this adapter the monitor feeds it as it feeds
TensorBoard or W&B, through the same guard. What the store does on its own is unchanged: one writer per
path (``flock``), writes the disk refuses held and retried
(:class:`~spectral_edge.errors.StoreWriteError`, :class:`~spectral_edge.store.StoreBacklog`), and the
backlog reported at close. Closing the sink marks the run finished
(:meth:`~spectral_edge.store.RunStore.mark_finished`): the monitor is done with it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spectral_edge.errors import RunStoreError
from spectral_edge.sinks.base import Sink
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord

if TYPE_CHECKING:  # store.py imports tracking/, which imports this module: RunStore is imported when used
    from spectral_edge.store import RunStore, StoreBacklog

__all__ = ["StoreSink"]

logger = logging.getLogger("spectral_edge")


class StoreSink(Sink):
    """Writes records, events, evaluations and the config to a :class:`~spectral_edge.store.RunStore`.

    Args:
        store: the open run store.
        owned: :meth:`close` closes the store (it was opened for this run from a path); otherwise whoever
            opened it closes it.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> sink = StoreSink.open(f"{tmp.name}/run")
        >>> sink.write_eval(10, {"loss": 0.5}); sink.owned, sink.backlog().describe()
        (True, 'held for retry: none; lost: none')
        >>> sink.close(); tmp.cleanup()
    """

    def __init__(self, store: RunStore, *, owned: bool = False) -> None:
        from spectral_edge.store import RunStore

        if not isinstance(store, RunStore):
            raise TypeError(
                f"store must be a run directory (str or Path) or a spectral_edge.RunStore, got "
                f"{type(store).__name__}: pass store='runs/exp1' or store=RunStore('runs/exp1', mode='a')"
            )
        self.store = store
        self.owned = owned
        self._label = f"the run store {store.path}"
        self._closed = False

    @classmethod
    def open(
        cls,
        store: str | Path | RunStore | StoreSink | None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        resume_step: int | None = None,
        write_behind: bool = True,
    ) -> StoreSink | None:
        """The sink for a ``store=`` argument: None for None, the sink itself, or a sink over the store.

        A path is opened with ``mode="w"`` for a new run, ``mode="a"`` with ``resume`` (appending to the
        run there, or creating it), or ``mode="w", overwrite=True`` with ``overwrite`` (replacing the run
        there); the sink owns it. A new run refuses a path that holds a run with records, with an error
        that names ``resume=True`` and ``overwrite=True``; another writer on the path is an error. A store
        opened from a path commits on a writer thread (``write_behind``) so that training does not wait
        for SQLite; a strict monitor passes ``write_behind=False``. When training resumes from the
        checkpoint of step ``resume_step``, the rows the interrupted run wrote after that step are deleted:
        they belong to the trajectory being replaced and would otherwise appear twice.

        Raises:
            ValueError: ``resume`` and ``overwrite`` together, or either with a store that is already
                open (a :class:`~spectral_edge.store.RunStore` or a sink: they apply to a path).
            RunStoreError: the path holds a run with records and neither keyword was given, or another
                writer holds it.
        """
        if store is None:
            return None
        if resume and overwrite:
            raise ValueError(
                "pass resume=True (append to the run at store=) or overwrite=True (replace it), not both"
            )
        if (resume or overwrite) and not isinstance(store, (str, Path)):
            given = "resume=True" if resume else "overwrite=True"
            raise ValueError(
                f"{given} applies to a store given as a path, got an open {type(store).__name__}: pass "
                "store='runs/exp1' with it, or open the RunStore yourself with mode='a' (append) or "
                "mode='w', overwrite=True (replace)"
            )
        if isinstance(store, StoreSink):
            sink = store
        elif isinstance(store, (str, Path)):
            from spectral_edge.store import RunStore

            if not (resume or overwrite):
                _refuse_existing(store)
            mode: Literal["w", "a"] = "a" if resume else "w"
            sink = cls(RunStore(store, mode=mode, overwrite=overwrite, write_behind=write_behind), owned=True)
        else:
            sink = cls(store)
        if resume_step is not None and resume_step > 0:
            removed = sink.store.truncate_after(resume_step)
            if removed:
                logger.info(
                    "spectral-edge: resuming at step %d; removed %d rows written after it by the interrupted run",
                    resume_step,
                    removed,
                )
        return sink

    checks_config = True  # a config the store cannot save is the caller's error, said at construction

    @property
    def label(self) -> str:
        return self._label

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.store.write_config(config)

    def write_record(self, record: SpectralRecord) -> None:
        self.store.add_record(record)

    def write_event(self, event: SpectralEvent) -> None:
        self.store.add_event(event)

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self.store.add_eval(step, metrics)

    def close(self) -> None:
        """Mark the run finished (:meth:`~spectral_edge.store.RunStore.mark_finished`: the monitor is
        done with it) and close the store if this sink opened it (committing the last write and retrying
        held ones); raises :class:`~spectral_edge.errors.StoreWriteError` if writes were lost. Safe to
        call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.store.mode != "r" and not self.store.closed:
                # A disk that refuses this too has been reported by the writes before it.
                # RunStoreError: an earlier write-behind failure, re-raised by this write, already reported.
                with contextlib.suppress(sqlite3.Error, RunStoreError):
                    self.store.mark_finished()
        finally:
            if self.owned:
                self.store.close()

    def backlog(self) -> StoreBacklog:
        """The store's :meth:`~spectral_edge.store.RunStore.backlog`: writes held for retry and lost."""
        return self.store.backlog()


def _refuse_existing(path: str | Path) -> None:
    """For a new run at ``path``: the error, in the monitor's words, when a run with records is there.

    RunStore(mode="w") refuses it too, naming its own arguments (mode="a", overwrite=True); this names
    the keywords of SpectralMonitor and the framework callbacks. A foreign or damaged file is left to
    RunStore, whose error says what it is.
    """
    from spectral_edge.store import RunStore, _db_path

    if not _db_path(path).is_file():
        return
    try:
        with RunStore(path, mode="r") as existing:
            n = len(existing)
    except RunStoreError:
        return
    if n:
        raise RunStoreError(
            f"{path} already holds a run with {n} records, and a new run would erase them: pass "
            "resume=True to append to it (resuming that run), overwrite=True to replace it, or another "
            "store= directory"
        )
