"""Figures and reports read from a run store only (never from a live monitor)."""

from spectral_edge.report.figures import plot_run

__all__ = ["plot_run"]
