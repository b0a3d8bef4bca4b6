"""The matplotlib figures: returned as Figures, drawn without pyplot, the process's backend left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from spectral_edge.report.figures import plot_run, save_run_figure

matplotlib = pytest.importorskip("matplotlib", reason="the figures need matplotlib (the demo extra)")
from matplotlib.figure import Figure  # noqa: E402


def test_plot_run_returns_a_figure_with_three_panels(two_runs):
    fig = plot_run(two_runs[0], title="wd 1")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # σ_j, R (with k* on a twin axis), accuracy
    assert fig.get_suptitle() == "wd 1"
    assert fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[0].lines) == 10  # one line per σ_j of the W = 10 window


def test_save_run_figure_writes_the_png_into_the_run(two_runs, tmp_path):
    default = save_run_figure(two_runs[0])
    assert default == two_runs[0] / "spectrum.png"
    assert default.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = save_run_figure(two_runs[1], tmp_path / "mine.png")
    assert chosen == tmp_path / "mine.png" and chosen.stat().st_size > 10_000


def test_figures_leave_the_backend_and_pyplot_alone(two_runs, tmp_path):
    # A notebook's backend (here a stand-in chosen before the call) must survive plotting: the old
    # plot_run called matplotlib.use("Agg") and notebook plots stopped showing. Run in a fresh
    # interpreter, since pytest's own process may already have chosen a backend.
    script = textwrap.dedent(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        from spectral_edge.report.figures import plot_run, write_static_figures
        from spectral_edge.report.data import load_runs
        fig = plot_run({str(two_runs[0])!r})
        write_static_figures(load_runs([{str(two_runs[0])!r}]), {str(tmp_path / "static")!r})
        print(matplotlib.get_backend(), plt.get_fignums(), type(fig).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "[]", "Figure"]


def test_a_run_without_records_is_a_clear_error(tmp_path):
    from spectral_edge import RunStore

    RunStore(tmp_path / "empty", mode="w").close()
    with pytest.raises(ValueError, match="no records yet"):
        plot_run(tmp_path / "empty")
