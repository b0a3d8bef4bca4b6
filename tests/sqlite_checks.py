"""SQLite's own verdict on a run store's file, for the tests that damage, fill or kill a writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of ``db`` opened read-only: "ok", or SQLite's list of what is wrong."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
