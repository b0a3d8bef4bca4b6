"""The C++ extension's loader never blocks a training process (issue 14, item 1).

torch's extension loader takes a lock *file* at every start; a process killed while holding it left the
file behind and every later monitor on the machine waited for it forever. Each test starts a fresh
Python process on its own extension folder (``TORCH_EXTENSIONS_DIR``), laid out as a kill leaves it, and
asserts the monitor comes up within a deadline. The built folder is copied from this machine's own build
so that no test compiles (ninja finds the objects up to date), except the slow kill-during-build test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spectral_edge.tracking._native as native
from spectral_edge.tracking._native import READY, build_dir, build_name, native_kernel, native_op

pytestmark = pytest.mark.skipif(native_kernel() is None, reason="the C++ kernel cannot be built here")

# Constructs a monitor and prints which push it got, how long construction took, and any warning.
CHILD = textwrap.dedent(
    """
    import logging, time, torch
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    import spectral_edge as se
    t = time.perf_counter()
    mon = se.SpectralMonitor([torch.nn.Parameter(torch.zeros(100))], window=3, lr=0.1, groups=None)
    print("KERNEL", mon._win.kernel, round(time.perf_counter() - t, 3), flush=True)
    from spectral_edge.tracking.sketch import SketchedWindow
    print("SKETCH", SketchedWindow(100, window=2, sketch_dim=8).kernel, flush=True)
    """
)


def run_child(extensions: Path, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """The child above with ``TORCH_EXTENSIONS_DIR=extensions``; fails the test (and kills the child)
    if it has not finished within ``timeout`` seconds."""
    full_env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), **env}
    try:
        return subprocess.run(
            [sys.executable, "-c", CHILD], env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed and reaped the child
        pytest.fail(f"a monitor did not start within {timeout} s: the loader is blocked")


@pytest.fixture
def built_copy(tmp_path: Path) -> Path:
    """An extension root holding a copy of this machine's built kernel folder; returns the folder."""
    name = build_name()
    folder = tmp_path / name
    shutil.copytree(build_dir(name), folder)
    return folder


def test_a_built_kernel_is_imported_without_any_lock(built_copy):
    """A lock file left in a complete build folder (a process killed while loading) blocks nothing."""
    (built_copy / "lock").touch()
    done = run_child(built_copy.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "KERNEL fused" in done.stdout
    assert "SKETCH sketch-compiled" in done.stdout  # the CountSketch operator is in the same build


def test_a_stale_lock_of_a_build_killed_midway_is_removed_and_the_build_finishes(built_copy):
    """The state a build killed midway leaves: torch's lock file, and no mark of completion."""
    (built_copy / READY).unlink()
    (built_copy / "lock").touch()
    done = run_child(built_copy.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "KERNEL fused" in done.stdout
    assert (built_copy / READY).exists() and not (built_copy / "lock").exists()


def test_a_build_that_never_ends_elsewhere_gives_the_torch_path_after_the_timeout(built_copy):
    """Another process holds the build lock (building, or hung): wait at most the timeout, then warn
    and use the torch path, never hang."""
    (built_copy / READY).unlink()
    fd = os.open(built_copy.with_name(built_copy.name + ".flock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by this (test) process for the child's whole life
        started = time.monotonic()
        done = run_child(built_copy.parent, timeout=120, SPECTRAL_EDGE_BUILD_TIMEOUT="2")
        took = time.monotonic() - started
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert "KERNEL torch" in done.stdout
    assert "SKETCH sketch\n" in done.stdout
    assert "another process has been building the kernel" in done.stderr
    assert "SPECTRAL_EDGE_BUILD_TIMEOUT" in done.stderr
    assert took < 60


def test_switched_off_it_is_never_loaded(tmp_path):
    done = run_child(tmp_path, timeout=120, SPECTRAL_EDGE_KERNEL="torch")
    assert done.returncode == 0, done.stderr
    assert "KERNEL torch" in done.stdout
    assert "SKETCH sketch\n" in done.stdout
    assert not any(tmp_path.iterdir())  # nothing was built or locked


def test_the_count_sketch_operator_is_registered_under_the_modules_name():
    """count_sketch.cpp registers a torch operator (not a pybind11 function) in a namespace named after the
    build, so that the loader's module and the operator come from one library."""
    op = native_op("count_sketch")
    assert op is not None and str(op).startswith(native_kernel().__name__)
    assert build_name() == native_kernel().__name__ and "count_sketch.cpp" in native.SOURCES


def test_a_failed_build_gives_no_operator(monkeypatch):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", "RuntimeError: no compiler")
    assert native_op("count_sketch") is None


@pytest.mark.slow
def test_a_kill_at_any_moment_of_a_first_build_leaves_nothing_that_blocks_the_next(tmp_path):
    """SIGKILL a process at several moments of a first build on an empty extension root; the next start
    must come up (building or importing) within a deadline that covers one compile on a loaded machine."""
    for delay in (0.5, 3.0, 12.0):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so the kill reaches the compiler too, as a killed job's would
        )
        time.sleep(delay)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        done = run_child(tmp_path, timeout=400)
        assert done.returncode == 0, done.stderr
        assert "KERNEL fused" in done.stdout
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
