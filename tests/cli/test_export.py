"""``spectral-edge export``: into a folder given as ``-o dir/``, every file printed, per-group columns."""

from __future__ import annotations

import csv

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.cli.main import main


@pytest.fixture
def grouped_run(tmp_path):
    """A monitored run with two groups (the two Linear layers) and an evaluation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    run = tmp_path / "run"
    with SpectralMonitor(model, window=3, lr=opt, store=run, kernel="torch") as mon:
        for _ in range(8):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss.item())
        mon.log_eval(8, val_loss=loss.item())
    return run


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("form", ["slash", "bare", "existing"])
def test_out_folder_gets_every_table_and_each_path_is_printed(grouped_run, tmp_path, capsys, form):
    folder = tmp_path / "tables"
    if form == "existing":
        folder.mkdir()
    arg = str(folder) + ("/" if form == "slash" else "")
    assert main(["export", str(grouped_run), "-o", arg]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [folder / "records.csv", folder / "records_evals.csv", folder / "records_events.csv"]
    assert printed == [str(p) for p in expected]
    assert all(p.is_file() for p in expected)
    assert not (tmp_path / "tables.csv").exists()  # the old behaviour wrote the folder's name as a file


def test_the_records_table_has_the_per_group_columns(grouped_run, tmp_path, capsys):
    assert main(["export", str(grouped_run), "-o", str(tmp_path / "out") + "/"]) == 0
    rows = read_csv(capsys.readouterr().out.splitlines()[0])
    with RunStore(grouped_run) as store:
        records = store.records()
    assert len(rows) == len(records) == 6
    for group in ("0", "2"):
        assert [int(r[f"group.{group}.k_star"]) for r in rows] == [
            rec["groups"][group]["k_star"] for rec in records
        ]
        assert [float(r[f"group.{group}.gap_ratio"]) for r in rows] == [
            rec["groups"][group]["gap_ratio"] for rec in records
        ]
    assert {"sigma_1", "sigma_3", "metric.loss", "regime"} <= set(rows[0])
    evals = read_csv(tmp_path / "out" / "records_evals.csv")
    assert [(r["step"], r["name"]) for r in evals] == [("8", "val_loss")]


def test_a_file_name_is_still_the_records_file(grouped_run, tmp_path, capsys):
    assert main(["export", str(grouped_run), "-o", str(tmp_path / "flat.csv")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(tmp_path / name) for name in ("flat.csv", "flat_evals.csv", "flat_events.csv")
    ]


def test_export_reports_progress_and_the_command_draws_it_only_on_a_terminal(grouped_run, tmp_path, capsys):
    import io

    from spectral_edge.progress import ProgressBar, bar_on_terminal
    from spectral_edge.store import export_run

    calls = []
    export_run(grouped_run, "csv", tmp_path / "out", progress=lambda *a: calls.append(a))
    assert calls == [
        (1, 4, "read the run"),
        (2, 4, "wrote records.csv"),
        (3, 4, "wrote records_evals.csv"),
        (4, 4, "wrote records_events.csv"),
    ]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(bar_on_terminal(Terminal()), ProgressBar)
    assert bar_on_terminal(Terminal(), enabled=False) is None and bar_on_terminal(io.StringIO()) is None
    # Under pytest stderr is no terminal: the command prints its paths and nothing else.
    assert main(["export", str(grouped_run), "-o", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().err == ""
