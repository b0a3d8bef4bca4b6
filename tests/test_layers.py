"""Imports go one way (docs/layout.md, "The layers"): checked on the source, so a new import that crosses
a layer fails here rather than in a reader's head. Imports inside functions count too: a lazy import is
still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spectral_edge"

# layer -> the spectral_edge modules it may import (prefixes); the package's own __init__ is the top.
ALLOWED = {
    "spectrum": ("spectral_edge.spectrum", "spectral_edge.errors"),
    "tracking": (
        "spectral_edge.spectrum",
        "spectral_edge.tracking",
        "spectral_edge.errors",
        "spectral_edge._imports",
        "spectral_edge.sinks",  # the monitor's fan-out delivers to sinks, the store's among them
        "spectral_edge.store",
    ),
    "sinks": (
        "spectral_edge.sinks",
        "spectral_edge.tracking.record",
        "spectral_edge.store",
        "spectral_edge.errors",
        "spectral_edge._imports",
    ),
    "store": (
        "spectral_edge.tracking.record",
        "spectral_edge.errors",
        "spectral_edge._imports",
        "spectral_edge.frames",  # the DataFrame views of a run
    ),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_the_studies(path):
    assert not [n for n in _imports(path) if n.split(".")[0] == "spectral_edge_studies"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below(layer):
    paths = [PACKAGE / "store.py"] if layer == "store" else sorted((PACKAGE / layer).rglob("*.py"))
    crossing = {
        f"{p.relative_to(PACKAGE)} imports {name}"
        for p in paths
        for name in _imports(p)
        if name.startswith("spectral_edge.") and not name.startswith(ALLOWED[layer])
    }
    assert not crossing, sorted(crossing)


def test_the_maths_never_imports_torch():
    # spectrum/ is pure NumPy: a torch tensor is recognised through sys.modules, never imported there.
    assert not [
        f"{p.name}: {n}"
        for p in (PACKAGE / "spectrum").rglob("*.py")
        for n in _imports(p)
        if n.split(".")[0] == "torch"
    ]
