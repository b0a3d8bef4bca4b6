"""What a user installs: the wheel and sdist built from this checkout, run through the README's quickstart.

The wheel is built with setuptools' own PEP 517 hooks (what ``pip install .`` and ``python -m build`` call)
and installed with ``--no-deps --no-index`` into a fresh virtual environment, which borrows torch and numpy
from the test environment through a ``.pth`` file (a path added that way is not a site directory, so the
checkout's editable install is not visible there: ``spectral_edge`` can only come from the wheel). The
README's quickstart block then runs in that environment, and the installed console script reads the run
it wrote.
"""

from __future__ import annotations

import re
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What the quickstart leaves to the reader: a model, its optimizer and loss, and a loader of batches.
PREAMBLE = """
import collections
import torch
torch.manual_seed(0)
Batch = collections.namedtuple("Batch", "x y")
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
loss_fn = torch.nn.functional.mse_loss
loader = [Batch(torch.randn(8, 6), torch.randn(8, 1)) for _ in range(40)]
"""


def _build(hook: str, source: Path, out: Path) -> Path:
    out.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # From a copy of the checkout: setuptools writes build/ and *.egg-info where it runs, and a stale
    # build/ in a working tree would put files that no longer exist into the wheel.
    source = tmp_path_factory.mktemp("source") / "spectral-edge"
    skip = shutil.ignore_patterns(
        ".git",
        ".venv*",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        "*_cache",
        ".hypothesis",
        "runs",
        "test-artifacts",
    )
    shutil.copytree(ROOT, source, ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    return _build("build_wheel", source, out), _build("build_sdist", source, out)


def test_the_wheel_holds_the_library_its_kernels_and_types_and_nothing_else(dists):
    names = zipfile.ZipFile(dists[0]).namelist()
    assert "spectral_edge/py.typed" in names
    assert {"spectral_edge/csrc/fused_push.cpp"} <= set(names)
    assert "spectral_edge/demo.py" in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"spectral_edge"}, tops  # no studies, no tests
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "spectral-edge = spectral_edge.cli.main:main" in zipfile.ZipFile(dists[0]).read(entry_points).decode()
    )


def test_the_sdist_builds_the_same_wheel_contents(dists, tmp_path):
    with tarfile.open(dists[1]) as sdist:
        members = sdist.getnames()
        root = members[0].split("/")[0]
        assert f"{root}/pyproject.toml" in members and f"{root}/src/spectral_edge/py.typed" in members
        sdist.extractall(tmp_path, filter="data")
    wheel = _build("build_wheel", tmp_path / root, tmp_path / "wheel")
    assert sorted(zipfile.ZipFile(wheel).namelist()) == sorted(zipfile.ZipFile(dists[0]).namelist())


def test_the_readme_quickstart_runs_from_the_wheel_in_a_fresh_venv(dists, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # torch, numpy and the rest from the test environment, after the fresh one's own packages.
    Path(purelib, "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(dists[0])],
        check=True,
        capture_output=True,
    )

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = re.search(r"## Use it in your training loop.*?```python\n(.*?)```", readme, re.S)
    assert quickstart, "the README's quickstart block moved: update this test"
    script = (
        PREAMBLE
        + quickstart.group(1)
        + textwrap.dedent(
            """
        import spectral_edge
        print("FROM", spectral_edge.__file__)
        print("RECORDS", len(spectral_edge.RunStore("runs/exp1").records()))
        """
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "SPECTRAL_EDGE_KERNEL": "torch", "HOME": str(tmp_path)}
    ran = subprocess.run([python, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    lines = dict(
        line.split(" ", 1) for line in ran.stdout.splitlines() if line.startswith(("FROM", "RECORDS"))
    )
    assert Path(lines["FROM"]).is_relative_to(env_dir), lines["FROM"]  # the wheel, not the checkout
    assert int(lines["RECORDS"]) == 40 - 10 + 1  # one record per step once the W = 10 window is full

    summary = subprocess.run(
        [env_dir / "bin" / "spectral-edge", "summary", "runs/exp1"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert summary.returncode == 0, summary.stderr
    assert "records" in summary.stdout and "31" in summary.stdout
