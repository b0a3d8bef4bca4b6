"""``spectral-edge``: a thin command-line dispatch over the library.

Examples::

    spectral-edge demo                       # the monitored grokking run (about 3.5 minutes on 2 CPU cores)
    spectral-edge demo --weight-decay 0      # the control: the same budget, no grokking
    spectral-edge demo --preset smoke        # a few seconds, for a first look
    spectral-edge export runs/grokking-div-p97-wd1-seed42 --format csv
    spectral-edge reproduce grokking --suite smoke   # the paper's studies, installed beside the library
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sqlite3
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from spectral_edge.errors import MissingExtraError, SpectralEdgeError

# Each further command lives in its own module, which defines ``register(subparsers)``: it adds its parser
# and sets ``handler`` (a function of the parsed arguments returning the exit status) as a default.
# Command modules import their heavy dependencies inside the handler, so ``--help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "spectral_edge.cli.watch_command",
    "spectral_edge.cli.summary_command",
    "spectral_edge.cli.analyze_command",
    "spectral_edge.cli.report_command",
)
# Other distributions add commands through entry points of this group, each naming such a ``register``
# function: ``[project.entry-points."spectral_edge.commands"]`` in their pyproject.toml. They are found
# when the parser is built; a register function imports only argparse, its handler the rest.
COMMAND_GROUP = "spectral_edge.commands"
# Commands that come from another distribution, and how to install it (for the error when it is missing).
OPTIONAL_COMMANDS: dict[str, str] = {
    "reproduce": "the paper's studies are the spectral-edge-studies distribution, in the repository beside "
    "the library: from a clone, run `pip install -e studies` (`make setup` does)",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``spectral-edge`` parser: the library's commands and those other distributions add."""
    parser = argparse.ArgumentParser(
        prog="spectral-edge",
        description="Watch the spectrum of a network's recent updates and detect phase transitions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    from spectral_edge import __version__

    parser.add_argument("--version", action="version", version=f"spectral-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="train a small transformer to grok modular arithmetic with the monitor at every step",
        description="Train the grokking recipe with the spectral monitor at every step, then print the "
        "grokking step, the spectral events, the run store and a figure.",
    )
    demo.add_argument(
        "--preset", default="default", help="recipe preset: default or smoke (default: %(default)s)"
    )
    demo.add_argument(
        "--weight-decay", type=float, default=None, help="override the AdamW weight decay (0 = control)"
    )
    demo.add_argument("--seed", type=int, default=None, help="override the seed")
    demo.add_argument("--max-steps", type=int, default=None, help="override the step budget")
    demo.add_argument("--window", type=int, default=10, help="W, updates per window (default: %(default)s)")
    demo.add_argument(
        "--interval", type=int, default=1, help="steps between snapshots (default: %(default)s)"
    )
    demo.add_argument(
        "-o", "--out", type=Path, default=None, help="run directory (default: runs/grokking-...)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--no-figure", action="store_true", help="do not draw spectrum.png")
    demo.set_defaults(handler=_demo)

    export = sub.add_parser(
        "export",
        help="export a run's records, evaluations and events to CSV or Parquet",
        description="Flatten a run store into three tables: records (one row per record: the scalars, "
        "sigma_1..sigma_W, ratio_*, alpha_*, group.<name>.k_star and group.<name>.gap_ratio per "
        "group, metric.<name>), evals (long: step, name, value) and events. Prints each file written.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  spectral-edge export runs/exp1                  # runs/exp1/records.csv, records_evals.csv, ...\n"
        "  spectral-edge export runs/exp1 -o tables/       # into the folder tables/ (created)\n"
        "  spectral-edge export runs/exp1 -o flat.parquet --format parquet   # flat.parquet, flat_evals...",
    )
    export.add_argument("run", type=Path, help="run directory (or its run.db)")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv", help="default: %(default)s")
    export.add_argument(
        "-o",
        "--out",
        default=None,
        help="a folder (existing, ending in /, or without a suffix; created) to write records.<ext> and "
        "the others into, or the records file itself (default: the run directory)",
    )
    export.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)"
    )
    export.set_defaults(handler=_export)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    _add_installed_commands(sub)
    return parser


def _add_installed_commands(sub: argparse._SubParsersAction) -> None:
    """Register the commands of the :data:`COMMAND_GROUP` entry points; a known command that is missing,
    or one that fails to load, gets a stand-in that says why and what to install."""
    unavailable: dict[str, str] = {}
    for entry in entry_points(group=COMMAND_GROUP):
        if entry.name in sub.choices:
            continue  # a name taken already (by the library, or by the same distribution found twice)
        try:  # a broken distribution must not take the library's own commands down
            entry.load()(sub)
        except Exception as exc:
            sub.choices.pop(entry.name, None)  # a parser it added before failing is replaced by the stand-in
            unavailable[entry.name] = f"it is installed ({entry.value}) but does not load: {exc!r}"
    for name, install in OPTIONAL_COMMANDS.items():
        if name not in sub.choices and name not in unavailable:
            unavailable[name] = f"it is not installed; {install}"
    for name, why in unavailable.items():
        # prefix_chars no argument starts with: every argument (--help too) is a positional, so the
        # stand-in always reaches its handler, which explains
        stand_in = sub.add_parser(name, help=f"(unavailable) {why}", add_help=False, prefix_chars="\0")
        stand_in.add_argument("arguments", nargs="*")
        stand_in.set_defaults(handler=lambda args, why=why: _unavailable(args.command, why))


def _unavailable(command: str, why: str) -> int:
    raise MissingExtraError(f"the {command!r} command is unavailable: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2, with one line on stderr, for a user's error)."""
    args = build_parser().parse_args(argv)
    _show_library_messages()
    try:
        return args.handler(args)
    except (SpectralEdgeError, OSError, ValueError) as exc:
        message = str(exc)
    except sqlite3.Error as exc:  # the run store names its file; this is the net under it
        message = f"could not read {' or '.join(map(str, _paths(args)))}: SQLite error: {exc}"
    print(f"spectral-edge {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _paths(args: argparse.Namespace) -> list[Path]:
    """The paths a command was given (its runs, folder, store), for an error that must name a file."""
    out: list[Path] = []
    for name in ("run", "runs", "folder", "store"):
        value = getattr(args, name, None)
        out += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, Path)]
    return out or [Path(".")]


def _demo(args: argparse.Namespace) -> int:
    from spectral_edge.demo import PRESETS, format_summary, run_demo

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    overrides = {
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "max_steps": args.max_steps,
    }
    config = dataclasses.replace(
        PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}
    )
    result = run_demo(
        config,
        args.out,
        window=args.window,
        interval=args.interval,
        progress=not args.no_progress,
        figure=not args.no_figure,
    )
    print(format_summary(config, result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from spectral_edge.progress import bar_on_terminal
    from spectral_edge.store import export_paths, export_run

    path = export_run(args.run, args.format, args.out, progress=bar_on_terminal(enabled=not args.no_progress))
    for written in export_paths(path):
        print(written)
    return 0


def _show_library_messages() -> None:
    """Print the library's INFO messages (say, building the fused kernel on first use) on stderr.

    A library leaves logging to its application; the command line is that application.
    """
    logger = logging.getLogger("spectral_edge")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is when a message comes, not as it was when the handler was made
    (``main`` may run several times in one process, each with its own stderr, as the tests do)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
