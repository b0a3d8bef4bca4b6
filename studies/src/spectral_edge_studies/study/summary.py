"""The grokking study's summary: ``summary.json`` and ``summary.md`` from a suite directory (thesis §27).

:func:`build_summary` reads every finished run under ``<out>/<family>/<run>/`` (its ``outcome.json`` and
run store) and the suite manifest, and computes:

* the hit table: runs that grok with and without weight decay, per family, beside the paper's 24/24 and
  0/24 (§27);
* Table 6's layout for Dyck and SCAN (grok step, σ1/σ2 of W_Q at grokking and at the end) and Table 7's
  layout for modular arithmetic (g23 early, g23 at grokking, the decline, the final k*), each row beside
  the paper's values (:data:`PAPER`);
* the temporal order of eq 86 where the data allows: on each run that grokked, whether the g23 decline,
  k* → 1 with a rising σ1/σ2, the rise of W_Q's σ1/σ2 and the delayed gap opening come before the
  grokking step (:func:`~.alarms.order_check`);
* the early-warning comparison: for every alarm of :mod:`.alarms`, hits (rang before grokking), late
  and missed runs, false alarms on the weight-decay-0 controls, and the median lead time, both at the
  alarm's own resolution and moved to the first saved checkpoint at or after it (WeightWatcher can only
  read checkpoints, so that column compares every alarm on the same checkpoints);
* the same spectral numbers (Table 7's layout, the two spectral alarms, eq 86's order) read from the
  update Gram of the attention weights alone, the X of the author's grokking scripts
  (``parameters="attention"``, :data:`~.common.PARAMETERS`), beside the default reading over every
  parameter; both come from the same run;
* the suite's total compute and wall time, summed over resumed sessions (the manifest).

:func:`write_summary` writes both files. Column definitions follow the author's replication of Table 7
(``thesis_table7_replication.py``, formulas.md §14): g23 = λ2 − λ3 of the rolling update Gram (W = 10);
g23_early is its peak before grokking (over the whole run when the run did not grok); g23_grok is the
last record at or before the grokking step; the decline is g23_early/g23_grok; k*_term is the weighted
k* = argmax_j (σ_j/Σσ)(σ_j/σ_j+1) of the last record, as the replication computes it (formulas.md §5),
with the unweighted k* = argmax_j σ_j/σ_j+1 (Def 6.1) beside it. Our g23 is in the units of our updates
(Adam steps of our learning rate over our parameter count), so only the decline is comparable with the
paper's numbers, not g23 itself. Every remaining difference from the replication code is listed in
``docs/grokking-study.md`` ("Departures from the author's replication code").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from spectral_edge_studies._imports import install_command
from spectral_edge_studies.atomic import write_json, write_text
from spectral_edge_studies.progress import format_duration
from spectral_edge_studies.study import alarms as alarm_rules
from spectral_edge_studies.study.common import (
    OUTCOME_FILE,
    PARAMETERS,
    RunOutcome,
    load_outcome,
)
from spectral_edge_studies.study.suite import FAMILY_MODULES, read_manifest

#: The paper's numbers, with where they come from. Rows of Table 6 are keyed (family, seed); rows of
#: Table 7 (operation, seed). Table 7's decline is derived from the rounded table values.
PAPER: dict[str, Any] = {
    "source": (
        "Xu (2026), The Spectral Edge Thesis, §27: Table 6 (Dyck/SCAN), Table 7 (modular arithmetic) and the "
        "hit counts, as recovered in docs/formulas.md §14 (v1 text: 24/24 grok with weight decay, 0/24 "
        "without; v2/v3 report 1/24 without)"
    ),
    "hits": {  # family: (grokked with ω = 1, runs with ω = 1, grokked with ω = 0, runs with ω = 0)
        "modular": (12, 12, 0, 12),
        "multitask": (6, 6, 0, 6),
        "dyck": (3, 3, 0, 3),
        "scan": (3, 3, 0, 3),
    },
    "table6": {  # (family, seed): (grok step, W_Q σ1/σ2 at grok, W_Q σ1/σ2 after)
        ("dyck", 42): (600, 1.13, 3187.0),
        ("dyck", 137): (1400, 1.19, 2841.0),
        ("dyck", 2024): (1000, 1.09, 1756.0),
        ("scan", 42): (3000, 1.05, 12.4),
        ("scan", 137): (4000, 1.11, 8.7),
        ("scan", 2024): (2500, 1.02, 6.3),
    },
    "table7": {  # (operation, seed): (grok step, g23_early, g23_grok, k*_term)
        ("add", 42): (3100, 1.32, 0.18, 3),
        ("add", 137): (3000, 1.25, 0.19, 1),
        ("add", 2024): (2500, 1.34, 0.23, 3),
        ("sub", 42): (3200, 1.14, 0.15, 1),
        ("sub", 137): (3300, 1.15, 0.15, 1),
        ("sub", 2024): (3600, 1.17, 0.14, 1),
        ("mul", 42): (2600, 1.33, 0.21, 1),
        ("mul", 137): (3000, 1.27, 0.17, 1),
        ("mul", 2024): (2500, 1.24, 0.21, 1),
        ("x2_y2", 42): (1800, 1.26, 0.30, 1),
        ("x2_y2", 137): (2000, 1.26, 0.17, 1),
        ("x2_y2", 2024): (1900, 1.33, 0.28, 1),
    },
}
#: Families whose runs fill Table 6's layout, and Table 7's.
TABLE6_FAMILIES = ("dyck", "scan")
TABLE7_FAMILIES = ("modular", "multitask")
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
#: The alarms that read the update Gram, and so change with the ``parameters`` reading.
SPECTRAL_ALARMS = ("spectral_g23", "spectral_k1")
#: What each reading of :data:`~.common.PARAMETERS` builds X from, for the summary's text.
PARAMETER_READINGS = {
    "all": "every trainable parameter (the thesis's X, Def 1.2)",
    "attention": "the attention projection weights W_Q, W_K, W_V, W_O of every layer",
}
_EVENT_LABELS = {
    "g23_decline": "g23 decline",
    "k_star_to_1": "k* → 1, σ1/σ2 rising",
    "wq_ratio_rise": "W_Q σ1/σ2 rise",
    "gap_opening": "gap opening",
}


def find_runs(out: str | os.PathLike[str]) -> list[Path]:
    """Run directories under ``out`` (``<family>/<run>/``) holding an ``outcome.json``, sorted."""
    root = Path(out)
    return sorted(p.parent for p in root.glob(f"*/*/{OUTCOME_FILE}"))


def analyze_run(run_dir: str | os.PathLike[str], *, weightwatcher: bool = True) -> dict[str, Any]:
    """Everything the summary needs from one finished run (a JSON-ready dict).

    ``alarms``, ``order`` and ``table7`` read X over every parameter (the default reading of
    :data:`~.common.PARAMETERS`); ``attention`` holds the same spectral numbers from the attention weights'
    Gram (the author's X), or ``available: False`` with the reason for a run recorded without that group.

    Args:
        run_dir: a complete run directory.
        weightwatcher: analyse the checkpoints with WeightWatcher when the cache is missing and the
            package is installed (slow: about a second per layer and checkpoint); cached results are
            always used.
    """
    run_dir = Path(run_dir)
    outcome = load_outcome(run_dir)
    if outcome is None:
        raise FileNotFoundError(f"{run_dir} holds no {OUTCOME_FILE}: the run is not complete")
    ww, ww_note = _weightwatcher(run_dir, weightwatcher)
    series = alarm_rules.load_series(run_dir, ww=ww)
    if ww is None:
        series = _with_note(series, ww_note)
    main = _spectral_reading(outcome, series, run_dir)
    family = outcome.family
    return {
        "name": f"{run_dir.parent.name}/{run_dir.name}",
        "run_dir": str(run_dir),
        "family": family,
        "task": outcome.task,
        "seed": outcome.seed,
        "weight_decay": outcome.weight_decay,
        "grokked": outcome.grokked,
        "grok_step": outcome.grok_step,
        "memorize_step": outcome.memorize_step,
        "steps": outcome.steps,
        "max_steps": outcome.max_steps,
        "final_test_acc": outcome.final_test_acc,
        "final_train_acc": outcome.final_train_acc,
        "wall_s": outcome.wall_s,
        "n_records": int(series.record_steps.size),
        "alarms": main["alarms"],
        "order": main["order"],
        "table6": _table6_row(outcome),
        "table7": main["table7"],
        "attention": _attention_reading(outcome, series, run_dir),
        "weightwatcher": {
            "checkpoints": int(0 if series.ww_steps is None else series.ww_steps.size),
            "seconds": None if ww is None else ww.get("seconds"),
            "note": ww_note,
        },
    }


def _spectral_reading(outcome: RunOutcome, series: alarm_rules.RunSeries, run_dir: Path) -> dict[str, Any]:
    """The alarm rows, eq 86's order and Table 7's row of one run from one :class:`~.alarms.RunSeries`."""
    fired = alarm_rules.evaluate_alarms(series)
    order = alarm_rules.order_check(series, outcome.grok_step, fired)
    alarm_rows = {}
    checkpoints = sorted(outcome.checkpoint_steps)
    for name in alarm_rules.ALARMS:
        alarm = fired[name]
        result, lead = alarm_rules.score(alarm.step, outcome.grok_step, available=alarm.available)
        # the first checkpoint at or after the alarm: when a checkpoint-based monitor could have rung
        at_checkpoint = (
            None if alarm.step is None else next((c for c in checkpoints if c >= alarm.step), None)
        )
        ckpt_result, ckpt_lead = alarm_rules.score(
            at_checkpoint, outcome.grok_step, available=alarm.available
        )
        if alarm.available and alarm.step is not None and at_checkpoint is None:  # after the last checkpoint
            ckpt_result, ckpt_lead = ("late", None) if outcome.grokked else ("false_alarm", None)
        alarm_rows[name] = {
            "step": alarm.step,
            "result": result,
            "lead": lead,
            "checkpoint_step": at_checkpoint,
            "checkpoint_result": ckpt_result if checkpoints else "n/a",
            "checkpoint_lead": ckpt_lead if checkpoints else None,
            "lead_fraction": None if lead is None or not outcome.grok_step else lead / outcome.grok_step,
            "available": alarm.available,
            "note": alarm.note,
        }
    return {
        "parameters": series.parameters,
        "alarms": alarm_rows,
        "order": {
            "steps": dict(order.steps),
            "precedes": {event: order.precedes(event) for event in alarm_rules.ORDER_EVENTS},
            "eq86_order": order.eq86_order,
        },
        "table7": _table7_row(outcome, series, run_dir),
    }


def _attention_reading(outcome: RunOutcome, series: alarm_rules.RunSeries, run_dir: Path) -> dict[str, Any]:
    """The spectral numbers of one run read from the attention weights' Gram (``parameters="attention"``).

    Only what depends on X is kept: the spectral alarms, eq 86's order and Table 7's row. The evaluations,
    events and WeightWatcher values are those of ``series``. A run recorded before the study monitored
    the attention weights as their own group has no such reading: ``available`` is False, with the reason.
    """
    try:
        attention = alarm_rules.load_series(run_dir, parameters="attention")
    except ValueError as exc:
        return {"available": False, "note": str(exc)}
    reading = _spectral_reading(
        outcome,
        dataclasses.replace(
            series,
            g23=attention.g23,
            k_star=attention.k_star,
            ratio12=attention.ratio12,
            k_star_weighted=attention.k_star_weighted,
            parameters=attention.parameters,
        ),
        run_dir,
    )
    reading["alarms"] = {name: reading["alarms"][name] for name in SPECTRAL_ALARMS}
    return {"available": True, "note": ""} | reading


def build_summary(
    out: str | os.PathLike[str], *, weightwatcher: bool = True, planned: Sequence[str] | None = None
) -> dict[str, Any]:
    """The suite's summary as a JSON-ready dict (see the module docstring for what it holds).

    Args:
        out: the suite directory.
        weightwatcher: as in :func:`analyze_run`.
        planned: the run names (``<family>/<run>``) the suite meant to run; default the manifest's list.
            Planned runs without an outcome are listed as missing (failed runs with their error).
    """
    out = Path(out)
    manifest = read_manifest(out) or {}
    planned = list(planned if planned is not None else manifest.get("planned", []))
    runs = [analyze_run(run_dir, weightwatcher=weightwatcher) for run_dir in find_runs(out)]
    names = {r["name"] for r in runs}
    families = _family_order({r["family"] for r in runs} | {p.split("/", 1)[0] for p in planned})
    manifest_runs = manifest.get("runs", {})
    missing = [
        {
            "name": name,
            "status": manifest_runs.get(name, {}).get("status", "not run"),
            "error": _last_line(manifest_runs.get(name, {}).get("error")),
        }
        for name in planned
        if name not in names
    ]
    return _json_ready(
        {
            "suite": manifest.get("suite"),
            "out": str(out),
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "paper_source": PAPER["source"],
            "n_planned": len(planned) if planned else len(runs),
            "n_complete": len(runs),
            "missing": missing,
            "hits": _hit_table(runs, families),
            "table6": [r["table6"] | _ident(r) for r in runs if r["family"] in TABLE6_FAMILIES],
            "table7": [r["table7"] | _ident(r) for r in runs if r["family"] in TABLE7_FAMILIES],
            "order": _order_counts(runs),
            "alarms": {name: _alarm_counts(runs, name) for name in alarm_rules.ALARMS},
            "parameters": {name: PARAMETER_READINGS[name] for name in PARAMETERS},
            "attention": _attention_counts(runs),
            "alarm_rules": _alarm_rules(),
            "timing": _timing(manifest, runs),
            "runs": runs,
        }
    )


def write_summary(
    out: str | os.PathLike[str], *, weightwatcher: bool = True, planned: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Build the summary and write ``summary.json`` and ``summary.md`` into ``out``; return both paths."""
    out = Path(out)
    summary = build_summary(out, weightwatcher=weightwatcher, planned=planned)
    json_path, md_path = out / SUMMARY_JSON, out / SUMMARY_MD
    write_json(json_path, summary, allow_nan=False)
    write_text(md_path, format_markdown(summary))
    return json_path, md_path


# -- per-run pieces ---------------------------------------------------------------------------------------


def _weightwatcher(run_dir: Path, allowed: bool) -> tuple[dict[str, Any] | None, str]:
    cache = run_dir / alarm_rules.WW_CACHE
    files = alarm_rules.checkpoint_files(run_dir)
    if not files:
        return None, "no checkpoints saved"
    complete = False
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            complete = all(str(s) in cached.get("checkpoints", {}) for s in files)
        except (OSError, ValueError):
            cached = None
        if complete:
            return cached, cached.get("note", "")
    if not alarm_rules.weightwatcher_available():
        return None, f"weightwatcher is not installed: {install_command('weightwatcher')}"
    if not allowed:
        return None, "WeightWatcher analysis skipped (--no-weightwatcher)"
    try:
        return alarm_rules.weightwatcher_series(run_dir), ""
    except Exception as exc:  # one run's analysis must not sink the summary of the suite
        return None, f"WeightWatcher analysis failed: {type(exc).__name__}: {exc}"


def _with_note(series: alarm_rules.RunSeries, note: str) -> alarm_rules.RunSeries:
    return dataclasses.replace(series, ww_note=note)


def _table6_row(outcome: RunOutcome) -> dict[str, Any]:
    paper = PAPER["table6"].get((outcome.family, outcome.seed)) if outcome.weight_decay > 0 else None
    at_grok = outcome.wq_ratio_at_grok[0] if outcome.wq_ratio_at_grok else None
    final = outcome.wq_ratio_final[0] if outcome.wq_ratio_final else None
    return {
        "grok_step": outcome.grok_step,
        "wq_ratio_at_grok": at_grok,
        "wq_ratio_final": final,
        "groks": outcome.grokked,
        "paper_grok_step": None if paper is None else paper[0],
        "paper_wq_ratio_at_grok": None if paper is None else paper[1],
        "paper_wq_ratio_after": None if paper is None else paper[2],
        "paper_groks": outcome.weight_decay > 0,
    }


def _table7_row(outcome: RunOutcome, series: alarm_rules.RunSeries, run_dir: Path) -> dict[str, Any]:
    steps, g23 = series.record_steps, series.g23
    grok = outcome.grok_step
    early = g23_grok = g23_final = None
    if steps.size:
        before = steps < grok if grok is not None else np.ones(steps.size, dtype=bool)
        finite = before & np.isfinite(g23)
        early = float(np.max(g23[finite])) if finite.any() else None
        if grok is not None:
            at = np.flatnonzero((steps <= grok) & np.isfinite(g23))
            g23_grok = float(g23[at[-1]]) if at.size else None
        g23_final = float(g23[-1]) if np.isfinite(g23[-1]) else None
    # Table 7's k*_term as the replication computes it: the weighted k* (formulas.md §5); the
    # unweighted argmax σ_j/σ_j+1 of Def 6.1 beside it.
    weighted = series.k_star_weighted
    k_term = int(weighted[-1]) if weighted is not None and weighted.size else None
    k_term_unweighted = int(series.k_star[-1]) if series.k_star.size else None
    paper = PAPER["table7"].get((outcome.task, outcome.seed)) if outcome.family == "modular" else None
    if outcome.weight_decay == 0:
        paper = None
    return {
        "grok_step": grok,
        "g23_early": early,
        "g23_grok": g23_grok,
        "decline": _ratio(early, g23_grok),
        "g23_final": g23_final,
        "decline_to_end": _ratio(early, g23_final),
        "k_star_term": k_term,
        "k_star_term_unweighted": k_term_unweighted,
        "k_star_term_wq": _wq_k_star(run_dir),
        "paper_grok_step": None if paper is None else paper[0],
        "paper_g23_early": None if paper is None else paper[1],
        "paper_g23_grok": None if paper is None else paper[2],
        "paper_decline": None if paper is None else paper[1] / paper[2],
        "paper_k_star_term": None if paper is None else paper[3],
    }


def _wq_k_star(run_dir: Path) -> int | None:
    """k* = argmax σ_j/σ_j+1 of layer 0's W_Q at the last evaluation (the replication's docstring reading)."""
    from spectral_edge import RunStore

    with RunStore(run_dir, mode="r") as store:
        arrays = store.arrays()
    if "wq0_sigma" not in arrays:
        return None
    sigma = arrays["wq0_sigma"][1][-1]
    sigma = sigma[np.isfinite(sigma)]
    if sigma.size < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sigma[:-1] / np.where(sigma[1:] > 0, sigma[1:], np.nan)
    if not np.isfinite(ratios).any():
        return None
    return int(np.nanargmax(ratios)) + 1


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b > 0:
        return None
    return a / b


def _ident(run: Mapping[str, Any]) -> dict[str, Any]:
    return {k: run[k] for k in ("name", "family", "task", "seed", "weight_decay")}


# -- suite-level pieces -----------------------------------------------------------------------------------


def _family_order(names: set[str]) -> list[str]:
    known = [f for f in FAMILY_MODULES if f in names]
    return known + sorted(names - set(known))


def _hit_table(runs: Sequence[Mapping[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    rows = {}
    for family in families:
        mine = [r for r in runs if r["family"] == family]
        with_wd = [r for r in mine if r["weight_decay"] > 0]
        without = [r for r in mine if r["weight_decay"] == 0]
        paper = PAPER["hits"].get(family)
        rows[family] = {
            "wd_grokked": sum(r["grokked"] for r in with_wd),
            "wd_runs": len(with_wd),
            "no_wd_grokked": sum(r["grokked"] for r in without),
            "no_wd_runs": len(without),
            "paper": None if paper is None else list(paper),
        }
    total = {
        key: sum(row[key] for row in rows.values())
        for key in ("wd_grokked", "wd_runs", "no_wd_grokked", "no_wd_runs")
    }
    total["paper"] = [sum(p[i] for p in PAPER["hits"].values()) for i in range(4)]
    return {"families": rows, "total": total}


def _order_counts(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    grokked = [r for r in runs if r["grokked"]]
    out: dict[str, Any] = {"grokked_runs": len(grokked), "events": {}}
    for event in alarm_rules.ORDER_EVENTS:
        flags = [r["order"]["precedes"][event] for r in grokked]
        leads = [
            r["grok_step"] - r["order"]["steps"][event]
            for r in grokked
            if r["order"]["steps"][event] is not None
        ]
        out["events"][event] = {
            "before": sum(f is True for f in flags),
            "after": sum(f is False for f in flags),
            "absent": sum(f is None for f in flags),
            "median_steps_before_grok": statistics.median(leads) if leads else None,
        }
    flags = [r["order"]["eq86_order"] for r in grokked]
    out["eq86_order"] = {
        "holds": sum(f is True for f in flags),
        "broken": sum(f is False for f in flags),
        "undecided": sum(f is None for f in flags),
    }
    return out


def _alarm_counts(runs: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    rows = [(r, r["alarms"][name]) for r in runs]
    available = [(r, a) for r, a in rows if a["available"]]
    grokked = [(r, a) for r, a in available if r["grokked"]]
    controls = [(r, a) for r, a in available if not r["grokked"] and r["weight_decay"] == 0]
    other_quiet = [(r, a) for r, a in available if not r["grokked"] and r["weight_decay"] > 0]
    leads = [a["lead"] for _, a in grokked if a["result"] == "hit"]
    ckpt_leads = [a["checkpoint_lead"] for _, a in grokked if a["checkpoint_result"] == "hit"]
    fractions = [
        a["lead_fraction"] for _, a in grokked if a["result"] == "hit" and a["lead_fraction"] is not None
    ]
    notes = sorted({a["note"] for _, a in rows if not a["available"] and a["note"]})
    return {
        "label": alarm_rules.ALARM_LABELS[name],
        "runs": len(available),
        "unavailable": len(rows) - len(available),
        "grokked": len(grokked),
        "hits": sum(a["result"] == "hit" for _, a in grokked),
        "late": sum(a["result"] == "late" for _, a in grokked),
        "missed": sum(a["result"] == "miss" for _, a in grokked),
        "controls": len(controls),
        "false_alarms": sum(a["result"] == "false_alarm" for _, a in controls),
        "non_grokking_wd_runs": len(other_quiet),
        "fired_on_non_grokking_wd": sum(a["result"] == "false_alarm" for _, a in other_quiet),
        "median_lead": statistics.median(leads) if leads else None,
        "checkpoint_runs": sum(a["checkpoint_result"] != "n/a" for _, a in grokked),
        "checkpoint_hits": sum(a["checkpoint_result"] == "hit" for _, a in grokked),
        "median_checkpoint_lead": statistics.median(ckpt_leads) if ckpt_leads else None,
        "median_lead_fraction": statistics.median(fractions) if fractions else None,
        "notes": notes,
    }


def _attention_counts(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table 7's rows, the spectral alarms' counts and eq 86's order, read from the attention weights."""
    read = [r for r in runs if r["attention"]["available"]]
    # the attention reading's alarms and order in place of the default ones, so the counters apply as they are
    as_runs = [dict(r, alarms=r["attention"]["alarms"], order=r["attention"]["order"]) for r in read]
    return {
        "runs": len(read),
        "unavailable": len(runs) - len(read),
        "notes": sorted({r["attention"]["note"] for r in runs if not r["attention"]["available"]}),
        "table7": [r["attention"]["table7"] | _ident(r) for r in read if r["family"] in TABLE7_FAMILIES],
        "alarms": {name: _alarm_counts(as_runs, name) for name in SPECTRAL_ALARMS},
        "order": _order_counts(as_runs),
    }


def _alarm_rules() -> dict[str, str]:
    """One line per alarm, from the docstrings fixed in :mod:`.alarms`."""
    rules = {
        "spectral_g23": alarm_rules.spectral_g23_alarm,
        "spectral_k1": alarm_rules.spectral_k1_alarm,
        "weight_norm": alarm_rules.weight_norm_alarm,
        "loss_gap": alarm_rules.loss_gap_alarm,
        "ww_alpha": alarm_rules.ww_alpha_alarm,
        "ww_traps": alarm_rules.ww_traps_alarm,
        "memorised": alarm_rules.memorised_alarm,
    }
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in rules.items()}


def _timing(manifest: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    totals = manifest.get("totals", {})
    return {
        "sessions": totals.get("sessions", len(manifest.get("sessions", []))),
        "wall_s": totals.get("wall_s"),
        "compute_s": totals.get("compute_s"),
        "train_s": totals.get("train_s"),
        "weightwatcher_s": totals.get("weightwatcher_s"),
        "jobs": sorted({s.get("jobs") for s in manifest.get("sessions", []) if s.get("jobs") is not None}),
        "runs_wall_s": sum(float(r["wall_s"]) for r in runs),
    }


# -- markdown ---------------------------------------------------------------------------------------------


def format_markdown(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the tables of the summary, each beside the paper's values."""
    lines: list[str] = []
    add = lines.append
    suite = summary.get("suite") or "?"
    add(f"# Grokking study: suite `{suite}`")
    add("")
    timing = summary["timing"]
    add(
        f"{summary['n_complete']} of {summary['n_planned']} planned runs complete. "
        f"Wall time {format_duration(timing['wall_s'])} over {timing['sessions']} session(s) "
        f"(jobs {', '.join(str(j) for j in timing['jobs']) or '?'}); compute {format_duration(timing['compute_s'])}: "
        f"training {format_duration(timing['train_s'])}, WeightWatcher {format_duration(timing['weightwatcher_s'])}."
    )
    if suite != "full":
        add("")
        add(
            f"The paper's values are for the full matrix (48 runs); the `{suite}` suite has fewer seeds, tasks "
            "or steps, so compare patterns, not counts."
        )
    add("")
    add(f"Paper: {summary['paper_source']}.")
    if summary["missing"]:
        add("")
        add("Runs without an outcome:")
        add("")
        for miss in summary["missing"]:
            error = f": {miss['error']}" if miss.get("error") else ""
            add(f"- `{miss['name']}` ({miss['status']}){error}")

    add("")
    add("## Hit table")
    add("")
    add("Runs that reach test accuracy ≥ 0.95 (§27).")
    add("")
    add("| family | grok with weight decay | grok without | paper (with / without) |")
    add("|---|---|---|---|")
    hits = summary["hits"]
    for family, row in hits["families"].items():
        paper = row["paper"]
        paper_text = "—" if paper is None else f"{paper[0]}/{paper[1]} / {paper[2]}/{paper[3]}"
        add(
            f"| {family} | {row['wd_grokked']}/{row['wd_runs']} | {row['no_wd_grokked']}/{row['no_wd_runs']} "
            f"| {paper_text} |"
        )
    total = hits["total"]
    p = total["paper"]
    add(
        f"| **all** | **{total['wd_grokked']}/{total['wd_runs']}** | **{total['no_wd_grokked']}/{total['no_wd_runs']}** "
        f"| **{p[0]}/{p[1]} / {p[2]}/{p[3]}** |"
    )

    add("")
    add("## Table 6 layout: Dyck and SCAN")
    add("")
    add(
        "σ1/σ2 of layer 0's query matrix W_Q at the grokking evaluation and at the last one; paper values in brackets."
    )
    add("")
    if summary["table6"]:
        add(
            "| run | ω | grok step [paper] | W_Q σ1/σ2 at grok [paper] | W_Q σ1/σ2 at end [paper, after grok] | groks [paper] |"
        )
        add("|---|---|---|---|---|---|")
        for row in summary["table6"]:
            add(
                f"| `{row['name']}` | {row['weight_decay']:g} | {_int(row['grok_step'])} [{_int(row['paper_grok_step'])}] "
                f"| {_num(row['wq_ratio_at_grok'])} [{_num(row['paper_wq_ratio_at_grok'])}] "
                f"| {_num(row['wq_ratio_final'])} [{_num(row['paper_wq_ratio_after'])}] "
                f"| {_tick(row['groks'])} [{_tick(row['paper_groks'])}] |"
            )
    else:
        add("No Dyck or SCAN runs in this suite directory.")

    add("")
    add("## Table 7 layout: modular arithmetic (and multi-task)")
    add("")
    add(
        "g23 = λ2 − λ3 of the update Gram (W = 10) over every parameter. g23_early: its peak before grokking "
        "(the whole run without grokking); g23_grok: the last record at or before grokking; decline = "
        "early/grok (early/end without grokking); k*_term: the weighted k* = argmax_j (σ_j/Σσ)(σ_j/σ_j+1) "
        "of the last record, as the author's replication computes it; unweighted: argmax_j σ_j/σ_j+1 "
        "(Def 6.1) of the same record; W_Q: argmax σ_j/σ_j+1 of layer 0's query matrix at the last "
        "evaluation. g23 is in our update units, so compare the decline with the paper's, not g23 itself. "
        "Paper values in brackets. The same table from the attention weights alone is in "
        '"Spectral numbers from the attention weights" below.'
    )
    add("")
    _add_table7(add, summary["table7"])

    add("")
    add("## Temporal order (eq 86)")
    add("")
    add(
        "Eq 86: g23↓ → (σ1 ≈ σ2) → D_SGD↑ → ‖[W_Q, W_K]‖_F peak → σ1/σ2↑ (k* → 1) → grok. On each run that "
        "grokked: does each event the records allow us to see come before the grokking step? D_SGD and the "
        "commutator are not recorded. Events: g23 decline = the `spectral_g23` alarm; k* → 1 = the "
        "`spectral_k1` alarm; W_Q σ1/σ2 rise = layer 0's ratio ≥ 1.25 × its running minimum (3-eval median, "
        "2 evals); gap opening = the monitor's first gap opening after a gap collapse (Remark 10.8)."
    )
    add("")
    order = summary["order"]
    add(f"Runs that grokked: {order['grokked_runs']}.")
    add("")
    add("| event | before grok | at/after grok | not seen | median steps before grok |")
    add("|---|---|---|---|---|")
    for event, row in order["events"].items():
        add(
            f"| {_EVENT_LABELS.get(event, event)} | {row['before']} | {row['after']} | {row['absent']} "
            f"| {_int(row['median_steps_before_grok'])} |"
        )
    e86 = order["eq86_order"]
    add("")
    add(
        f"g23 decline ≤ k* → 1 < grok (eq 86's order): holds on {e86['holds']}, broken on {e86['broken']}, "
        f"undecided (an event missing) on {e86['undecided']}."
    )
    grokked = [r for r in summary["runs"] if r["grokked"]]
    if grokked:
        add("")
        add("| run | grok | g23 decline | k* → 1 | W_Q σ1/σ2 rise | gap opening | eq-86 order |")
        add("|---|---|---|---|---|---|---|")
        for r in grokked:
            s = r["order"]["steps"]
            add(
                f"| `{r['name']}` | {r['grok_step']} | {_rel(s['g23_decline'], r['grok_step'])} "
                f"| {_rel(s['k_star_to_1'], r['grok_step'])} | {_rel(s['wq_ratio_rise'], r['grok_step'])} "
                f"| {_rel(s['gap_opening'], r['grok_step'])} | {_tick(r['order']['eq86_order'])} |"
            )

    add("")
    add("## Early warning: our spectral alarms against the alternatives")
    add("")
    add(
        "Rules fixed before any suite outcome was seen (`spectral_edge_studies.study.alarms`). A hit rings "
        "strictly before the grokking step; lead = grok step − alarm step. False alarms: rang on a "
        "weight-decay-0 run that did not grok. The spectral alarms read every record and the baselines every "
        "evaluation, WeightWatcher only the saved checkpoints; the last column moves every alarm to the first "
        "checkpoint at or after it, so all of them are compared on the same checkpoints."
    )
    add("")
    for name, rule in summary["alarm_rules"].items():
        add(f"- `{name}`: {rule}")
    add("")
    add(
        "| alarm | runs | hits | late | missed | false alarms (ω = 0) | rang on non-grokking ω > 0 "
        "| median lead (steps) | median lead (% of grok step) | at checkpoints: hits, median lead |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in summary["alarms"].items():
        if row["runs"] == 0:
            why = "; ".join(row["notes"]) or "not available"
            add(f"| `{name}` | 0 | — | — | — | — | — | — | — | — ({why}) |")
            continue
        pct = None if row["median_lead_fraction"] is None else 100 * row["median_lead_fraction"]
        add(
            f"| `{name}` | {row['runs']} | {row['hits']}/{row['grokked']} | {row['late']} | {row['missed']} "
            f"| {row['false_alarms']}/{row['controls']} | {row['fired_on_non_grokking_wd']}/{row['non_grokking_wd_runs']} "
            f"| {_int(row['median_lead'])} | {_num(pct)} "
            f"| {row['checkpoint_hits']}/{row['checkpoint_runs']}, {_int(row['median_checkpoint_lead'])} |"
        )
    notes = sorted({n for row in summary["alarms"].values() for n in row["notes"]})
    if notes:
        add("")
        for note in notes:
            add(f"- note: {note}")

    add("")
    add("### Alarm steps per run")
    add("")
    header = " | ".join(f"`{name}`" for name in summary["alarms"])
    add(f"| run | grok | {header} |")
    add("|---|---|" + "---|" * len(summary["alarms"]))
    for r in summary["runs"]:
        cells = []
        for name in summary["alarms"]:
            a = r["alarms"][name]
            if not a["available"]:
                cells.append("n/a")
            elif a["step"] is None:
                cells.append("—")
            else:
                cells.append(f"{a['step']} ({a['result'].replace('_', ' ')})")
        add(f"| `{r['name']}` | {_int(r['grok_step'])} | " + " | ".join(cells) + " |")

    _add_attention_section(add, summary)

    add("")
    add("## Runs")
    add("")
    add("| run | ω | steps | memorised | grok | final test acc | records | wall |")
    add("|---|---|---|---|---|---|---|---|")
    for r in summary["runs"]:
        add(
            f"| `{r['name']}` | {r['weight_decay']:g} | {r['steps']}/{r['max_steps']} | {_int(r['memorize_step'])} "
            f"| {_int(r['grok_step'])} | {r['final_test_acc']:.3f} | {r['n_records']} | {format_duration(r['wall_s'])} |"
        )
    add("")
    return "\n".join(lines)


def _add_table7(add: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        add("No modular-arithmetic runs in this suite directory.")
        return
    add(
        "| run | ω | grok step [paper] | g23_early [paper] | g23_grok [paper] | decline [paper] "
        "| k*_term, weighted [paper] | k*_term, unweighted | W_Q k* |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        decline = row["decline"] if row["grok_step"] is not None else row["decline_to_end"]
        mark = "" if row["grok_step"] is not None else " (to end)"
        add(
            f"| `{row['name']}` | {row['weight_decay']:g} | {_int(row['grok_step'])} [{_int(row['paper_grok_step'])}] "
            f"| {_num(row['g23_early'])} [{_num(row['paper_g23_early'])}] "
            f"| {_num(row['g23_grok'])} [{_num(row['paper_g23_grok'])}] "
            f"| {_times(decline)}{mark} [{_times(row['paper_decline'])}] "
            f"| {_int(row['k_star_term'])} [{_int(row['paper_k_star_term'])}] "
            f"| {_int(row.get('k_star_term_unweighted'))} | {_int(row['k_star_term_wq'])} |"
        )


def _add_attention_section(add: Any, summary: Mapping[str, Any]) -> None:
    """The spectral numbers read from the attention weights' Gram, beside the default reading's."""
    attention = summary.get("attention")
    readings = summary.get("parameters") or PARAMETER_READINGS
    add("")
    add("## Spectral numbers from the attention weights")
    add("")
    add(
        f"The tables above build X from {readings['all']}; the author's grokking scripts build it from "
        f"{readings['attention']}. The monitor records that Gram as its own parameter group in the same "
        "pass, so each run gives both readings; the rules, thresholds and grokking steps are the same. "
        "The monitor's events (gap openings) come from the all-parameter Gram in both readings."
    )
    add("")
    if not attention or attention["runs"] == 0:
        why = "; ".join((attention or {}).get("notes", [])) or "no run recorded an attention group"
        add(f"Not available for this suite: {why}")
        return
    if attention["unavailable"]:
        add(
            f"{attention['unavailable']} run(s) without an attention group are left out: {'; '.join(attention['notes'])}"
        )
        add("")
    add("### Table 7 layout, attention weights only")
    add("")
    _add_table7(add, attention["table7"])
    add("")
    add("### Spectral alarms and eq 86's order, both readings")
    add("")
    add("| alarm | X | hits | late | missed | false alarms (ω = 0) | median lead (steps) |")
    add("|---|---|---|---|---|---|---|")
    for name in SPECTRAL_ALARMS:
        for label, row in (("all", summary["alarms"][name]), ("attention", attention["alarms"][name])):
            add(
                f"| `{name}` | {label} | {row['hits']}/{row['grokked']} | {row['late']} | {row['missed']} "
                f"| {row['false_alarms']}/{row['controls']} | {_int(row['median_lead'])} |"
            )
    add("")
    for label, order in (("all", summary["order"]), ("attention", attention["order"])):
        e86 = order["eq86_order"]
        add(
            f"- eq 86's order (g23 decline ≤ k* → 1 < grok), X = {label}: holds on {e86['holds']}, broken on "
            f"{e86['broken']}, undecided on {e86['undecided']} of {order['grokked_runs']} runs that grokked."
        )


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, str):
        return x
    x = float(x)
    if math.isinf(x):
        return "∞"
    if x == 0 or 0.01 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return f"{x:.2e}"


def _int(x: Any) -> str:
    return "—" if x is None else str(int(round(float(x))))


def _times(x: Any) -> str:
    return "—" if x is None else f"{_num(x)}×"


def _tick(x: Any) -> str:
    return "—" if x is None else ("✓" if x else "×")


def _rel(step: int | None, grok: int | None) -> str:
    if step is None:
        return "—"
    if grok is None:
        return str(step)
    return f"{step} ({step - grok:+d})"


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _json_ready(value.item())
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


__all__ = [
    "PAPER",
    "PARAMETER_READINGS",
    "SPECTRAL_ALARMS",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "analyze_run",
    "build_summary",
    "find_runs",
    "format_markdown",
    "write_summary",
]
