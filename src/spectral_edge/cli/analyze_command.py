"""``spectral-edge analyze CHECKPOINT_DIR``: the monitor's records from a folder of saved checkpoints.

Examples::

    spectral-edge analyze out/                      # HF Trainer's out/checkpoint-500/, checkpoint-1000/, ...
    spectral-edge analyze ckpts/ --window 5         # ckpts/step_100.pt, step_200.pt, ... (any step naming)
    spectral-edge analyze out/ --lr 1e-3 --store runs/offline   # one η for 𝒜 and regimes, into a run store
    spectral-edge analyze out/ --json > records.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from spectral_edge.cli._format import events_table, number, paragraph, table

_EXAMPLES = __doc__.split("Examples::", 1)[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command to the ``spectral-edge`` parser's subcommands."""
    parser = subparsers.add_parser(
        "analyze",
        help="analyse a folder of checkpoints offline: records and events, as the monitor would give",
        description=paragraph(
            "Find the checkpoints in a folder (HF Trainer checkpoint-<step>/ folders holding "
            "model.safetensors or pytorch_model.bin, or *.pt, *.pth, *.bin, *.ckpt, *.safetensors files with "
            "a step number in their name), order them by step (trainer_state.json's global_step, else the "
            "step in the name), and compute the spectral record of each "
            "window "
            "of W consecutive updates between them (analyze_checkpoints). Prints the records (step, k*, R, "
            "σ1..σ3) and the events; --store also writes them to a run store for `summary`, `compare` and "
            "`export`. η for 𝒜 and the regime is --lr, else, for HF checkpoint-<step>/ folders, the "
            "learning rate the Trainer logged (trainer_state.json's log_history) at or before each "
            "record's step, else none."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + _EXAMPLES,
    )
    parser.add_argument("folder", type=Path, metavar="CHECKPOINT_DIR", help="folder holding the checkpoints")
    parser.add_argument(
        "--window",
        type=int,
        default=10,
        metavar="W",
        help="W, updates per window; needs W + 1 checkpoints (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        metavar="LR",
        help="learning rate η for 𝒜 and the regime (default: the schedule logged in the newest "
        "checkpoint folder's trainer_state.json, else not computed)",
    )
    parser.add_argument(
        "--store", type=Path, default=None, metavar="OUT", help="also write a run store to OUT"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    parser.add_argument("--json", action="store_true", help="print checkpoints, records and events as JSON")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)"
    )
    parser.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from spectral_edge.progress import bar_on_terminal
    from spectral_edge.store import RunStore
    from spectral_edge.tracking.checkpoint_folder import check_readable, find_checkpoints, trainer_state_lrs
    from spectral_edge.tracking.checkpoints import analyze_checkpoints

    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    checkpoints = find_checkpoints(args.folder)
    n, window = len(checkpoints), args.window
    steps = [c.step for c in checkpoints]
    if window < 2:
        raise ValueError(f"--window must be >= 2 (two updates are the smallest window), got {window}")
    if n < window + 1:
        found = f"found {n} checkpoint{'s' if n != 1 else ''} in {args.folder} (steps {_steps(steps)})"
        if n < 3:
            raise ValueError(f"{found}; the smallest window, W=2, needs 3: add checkpoints to the folder")
        raise ValueError(
            f"{found}; a window of W={window} updates needs at least {window + 1} checkpoints: pass "
            f"--window at most {n - 1}"
        )
    for checkpoint in checkpoints:  # headers only: a truncated file fails now, not after a long analysis
        check_readable(checkpoint)
    if args.store is not None and not args.overwrite:
        _refuse_to_erase(args.store)
    lr_by_step, lr_source = None, "none (no 𝒜 or regime: pass --lr)"
    if args.lr is not None:
        lr_source = f"--lr {args.lr:g}"
    else:
        folders = [c.path for c in checkpoints if c.layout != "file" and c.path.is_dir()]
        # The newest checkpoint's trainer_state.json holds everything logged up to it.
        logged = trainer_state_lrs(folders[-1]) if folders else {}
        if logged:
            lr_by_step = _rate_at_each_step(logged, steps[window:])
            lr_source = (
                f"trainer_state.json of {folders[-1].name} (the learning rate logged at or before each "
                f"record's step, {len(logged)} entries)"
            )

    with tempfile.TemporaryDirectory(prefix="spectral-edge-analyze-") as scratch:
        # Without --store the run store is a scratch one: it is where the monitor files its events.
        target = args.store if args.store is not None else Path(scratch) / "run"
        store = RunStore(target, mode="w", overwrite=args.overwrite)
        try:
            records = analyze_checkpoints(
                [c.path for c in checkpoints],
                window=window,
                steps=steps,
                lr=args.lr,
                lr_by_step=lr_by_step,
                progress=bar_on_terminal(enabled=not args.no_progress),
                store=store,
                config={
                    "source": "checkpoints",
                    "folder": str(args.folder),
                    "steps": steps,
                    "lr_source": lr_source,
                },
            )
            events = [e.to_dict() for e in store.events()]
            # Names that share one tensor (tied embeddings), counted once: the monitor saved them.
            merged = dict(store.config().get("monitor", {}).get("merged", {}))
        finally:
            store.close()

    if args.json:
        out = {
            "folder": str(args.folder),
            "window": window,
            "checkpoints": [{"step": c.step, "path": str(c.path), "layout": c.layout} for c in checkpoints],
            "records": [r.to_dict() for r in records],
            "events": events,
            "merged": merged,
            "lr_source": lr_source,
            "store": None if args.store is None else str(args.store),
        }
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    kinds = {"file": "files", "folder": "checkpoint folders"}
    layouts = sorted({kinds.get(c.layout, c.layout) for c in checkpoints})
    print(
        f"{n} checkpoints in {args.folder} ({', '.join(layouts)}), steps {_steps(steps)}; "
        f"W={window} → {len(records)} records"
    )
    if merged:
        print("tied tensors counted once: " + ", ".join(f"{a} → {b}" for a, b in merged.items()))
    print()
    with_regime = args.lr is not None or bool(lr_by_step)
    headers = ["step", "k*", "R", "σ1", "σ2", "σ3"] + (["regime"] if with_regime else [])
    rows = []
    for r in records:
        sigmas = [number(s, 4) for s in r.singular_values[:3]] + ["-"] * (3 - min(3, len(r.singular_values)))
        rows.append(
            [r.step, r.k_star, number(r.gap_ratio), *sigmas] + ([r.regime or "-"] if with_regime else [])
        )
    print(table(headers, rows, align="rrrrrr" + ("l" if with_regime else ""), indent="  "))
    print(f"\nη for 𝒜 and the regime: {lr_source}")
    print()
    print(f"events  {len(events)}" + ("" if events else " (none)"))
    if events:
        print(events_table(events))
    if args.store is not None:
        print(f"\nrun store  {args.store} (spectral-edge summary {args.store})")
    return 0


def _rate_at_each_step(logged: dict[int, float], steps: list[int]) -> dict[int, float]:
    """η of each record step: the rate logged at that step, else the last one logged before it (the
    Trainer logs every ``logging_steps``, which need not divide the checkpoint steps)."""
    out = {}
    logged_steps = sorted(logged)
    for step in steps:
        before = [s for s in logged_steps if s <= step]
        if before:
            out[step] = logged[before[-1]]
    return out


def _refuse_to_erase(out: Path) -> None:
    from spectral_edge.errors import RunStoreError
    from spectral_edge.store import DB_NAME, RunStore

    db = out if out.suffix == ".db" else out / DB_NAME
    if not db.is_file():
        return
    with RunStore(db, mode="r") as existing:
        n = len(existing)
    if n:
        raise RunStoreError(
            f"{out} already holds a run with {n} records; pass --overwrite to replace it, or another --store"
        )


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    return str(steps[0]) if len(steps) == 1 else f"{steps[0]} … {steps[-1]}"
