"""Files the studies write whole: outcomes, manifests, summaries. A reader, or the next session of a
killed suite, sees the old file or the new one, never half of one. Also the one reader of a suite's
manifest, which both studies share.

The text goes to a temporary file beside the target (named with the process id, so two writers never
share it), is flushed to disk, and is moved over the target with :func:`os.replace`, which is atomic on
POSIX and Windows.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = write_json(folder / "outcome.json", {"steps": 3})
    >>> path.read_text()
    '{\\n  "steps": 3\\n}\\n'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path``'s content with ``text`` (UTF-8) in one step; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def write_json(
    path: str | os.PathLike[str],
    data: Any,
    *,
    indent: int = 2,
    sort_keys: bool = False,
    allow_nan: bool = True,
) -> Path:
    """:func:`write_text` of ``json.dumps(data)`` and a final newline."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


#: A suite's manifest (run statuses and wall times), in the suite's output folder.
MANIFEST = "suite.json"


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The suite manifest of ``out`` (``suite.json``), or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
