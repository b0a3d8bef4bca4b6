"""The command line: demo, export, and clear errors, through the real entry point."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.cli.main import main


@pytest.fixture
def small_run(tmp_path):
    """A real monitored run of a tiny regression, written to a run store."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    run = tmp_path / "run"
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    with SpectralMonitor(model, window=4, lr=opt, store=run) as mon:
        for step in range(1, 21):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss.item())
            if step % 5 == 0:
                mon.log_eval(step, val_loss=loss.item())
    return run


def test_export_csv_through_the_cli(small_run, capsys):
    assert main(["export", str(small_run), "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()[0]  # the records file, then the evals and events files
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 - 4 + 1
    assert {"step", "k_star", "gap_ratio", "sigma_1", "sigma_4", "alpha_1", "metric.loss"} <= set(rows[0])
    with RunStore(small_run, mode="r") as store:
        first = store.records()[0]
    assert int(rows[0]["step"]) == first["step"] == 4
    assert float(rows[0]["sigma_1"]) == pytest.approx(first["singular_values"][0])


def test_export_parquet_through_the_cli(small_run, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["export", str(small_run), "--format", "parquet", "--out", str(tmp_path / "x.parquet")]) == 0
    table = pq.read_table(capsys.readouterr().out.splitlines()[0])
    assert table.num_rows == 17 and "gap_ratio" in table.column_names


def test_missing_run_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "spectral-edge export: error" in err and "nope" in err


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["demo", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_console_script_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "spectral_edge.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out and "export" in out and "spectral-edge demo --weight-decay 0" in out


def test_the_command_line_shows_the_librarys_messages_on_stderr(capsys):
    """A library leaves logging to its application; the CLI shows spectral_edge's INFO messages (such as
    the fused kernel being compiled on first use), once, on the stderr of the moment."""
    import logging

    assert main(["export", "does-not-exist"]) == 2
    assert main(["export", "does-not-exist"]) == 2
    capsys.readouterr()
    logging.getLogger("spectral_edge.tracking").info("compiling the kernel")
    assert capsys.readouterr().err == "compiling the kernel\n"


class _FakeEntryPoint:
    """What the CLI reads of an importlib.metadata.EntryPoint: a name, a value and load()."""

    def __init__(self, name: str, load) -> None:
        self.name, self.value, self._load = name, f"fake_package:{name}", load

    def load(self):
        return self._load()


def _greet(subparsers) -> None:
    greet = subparsers.add_parser("greet", help="say hello from another distribution")
    greet.add_argument("--name", default="world")
    greet.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)


def test_commands_of_other_distributions_come_from_their_entry_points(monkeypatch, capsys):
    """A distribution adds a command through the spectral_edge.commands group (the studies add reproduce)."""
    import spectral_edge.cli.main as cli

    groups = []

    def entry_points(*, group):
        groups.append(group)
        return [_FakeEntryPoint("greet", lambda: _greet)]

    monkeypatch.setattr(cli, "entry_points", entry_points)
    assert main(["greet", "--name", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n" and groups == ["spectral_edge.commands"]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "say hello from another distribution" in capsys.readouterr().out


def test_a_missing_command_says_what_to_install(monkeypatch, capsys):
    """Without the studies installed, `reproduce` (--help too) names the distribution and how to get it."""
    import spectral_edge.cli.main as cli

    monkeypatch.setattr(cli, "entry_points", lambda *, group: [])
    for argv in (["reproduce", "grokking", "--suite", "smoke"], ["reproduce", "--help"], ["reproduce"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("spectral-edge reproduce: error: the 'reproduce' command is unavailable: it is")
        assert "spectral-edge-studies" in err and "pip install -e studies" in err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(unavailable)" in capsys.readouterr().out


def test_a_command_that_fails_to_load_leaves_the_others_working(monkeypatch, capsys, small_run):
    import spectral_edge.cli.main as cli

    def broken():
        raise ImportError("No module named 'fake_package'")

    monkeypatch.setattr(cli, "entry_points", lambda *, group: [_FakeEntryPoint("reproduce", broken)])
    assert main(["export", str(small_run)]) == 0
    capsys.readouterr()
    assert main(["reproduce", "lm"]) == 2
    err = capsys.readouterr().err
    assert "installed (fake_package:reproduce) but does not load" in err and "No module named" in err


def test_a_command_whose_register_fails_leaves_the_others_working(monkeypatch, capsys, small_run):
    import spectral_edge.cli.main as cli

    def register(sub):
        sub.add_parser("reproduce")  # added, then the distribution fails half-way
        raise RuntimeError("bad add-on")

    monkeypatch.setattr(
        cli, "entry_points", lambda *, group: [_FakeEntryPoint("reproduce", lambda: register)]
    )
    assert main(["export", str(small_run)]) == 0
    capsys.readouterr()
    assert main(["reproduce", "lm"]) == 2
    assert "does not load: RuntimeError('bad add-on')" in capsys.readouterr().err


def test_every_out_option_has_the_short_form():
    # Users type `-o` as with every other tool; a command that took only `--out` refused it.
    from spectral_edge.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    with_out = {
        name: action.option_strings
        for name, sub in commands.items()
        for action in sub._actions
        if "--out" in action.option_strings
    }
    assert with_out and all("-o" in strings for strings in with_out.values()), with_out
