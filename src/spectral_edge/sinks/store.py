"""The run store as a sink: :class:`StoreSink`, the first stop of every monitor's fan-out.

A :class:`~spectral_edge.store.RunStore` keeps everything the other sinks keep and more (the config, every
record, event and evaluation, in SQLite); through this adapter the monitor feeds it as it feeds
TensorBoard or W&B, through the same guard. What the store does on its own is unchanged: one writer per
path (``flock``), writes the disk refuses held and retried
(:class:`~spectral_edge.errors.StoreWriteError`, :class:`~spectral_edge.store.StoreBacklog`), and the
backlog reported at close.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    @classmethod
    def open(
        cls,
        store: str | Path | RunStore | StoreSink | None,
        *,
        resume: bool = False,
        resume_step: int | None = None,
        write_behind: bool = True,
    ) -> StoreSink | None:
        """The sink for a ``store=`` argument: None for None, the sink itself, or a sink over the store.

        A path is opened with ``mode="w"`` for a new run (refusing to overwrite one that holds records;
        another writer on the path is an error) or ``mode="a"`` with ``resume``, and the sink owns it. A
        store opened from a path commits on a writer thread (``write_behind``) so that training does not
        wait for SQLite; a strict monitor passes ``write_behind=False``. When training resumes from the
        checkpoint of step ``resume_step``, the rows the interrupted run wrote after that step are deleted:
        they belong to the trajectory being replaced and would otherwise appear twice.
        """
        if store is None:
            return None
        if isinstance(store, StoreSink):
            sink = store
        elif isinstance(store, (str, Path)):
            from spectral_edge.store import RunStore

            sink = cls(RunStore(store, mode="a" if resume else "w", write_behind=write_behind), owned=True)
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
        """Close the store if this sink opened it (committing the last write and retrying held ones);
        raises :class:`~spectral_edge.errors.StoreWriteError` if writes were lost."""
        if self.owned:
            self.store.close()

    def backlog(self) -> StoreBacklog:
        """The store's :meth:`~spectral_edge.store.RunStore.backlog`: writes held for retry and lost."""
        return self.store.backlog()
