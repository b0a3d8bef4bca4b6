"""``spectral-edge watch``: sparklines of R and k*, steps per second, and the finished state, on runs the
monitor wrote (its close marks the run finished)."""

from __future__ import annotations

import io
import re

import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.cli.main import main
from spectral_edge.cli.watch_command import TREND, sparkline, watch

N_STEPS = 60
WINDOW = 4


def write_run(path, *, close: bool = True) -> SpectralMonitor:
    """A monitored regression with SGD (W = 4): N_STEPS steps, N_STEPS - W + 1 records."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    mon = SpectralMonitor(model, window=WINDOW, lr=opt, store=path, kernel="torch")
    for _ in range(N_STEPS):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss.item())
    if close:
        mon.close()
    return mon


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "done"
    write_run(path)
    return path


def line(out: str, start: str) -> str:
    (found,) = [text for text in out.splitlines() if text.startswith(start)]
    return found


def test_once_shows_sparklines_of_the_last_records_the_speed_and_finished(finished_run, capsys):
    assert main(["watch", str(finished_run), "--once"]) == 0
    out = capsys.readouterr().out
    with RunStore(finished_run) as store:
        recent = store.tail(TREND)
        meta = store.meta()
    assert len(recent) == TREND < N_STEPS - WINDOW + 1  # the sparklines cover the tail, not the run
    r_line, k_line = line(out, "R trend   "), line(out, "k* trend  ")
    expected_r = sparkline([r["gap_ratio"] for r in recent], log=True)
    expected_k = sparkline([r["k_star"] for r in recent])
    assert r_line.startswith(f"R trend   {expected_r}  ") and f"(last {TREND} records" in r_line
    assert k_line.startswith(f"k* trend  {expected_k}  ")
    assert len(expected_r) == len(expected_k) == TREND and set(expected_r) <= set("▁▂▃▄▅▆▇█")
    ks = [r["k_star"] for r in recent]
    assert k_line.endswith(f"{min(ks)} … {max(ks)}")
    records_line = line(out, "records   ")
    assert re.search(r" · [0-9.e+]+ steps/s$", records_line), records_line
    assert line(out, "run       ").startswith("run       finished at ")
    assert meta["finished_at"].endswith("+00:00")


def test_a_run_still_open_is_not_finished(tmp_path, capsys):
    mon = write_run(tmp_path / "open", close=False)
    try:
        mon.store.flush()
        assert main(["watch", str(tmp_path / "open"), "--once"]) == 0
        out = capsys.readouterr().out
        assert "finished" not in out and "R trend   " in out
    finally:
        mon.close()


def test_plain_log_says_finished_once_and_until_finished_exits(finished_run):
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    assert watch(finished_run, interval=0.01, stream=out, sleep=sleep) == 0
    text = out.getvalue()
    assert text.count("finished at ") == 1 and len(polls) == 3  # told once; watch keeps following
    assert re.search(r"finished at .*: 57 records, [0-9.e+]+ steps/s at the end; the monitor closed", text)

    out = io.StringIO()
    assert watch(finished_run, interval=0.01, stream=out, sleep=sleep, until_finished=True) == 0
    assert len(polls) == 3  # returned at the first poll, without sleeping
    assert out.getvalue().splitlines()[-1].startswith("finished at ")


def test_until_finished_through_the_cli(finished_run, capsys):
    assert main(["watch", str(finished_run), "--until-finished", "--interval", "0.01"]) == 0
    assert "finished at " in capsys.readouterr().out


def test_live_view_shows_the_trend(finished_run):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def sleep(seconds):
        raise KeyboardInterrupt

    screen = Terminal()
    assert watch(finished_run, interval=0.5, stream=screen, sleep=sleep) == 0
    text = screen.getvalue()
    assert "R trend   " in text and "k* trend  " in text and "run       finished at " in text


def test_sparkline_levels():
    assert sparkline([]) == ""
    assert sparkline([3, 3, 3]) == "▁▁▁"
    assert sparkline([1.0, float("nan"), 2.0]) == "▁ █"
    assert sparkline([0.0, 1.0], log=True) == "▁▁"  # log of 0 is -inf: the bottom; 1 is the only finite
