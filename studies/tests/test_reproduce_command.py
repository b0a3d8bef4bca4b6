"""`spectral-edge reproduce`: the studies' command, found by the library's CLI through an entry point."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from spectral_edge.cli.main import COMMAND_GROUP


def test_the_studies_register_reproduce_in_the_librarys_command_group() -> None:
    found = {entry.name: entry.value for entry in entry_points(group=COMMAND_GROUP)}
    assert found.get("reproduce") == "spectral_edge_studies.reproduce_command:register"


def test_reproduce_help_through_the_console_script_imports_no_study() -> None:
    """--help lists the studies without importing them (nor torch's training code behind them)."""
    code = (
        "import sys\n"
        "from spectral_edge.cli.main import main\n"
        "try:\n"
        "    main(['reproduce', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('spectral_edge_studies.'))\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "grokking" in out and "lm" in out and "spectral-edge reproduce lm --suite quick" in out
    assert "LOADED ['spectral_edge_studies.reproduce_command']" in out
