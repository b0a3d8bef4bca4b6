"""The suite runner: the matrix, resuming, crash isolation, a killed suite, and the CLI end to end.

The runs come from a tiny family that follows the run contract (``_fake_family``: a 2-layer MLP that
"groks" with weight decay and cannot without), so these tests train for real in seconds. The last test
runs the real ``smoke`` suite of the four families through the CLI when all four exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from spectral_edge.cli.main import main
from spectral_edge_studies.study.common import OUTCOME_FILE, load_outcome
from spectral_edge_studies.study.suite import (
    FAMILY_MODULES,
    MANIFEST,
    plan_suite,
    read_manifest,
    resolve_families,
    run_dir_name,
    run_suite,
    valid_outcome,
)

# Importable as pytest imports them: studies/tests (no __init__.py) is the root of the test packages.
FAKE = {"fake": "study._fake_family"}
CRASHING = {"crashing": "study._fake_crashing"}
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_suite(tmp_path_factory) -> Path:
    """The fake family's smoke suite, run once in this process; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("fake") / "suite"
    report = run_suite(
        "smoke", out, jobs=0, families=["fake"], modules=FAKE, weightwatcher=False, progress=False
    )
    assert [r.status for r in report.results] == ["done"] * 4
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())  # run_dir entries point at the copy
    for entry in manifest["runs"].values():
        entry["run_dir"] = entry["run_dir"].replace(str(src), str(dst))
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in out.glob(f"*/*/{OUTCOME_FILE}")}


def test_plan_lays_out_the_matrix(tmp_path) -> None:
    plan = plan_suite("smoke", tmp_path, families=["fake"], modules=FAKE)
    assert [r.name for r in plan] == [
        "fake/sign-seed42-wd1",
        "fake/sign-seed42-wd0",
        "fake/sign-seed137-wd1",
        "fake/sign-seed137-wd0",
    ]
    assert plan[0].run_dir == tmp_path / "fake" / "sign-seed42-wd1"
    assert list(resolve_families()) == ["modular", "multitask", "dyck", "scan"] == list(FAMILY_MODULES)
    with pytest.raises(ValueError, match="unknown families"):
        plan_suite("smoke", tmp_path, families=["nope"])
    with pytest.raises(ValueError, match="suite must be one of"):
        plan_suite("medium", tmp_path, families=["fake"], modules=FAKE)
    with pytest.raises(ValueError, match="cannot import"):
        plan_suite("smoke", tmp_path, families=["x"], modules={"x": "no_such_module_here"})


def test_run_dir_name() -> None:
    from types import SimpleNamespace

    assert run_dir_name(SimpleNamespace(task="x2_y2", seed=2024, weight_decay=0.0)) == "x2_y2-seed2024-wd0"


def test_inline_suite_resumes_without_redoing_finished_runs(fake_suite, tmp_path) -> None:
    outcomes = {
        f"fake/{p.parent.name}": load_outcome(p.parent) for p in fake_suite.glob(f"*/*/{OUTCOME_FILE}")
    }
    grokked = {name: outcome.grokked for name, outcome in outcomes.items()}
    assert grokked == {
        "fake/sign-seed42-wd1": True,
        "fake/sign-seed42-wd0": False,
        "fake/sign-seed137-wd1": True,
        "fake/sign-seed137-wd0": False,
    }
    out = _copy(fake_suite, tmp_path / "suite")
    before = _mtimes(out)
    assert len(before) == 4

    # one run interrupted (no outcome, junk left), one stale (its config no longer matches the plan)
    interrupted = out / "fake" / "sign-seed42-wd0"
    (interrupted / OUTCOME_FILE).unlink()
    (interrupted / "junk.txt").write_text("left by a killed run")
    stale = out / "fake" / "sign-seed137-wd1"
    data = json.loads((stale / OUTCOME_FILE).read_text())
    data["config"]["lr"] = 0.5
    (stale / OUTCOME_FILE).write_text(json.dumps(data))

    second = run_suite(
        "smoke", out, jobs=0, families=["fake"], modules=FAKE, weightwatcher=False, progress=False
    )
    status = {r.name: r.status for r in second.results}
    assert status == {
        "fake/sign-seed42-wd1": "skipped",
        "fake/sign-seed42-wd0": "done",
        "fake/sign-seed137-wd1": "done",
        "fake/sign-seed137-wd0": "skipped",
    }
    after = _mtimes(out)
    assert after["fake/sign-seed42-wd1"] == before["fake/sign-seed42-wd1"]
    assert after["fake/sign-seed137-wd0"] == before["fake/sign-seed137-wd0"]
    assert not (interrupted / "junk.txt").exists()  # wiped before rerunning
    assert load_outcome(stale).config["lr"] == 0.01

    manifest = read_manifest(out)
    assert manifest["suite"] == "smoke" and len(manifest["sessions"]) == 2
    assert all(s["finished"] for s in manifest["sessions"])
    assert manifest["runs"]["fake/sign-seed42-wd0"]["attempts"] == 2
    assert manifest["runs"]["fake/sign-seed42-wd1"]["attempts"] == 1
    totals = manifest["totals"]
    assert totals["done"] == 4 and totals["sessions"] == 2
    assert totals["wall_s"] == pytest.approx(sum(s["wall_s"] for s in manifest["sessions"]))
    assert totals["compute_s"] >= totals["train_s"] > 0

    with pytest.raises(ValueError, match="holds the 'smoke' suite"):
        run_suite("quick", out, jobs=0, families=["fake"], modules=FAKE, progress=False)


def test_valid_outcome_checks_identity(fake_suite, tmp_path) -> None:
    out = _copy(fake_suite, tmp_path / "suite")
    plan = plan_suite("smoke", out, families=["fake"], modules=FAKE)
    assert valid_outcome(plan[0]) is not None
    moved = replace(plan[0], config=replace(plan[0].config, seed=7))  # another run's outcome
    assert valid_outcome(moved) is None
    (plan[1].run_dir / OUTCOME_FILE).write_text("{ torn")
    assert valid_outcome(plan[1]) is None


def test_workers_record_crashes_and_go_on(tmp_path) -> None:
    """A run that raises and a worker that dies are failed runs; the suite finishes the rest."""
    out = tmp_path / "suite"
    report = run_suite(
        "smoke", out, jobs=2, families=["crashing"], modules=CRASHING, weightwatcher=False, progress=False
    )
    status = {r.name: r for r in report.results}
    assert status["crashing/crash-seed42-wd1"].status == "failed"
    assert "RuntimeError: the fake family crashed on purpose" in status["crashing/crash-seed42-wd1"].error
    assert status["crashing/die-seed42-wd1"].status == "failed"
    assert "died (exit code 3)" in status["crashing/die-seed42-wd1"].error
    assert status["crashing/sign-seed42-wd1"].status == "done"
    assert report.failed == 2 and report.completed == 1
    manifest = read_manifest(out)
    assert manifest["runs"]["crashing/crash-seed42-wd1"]["status"] == "failed"
    assert manifest["totals"]["failed"] == 2
    assert not (out / "crashing" / "crash-seed42-wd1" / OUTCOME_FILE).exists()  # retried on resume


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spectral_edge.cli.main",
        "reproduce",
        "grokking",
        "--suite",
        "quick",
        "--out",
        str(out),
        "--families",
        "fake",
        "--family-module",
        f"fake={FAKE['fake']}",
        "--no-weightwatcher",
        *extra,
    ]


def test_killed_suite_resumes(tmp_path) -> None:
    """Kill the suite (SIGKILL, no clean-up) once a run is complete; the rerun keeps it and does the rest."""
    out = tmp_path / "suite"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        _cli(out, "--jobs", "1"), cwd=TESTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # A run takes ~2 s; the limit is for a loaded 2-core machine, where starting the CLI alone can
        # take tens of seconds.
        deadline = time.monotonic() + 180
        while not list(out.glob(f"*/*/{OUTCOME_FILE}")):
            assert proc.poll() is None, "the suite ended before it could be killed"
            assert time.monotonic() < deadline, "no run finished within 180 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = _mtimes(out)
    assert 1 <= len(finished) < 4
    manifest = read_manifest(out)
    assert manifest["sessions"][0]["finished"] is False

    # the orphaned worker notices its parent is gone at its next step and stops writing
    time.sleep(1.0)
    result = subprocess.run(
        _cli(out, "--jobs", "1"), cwd=TESTS, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    after = _mtimes(out)
    assert len(after) == 4
    for name, mtime in finished.items():
        assert after[name] == mtime, f"{name} was redone"
    manifest = read_manifest(out)
    assert len(manifest["sessions"]) == 2 and manifest["sessions"][1]["skipped"] == len(finished)
    assert manifest["sessions"][1]["trained"] == 4 - len(finished)
    assert "# Grokking study: suite `quick`" in result.stdout
    assert (out / "summary.md").is_file() and (out / "summary.json").is_file()
    assert "[4/4 runs]" in result.stderr


def test_cli_summary_only_and_errors(fake_suite, tmp_path, capsys) -> None:
    missing = tmp_path / "nothing"
    assert main(["reproduce", "grokking", "--suite", "smoke", "--out", str(missing), "--summary-only"]) == 2
    assert "no suite at" in capsys.readouterr().err
    out = _copy(fake_suite, tmp_path / "suite")
    assert (
        main(
            [
                "reproduce",
                "grokking",
                "--suite",
                "smoke",
                "--out",
                str(out),
                "--summary-only",
                "--no-weightwatcher",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "| fake | 2/2 | 0/2 | — |" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_complete"] == 4 and summary["suite"] == "smoke"
    bad = ["reproduce", "grokking", "--out", str(out), "--family-module", "oops"]
    assert main(bad) == 2
    assert "NAME=MODULE" in capsys.readouterr().err


_REAL = all(importlib.util.find_spec(module) is not None for module in FAMILY_MODULES.values())


@pytest.mark.skipif(not _REAL, reason="the four family modules of the study are not all present yet")
def test_smoke_suite_end_to_end(tmp_path, capsys) -> None:
    """The real smoke suite of all four families through the CLI (two workers, no WeightWatcher)."""
    out = tmp_path / "smoke"
    start = time.perf_counter()
    code = main(
        ["reproduce", "grokking", "--suite", "smoke", "--out", str(out), "--jobs", "2", "--no-weightwatcher"]
    )
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_complete"] == summary["n_planned"] > 0
    assert set(summary["hits"]["families"]) == set(FAMILY_MODULES)
    assert (out / MANIFEST).is_file()
    assert "## Hit table" in captured.out and "## Early warning" in captured.out
    # Minutes, not tens of minutes: 110 s on the 2-core AMD EPYC under a load of 3 (the multi-task control
    # runs its whole 4,000-step budget); the limit leaves room for a slower, busier CI machine.
    assert elapsed < 900
