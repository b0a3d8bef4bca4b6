"""No code outside a class reaches into its private attributes (docs/style.md): an AST check.

For every private name (``_x``, not dunder) that a class of ``spectral_edge`` defines (a method, a class
attribute, or ``self._x = ...``), an access ``obj._x`` is allowed only inside that class itself; accesses
through ``self`` and ``cls`` are always allowed. Private attributes of other libraries (torch's
``Module._parameters``) are not the library's to give a public method, and are not checked.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import spectral_edge

PACKAGE = Path(spectral_edge.__file__).parent
CHECKED = ("tracking", "integrations", "sinks")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _owners() -> dict[str, set[tuple[str, str]]]:
    """private name -> {(module, class)} of the spectral_edge classes that define it."""
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = str(path.relative_to(PACKAGE))
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                names: list[str] = []
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node in cls.body:
                    names = [node.name]
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Name) and any(t is x for s in cls.body for x in ast.walk(s)):
                            names.append(t.id)
                        elif (
                            isinstance(t, ast.Attribute)
                            and isinstance(t.value, ast.Name)
                            and t.value.id == "self"
                        ):
                            names.append(t.attr)
                for name in names:
                    if _private(name):
                        owners[name].add((module, cls.name))
    return owners


class _Reach(ast.NodeVisitor):
    def __init__(self, module: str, owners: dict[str, set[tuple[str, str]]]) -> None:
        self.module, self.owners = module, owners
        self.classes: list[str] = []
        self.found: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        through_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        if _private(name) and not through_self and name in self.owners:
            inside_owner = any((self.module, c) in self.owners[name] for c in self.classes)
            if not inside_owner:
                owners = ", ".join(sorted(f"{m}:{c}" for m, c in self.owners[name]))
                self.found.append(f"{self.module}:{node.lineno}: {ast.unparse(node)} (defined by {owners})")
        self.generic_visit(node)


def reaches(source: str, module: str, owners: dict[str, set[tuple[str, str]]]) -> list[str]:
    visitor = _Reach(module, owners)
    visitor.visit(ast.parse(source))
    return visitor.found


def test_no_module_reaches_into_another_class_private_attributes():
    owners = _owners()
    found = []
    for part in CHECKED:
        for path in sorted((PACKAGE / part).rglob("*.py")):
            found += reaches(path.read_text(), str(path.relative_to(PACKAGE)), owners)
    assert not found, "\n".join(found)


def test_the_check_flags_a_reach_and_allows_self_and_the_owner():
    owners = {"_win": {("tracking/monitor.py", "SpectralMonitor")}}
    bad = "def f(monitor):\n    return monitor._win.layout\n"
    assert reaches(bad, "tracking/checkpoints.py", owners) == [
        "tracking/checkpoints.py:2: monitor._win (defined by tracking/monitor.py:SpectralMonitor)"
    ]
    inside = "class SpectralMonitor:\n    def g(self, other):\n        return self._win, other._win\n"
    assert reaches(inside, "tracking/monitor.py", owners) == []
    assert reaches("x = torch.nn.Module()._parameters\n", "tracking/a.py", owners) == []
    # The check runs on the real owners too: the monitor's window is one of them.
    assert ("tracking/monitor.py", "SpectralMonitor") in _owners()["_win"]
