"""The grokking study's suite runner: the matrix of thesis §27, resumable, in worker processes.

The matrix is every family's ``variants(suite)`` (tasks × seeds 42/137/2024 × weight decay 1 and 0 in
the ``full`` suite: the 48 runs behind "24/24 grok with weight decay, 0/24 without", Tables 6 and 7).
Each run goes to ``<out>/<family>/<task>-seed<seed>-wd<ω>/`` and is complete when its ``outcome.json``
exists (written last by the run contract, :mod:`.common`).

Resuming: a run directory with a valid ``outcome.json`` (it parses, and its family, task, seed, weight
decay and config match the planned run) is skipped; any other existing run directory is an interrupted
or stale run and is wiped and run again from scratch. So killing a suite at any moment loses at most the
runs in flight.

Workers: ``jobs`` processes (spawn start method), each with ``torch.set_num_threads(1)``, take runs one at a
time. An exception inside a run is recorded as a failed run and the suite goes on; so is a worker that
dies (it is replaced). A worker exits on its own as soon as it notices its parent is gone, so a killed
suite leaves no orphan training into a directory the next session will wipe. After each run the worker
also analyses the run's checkpoints with WeightWatcher (:func:`~.alarms.weightwatcher_series`) when the
optional ``weightwatcher`` extra is installed, so that cost runs in parallel too.

Progress goes to stderr: runs done/total, failures, the runs in flight with their percentage, elapsed time
and an ETA from the seconds per step each family has shown so far.

The manifest ``<out>/suite.json`` keeps, across resumed sessions, each session's wall time and each run's
status, wall time (training and WeightWatcher separately) and attempts, so the total compute and wall
time of a suite can be stated even when it ran in several sittings.

Example::

    from spectral_edge_studies.study.suite import run_suite
    report = run_suite("quick", "runs/grokking-study-quick", jobs=2)
    print(report.completed, report.failed, report.wall_s)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TextIO

from spectral_edge_studies.atomic import MANIFEST, read_manifest, write_json
from spectral_edge_studies.study.common import (
    OUTCOME_FILE,
    SUITES,
    RunOutcome,
    check_family,
    load_outcome,
)

#: The four families of §27 and the modules that implement them, in the order the summary lists them.
FAMILY_MODULES: dict[str, str] = {
    "modular": "spectral_edge_studies.study.modular",
    "multitask": "spectral_edge_studies.study.multitask",
    "dyck": "spectral_edge_studies.study.dyck",
    "scan": "spectral_edge_studies.study.scan",
}
#: The suite manifest inside the output directory.
_MANIFEST_FORMAT = 1
#: Seconds between progress messages a worker sends (and lines printed when stderr is not a terminal).
_WORKER_PROGRESS_EVERY = 0.5
_LOG_EVERY = 30.0
_REDRAW_EVERY = 0.5


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the matrix: which family module trains which config into which directory."""

    family: str  # the family's name (a key of the family table)
    module: str  # importable module implementing the family contract
    config: Any  # the family's frozen Config
    run_dir: Path  # <out>/<family>/<task>-seed<seed>-wd<ω>

    @property
    def name(self) -> str:
        """``<family>/<task>-seed<seed>-wd<ω>``: the run's key in the manifest and the summary."""
        return f"{self.family}/{self.run_dir.name}"

    @property
    def max_steps(self) -> int:
        return int(self.config.max_steps)


@dataclass(frozen=True)
class RunResult:
    """What happened to one planned run in this session."""

    name: str
    status: str  # "done" (trained now), "skipped" (already complete), "failed"
    outcome: RunOutcome | None = None
    wall_s: float = 0.0  # training seconds in this session (0 when skipped)
    ww_s: float = 0.0  # WeightWatcher seconds in this session
    error: str | None = None


@dataclass(frozen=True)
class SuiteReport:
    """A suite session's results; ``manifest`` is the manifest as written at its end."""

    suite: str
    out: Path
    results: tuple[RunResult, ...]
    wall_s: float  # this session
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(r.status in ("done", "skipped") for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)


def run_dir_name(config: Any) -> str:
    """``<task>-seed<seed>-wd<ω>``.

    Example:
        >>> from types import SimpleNamespace
        >>> run_dir_name(SimpleNamespace(task="add", seed=42, weight_decay=1.0))
        'add-seed42-wd1'
    """
    return f"{config.task}-seed{config.seed}-wd{config.weight_decay:g}"


def resolve_families(
    families: Iterable[str] | None = None, modules: Mapping[str, str] | None = None
) -> dict[str, str]:
    """family -> module: the four of §27, plus or overridden by ``modules``, filtered by ``families``.

    Raises:
        ValueError: a name in ``families`` is not known.
    """
    table = {**FAMILY_MODULES, **dict(modules or {})}
    if families is None:
        return table
    wanted = list(dict.fromkeys(families))
    unknown = [name for name in wanted if name not in table]
    if unknown:
        raise ValueError(
            f"unknown families {unknown}; known: {sorted(table)} (add your own with --family-module NAME=MODULE)"
        )
    return {name: table[name] for name in wanted}


def plan_suite(
    suite: str,
    out: str | os.PathLike[str],
    *,
    families: Iterable[str] | None = None,
    modules: Mapping[str, str] | None = None,
) -> list[PlannedRun]:
    """Every run of ``suite`` for the chosen families, in family order then each family's own order.

    Raises:
        ValueError: ``suite`` is not one of :data:`SUITES`, a family is unknown or its module cannot be
            imported, or two runs would share a directory.
        TypeError: a family module breaks the contract (:func:`~.common.check_family`).
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    out = Path(out)
    runs: list[PlannedRun] = []
    for family, module_name in resolve_families(families, modules).items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"family {family!r}: cannot import its module {module_name!r} ({exc}); leave it out with "
                "--families, or fix the module"
            ) from exc
        check_family(module)
        for config in module.variants(suite):
            runs.append(PlannedRun(family, module_name, config, out / family / run_dir_name(config)))
    seen: dict[Path, str] = {}
    for run in runs:
        if run.run_dir in seen:
            raise ValueError(f"two runs of the suite share the directory {run.run_dir}: {seen[run.run_dir]}")
        seen[run.run_dir] = run.name
    return runs


def valid_outcome(run: PlannedRun) -> RunOutcome | None:
    """The run's outcome when its directory holds a complete run of exactly this config, else None."""
    try:
        outcome = load_outcome(run.run_dir)
    except (OSError, ValueError, TypeError):  # torn or foreign outcome.json: not complete
        return None
    if outcome is None:
        return None
    config = run.config
    same = (
        outcome.task == str(config.task)
        and outcome.seed == int(config.seed)
        and float(outcome.weight_decay) == float(config.weight_decay)
        and _canonical(outcome.config) == _canonical(_config_dict(config))
    )
    return outcome if same else None


def run_suite(
    suite: str,
    out: str | os.PathLike[str],
    *,
    jobs: int = 1,
    families: Iterable[str] | None = None,
    modules: Mapping[str, str] | None = None,
    weightwatcher: bool = True,
    stream: TextIO | None = None,
    progress: bool = True,
) -> SuiteReport:
    """Run (or resume) the suite into ``out`` and return what this session did.

    Args:
        suite: ``"smoke"``, ``"quick"`` or ``"full"``.
        out: the suite directory (created); runs go to ``<out>/<family>/<run>/``.
        jobs: worker processes (each with one torch thread); 0 runs everything in this process, without
            crash isolation (for debugging).
        families: names to run (default: all of :data:`FAMILY_MODULES` and ``modules``).
        modules: extra or replacement family modules, ``{name: "package.module"}``.
        weightwatcher: analyse each new run's checkpoints with WeightWatcher when it is installed.
        stream: where progress goes (default stderr).
        progress: print progress at all.

    Raises:
        ValueError: bad ``suite``/``jobs``/family, or ``out`` holds a manifest of another suite.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"jobs must be an int >= 0, got {jobs!r}")
    started = time.time()
    out = Path(out)
    plan = plan_suite(suite, out, families=families, modules=modules)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(out, suite, jobs=jobs, planned=[r.name for r in plan], started=started)
    stream = stream or sys.stderr

    results: dict[str, RunResult] = {}
    todo: list[PlannedRun] = []
    for run in plan:
        outcome = valid_outcome(run)
        if outcome is not None:
            results[run.name] = RunResult(run.name, "skipped", outcome)
            manifest.record_existing(run, outcome)
        else:
            todo.append(run)
    manifest.write()

    display = _Progress(stream, plan, results, manifest, jobs=max(jobs, 1), enabled=progress)
    display.note(
        f"suite {suite}: {len(plan)} runs, {len(results)} already complete, {len(todo)} to run "
        f"with {jobs} worker{'s' if jobs != 1 else ''} -> {out}"
    )
    try:
        if jobs == 0:
            _run_inline(todo, results, manifest, display, weightwatcher)
        else:
            _run_workers(todo, results, manifest, display, jobs, weightwatcher)
        manifest.end_session()  # only a session that got through its list counts as finished
    finally:
        manifest.write()
        display.close()
    ordered = tuple(results[r.name] for r in plan if r.name in results)
    return SuiteReport(suite, out, ordered, time.time() - started, manifest.data)


# -- running ----------------------------------------------------------------------------------------------


def _prepare_dir(run: PlannedRun) -> None:
    """Wipe an interrupted or stale run directory so the run starts from nothing."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)


def _train_one(
    module_name: str,
    config: Any,
    run_dir: Path,
    progress: Callable[[int, int], None] | None,
    weightwatcher: bool,
    analysing: Callable[[], None] | None = None,
) -> tuple[RunOutcome, float, float, str]:
    """Train one run, then its WeightWatcher analysis; (outcome, train s, WeightWatcher s, note)."""
    module = importlib.import_module(module_name)
    start = time.perf_counter()
    outcome = module.run(config, run_dir, progress=progress)
    train_s = time.perf_counter() - start
    ww_s, note = 0.0, ""
    from spectral_edge_studies.study import alarms

    if weightwatcher and alarms.weightwatcher_available():
        if analysing is not None:
            analysing()
        start = time.perf_counter()
        try:
            alarms.weightwatcher_series(run_dir)
        except Exception as exc:  # the run itself is complete: the summary retries the analysis
            note = f"WeightWatcher analysis failed: {type(exc).__name__}: {exc}"
        ww_s = time.perf_counter() - start
    return outcome, train_s, ww_s, note


def _run_inline(
    todo: Sequence[PlannedRun],
    results: dict[str, RunResult],
    manifest: _Manifest,
    display: _Progress,
    weightwatcher: bool,
) -> None:
    for index, run in enumerate(todo):
        _prepare_dir(run)
        manifest.start(run)
        display.started(index, run)

        def progress(step: int, total: int, index: int = index) -> None:
            display.step(index, step, total)

        start = time.perf_counter()
        try:
            outcome, train_s, ww_s, note = _train_one(
                run.module,
                run.config,
                run.run_dir,
                progress,
                weightwatcher,
                lambda index=index: display.analysing(index),
            )
        except Exception:
            error = traceback.format_exc()
            _finish(
                run,
                RunResult(run.name, "failed", None, time.perf_counter() - start, 0.0, error),
                results,
                manifest,
                display,
                index,
            )
        else:
            _finish(
                run,
                RunResult(run.name, "done", outcome, train_s, ww_s, note or None),
                results,
                manifest,
                display,
                index,
            )


def _finish(
    run: PlannedRun,
    result: RunResult,
    results: dict[str, RunResult],
    manifest: _Manifest,
    display: _Progress,
    index: int,
) -> None:
    results[run.name] = result
    manifest.finish(run, result)
    manifest.write()
    display.finished(index, run, result)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: int | None = None  # index into todo of the run it holds


def _run_workers(
    todo: Sequence[PlannedRun],
    results: dict[str, RunResult],
    manifest: _Manifest,
    display: _Progress,
    jobs: int,
    weightwatcher: bool,
) -> None:
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    pending = deque(range(len(todo)))
    workers: list[_Worker] = []
    started_at: dict[int, float] = {}
    last_write = time.monotonic()

    def spawn() -> _Worker:
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=_worker_main,
            args=(child_end, os.getpid(), weightwatcher),
            name="spectral-edge-suite",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    try:
        for _ in range(min(jobs, len(todo))):
            workers.append(spawn())
        while pending or any(w.task is not None for w in workers):
            for worker in workers:
                if worker.task is None and pending:
                    index = pending.popleft()
                    run = todo[index]
                    _prepare_dir(run)
                    manifest.start(run)
                    manifest.write()
                    worker.conn.send((index, run.module, run.config, str(run.run_dir)))
                    worker.task = index
                    started_at[index] = time.perf_counter()
                    display.started(index, run)
            busy = [w for w in workers if w.task is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_REDRAW_EVERY)
            for worker in list(busy):
                message = None
                if worker.conn in ready or worker.process.sentinel in ready:
                    try:
                        while worker.conn.poll():
                            message = worker.conn.recv()
                            if message[0] == "progress":
                                display.step(message[1], message[2], message[3])
                                message = None
                            elif message[0] == "analysing":
                                display.analysing(message[1])
                                message = None
                            else:
                                break
                    except (EOFError, OSError):
                        message = None
                if message is not None:
                    kind, index = message[0], message[1]
                    run = todo[index]
                    if kind == "done":
                        outcome = RunOutcome.from_dict(message[2])
                        result = RunResult(
                            run.name, "done", outcome, message[3], message[4], message[5] or None
                        )
                    else:
                        elapsed = time.perf_counter() - started_at[index]
                        result = RunResult(run.name, "failed", None, elapsed, 0.0, message[2])
                    worker.task = None
                    _finish(run, result, results, manifest, display, index)
                elif not worker.process.is_alive():
                    index = worker.task
                    run = todo[index]
                    worker.process.join()
                    code = worker.process.exitcode
                    error = f"the worker process died (exit code {code}) while training {run.name}"
                    elapsed = time.perf_counter() - started_at[index]
                    _finish(
                        run,
                        RunResult(run.name, "failed", None, elapsed, 0.0, error),
                        results,
                        manifest,
                        display,
                        index,
                    )
                    worker.conn.close()
                    workers.remove(worker)
                    if pending:
                        workers.append(spawn())
            display.redraw()
            if time.monotonic() - last_write >= _LOG_EVERY:  # a killed suite still counts its wall time
                manifest.write()
                last_write = time.monotonic()
    finally:
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5.0
        for worker in workers:
            if worker.task is not None:  # interrupted mid-run: do not wait for it to finish
                worker.process.terminate()
            worker.process.join(timeout=max(deadline - time.monotonic(), 0.1))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


class _ParentGone(BaseException):
    """Raised inside a worker's progress callback when the suite process is gone."""


def _worker_main(conn: Connection, parent_pid: int, weightwatcher: bool) -> None:
    """A worker: one torch thread, then runs from the pipe until it sends None or the parent disappears."""
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        index, module_name, config, run_dir = task
        last = 0.0

        def progress(step: int, total: int, index: int = index) -> None:
            nonlocal last
            if os.getppid() != parent_pid:
                raise _ParentGone
            now = time.monotonic()
            if now - last >= _WORKER_PROGRESS_EVERY or step >= total:
                last = now
                try:
                    conn.send(("progress", index, int(step), int(total)))
                except (OSError, BrokenPipeError) as exc:
                    raise _ParentGone from exc

        try:
            outcome, train_s, ww_s, note = _train_one(
                module_name,
                config,
                Path(run_dir),
                progress,
                weightwatcher,
                lambda index=index: conn.send(("analysing", index)),
            )
            message = ("done", index, outcome.to_dict(), train_s, ww_s, note)
        except _ParentGone:
            return
        except KeyboardInterrupt:
            return
        except BaseException:
            message = ("failed", index, traceback.format_exc())
        try:
            conn.send(message)
        except (OSError, BrokenPipeError):
            return


# -- the manifest -----------------------------------------------------------------------------------------


class _Manifest:
    """``suite.json``: sessions and runs, accumulated across resumed sessions; written atomically."""

    def __init__(self, out: Path, suite: str, *, jobs: int, planned: list[str], started: float) -> None:
        self.path = out / MANIFEST
        data = read_manifest(out)
        if data is not None and data.get("suite") not in (None, suite):
            raise ValueError(
                f"{out} holds the {data.get('suite')!r} suite (see {self.path}); the {suite!r} suite needs its "
                "own directory: pass another --out"
            )
        self.data: dict[str, Any] = data or {
            "format": _MANIFEST_FORMAT,
            "suite": suite,
            "sessions": [],
            "runs": {},
        }
        known = list(self.data.get("planned", []))  # sessions may run different families: keep them all
        self.data["planned"] = known + [name for name in planned if name not in known]
        self._started = started
        self.session = {
            "started": _iso(started),
            "ended": _iso(started),
            "wall_s": 0.0,
            "jobs": jobs,
            "finished": False,
            "trained": 0,
            "failed": 0,
            "skipped": 0,
            "python_pid": os.getpid(),
        }
        self.data["sessions"].append(self.session)
        self.index = len(self.data["sessions"]) - 1

    def record_existing(self, run: PlannedRun, outcome: RunOutcome) -> None:
        self.session["skipped"] += 1
        entry = self.data["runs"].get(run.name)
        if entry is None or entry.get("status") != "done":  # complete on disk but not in the manifest
            self.data["runs"][run.name] = {
                **_identity(run),
                "status": "done",
                "wall_s": float(outcome.wall_s),
                "ww_s": 0.0,
                "compute_s": float(outcome.wall_s),
                "steps": outcome.steps,
                "attempts": (entry or {}).get("attempts", 1),
                "session": None,
                "error": None,
            }

    def start(self, run: PlannedRun) -> None:
        entry = self.data["runs"].setdefault(run.name, {**_identity(run), "attempts": 0, "compute_s": 0.0})
        entry.update(status="running", session=self.index)
        entry["attempts"] = int(entry.get("attempts", 0)) + 1

    def finish(self, run: PlannedRun, result: RunResult) -> None:
        entry = self.data["runs"].setdefault(run.name, {**_identity(run), "attempts": 1, "compute_s": 0.0})
        entry.update(
            status=result.status,
            wall_s=result.wall_s,
            ww_s=result.ww_s,
            steps=None if result.outcome is None else result.outcome.steps,
            error=result.error,
            finished=_iso(time.time()),
            session=self.index,
        )
        entry["compute_s"] = float(entry.get("compute_s", 0.0)) + result.wall_s + result.ww_s
        self.session["trained" if result.status == "done" else "failed"] += 1

    def end_session(self) -> None:
        self.session["finished"] = True

    def write(self) -> None:
        now = time.time()
        self.session["ended"] = _iso(now)
        self.session["wall_s"] = now - self._started
        runs = self.data["runs"].values()
        self.data["totals"] = {
            "wall_s": sum(float(s.get("wall_s", 0.0)) for s in self.data["sessions"]),
            "compute_s": sum(float(r.get("compute_s", 0.0)) for r in runs),
            "train_s": sum(float(r.get("wall_s", 0.0)) for r in runs if r.get("status") == "done"),
            "weightwatcher_s": sum(float(r.get("ww_s", 0.0)) for r in runs if r.get("status") == "done"),
            "sessions": len(self.data["sessions"]),
            "done": sum(r.get("status") == "done" for r in runs),
            "failed": sum(r.get("status") == "failed" for r in runs),
        }
        write_json(self.path, self.data)

    def seconds_per_step(self) -> dict[str, float]:
        """family -> mean seconds per step over the runs the manifest has finished (any session)."""
        totals: dict[str, list[float]] = {}
        for entry in self.data["runs"].values():
            if entry.get("status") == "done" and entry.get("steps"):
                t = totals.setdefault(entry["family"], [0.0, 0.0])
                t[0] += float(entry.get("wall_s", 0.0)) + float(entry.get("ww_s", 0.0))
                t[1] += float(entry["steps"])
        return {family: s / n for family, (s, n) in totals.items() if n > 0 and s > 0}


def _identity(run: PlannedRun) -> dict[str, Any]:
    return {
        "family": run.family,
        "task": str(run.config.task),
        "seed": int(run.config.seed),
        "weight_decay": float(run.config.weight_decay),
        "max_steps": run.max_steps,
        "run_dir": str(run.run_dir),
    }


# -- progress ---------------------------------------------------------------------------------------------


class _Progress:
    """One status line on stderr: runs done/total, failures, runs in flight, elapsed and ETA."""

    def __init__(
        self,
        stream: TextIO,
        plan: Sequence[PlannedRun],
        results: Mapping[str, RunResult],
        manifest: _Manifest,
        *,
        jobs: int,
        enabled: bool,
    ) -> None:
        self.stream = stream
        self.enabled = enabled
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.total = len(plan)
        self.results = results
        self.manifest = manifest
        self.jobs = jobs
        self.start = time.perf_counter()
        self.active: dict[int, tuple[PlannedRun, int, int]] = {}  # index -> (run, step, max_steps)
        self.phase: dict[int, str] = {}  # index -> what a run does after training
        self.remaining = {r.name: r for r in plan if r.name not in results}
        self._last_draw = 0.0
        self._last_log = time.perf_counter()
        self._session_steps = 0.0
        self._session_seconds = 0.0

    def note(self, text: str) -> None:
        if self.enabled:
            self._clear()
            print(text, file=self.stream, flush=True)

    def started(self, index: int, run: PlannedRun) -> None:
        self.active[index] = (run, 0, run.max_steps)
        self.redraw(force=True)

    def step(self, index: int, step: int, total: int) -> None:
        if index in self.active:
            run = self.active[index][0]
            self.active[index] = (run, step, total)
        self.redraw()

    def analysing(self, index: int) -> None:
        """The run finished training and its checkpoints go through WeightWatcher."""
        self.phase[index] = "WeightWatcher"
        self.redraw(force=True)

    def finished(self, index: int, run: PlannedRun, result: RunResult) -> None:
        self.phase.pop(index, None)
        self.active.pop(index, None)
        self.remaining.pop(run.name, None)
        if result.status == "done" and result.outcome is not None:
            self._session_steps += result.outcome.steps
            self._session_seconds += result.wall_s + result.ww_s
            o = result.outcome
            grok = f"grok {o.grok_step}" if o.grok_step is not None else "no grok"
            ww = f", WeightWatcher {result.ww_s:.0f} s" if result.ww_s else ""
            text = f"done   {run.name}: {grok}, test acc {o.final_test_acc:.3f}, {result.wall_s:.0f} s{ww}"
        else:
            first = (result.error or "").strip().splitlines()
            text = f"FAILED {run.name}: {first[-1] if first else 'unknown error'}"
        self.note(f"{self.line()}\n  {text}" if not self.interactive else text)
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.interactive:
            if not force and now - self._last_draw < _REDRAW_EVERY:
                return
            self._last_draw = now
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
        elif now - self._last_log >= _LOG_EVERY:  # a log, not a terminal: a line now and then
            self._last_log = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        done = sum(r.status in ("done", "skipped") for r in self.results.values())
        failed = sum(r.status == "failed" for r in self.results.values())
        elapsed = time.perf_counter() - self.start
        flight = ", ".join(
            f"{run.name} {self.phase.get(i) or f'{100 * step // max(total, 1)}%'}"
            for i, (run, step, total) in list(self.active.items())[:3]
        )
        parts = [f"[{done + failed}/{self.total} runs"]
        if failed:
            parts.append(f", {failed} failed")
        parts.append(f"] elapsed {_clock(elapsed)} ETA {_clock(self.eta())}")
        if flight:
            parts.append(f" | {flight}")
        return "".join(parts)

    def eta(self) -> float:
        """Seconds left: remaining steps of each run × its family's seconds per step, over the workers."""
        rates = self.manifest.seconds_per_step()
        fallback = (
            self._session_seconds / self._session_steps
            if self._session_steps
            else (sum(rates.values()) / len(rates) if rates else math.nan)
        )
        if not math.isfinite(fallback):
            partial = [(step, run) for run, step, _ in self.active.values() if step > 0]
            if not partial:
                return math.nan
            elapsed = time.perf_counter() - self.start
            fallback = elapsed / sum(step for step, _ in partial)
        active_steps = {run.name: step for run, step, _ in self.active.values()}
        work = 0.0
        for name, run in self.remaining.items():
            left = max(run.max_steps - active_steps.get(name, 0), 0)
            work += left * rates.get(run.family, fallback)
        return work / max(min(self.jobs, len(self.remaining)), 1)

    def _clear(self) -> None:
        if self.interactive:
            self.stream.write("\r\033[K")

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# -- helpers ----------------------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(vars(config))


def _canonical(value: Any) -> str:
    """A config as canonical JSON text, so a tuple and the list JSON made of it compare equal."""
    return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)


__all__ = [
    "FAMILY_MODULES",
    "MANIFEST",
    "OUTCOME_FILE",
    "PlannedRun",
    "RunResult",
    "SuiteReport",
    "plan_suite",
    "read_manifest",
    "resolve_families",
    "run_dir_name",
    "run_suite",
    "valid_outcome",
]
