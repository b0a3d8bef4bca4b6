"""Every command that reads a run store, on a damaged or missing one: one line that names the file, exit 2.

Regression (issue 14, item 7): ``summary``, ``export`` and ``report`` on a run.db damaged mid-file raised
``sqlite3.OperationalError: Could not decode to UTF-8 column 'groups'`` or ``sqlite3.DatabaseError:
database disk image is malformed`` as tracebacks, and ``watch --once`` printed the run and exited 0: it
reads only the last record, which the damage had spared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spectral_edge.cli.main import main
from tests.cli.runs import write_checkpoints, write_run

PAGE = 4096  # SQLite's default page size, which the run store keeps


def _damage_text(db: Path) -> None:
    """Bytes that are not UTF-8 inside a record's JSON, mid-file: the file's structure is intact."""
    data = bytearray(db.read_bytes())
    at = data.index(b'"singular_values": [', len(data) // 2) + len(b'"singular_values": [')
    data[at : at + 2] = b"\xff\xfe"
    db.write_bytes(bytes(data))


def _damage_page(db: Path) -> None:
    """A page of the records table zeroed, mid-file (a torn or lost write)."""
    data = bytearray(db.read_bytes())
    at = data.index(b'"singular_values": [', len(data) // 2) // PAGE * PAGE
    data[at : at + PAGE] = bytes(PAGE)
    db.write_bytes(bytes(data))


def _damage_header(db: Path) -> None:
    """Page 1 after the 100-byte file header: the schema table's page."""
    data = bytearray(db.read_bytes())
    data[100:400] = b"\x5a" * 300
    db.write_bytes(bytes(data))


DAMAGE = {"text": _damage_text, "page": _damage_page, "header": _damage_header, "missing": None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A good run, a damaged copy of it per kind of damage, and a checkpoint folder for analyze."""
    root = tmp_path_factory.mktemp("damaged")
    write_run(root / "good")
    for name, damage in DAMAGE.items():
        if damage is not None:
            shutil.copytree(root / "good", root / name)
            damage(root / name / "run.db")
    write_checkpoints(root / "checkpoints", "pt", [0, 1, 2, 3])
    return root


COMMANDS = {
    "summary": lambda root, run: ["summary", str(run)],
    "summary --json": lambda root, run: ["summary", str(run), "--json"],
    "compare": lambda root, run: ["compare", str(root / "good"), str(run)],
    "export": lambda root, run: ["export", str(run), "--out", str(root / "out" / run.name)],
    "report": lambda root, run: ["report", str(run), "--out", str(root / "out" / f"{run.name}.html")],
    "watch --once": lambda root, run: ["watch", str(run), "--once"],
    # analyze reads a store only to refuse to overwrite it; a missing --store is created, so its missing
    # case is the checkpoint folder.
    "analyze": lambda root, run: (
        ["analyze", str(root / "checkpoints"), "--window", "2", "--store", str(run)]
        if run.exists()
        else ["analyze", str(run), "--window", "2"]
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_damaged_or_missing_store_is_one_line_that_names_the_file(runs, capsys, damage, command):
    if command == "report":
        pytest.importorskip("plotly")
    run = runs / damage
    assert main(COMMANDS[command](runs, run)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    name = command.split()[0]
    assert err.startswith(f"spectral-edge {name}: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and str(run) in err
    if damage == "missing":
        assert "does not exist" in err or "no run directory" in err
    elif command != "analyze":  # analyze refuses to overwrite a store that COUNT(*) still reads
        assert "is damaged" in err and "sqlite3 " in err and ".recover" in err  # what to do about it
    assert "records" not in captured.out  # nothing printed as if the run were fine


def test_the_good_run_reads(runs, capsys):
    """The damage is in the copies only: the same commands on the original succeed."""
    assert main(["watch", str(runs / "good"), "--once"]) == 0
    assert main(["summary", str(runs / "good")]) == 0
    capsys.readouterr()
