"""The language-model study's suite: its runs in order, resumable, with a manifest of wall times.

Runs go to ``<out>/<name>/`` one after the other in this process, with all of torch's threads (a run
is too large to share two cores with another). A run is complete when its ``outcome.json`` exists and
its saved config equals the planned one; complete runs are skipped, anything else is wiped and rerun,
so a killed suite loses at most the run in flight. A run that fails is recorded with its error and the
suite goes on, except that a run continuing a failed one (the shift) is skipped with the reason.

``<out>/suite.json`` keeps each session's wall time and each run's status, wall time and attempts, so
the study's total time can be stated when it ran in several sittings.

Example::

    from spectral_edge_studies.lmstudy.suite import run_suite
    report = run_suite("smoke", "runs/lm-study-smoke")
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from spectral_edge_studies.atomic import MANIFEST, read_manifest, write_json
from spectral_edge_studies.lmstudy.recipes import SUITES, LMConfig, config_dict, variants
from spectral_edge_studies.lmstudy.train import STATE_FILE, load_outcome, run

_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class SuiteReport:
    suite: str
    out: Path
    statuses: dict[str, str]  # run name -> "done" | "skipped" (complete before) | "failed" | "blocked"
    wall_s: float

    @property
    def failed(self) -> list[str]:
        return [name for name, status in self.statuses.items() if status in ("failed", "blocked")]


def complete(config: LMConfig, out: Path) -> bool:
    """Whether ``<out>/<name>`` holds a finished run of exactly ``config``."""
    outcome = load_outcome(out / config.name)
    return outcome is not None and _canonical(outcome.config) == _canonical(config_dict(config))


def run_suite(
    suite: str,
    out: str | os.PathLike[str],
    *,
    only: Sequence[str] | None = None,
    device: str | None = None,
    stream: TextIO | None = None,
) -> SuiteReport:
    """Run (or resume) ``suite`` into ``out``.

    Args:
        suite: ``"smoke"``, ``"quick"`` or ``"full"``.
        out: the suite directory (created).
        only: run names to run (default all); a shift's base run is added when its state is missing.
        device: override every run's device (``"cuda"`` for a GPU).
        stream: where progress lines go (default stderr).
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    stream = stream or sys.stderr
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = variants(suite)
    if device is not None:
        plan = [dataclasses.replace(c, device=device) for c in plan]
    names = [c.name for c in plan]
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown runs {unknown}; the {suite} suite has {names}")
        wanted = set(only)
        for config in plan:
            if (
                config.name in wanted
                and config.init_from
                and not complete(_by_name(plan, config.init_from), out)
            ):
                wanted.add(config.init_from)
        plan = [c for c in plan if c.name in wanted]
    # Runs whose state a run still to do will continue from (they keep state.pt).
    continued = {c.init_from for c in plan if c.init_from and not complete(c, out)}

    manifest = _Manifest(out, suite)
    statuses: dict[str, str] = {}
    started = time.time()
    _say(stream, f"lm study {suite}: {len(plan)} runs -> {out}")
    try:
        for index, config in enumerate(plan, start=1):
            label = f"[{index}/{len(plan)}] {config.name}"
            state_missing = config.name in continued and not (out / config.name / STATE_FILE).is_file()
            if complete(config, out) and not state_missing:
                statuses[config.name] = "skipped"
                manifest.existing(config, load_outcome(out / config.name))
                _say(stream, f"{label}: complete, skipped")
                continue
            if config.init_from and statuses.get(config.init_from) in ("failed", "blocked"):
                statuses[config.name] = "blocked"
                manifest.finish(config, "blocked", 0.0, f"{config.init_from} failed")
                _say(stream, f"{label}: skipped, it continues {config.init_from}, which failed")
                continue
            manifest.start(config)
            t0 = time.time()
            try:
                outcome = run(config, out / config.name, suite_dir=out, keep_state=config.name in continued,
                              progress=_Ticker(stream, label))  # fmt: skip
            except Exception as exc:  # one failed run must not cost the others
                statuses[config.name] = "failed"
                manifest.finish(
                    config, "failed", time.time() - t0, "".join(traceback.format_exception(exc))[-4000:]
                )
                _say(stream, f"{label}: FAILED ({type(exc).__name__}: {exc})")
                continue
            statuses[config.name] = "done"
            manifest.finish(config, "done", outcome.wall_s, None)
            _say(
                stream,
                f"{label}: done in {outcome.wall_s / 60:.1f} min, val loss {outcome.final_val_loss:.3f}, "
                f"monitor {100 * outcome.monitor_overhead:.1f}% of the training step",
            )
        manifest.session["finished"] = True
    finally:
        manifest.write()
    return SuiteReport(suite, out, statuses, time.time() - started)


class _Ticker:
    """Progress lines: one every 30 s, with steps done and the time left at the current pace."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.started = self.last = time.time()

    def __call__(self, step: int, total: int) -> None:
        now = time.time()
        if now - self.last < _LOG_EVERY_S and step != total:
            return
        self.last = now
        left = (now - self.started) / step * (total - step)
        _say(self.stream, f"{self.label}: step {step}/{total}, about {left / 60:.1f} min left")


class _Manifest:
    def __init__(self, out: Path, suite: str) -> None:
        self.path = out / MANIFEST
        data = read_manifest(out)
        if data is not None and data.get("suite") != suite:
            raise ValueError(
                f"{out} holds the {data.get('suite')!r} suite; the {suite!r} suite needs another --out"
            )
        self.data: dict[str, Any] = data or {"suite": suite, "sessions": [], "runs": {}}
        self.started = time.time()
        self.session: dict[str, Any] = {"started": _iso(self.started), "wall_s": 0.0, "finished": False}
        self.data["sessions"].append(self.session)
        self.write()

    def existing(self, config: LMConfig, outcome: Any) -> None:
        entry = self.data["runs"].get(config.name)
        if entry is None or entry.get("status") != "done":
            self.data["runs"][config.name] = {
                "status": "done",
                "wall_s": outcome.wall_s,
                "attempts": 1,
                "error": None,
            }
        self.write()

    def start(self, config: LMConfig) -> None:
        entry = self.data["runs"].setdefault(config.name, {"attempts": 0})
        entry.update(status="running", attempts=int(entry.get("attempts", 0)) + 1)
        self.write()

    def finish(self, config: LMConfig, status: str, wall_s: float, error: str | None) -> None:
        entry = self.data["runs"].setdefault(config.name, {"attempts": 1})
        entry.update(status=status, wall_s=float(wall_s), error=error, finished=_iso(time.time()))
        self.write()

    def write(self) -> None:
        self.session["wall_s"] = time.time() - self.started
        runs = self.data["runs"].values()
        self.data["totals"] = {
            "wall_s": sum(float(s.get("wall_s", 0.0)) for s in self.data["sessions"]),
            "run_s": sum(float(r.get("wall_s", 0.0)) for r in runs if r.get("status") == "done"),
            "sessions": len(self.data["sessions"]),
            "done": sum(r.get("status") == "done" for r in runs),
            "failed": sum(r.get("status") in ("failed", "blocked") for r in runs),
        }
        write_json(self.path, self.data, sort_keys=True)


def _by_name(plan: list[LMConfig], name: str) -> LMConfig:
    for config in plan:
        if config.name == name:
            return config
    raise ValueError(f"no run named {name!r} in the suite")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _say(stream: TextIO, text: str) -> None:
    print(f"{datetime.now().strftime('%H:%M:%S')} {text}", file=stream, flush=True)
