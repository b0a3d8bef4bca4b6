"""``spectral-edge report``: the self-contained HTML report of one or several runs, and static figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  spectral-edge report runs/exp1
      writes report.html: one run's spectra, gap, η𝒜 regimes, α_j, groups, curves, events, config
  spectral-edge report runs/grokking-div-p97-wd1-seed42 runs/grokking-div-p97-wd0-seed42 \\
      --out wd.html --title "weight decay 1 vs 0"
      overlays two runs, one colour each (the legend names each run by its directory)
  spectral-edge report runs/adamw runs/muon --static figures --format svg
      also writes the same panels as SVG figures for a paper into figures/

The page inlines plotly.js (about 4.8 MB), so it opens offline. Runs longer than --max-points records
are thinned for plotting: every k-th record plus the last one and the records at each event.
"""


def register(subparsers: Any) -> None:
    """Add the ``report`` command to the ``spectral-edge`` parser."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (and optional static figures) of one or several runs",
        description="Read one or several run stores and write one self-contained, offline HTML page of "
        "interactive plots; several runs overlay for comparison. Needs plotly (pip install "
        "'spectral-edge[report]'); --static needs matplotlib (the demo extra).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directory (or its run.db)")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("report.html"),
        help="HTML file to write (default: %(default)s)",
    )
    parser.add_argument("--title", default=None, help="page title (default: names the runs)")
    parser.add_argument(
        "--static",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the panels as static figures into DIR",
    )
    parser.add_argument(
        "--format",
        choices=("png", "svg", "pdf"),
        default="png",
        help="format of the --static figures (default: %(default)s)",
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        metavar="N",
        help="records plotted per run before thinning starts (default: 4000)",
    )
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from spectral_edge._imports import require
    from spectral_edge.report.data import DEFAULT_MAX_POINTS, load_runs
    from spectral_edge.report.html import render_report

    max_points = DEFAULT_MAX_POINTS if args.max_points is None else args.max_points
    if max_points < 2:
        raise ValueError(f"--max-points must be >= 2, got {max_points}")
    # Check the extras before reading anything: a missing plotly should not cost a long load first.
    require("plotly", "the HTML report")
    if args.static is not None:
        require("matplotlib", "Static figures")
    for run in args.runs:
        if not run.exists():
            raise FileNotFoundError(f"no run directory {run}: pass the folder that holds a run's run.db")
    runs = load_runs(args.runs, max_points=max_points)
    text = render_report(runs, title=args.title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    size = args.out.stat().st_size / 1e6
    print(f"{args.out} ({size:.1f} MB, {len(runs)} run{'s' if len(runs) > 1 else ''})")
    for run in runs:
        if not run.has_records:
            print(f"  note: {run.name} has no records yet")
        elif run.stride > 1:
            print(f"  note: {run.name}: {len(run.steps):,} of {run.n_records:,} records plotted")
    if args.static is not None:
        from spectral_edge.report.figures import write_static_figures

        for path in write_static_figures(runs, args.static, fmt=args.format):
            print(path)
    return 0
