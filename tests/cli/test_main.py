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
    out = capsys.readouterr().out.strip()
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
    table = pq.read_table(capsys.readouterr().out.strip())
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
