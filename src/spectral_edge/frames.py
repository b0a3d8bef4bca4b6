"""Runs and records as pandas DataFrames (the ``pandas`` extra): :func:`records_to_dataframe`, :class:`RunFrames`.

pandas is imported when a frame is made, never by ``import spectral_edge``. The columns are those of
:func:`~spectral_edge.store.export_run`: one row per record, ``sigma_1 … sigma_W`` for σ_j (Def 1.2),
``group.<name>.k_star`` and ``group.<name>.gap_ratio`` per group, ``metric.<name>`` per metric passed to
``step()``. :meth:`RunStore.to_pandas <spectral_edge.store.RunStore.to_pandas>` reads a stored run the
same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from spectral_edge._imports import require
from spectral_edge.store import _annotated_columns, _record_columns, _to_numpy
from spectral_edge.tracking.record import GroupSpectrum, SpectralRecord

__all__ = ["RunFrames", "records_to_dataframe"]


class RunFrames(NamedTuple):
    """A run as DataFrames (:meth:`RunStore.to_pandas <spectral_edge.store.RunStore.to_pandas>`).

    Attributes:
        records: one row per record (see :func:`records_to_dataframe` for the columns), with ``wall_time``.
        events: one row per event: ``step``, ``wall_time``, ``kind``, ``k_before``, ``k_after``,
            ``ratio_before``, ``ratio_after``, ``message``.
        evals: long format, one row per logged value: ``step``, ``name``, ``value``, ``wall_time``.
    """

    records: Any  # pandas.DataFrame: pandas is optional, so it is not imported for the annotation
    events: Any
    evals: Any


def records_to_dataframe(records: Iterable[SpectralRecord]) -> Any:
    """In-memory records (``mon.records``, ``analyze_checkpoints(...)``) as a pandas DataFrame.

    One row per record. Columns: ``step``, then every scalar field (int64 where no record lacks it,
    float64 with NaN for ``None``, the regime as text), ``sigma_1 … sigma_W``, ``ratio_1 … ratio_{W-1}``,
    ``alpha_1 … alpha_W``, ``alpha_half_1 …`` (NaN where a record's window is shorter), then
    ``group.<name>.k_star`` (float64, NaN where a record lacks the group) and ``group.<name>.gap_ratio``
    per group, and ``metric.<name>`` per metric. The same columns as
    :meth:`RunStore.to_pandas <spectral_edge.store.RunStore.to_pandas>` without ``wall_time``.

    Raises:
        MissingExtraError: pandas is not installed (``pip install 'spectral-edge[pandas]'``).
        TypeError: an item is not a :class:`SpectralRecord`.

    Example:
        >>> import torch
        >>> from spectral_edge import SpectralMonitor
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = SpectralMonitor(model, window=2, lr=opt)
        >>> for _ in range(3):
        ...     opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
        ...     _ = mon.step(loss=1.0)
        >>> df = records_to_dataframe(mon.records)
        >>> df["step"].tolist(), [c for c in df.columns if c.startswith("sigma_")], df["metric.loss"].tolist()
        ([2, 3], ['sigma_1', 'sigma_2'], [1.0, 1.0])
        >>> "group.weight.k_star" in df.columns
        True
    """
    rows = [_row(record) for record in records]
    types = {"step": "INTEGER", **dict(_annotated_columns(SpectralRecord))}
    for row in rows:  # a subclass's extra fields: their type from their values, as the run store does
        for name in row:
            types.setdefault(name, "")
    return _frame(_record_columns(rows, types, wall_time=False))


def _row(record: SpectralRecord) -> dict[str, Any]:
    """A record as :meth:`RunStore.records` gives it back: plain scalars, float64 arrays, dicts."""
    if not isinstance(record, SpectralRecord):
        raise TypeError(f"records_to_dataframe takes SpectralRecord objects, got {type(record).__name__}")
    row: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = np.asarray(value, dtype=np.float64).ravel()
        elif f.name == "groups":
            value = {name: _group(g) for name, g in value.items()}
        elif isinstance(value, Mapping):
            value = {k: float(v) for k, v in value.items()}
        row[f.name] = value
    return row


def _group(spectrum: GroupSpectrum) -> dict[str, Any]:
    return {
        "k_star": int(spectrum.k_star),
        "gap_ratio": float(spectrum.gap_ratio),
        "singular_values": np.asarray(spectrum.singular_values, dtype=np.float64),
    }


def _frame(columns: Sequence[tuple[str, str, list[Any]]]) -> Any:
    """A DataFrame of flat columns (name, kind, values): int64, float64, or text/object columns."""
    pd = require("pandas", "DataFrames of records")
    data = {}
    for name, kind, values in columns:
        if kind == "str":
            data[name] = pd.Series(values, dtype=object)  # text, None where missing
        else:
            data[name] = _to_numpy(list(values), kind)
    return pd.DataFrame(data, columns=[name for name, _, _ in columns])
