"""The suite summary on recorded fixtures: run stores written with known spectra give known tables.

Each fixture run is a real run store (records, evaluations, arrays, events) plus an ``outcome.json``,
written directly so every number in the expected tables can be worked out by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spectral_edge import RunStore, SpectralEvent, SpectralRecord
from spectral_edge_studies.study.alarms import WW_CACHE
from spectral_edge_studies.study.common import RunOutcome, write_outcome
from spectral_edge_studies.study.summary import (
    PAPER,
    build_summary,
    find_runs,
    format_markdown,
    write_summary,
)

W = 10


def _record(step: int, sigma: np.ndarray) -> SpectralRecord:
    ratios = sigma[:-1] / sigma[1:]
    k = int(np.argmax(ratios)) + 1
    lam = sigma**2
    return SpectralRecord(
        step=step,
        window=W,
        singular_values=sigma,
        ratios=ratios,
        k_star=k,
        gap_ratio=float(ratios[k - 1]),
        gap=float(sigma[k - 1] - sigma[k]),
        gap_lambda=float(lam[k - 1] - lam[k]),
        k95=3,
        k_star_weighted=k,
        gap_ratio_weighted=float(ratios[k - 1]),
        g23=float(lam[1] - lam[2]),
        rank=W,
        effective_rank=3.0,
        alpha=np.zeros(W),
        alpha_half=None,
        delta_c_fro=0.1,
        davis_kahan=0.1,
        adiabatic=None,
        regime=None,
        lr=None,
        update_norm=1.0,
        noise_level=0.01,
        bbp_ratio=10.0,
    )


def _sigma(g23: float) -> np.ndarray:
    """σ with σ1 = 3, σ2 = 2 and λ2 − λ3 = g23 (so σ2/σ3 = 2/√(4 − g23)), then a slowly falling tail."""
    s3 = math.sqrt(4.0 - g23)
    return np.array([3.0, 2.0, s3] + [s3 * 0.95**j for j in range(1, W - 2)])


def _write_run(out, family, task, seed, wd, *, grok, decline_at=300, steps=1000, wq=(1.2, 50.0), ww=None):
    """A run with g23 = 3 up to ``decline_at`` and 0.3 after (10×), or 3 throughout when decline_at is None."""
    run_dir = out / family / f"{task}-seed{seed}-wd{wd:g}"
    with RunStore(run_dir, mode="w") as store:
        store.write_config({"family": family, "task": task})
        for step in range(W, steps + 1, 10):
            low = decline_at is not None and step > decline_at
            store.add_record(_record(step, _sigma(0.3 if low else 3.0)))
        for step in range(0, steps + 1, 50):
            grokked = grok is not None and step >= grok
            store.add_eval(
                step,
                {
                    "train_loss": 0.01,
                    "test_loss": 0.05 if grokked else 5.0,
                    "train_acc": 1.0 if step >= 100 else 0.5,
                    "test_acc": 0.99 if grokked else 0.1,
                    "weight_norm": 30.0 - (0.02 * step if wd else -0.01 * step),
                    "wq0_ratio": wq[1] if grokked else 1.05,
                },
            )
            store.add_array(step, "wq0_sigma", [3.0, 2.0, 1.0] if grokked else [1.0, 0.95, 0.5])
        store.add_event(SpectralEvent(step=400, kind="gap_collapse"))
        if grok is not None:
            store.add_event(SpectralEvent(step=grok + 50, kind="gap_opening"))
    write_outcome(
        RunOutcome(
            family=family,
            task=task,
            seed=seed,
            weight_decay=wd,
            steps=steps,
            max_steps=steps,
            grok_step=grok,
            memorize_step=100,
            final_train_acc=1.0,
            final_test_acc=0.99 if grok else 0.1,
            final_train_loss=0.01,
            final_test_loss=0.05 if grok else 5.0,
            n_params=1000,
            wall_s=12.5,
            run_dir=str(run_dir),
            wq_ratio_at_grok=None if grok is None else (wq[0],),
            wq_ratio_final=(wq[1] if grok else 1.05,),
            checkpoint_steps=tuple(sorted(ww or ())),
        ),
        run_dir,
    )
    if ww is not None:  # a cached WeightWatcher analysis and the checkpoint files it covers
        (run_dir / "checkpoints").mkdir()
        for step in ww:
            (run_dir / "checkpoints" / f"step_{step}.pt").write_bytes(b"")
        cache = {"format": 1, "checkpoints": {str(s): v for s, v in ww.items()}, "seconds": 1.0, "note": ""}
        (run_dir / WW_CACHE).parent.mkdir()
        (run_dir / WW_CACHE).write_text(json.dumps(cache))
    return run_dir


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    alphas = {0: 5.0, 200: 4.5, 400: 3.5, 1000: 3.0}  # ≤ 0.8 × 5 = 4 first at 400
    ww = {s: {"alpha_mean": a, "alphas": {"w": a}, "traps": 0} for s, a in alphas.items()}
    _write_run(out, "modular", "add", 42, 1.0, grok=600, ww=ww)
    _write_run(out, "modular", "add", 42, 0.0, grok=None, decline_at=None)
    _write_run(out, "dyck", "depth", 42, 1.0, grok=700)
    _write_run(out, "dyck", "depth", 42, 0.0, grok=None, decline_at=None)
    manifest = {
        "format": 1,
        "suite": "quick",
        "planned": [
            "modular/add-seed42-wd1",
            "modular/add-seed42-wd0",
            "dyck/depth-seed42-wd1",
            "dyck/depth-seed42-wd0",
            "scan/simple-seed42-wd1",
        ],
        "sessions": [{"jobs": 2, "wall_s": 100.0}, {"jobs": 2, "wall_s": 50.0}],
        "runs": {
            "scan/simple-seed42-wd1": {"status": "failed", "error": "Traceback ...\nRuntimeError: boom\n"}
        },
        "totals": {
            "wall_s": 150.0,
            "compute_s": 290.0,
            "train_s": 250.0,
            "weightwatcher_s": 40.0,
            "sessions": 2,
        },
    }
    (out / "suite.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def summary(suite_dir):
    return build_summary(suite_dir, weightwatcher=False)


def test_find_runs(suite_dir) -> None:
    assert [p.name for p in find_runs(suite_dir)] == [
        "depth-seed42-wd0",
        "depth-seed42-wd1",
        "add-seed42-wd0",
        "add-seed42-wd1",
    ]


def test_hit_table(summary) -> None:
    families = summary["hits"]["families"]
    assert list(families) == ["modular", "dyck", "scan"]  # the paper's order; scan was planned but failed
    assert families["modular"] == {
        "wd_grokked": 1,
        "wd_runs": 1,
        "no_wd_grokked": 0,
        "no_wd_runs": 1,
        "paper": [12, 12, 0, 12],
    }
    assert families["scan"]["wd_runs"] == 0
    assert summary["hits"]["total"] == {
        "wd_grokked": 2,
        "wd_runs": 2,
        "no_wd_grokked": 0,
        "no_wd_runs": 2,
        "paper": [24, 24, 0, 24],
    }
    assert summary["n_planned"] == 5 and summary["n_complete"] == 4
    assert summary["missing"] == [
        {"name": "scan/simple-seed42-wd1", "status": "failed", "error": "RuntimeError: boom"}
    ]


def test_table7_layout(summary) -> None:
    rows = {(r["task"], r["weight_decay"]): r for r in summary["table7"]}
    assert set(rows) == {("add", 1.0), ("add", 0.0)}  # modular only; dyck goes to Table 6
    row = rows[("add", 1.0)]
    assert row["g23_early"] == pytest.approx(3.0) and row["g23_grok"] == pytest.approx(0.3)
    assert row["decline"] == pytest.approx(10.0)
    assert row["k_star_term"] == 1  # σ1/σ2 = 1.5 beats σ2/σ3 = 2/√3.7 after the decline
    assert row["k_star_term_wq"] == 2  # W_Q σ = (3, 2, 1): 2/1 beats 3/2
    assert (
        row["paper_grok_step"],
        row["paper_g23_early"],
        row["paper_g23_grok"],
        row["paper_k_star_term"],
    ) == (
        3100,
        1.32,
        0.18,
        3,
    )
    assert row["paper_decline"] == pytest.approx(1.32 / 0.18)
    control = rows[("add", 0.0)]
    assert control["g23_grok"] is None and control["decline_to_end"] == pytest.approx(1.0)
    assert control["paper_grok_step"] is None  # the paper's controls do not grok: no values


def test_table6_layout(summary) -> None:
    rows = {r["weight_decay"]: r for r in summary["table6"]}
    assert rows[1.0]["wq_ratio_at_grok"] == 1.2 and rows[1.0]["wq_ratio_final"] == 50.0
    assert (
        rows[1.0]["paper_grok_step"],
        rows[1.0]["paper_wq_ratio_at_grok"],
        rows[1.0]["paper_wq_ratio_after"],
    ) == (PAPER["table6"][("dyck", 42)])
    assert rows[0.0]["groks"] is False and rows[0.0]["wq_ratio_at_grok"] is None


def test_alarm_comparison(summary) -> None:
    g23 = summary["alarms"]["spectral_g23"]
    # low records from 310: the 20-record median reaches 0.3 at the 11th (410), 10 records later: 500
    runs = {r["name"]: r for r in summary["runs"]}
    assert runs["modular/add-seed42-wd1"]["alarms"]["spectral_g23"]["step"] == 500
    assert (g23["hits"], g23["grokked"], g23["late"], g23["missed"]) == (2, 2, 0, 0)
    assert (g23["false_alarms"], g23["controls"]) == (0, 2)
    assert g23["median_lead"] == 150  # 600 − 500 and 700 − 500
    assert g23["median_lead_fraction"] == pytest.approx((100 / 600 + 200 / 700) / 2)
    norm = summary["alarms"]["weight_norm"]
    assert norm["hits"] == 2 and norm["false_alarms"] == 0  # the controls' norm grows
    alpha = summary["alarms"]["ww_alpha"]
    assert alpha["runs"] == 1 and alpha["hits"] == 1 and alpha["unavailable"] == 3
    assert runs["modular/add-seed42-wd1"]["alarms"]["ww_alpha"]["step"] == 400
    assert any(
        "skipped" in note or "not installed" in note or "no checkpoints" in note for note in alpha["notes"]
    )
    # on the same checkpoints (0, 200, 400, 1000; grok 600) g23's alarm at 500 is seen only at 1000: late
    g23_row = runs["modular/add-seed42-wd1"]["alarms"]["spectral_g23"]
    assert (g23_row["checkpoint_step"], g23_row["checkpoint_result"]) == (1000, "late")
    alpha_row = runs["modular/add-seed42-wd1"]["alarms"]["ww_alpha"]
    assert (alpha_row["checkpoint_step"], alpha_row["checkpoint_result"], alpha_row["checkpoint_lead"]) == (
        400,
        "hit",
        200,
    )
    assert runs["dyck/depth-seed42-wd1"]["alarms"]["spectral_g23"]["checkpoint_result"] == "n/a"
    assert (g23["checkpoint_hits"], g23["checkpoint_runs"], alpha["median_checkpoint_lead"]) == (0, 1, 200)
    memorised = summary["alarms"]["memorised"]
    assert memorised["false_alarms"] == 2  # the reference rings on every run that memorises


def test_order_check(summary) -> None:
    order = summary["order"]
    assert order["grokked_runs"] == 2
    assert order["events"]["g23_decline"] == {
        "before": 2,
        "after": 0,
        "absent": 0,
        "median_steps_before_grok": 150,
    }
    assert order["events"]["gap_opening"]["after"] == 2  # grok + 50: the opening follows grokking
    assert order["events"]["k_star_to_1"]["absent"] == 2  # σ1/σ2 never rises in these fixtures
    assert order["eq86_order"] == {"holds": 0, "broken": 0, "undecided": 2}


def test_timing_from_the_manifest(summary) -> None:
    assert summary["timing"]["wall_s"] == 150.0 and summary["timing"]["sessions"] == 2
    assert summary["timing"]["compute_s"] == 290.0 and summary["timing"]["jobs"] == [2]
    assert summary["timing"]["runs_wall_s"] == pytest.approx(4 * 12.5)


def test_markdown_has_every_table_beside_the_paper(summary) -> None:
    md = format_markdown(summary)
    assert "| modular | 1/1 | 0/1 | 12/12 / 0/12 |" in md
    assert "| **all** | **2/2** | **0/2** | **24/24 / 0/24** |" in md
    assert (
        "| `modular/add-seed42-wd1` | 1 | 600 [3100] | 3 [1.32] | 0.3 [0.18] | 10× [7.33×] | 1 [3] | 1 | 2 |"
        in md
    )
    assert "| `dyck/depth-seed42-wd1` | 1 | 700 [600] | 1.2 [1.13] | 50 [3187] | ✓ [✓] |" in md
    assert "`scan/simple-seed42-wd1` (failed): RuntimeError: boom" in md
    assert "| `spectral_g23` | 4 | 2/2 | 0 | 0 | 0/2 | 0/0 | 150 | 22.6 | 0/1, — |" in md
    assert "| `ww_alpha` | 1 | 1/1 | 0 | 0 | 0/0 | 0/0 | 200 | 33.3 | 1/1, 200 |" in md
    assert "Wall time 2 min 30 s over 2 session(s)" in md
    assert "## Temporal order (eq 86)" in md and "g23 decline" in md


def test_write_summary(suite_dir) -> None:
    json_path, md_path = write_summary(suite_dir, weightwatcher=False)
    data = json.loads(json_path.read_text())  # strict JSON: non-finite numbers are strings
    assert data["suite"] == "quick" and len(data["runs"]) == 4
    assert md_path.read_text().startswith("# Grokking study: suite `quick`")
