"""Figures and reports read from a run store only (never from a live monitor).

``write_report`` makes the offline HTML report (the ``report`` extra, plotly); ``write_static_figures``
and ``plot_run`` draw matplotlib figures (the ``demo`` extra). Both extras are imported only when used.
"""

from spectral_edge.report.data import RunData, load_run, load_runs
from spectral_edge.report.figures import plot_run, save_run_figure, write_static_figures
from spectral_edge.report.html import render_report, write_report

__all__ = [
    "write_report",
    "render_report",
    "write_static_figures",
    "plot_run",
    "save_run_figure",
    "load_runs",
    "load_run",
    "RunData",
]
