"""JSONL sink: one JSON object per line, flushed as it is written, readable with any tool.

Each line has a ``"type"`` (``"record"``, ``"event"`` or ``"eval"``) and a ``"wall_time"`` (Unix
seconds when written):

* ``record``: :meth:`SpectralRecord.to_dict <spectral_edge.tracking.record.SpectralRecord.to_dict>`, with
  σ, ratios, α and the groups as lists and dicts;
* ``event``: :meth:`SpectralEvent.to_dict <spectral_edge.tracking.record.SpectralEvent.to_dict>`;
* ``eval``: ``{"step": ..., "metrics": {name: value}}``.

Lines are strict JSON: ``inf``, ``-inf`` and ``nan`` (R = inf at a rank edge) are the strings ``"inf"``,
``"-inf"``, ``"nan"``, as in ``to_dict`` and the run store's JSON columns. Text is UTF-8.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

from spectral_edge.sinks.base import Sink
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord, json_float

__all__ = ["JsonlSink"]


class JsonlSink(Sink):
    """Appends the monitor's records, events and evaluations to a JSON Lines file.

    Every line is written and flushed to the operating system at once, so a killed training process
    keeps every line written before it died (a power loss may still lose what the OS had not synced).

    Args:
        path: the file; its parent directories are created.
        mode: ``"a"`` (default) appends to an existing file, ``"w"`` truncates it.

    Example:
        >>> import json, tempfile, torch
        >>> from spectral_edge.tracking import SpectralMonitor
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with SpectralMonitor(model, window=2, sinks=[JsonlSink(f"{tmp.name}/spectral.jsonl")]) as mon:
        ...     for _ in range(3):
        ...         opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
        ...         _ = mon.step(loss=1.0)
        ...     mon.log_eval(acc=0.5)
        >>> with open(f"{tmp.name}/spectral.jsonl") as f:
        ...     lines = [json.loads(line) for line in f]
        >>> [(line["type"], line["step"]) for line in lines], lines[0]["metrics"], lines[-1]["metrics"]
        ([('record', 2), ('record', 3), ('eval', 3)], {'loss': 1.0}, {'acc': 0.5})
        >>> tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: Literal["a", "w"] = "a") -> None:
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' (append) or 'w' (truncate), got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, mode, encoding="utf-8")

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}, mode={self.mode!r})"

    def write_record(self, record: SpectralRecord) -> None:
        self._write({"type": "record", **record.to_dict()})

    def write_event(self, event: SpectralEvent) -> None:
        self._write({"type": "event", **event.to_dict()})

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        self._write(
            {
                "type": "eval",
                "step": int(step),
                "metrics": {k: json_float(float(v)) for k, v in metrics.items()},
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self!r} is closed")
        obj["wall_time"] = time.time()
        # allow_nan=False: to_dict already spells non-finite floats as strings, so this never fires
        # unless a new field forgets to; then it fails loudly instead of writing invalid JSON.
        line = json.dumps(obj, allow_nan=False, ensure_ascii=False)
        self._file.write(line + "\n")
        self._file.flush()
