"""Re-read the studies' runs under the old rank cut (issue 13, item 3): where did the cut change a number?

Until issue 13 the monitor accumulated a float32 window's Gram in float32 and set every eigenvalue below
1e-6·λ_1 (σ_j below 1e-3·σ_1) to zero. This script reruns one study run and compares, record by record,
what the monitor reports now with what the old rule reported on the same trajectory:

* **emulated**: the old cut applied to the new records: every σ_j with σ_j² < 1e-6·σ_1² zeroed, and k*,
  R, the weighted k*, g23, ν and the BBP ratio recomputed with the library's own functions
  (``spectrum_from_eigen(..., rank_rtol=1e-6)``, ``noise_level_from_spectrum``, ``bbp_ratio``), as the
  monitor builds those fields (``tracking/monitor.py``). This captures the cut, not the float32
  accumulation's error on the σ_j it kept (at most 8e-3 relative, for σ_j near 1e-3·σ_1);
* **old code**: the same recipe trained with the library as it was before the fix (commit d28fc08), put
  first on the path (``PYTHONPATH=/tmp/old/src`` below: a copy of ``src/`` from before d28fc08, e.g. from
  ``git worktree add /tmp/old d28fc08~1``), whose records are the old readings themselves. Training does not depend on the monitor, so on one machine and one
  thread count both runs follow the same trajectory; ``compare`` checks that (loss and update norm of
  every record) before comparing.

Then the study's k* alarm and g23 alarm (``experiments/study/alarms.py``) are evaluated on both series.

Usage (one process at a time; each run uses one torch thread)::

    # the new library (this tree), then the old one on the same recipe
    python benchmarks/reread_cut.py train grokking modular/add-seed42-wd1 --out runs/reread/new
    PYTHONPATH=/tmp/old/src python benchmarks/reread_cut.py train grokking modular/add-seed42-wd1 \\
        --out runs/reread/old
    python benchmarks/reread_cut.py compare runs/reread/new/modular/add-seed42-wd1 \\
        --old runs/reread/old/modular/add-seed42-wd1 --json runs/reread/modular-add.json

    # the language-model study: a run of its suite, stopped after N steps (the schedule is the full run's)
    python benchmarks/reread_cut.py train lm adamw-seed42 --suite full --stop-after 1000 --out runs/reread/new

    # the tables of docs/grokking-study.md and docs/lm-study.md ("Re-read after float64 accumulation")
    python benchmarks/reread_cut.py table runs/reread/*.json

``train`` writes the run directory as the study would, plus ``reread.json``: every record's σ and the
fields compared here, as the library that trained it wrote them (``dump`` rewrites it from a finished
run's stores). ``compare`` reads only those files, so it runs with the new library whatever trained the
old run. Run names: ``<family>/<task>-seed<s>-wd<ω>`` for the grokking study (``spectral-edge reproduce
grokking``), a run name of the suite for ``lm``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The old rank cut: eigenvalues of G below this fraction of λ_1 were set to zero.
OLD_RANK_RTOL = 1e-6
DUMP_FILE = "reread.json"


class _StopRun(Exception):
    """Raised from the progress callback to stop a run after ``--stop-after`` steps."""


# -- train ------------------------------------------------------------------------------------------------


def _grokking_config(name: str, suite: str) -> tuple[Any, Any]:
    family, _, run = name.partition("/")
    from spectral_edge.experiments.study.suite import FAMILY_MODULES, run_dir_name

    module = importlib.import_module(FAMILY_MODULES[family])
    for config in module.variants(suite):
        if run_dir_name(config) == run:
            return module, config
    raise SystemExit(f"no run {name!r} in the {suite} suite of {family}")


def _train_grokking(name: str, suite: str, out: Path, stop_after: int | None) -> tuple[Path, dict[str, Any]]:
    module, config = _grokking_config(name, suite)
    run_dir = out / name
    progress = None
    if stop_after is not None:

        def progress(step: int, total: int) -> None:
            if step >= stop_after:
                raise _StopRun

    try:
        outcome = module.run(config, run_dir, progress=progress)
        info = {"grok_step": outcome.grok_step, "steps": outcome.steps, "stopped": False}
    except _StopRun:
        info = {"grok_step": None, "steps": stop_after, "stopped": True}
    info["config"] = dataclasses.asdict(config)
    return run_dir, info


def _train_lm(name: str, suite: str, out: Path, stop_after: int | None) -> tuple[Path, dict[str, Any]]:
    from spectral_edge.experiments.lmstudy import train
    from spectral_edge.experiments.lmstudy.recipes import variants

    configs = {c.name: c for c in variants(suite)}
    if name not in configs:
        raise SystemExit(f"no run {name!r} in the lm {suite} suite; runs: {sorted(configs)}")
    config = configs[name]
    run_dir = out / "lm" / name
    progress = None
    if stop_after is not None:

        def progress(step: int, total: int) -> None:
            if step >= stop_after:
                raise _StopRun

    try:
        train.run(config, run_dir, suite_dir=out / "lm", keep_state=False, progress=progress)
        info = {"steps": config.max_steps, "stopped": False}
    except _StopRun:
        info = {"steps": stop_after, "stopped": True}
    info["config"] = dataclasses.asdict(config)
    return run_dir, info


def _dump_store(path: Path) -> dict[str, Any]:
    """The fields compared here from one run store, as the library that wrote it stored them."""
    from spectral_edge.store import RunStore

    with RunStore(path, mode="r") as store:
        config = store.config()
        rows = store.records()
        evals = store.evals()
        events = [(int(e.step), str(e.kind)) for e in store.events()]
    monitor = config.get("monitor", {})
    records = []
    for row in rows:
        records.append(
            {
                "step": int(row["step"]),
                "sigma": [float(v) for v in row["singular_values"]],
                "k_star": int(row["k_star"]),
                "gap_ratio": float(row["gap_ratio"]),
                "k_star_weighted": int(row["k_star_weighted"]),
                "g23": None if row.get("g23") is None else float(row["g23"]),
                "rank": int(row["rank"]),
                "noise_level": float(row["noise_level"]),
                "bbp_ratio": float(row["bbp_ratio"]),
                "update_norm": float(row["update_norm"]),
                "loss": None if "loss" not in row.get("metrics", {}) else float(row["metrics"]["loss"]),
                "groups": {
                    g: [float(v) for v in s["singular_values"]] for g, s in row.get("groups", {}).items()
                },
            }
        )
    return {
        "n_params": int(monitor["n_params"]),
        "window": int(monitor["window"]),
        "bbp_variant": monitor.get("bbp_variant", "PW"),
        "storage_dtype": monitor.get("storage_dtype"),
        "records": records,
        "evals": {k: [v[0].tolist(), v[1].tolist()] for k, v in evals.items()},
        "events": events,
    }


def _stores(run_dir: Path) -> dict[str, Path]:
    """The run stores of a run directory: the main one, and an LM run's W = 20 store in ``w20/``."""
    return {"main": run_dir, **{p.name: p for p in sorted(run_dir.glob("w*")) if (p / "run.db").exists()}}


def dump(args: argparse.Namespace) -> None:
    """Rewrite ``reread.json`` of a finished run from its stores, keeping the training facts it holds."""
    run_dir = Path(args.run_dir)
    data = json.loads((run_dir / DUMP_FILE).read_text())
    data["stores"] = {key: _dump_store(path) for key, path in _stores(run_dir).items()}
    (run_dir / DUMP_FILE).write_text(json.dumps(data, default=str))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    import spectral_edge

    out = Path(args.out)
    started = time.perf_counter()
    if args.study == "grokking":
        run_dir, info = _train_grokking(args.run, args.suite, out, args.stop_after)
    else:
        run_dir, info = _train_lm(args.run, args.suite, out, args.stop_after)
    stores = _stores(run_dir)
    wall = time.perf_counter() - started
    dump = {
        "study": args.study,
        "run": args.run,
        "suite": args.suite,
        "library": str(Path(spectral_edge.__file__).parent),
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        **info,
        "stores": {key: _dump_store(path) for key, path in stores.items()},
    }
    (run_dir / DUMP_FILE).write_text(json.dumps(dump, default=str))
    n = {k: len(v["records"]) for k, v in dump["stores"].items()}
    print(f"{args.run}: {wall:.0f} s, records {n}, library {dump['library']}", file=sys.stderr)


# -- compare ----------------------------------------------------------------------------------------------


def _old_rule(records: list[dict[str, Any]], n_params: int, variant: str) -> list[dict[str, Any]]:
    """The old monitor's readings of each record: the cut at 1e-6·λ_1, then the record's fields as the
    monitor computes them (spectrum_from_eigen, noise_level_from_spectrum, bbp_ratio)."""
    from spectral_edge.spectrum.null import bbp_ratio, noise_level_from_spectrum
    from spectral_edge.spectrum.window import spectrum_from_eigen

    out = []
    for rec in records:
        lam = (np.asarray(rec["sigma"]) ** 2).tolist()
        w = len(lam)
        spec, _ = spectrum_from_eigen(lam, np.eye(w), rank_rtol=OLD_RANK_RTOL)
        nu = noise_level_from_spectrum(spec.eigenvalues, n_params)
        groups = {}
        for name, sigma in rec["groups"].items():
            gspec, _ = spectrum_from_eigen(
                (np.asarray(sigma) ** 2).tolist(), np.eye(w), rank_rtol=OLD_RANK_RTOL
            )
            groups[name] = {"rank": gspec.rank, "k_star": gspec.k_star}
        out.append(
            {
                "step": rec["step"],
                "sigma": spec.singular_values.tolist(),
                "k_star": spec.k_star,
                "gap_ratio": spec.gap_ratio,
                "k_star_weighted": spec.k_star_weighted,
                "g23": spec.g23,
                "rank": spec.rank,
                "noise_level": nu,
                "bbp_ratio": bbp_ratio(spec.singular_values, nu, n_params, variant),
                "groups_old": groups,
            }
        )
    return out


def _alarms(records: list[dict[str, Any]]) -> dict[str, int | None]:
    from spectral_edge.experiments.study import alarms

    steps = np.array([r["step"] for r in records])
    k_star = np.array([r["k_star"] for r in records])
    sigma = [r["sigma"] for r in records]
    ratio12 = np.array([s[0] / s[1] if s[1] > 0 else math.inf for s in sigma])
    g23 = np.array([math.nan if r["g23"] is None else r["g23"] for r in records])
    return {
        "spectral_k1": alarms.spectral_k1_alarm(steps, k_star, ratio12),
        "spectral_g23": alarms.spectral_g23_alarm(steps, g23),
    }


def _table7(records: list[dict[str, Any]], grok: int | None) -> dict[str, Any]:
    """Table 7's numbers as ``study/summary.py`` reads them: g23_early, g23_grok, k*_term (both)."""
    steps = np.array([r["step"] for r in records])
    g23 = np.array([math.nan if r["g23"] is None else r["g23"] for r in records])
    before = steps < grok if grok is not None else np.ones(steps.size, dtype=bool)
    finite = before & np.isfinite(g23)
    early = float(np.max(g23[finite])) if finite.any() else None
    at = np.flatnonzero((steps <= grok) & np.isfinite(g23)) if grok is not None else np.array([], int)
    return {
        "g23_early": early,
        "g23_grok": float(g23[at[-1]]) if at.size else None,
        "k_star_term_weighted": records[-1]["k_star_weighted"],
        "k_star_term_unweighted": records[-1]["k_star"],
    }


def _relative(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b else math.inf


def _summarise(
    new: list[dict[str, Any]], old: list[dict[str, Any]], w: int, grok: int | None
) -> dict[str, Any]:
    """What changed between the new readings and the old ones, record by record."""
    differ_k = [n["step"] for n, o in zip(new, old, strict=True) if n["k_star"] != o["k_star"]]
    differ_kw = [
        n["step"] for n, o in zip(new, old, strict=True) if n["k_star_weighted"] != o["k_star_weighted"]
    ]
    below = [o["step"] for o in old if o["rank"] < w]
    nu_rel = [_relative(o["noise_level"], n["noise_level"]) for n, o in zip(new, old, strict=True)]
    bbp_rel = [_relative(o["bbp_ratio"], n["bbp_ratio"]) for n, o in zip(new, old, strict=True)]
    r_inf = sum(
        1
        for o, n in zip(old, new, strict=True)
        if math.isinf(o["gap_ratio"]) and not math.isinf(n["gap_ratio"])
    )
    alarms_new, alarms_old = _alarms(new), _alarms(old)
    t7_new, t7_old = _table7(new, grok), _table7(old, grok)
    return {
        "records": len(new),
        "below_full_rank_old": len(below),
        "below_full_rank_new": sum(1 for n in new if n["rank"] < w),
        "first_below": below[0] if below else None,
        "last_below": below[-1] if below else None,
        "min_rank_old": min(o["rank"] for o in old) if old else None,
        "k_star_differs": len(differ_k),
        "k_star_differs_steps": differ_k[:20],
        "k_star_weighted_differs": len(differ_kw),
        "r_inf_old": r_inf,
        "nu_max_rel_change": max(nu_rel, default=0.0),
        "nu_median_rel_change_below": float(
            np.median([v for v, o in zip(nu_rel, old, strict=True) if o["rank"] < w])
        )
        if below
        else 0.0,
        "nu_zero_old": sum(1 for o in old if o["noise_level"] == 0.0),
        "bbp_max_rel_change": max(bbp_rel, default=0.0),
        "bbp_changed_1e-3": sum(1 for v in bbp_rel if v > 1e-3),
        "bbp_zero_old": sum(1 for o in old if o["bbp_ratio"] == 0.0),
        "bbp_min_new": min((n["bbp_ratio"] for n in new), default=None),
        "bbp_min_old": min((o["bbp_ratio"] for o in old), default=None),
        "k_star1_share_new": float(np.mean([n["k_star"] == 1 for n in new])) if new else None,
        "k_star1_share_old": float(np.mean([o["k_star"] == 1 for o in old])) if old else None,
        "mean_r_new": float(np.mean([n["gap_ratio"] for n in new])) if new else None,
        "mean_r_old": float(np.mean([o["gap_ratio"] for o in old])) if old else None,
        "alarms_new": alarms_new,
        "alarms_old": alarms_old,
        "table7_new": t7_new,
        "table7_old": t7_old,
    }


def _same_trajectory(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether two runs followed one trajectory: same record steps, losses and update norms."""
    if [r["step"] for r in new] != [r["step"] for r in old]:
        return {"same": False, "why": "different record steps"}
    loss = max(
        (_relative(o["loss"], n["loss"]) for n, o in zip(new, old, strict=True) if n["loss"] is not None),
        default=0.0,
    )
    norm = max(
        (_relative(o["update_norm"], n["update_norm"]) for n, o in zip(new, old, strict=True)), default=0.0
    )
    return {"same": loss == 0.0 and norm < 1e-6, "loss_max_rel": loss, "update_norm_max_rel": norm}


def _sigma_change(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> dict[str, float]:
    """Largest relative change of the σ_j the old code kept, by band of σ_j/σ_1."""
    bands = {
        "0.1-1": (0.1, 1.01),
        "0.01-0.1": (0.01, 0.1),
        "0.003-0.01": (0.003, 0.01),
        "0.001-0.003": (0.001, 0.003),
    }
    out = {b: 0.0 for b in bands}
    for n, o in zip(new, old, strict=True):
        s_new, s_old = np.asarray(n["sigma"]), np.asarray(o["sigma"])
        for j in range(s_new.size):
            if s_old[j] == 0 or s_new[0] == 0:
                continue
            q = s_new[j] / s_new[0]
            for band, (lo, hi) in bands.items():
                if lo <= q < hi:
                    out[band] = max(out[band], _relative(s_old[j], s_new[j]))
    return out


def compare(args: argparse.Namespace) -> None:
    new = json.loads((Path(args.new) / DUMP_FILE).read_text())
    old = json.loads((Path(args.old) / DUMP_FILE).read_text()) if args.old else None
    grok = new.get("grok_step")
    result: dict[str, Any] = {"run": new["run"], "study": new["study"], "grok_step": grok, "stopped": new["stopped"],
                              "steps": new["steps"], "wall_s_new": new["wall_s"],
                              "wall_s_old": None if old is None else old["wall_s"], "stores": {}}  # fmt: skip
    for key, store in new["stores"].items():
        w, p, variant = store["window"], store["n_params"], store["bbp_variant"]
        recs = store["records"]
        emulated = _old_rule(recs, p, variant)
        entry: dict[str, Any] = {"window": w, "n_params": p, "emulated": _summarise(recs, emulated, w, grok)}
        groups: dict[str, Any] = {}
        for name in recs[0]["groups"] if recs else []:
            groups[name] = {
                "below_full_rank_old": sum(1 for e in emulated if e["groups_old"][name]["rank"] < w),
                "k_star_differs": sum(
                    1 for r, e in zip(recs, emulated, strict=True)
                    if e["groups_old"][name]["k_star"] != _group_k_star(r["groups"][name])
                ),
            }  # fmt: skip
        entry["groups_emulated"] = groups
        if old is not None and key in old["stores"]:
            old_recs = old["stores"][key]["records"]
            entry["trajectory"] = _same_trajectory(recs, old_recs)
            if entry["trajectory"]["same"]:
                entry["old_code"] = _summarise(recs, old_recs, w, grok)
                entry["old_code"]["sigma_max_rel_change"] = _sigma_change(recs, old_recs)
                entry["old_code"]["events"] = _events(store.get("events"), old["stores"][key].get("events"))
                entry["emulation_vs_old_code_k_star"] = sum(
                    1 for e, o in zip(emulated, old_recs, strict=True) if e["k_star"] != o["k_star"]
                )
                entry["emulation_vs_old_code_rank"] = sum(
                    1 for e, o in zip(emulated, old_recs, strict=True) if e["rank"] != o["rank"]
                )
        result["stores"][key] = entry
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)


def _events(new: list[Any] | None, old: list[Any] | None) -> dict[str, Any] | None:
    """The monitor's events in both runs: counts by kind, the first of each, and whether the lists match."""
    if new is None or old is None:
        return None

    def by_kind(events: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step, kind in events:
            entry = out.setdefault(kind, {"n": 0, "first": step})
            entry["n"] += 1
        return out

    return {
        "same": [tuple(e) for e in new] == [tuple(e) for e in old],
        "new": by_kind(new),
        "old": by_kind(old),
    }


def _group_k_star(sigma: list[float]) -> int:
    from spectral_edge.spectrum.window import gap_statistics

    return gap_statistics(sigma)[1]


def _cell_pair(new: Any, old: Any) -> str:
    def text(value: Any) -> str:
        return "—" if value is None else f"{value}"

    return text(new) if new == old else f"{text(new)} (old: {text(old)})"


def _nu_cell(s: dict[str, Any]) -> str:
    """ν's relative change: median and max over the records the old cut reached, or the round-off."""
    if not s["below_full_rank_old"]:
        return f"{s['nu_max_rel_change']:.1g} (round-off)"
    text = f"{s['nu_median_rel_change_below']:.1%} / {s['nu_max_rel_change']:.0%}"
    return text + (f"; ν = 0 on {s['nu_zero_old']}" if s["nu_zero_old"] else "")


def _minutes(seconds: float | None, stopped: bool) -> str:
    if seconds is None:
        return "—"
    whole = int(round(seconds))
    text = f"{whole // 60} min {whole % 60:02d} s"
    return text + (" (stopped early)" if stopped else "")


def table(args: argparse.Namespace) -> None:
    """One markdown row per store of each ``compare --json`` file, for the study docs."""
    print(
        "| run | P | records | below full rank, old rule (min rank) | k* differs | weighted k* differs "
        "| ν change: median / max (records below full rank) | BBP ratio read 0 | k* alarm | g23 alarm | final k* (weighted) | method | run's wall time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    wall = {"emulated": "wall_s_new", "old_code": "wall_s_old"}
    for path in args.files:
        result = json.loads(Path(path).read_text())
        for key, entry in result["stores"].items():
            name = result["run"] + ("" if key == "main" else f" ({key})")
            for method in ("emulated", "old_code"):
                s = entry.get(method)
                if s is None:
                    continue
                final = _cell_pair(
                    f"{s['table7_new']['k_star_term_unweighted']} ({s['table7_new']['k_star_term_weighted']})",
                    f"{s['table7_old']['k_star_term_unweighted']} ({s['table7_old']['k_star_term_weighted']})",
                )
                print(
                    f"| `{name}` | {entry['n_params']:,} | {s['records']:,} "
                    f"| {s['below_full_rank_old']} ({s['min_rank_old']}) | {s['k_star_differs']} "
                    f"| {s['k_star_weighted_differs']} | {_nu_cell(s)} | {s['bbp_zero_old']} "
                    f"| {_cell_pair(s['alarms_new']['spectral_k1'], s['alarms_old']['spectral_k1'])} "
                    f"| {_cell_pair(s['alarms_new']['spectral_g23'], s['alarms_old']['spectral_g23'])} "
                    f"| {final} | {method.replace('_', ' ')} | {_minutes(result[wall[method]], result['stopped'])} |"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one study run and dump its records")
    t.add_argument("study", choices=("grokking", "lm"))
    t.add_argument("run", help="grokking: <family>/<task>-seed<s>-wd<ω>; lm: a run name of the suite")
    t.add_argument("--suite", default="full", choices=("smoke", "quick", "full"))
    t.add_argument("--out", required=True, help="runs go to <out>/<family>/<run> or <out>/lm/<run>")
    t.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (full schedule)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (the grokking suite: 1)")
    c = sub.add_parser("compare", help="compare the new records with the old rule's readings")
    c.add_argument("new", help="run directory trained with the new library")
    c.add_argument("--old", default=None, help="the same run trained with the old library")
    c.add_argument("--json", default=None, help="write the comparison here too")
    m = sub.add_parser("table", help="markdown rows from compare --json files")
    m.add_argument("files", nargs="+")
    d = sub.add_parser(
        "dump", help="rewrite a run's reread.json from its stores (same library as trained it)"
    )
    d.add_argument("run_dir")
    args = parser.parse_args(argv)
    {"train": train, "compare": compare, "dump": dump, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
