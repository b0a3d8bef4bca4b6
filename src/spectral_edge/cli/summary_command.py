"""``spectral-edge summary RUN`` and ``spectral-edge compare RUN RUN ...``: what runs came to.

Examples::

    spectral-edge summary runs/grokking-div-p97-wd1-seed42
    spectral-edge summary runs/exp1 --json | jq .grok
    spectral-edge compare runs/grokking-div-p97-wd1-seed42 runs/grokking-div-p97-wd0-seed42
    spectral-edge compare runs/seed* --json > seeds.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectral_edge.cli._format import events_table, key_values, monitor_line, number, paragraph, table

if TYPE_CHECKING:
    from spectral_edge.summary import RunSummary

_EXAMPLES = __doc__.split("Examples::", 1)[1]
_SUMMARY_EXAMPLES = "\n".join(line for line in _EXAMPLES.splitlines() if "compare" not in line)
_COMPARE_EXAMPLES = "\n".join(line for line in _EXAMPLES.splitlines() if "summary" not in line)
_WIDTH = 110  # wrap long config lines here


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spectral-edge summary`` to the CLI's subcommands."""
    summary = subparsers.add_parser(
        "summary",
        help="summarise a run: records, k* and R statistics, events, evaluations, grokking step",
        description=paragraph(
            "Summarise a run store: its config, records and step range, the distribution of k*, "
            "R's mean, median and peak, the events, each evaluation's final and best value, and the grokking "
            "step (first evaluation with test accuracy >= 0.95) when a test accuracy was logged. It opens the "
            "store read-only, so it works while the run is still training."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _SUMMARY_EXAMPLES,
    )
    summary.add_argument("run", type=Path, help="run directory (or its run.db)")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.set_defaults(handler=_summary)

    compare = subparsers.add_parser(
        "compare",
        help="compare runs side by side: one column per run",
        description=paragraph("The quantities of `spectral-edge summary`, side by side, one column per run."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _COMPARE_EXAMPLES,
    )
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run directories")
    compare.add_argument("--json", action="store_true", help="print the summaries as a JSON list")
    compare.set_defaults(handler=_compare)


def _summary(args: argparse.Namespace) -> int:
    from spectral_edge.summary import summarize_run

    summary = summarize_run(args.run)
    print(json.dumps(summary.to_dict(), indent=2, allow_nan=False) if args.json else format_summary(summary))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from spectral_edge.summary import summarize_run

    if len(args.runs) < 2:
        raise ValueError(
            f"compare needs two or more runs, got one ({args.runs[0]}); "
            "use `spectral-edge summary` for one run"
        )
    summaries = [summarize_run(run) for run in args.runs]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2, allow_nan=False))
    else:
        print(format_comparison(summaries))
    return 0


# -- text ---------------------------------------------------------------------------------------------


def format_summary(s: RunSummary) -> str:
    """The text ``spectral-edge summary`` prints."""
    meta = s.meta
    lines = [
        f"run          {s.path}",
        f"created      {meta.get('created', '?')} · spectral-edge {meta.get('spectral_edge', '?')} · "
        f"torch {meta.get('torch', '?')}",
    ]
    monitor = s.config.get("monitor")
    if isinstance(monitor, Mapping):
        lines.append(f"monitor      {monitor_line(monitor)}")
    user = s.config.get("user", {} if isinstance(monitor, Mapping) else s.config)
    if user:
        lines += _wrapped("config       ", _flatten(user))
    inf_note = f" ({s.n_infinite_gap_ratio} records with R = inf left out of mean and median)"
    lines += [
        f"records      {s.n_records} · steps {s.first_step} … {s.last_step} · "
        f"{s.duration_s:.1f} s of wall time",
        f"k*           mode {s.k_star_mode} ({s.k_star_mode_share:.0%} of records) · "
        + " · ".join(f"{k}: {n}" for k, n in s.k_star_counts.items()),
        f"R            mean {number(s.gap_ratio_mean)} · median {number(s.gap_ratio_median)} · peak "
        f"{number(s.gap_ratio_peak)} at step {s.gap_ratio_peak_step}"
        + (inf_note if s.n_infinite_gap_ratio else ""),
    ]
    if s.regime_counts:
        lines.append("regimes      " + key_values({k: f"{v}" for k, v in s.regime_counts.items()}))
    last = s.last
    lines.append(
        f"last record  step {last['step']} · k* {last['k_star']} · R {number(last['gap_ratio'])}"
        + (f" · regime {last['regime']}" if last.get("regime") else "")
    )
    lines += ["", f"events       {len(s.events)}" + ("" if s.events else " (none)")]
    if s.events:
        lines.append(events_table(s.events))
    lines += ["", f"evals        {len(s.evals)}" + ("" if s.evals else " (none logged)")]
    if s.evals:
        rows = [
            [
                e.name,
                e.n,
                f"{number(e.final)} at step {e.final_step}",
                "-" if e.best is None else f"{number(e.best)} at step {e.best_step}",
                {"min": "(lowest)", "max": "(highest)"}.get(e.direction or "", ""),
            ]
            for e in s.evals.values()
        ]
        lines.append(table(["name", "n", "final", "best", ""], rows, align="lrrrl", indent="  "))
    lines += ["", f"grokked      {_grok_text(s)}"]
    return "\n".join(lines)


def format_comparison(summaries: Sequence[RunSummary]) -> str:
    """The text ``spectral-edge compare`` prints: one row per quantity, one column per run."""
    names = [s.name for s in summaries]
    if len(set(names)) < len(names):  # same directory names under different parents: show the paths
        names = [s.path for s in summaries]
    rows: list[list[str]] = [
        ["records", *(str(s.n_records) for s in summaries)],
        ["steps", *(f"{s.first_step} … {s.last_step}" for s in summaries)],
        ["W", *(number(s.window) for s in summaries)],
        ["P", *(number(s.n_params) for s in summaries)],
        ["k* mode (share)", *(f"{s.k_star_mode} ({s.k_star_mode_share:.0%})" for s in summaries)],
        ["R mean", *(number(s.gap_ratio_mean) for s in summaries)],
        ["R median", *(number(s.gap_ratio_median) for s in summaries)],
        ["R peak (step)", *(f"{number(s.gap_ratio_peak)} ({s.gap_ratio_peak_step})" for s in summaries)],
        ["last k*, R", *(f"{s.last['k_star']}, {number(s.last['gap_ratio'])}" for s in summaries)],
        ["events", *(str(len(s.events)) for s in summaries)],
    ]
    kinds = list(dict.fromkeys(kind for s in summaries for kind in s.event_counts))
    rows += [[f"  {kind}", *(str(s.event_counts.get(kind, 0)) for s in summaries)] for kind in kinds]
    for name in dict.fromkeys(n for s in summaries for n in s.evals):
        rows.append([f"{name} final (step)", *(_eval_cell(s, name, best=False) for s in summaries)])
        if any(name in s.evals and s.evals[name].best is not None for s in summaries):
            rows.append([f"{name} best (step)", *(_eval_cell(s, name, best=True) for s in summaries)])
    if any(s.grok_metric is not None for s in summaries):
        rows.append(["grokked at step", *(_grok_cell(s) for s in summaries)])
    differ = config_differences(summaries)
    rows.append(["config", *(("differs below" if differ else "identical") for _ in summaries)])
    rows += [[f"  {key}", *values] for key, values in differ.items()]
    return table(["", *names], rows)


def config_differences(summaries: Sequence[RunSummary]) -> dict[str, list[str]]:
    """The configuration keys whose values differ between runs: key -> each run's value ("-" if unset).

    Keys are dotted paths into the stored configuration (the monitor's settings under ``monitor.``, the
    user's ``config=`` under ``user.``), so a comparison says what was changed between runs, not only
    what came of it.
    """
    flat = [dict(_config_pairs(s.config)) for s in summaries]
    keys = list(dict.fromkeys(key for config in flat for key in config))
    return {
        key: [config.get(key, "-") for config in flat]
        for key in keys
        if len({config.get(key) for config in flat}) > 1
    }


def _flatten(config: Mapping[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in _config_pairs(config)]


def _config_pairs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, value as text) for every leaf of a nested configuration, flattened as the sinks
    flatten it for MLflow params and TensorBoard hparams."""
    from spectral_edge.sinks.base import flat_config

    return [
        (key, value if isinstance(value, str) else json.dumps(value))
        for key, value in flat_config(config).items()
    ]


def _wrapped(label: str, items: Sequence[str]) -> list[str]:
    lines, current = [], ""
    for item in items:
        if current and len(label) + len(current) + 1 + len(item) > _WIDTH:
            lines.append(current)
            current = item
        else:
            current = f"{current} {item}" if current else item
    lines.append(current)
    return [(label if i == 0 else " " * len(label)) + line for i, line in enumerate(lines)]


def _grok_text(s: RunSummary) -> str:
    from spectral_edge.summary import GROK_METRICS

    if s.grok_metric is None:
        return f"- (no test-accuracy evaluation: looked for {', '.join(GROK_METRICS[:4])}, …)"
    rule = f"first evaluation with {s.grok_metric} >= {s.grok_threshold:g}"
    if s.grok_step is not None:
        return f"at step {s.grok_step} ({rule})"
    e = s.evals[s.grok_metric]
    return f"never ({rule}; best {number(e.best)} at step {e.best_step})"


def _eval_cell(s: RunSummary, name: str, *, best: bool) -> str:
    e = s.evals.get(name)
    if e is None:
        return "-"
    value, step = (e.best, e.best_step) if best else (e.final, e.final_step)
    return "-" if value is None else f"{number(value)} ({step})"


def _grok_cell(s: RunSummary) -> str:
    if s.grok_metric is None:
        return "-"
    return "never" if s.grok_step is None else str(s.grok_step)
