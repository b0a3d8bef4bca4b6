"""A family whose runs fail: one raises, one kills its worker process, one succeeds (suite tests)."""

from __future__ import annotations

from dataclasses import replace

from study._fake_family import PRESETS, Config, run  # noqa: F401 - the contract

FAMILY = "crashing"


def variants(suite: str) -> list[Config]:
    base = PRESETS[suite]
    return [replace(base, task=t, seed=42, weight_decay=1.0) for t in ("crash", "die", "sign")]
