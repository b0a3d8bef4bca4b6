"""The language-model study's analysis and summary on synthetic run directories with planted truths.

No language model is trained: a :class:`SpectralMonitor` watches one parameter vector whose updates are
δ_t = Σ_m a_m(t) c_tm u_m + ν ε_t (orthonormal directions u_m, random coefficients c, isotropic noise ε),
so the gap position and strength are known. The validation loss is written afterwards as a linear trend
minus κ·R shifted by a known number of evaluations, Hessian and probe arrays are planted with known
counts and a known gap flow, and ``outcome.json`` is an :class:`LMOutcome`, exactly what train.py leaves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spectral_edge.experiments.lmstudy import analysis as an
from spectral_edge.experiments.lmstudy import summary as sm
from spectral_edge.experiments.lmstudy.recipes import LMConfig, config_dict
from spectral_edge.experiments.lmstudy.train import OUTCOME_FILE, LMOutcome
from spectral_edge.store import RunStore
from spectral_edge.tracking.monitor import SpectralMonitor

torch.set_num_threads(1)

P = 3000  # parameters of the pretraining runs
NOISE = math.sqrt(10) / (10 * math.sqrt(P))  # ν: mode 2 at amplitude 1 sits 10× above the noise (R ≈ 10)
T = 240  # steps of a pretraining run
LR = 1e-3
KAPPA = 0.05  # val_loss = trend − κ R(shifted)
HESSIAN = [500.0, 150.0, 120.0, 30.0, 10.0, 5.0, 1.0, 0.5]  # 3 above 1/(ηW) = 100
PROBE_STEPS = list(range(90, 151, 6))


def _profile(t: np.ndarray, reopen: bool) -> np.ndarray:
    """Amplitude of the signal: rise to 0.35T, plateau to 0.6T, fall to 0 at 0.75T; optionally back to 0.5."""
    x = t / T
    amp = np.interp(x, [0.0, 0.35, 0.6, 0.75, 1.0], [0.05, 1.0, 1.0, 0.0, 0.0])
    if reopen:
        amp = np.where(x >= 0.9, 0.5, amp)
    return amp


class _Trajectory:
    """One parameter vector and its monitors; continue() keeps the same vector (the shift continues a run)."""

    def __init__(self, p: int, seed: int) -> None:
        self.param = torch.nn.Parameter(torch.zeros(p, dtype=torch.float64))
        self.rng = np.random.default_rng(seed)
        self.p = p

    def directions(self, k: int) -> np.ndarray:
        q, _ = np.linalg.qr(self.rng.standard_normal((self.p, k)))
        return q.T  # (k, P) orthonormal rows

    def drive(
        self,
        run_dir: Path,
        cfg: LMConfig,
        amps: np.ndarray,
        dirs: np.ndarray,
        *,
        first_step: int = 1,
        noise: float = NOISE,
        state: dict | None = None,
    ) -> dict:
        """Run the monitors of ``cfg`` over len(amps) steps; return their state dicts."""
        monitors = []
        for i, w in enumerate(cfg.windows):
            store = RunStore(run_dir if i == 0 else run_dir / f"w{w}", mode="w")
            mon = SpectralMonitor(
                [self.param],
                window=w,
                interval=cfg.monitor_interval,
                lr=lambda: LR,
                store=store,
                storage_dtype=torch.float64,
                kernel="torch",
                config={"study": "lm", "run": config_dict(cfg), "model": "synthetic"},
            )
            if state is not None:
                mon.load_state_dict(state[w])
            monitors.append((w, mon, store))
        for i, a in enumerate(amps):
            step = first_step + i
            c = self.rng.standard_normal(a.shape[0])
            delta = (a * c) @ dirs + noise * self.rng.standard_normal(self.p)
            with torch.no_grad():
                self.param.add_(torch.from_numpy(delta))
            for _, mon, _ in monitors:
                mon.step(step=step, loss=1.0)
        states = {w: mon.state_dict() for w, mon, _ in monitors}
        for _, mon, store in monitors:
            mon.close()
            store.close()
        return states


def _plant_evals(run_dir: Path, cfg: LMConfig, lead: int, first_step: int = 1) -> None:
    """val_loss at every eval_every steps: a linear trend − κ·R, R taken ``lead`` evaluations earlier (the gap
    leads by ``lead``; negative: the loss leads)."""
    with RunStore(run_dir, mode="r") as store:
        rec = store.record_arrays()
    steps = np.arange(first_step - 1 + cfg.eval_every, first_step + cfg.max_steps, cfg.eval_every)
    idx = np.searchsorted(rec["step"], steps, side="right") - 1
    steps = steps[idx >= 0]
    r = rec["gap_ratio"][idx[idx >= 0]]
    n = steps.size
    src = np.clip(np.arange(n) - lead, 0, n - 1)
    loss = 4.0 - 1.5 * np.arange(n) / n - KAPPA * r[src]
    stores = [run_dir] + [run_dir / f"w{w}" for w in cfg.windows[1:]]
    for path in stores:
        with RunStore(path, mode="a") as store:
            for s, v in zip(steps.tolist(), loss.tolist(), strict=True):
                store.add_eval(s, {"val_loss": v, "train_loss": v + 0.1, "lr": LR})


def _plant_hessian(run_dir: Path, steps: list[int], eigenvalues: list[float]) -> None:
    with RunStore(run_dir, mode="a") as store:
        for s in steps:
            store.add_array(s, "hessian_top", eigenvalues)
            store.add_eval(s, {"hessian_lr": LR})


def _plant_probes(run_dir: Path, cfg: LMConfig) -> tuple[float, float, float]:
    """Probes at PROBE_STEPS where the records have k* = 2, with g = d_2 − d_3 quadratic in t and h, G chosen so
    eq 68 gives exactly dg/dt (h_2 = h_3: no curvature asymmetry). Returns (g0, a, b) of g = g0 + a τ + b τ²."""
    with RunStore(run_dir, mode="r") as store:
        rec = store.record_arrays()
    k_at = dict(zip(rec["step"].tolist(), rec["k_star"].tolist(), strict=True))
    assert all(k_at[s] == 2 for s in PROBE_STEPS), "the plateau should have k* = 2 at every probe step"
    g0, a, b = 2.0, 0.01, -1e-5
    omega, w, h = cfg.weight_decay, cfg.windows[0], 50.0
    with RunStore(run_dir, mode="a") as store:
        for s in PROBE_STEPS:
            tau = s - PROBE_STEPS[0]
            g, dg = g0 + a * tau + b * tau**2, a + 2 * b * tau
            d2 = 1.0
            d1 = d2 + g
            g2 = 0.1
            drive = dg + LR * (h + omega) * g  # Term 3 must supply dg/dt plus the damping
            g1 = math.sqrt(d1 * (drive / (LR * w) + g2**2 / d2))
            store.add_array(s, "probe_h", [300.0, h, h, 10.0])
            store.add_array(s, "probe_grad", [1.0, g1, g2, 0.01])
            store.add_array(s, "probe_sigma", [d1 + 1.0, d1, d2, 0.5])
            store.add_eval(s, {"probe_lr": LR})
    return g0, a, b


def _outcome(
    run_dir: Path,
    cfg: LMConfig,
    *,
    first_step: int = 1,
    p: int = P,
    final: float = 3.0,
    extra: dict | None = None,
) -> None:
    outcome = LMOutcome(
        name=cfg.name,
        kind=cfg.kind,
        seed=cfg.seed,
        optimizer=cfg.optimizer,
        corpus=cfg.corpus,
        first_step=first_step,
        steps=cfg.max_steps,
        n_params=p,
        final_val_loss=final,
        final_train_loss=final - 0.1,
        wall_s=12.0,
        train_s=2.0,
        monitor_s=0.5,
        eval_s=0.1,
        probe_s=0.2,
        window_bytes={str(w): w * p * 8 for w in cfg.windows},
        extra=extra or {},
        config=config_dict(cfg),
    )
    (run_dir / OUTCOME_FILE).write_text(json.dumps(outcome.to_dict()))


def _pretrain(out: Path, seed: int, lead: int, reopen: bool) -> tuple[LMConfig, _Trajectory, dict]:
    cfg = LMConfig(
        name=f"adamw-seed{seed}",
        seed=seed,
        max_steps=T,
        warmup=10,
        monitor_interval=1,
        eval_every=2,
        windows=(10, 20),
        batch_size=16,
        lr=LR,
        weight_decay=0.5,
    )
    traj = _Trajectory(P, seed)
    amp = _profile(np.arange(1, T + 1, dtype=np.float64), reopen)
    amps = np.stack([1.6 * amp, amp], axis=1)  # mode 1 stronger, mode 2 the edge: k* = 2
    run_dir = out / cfg.name
    state = traj.drive(run_dir, cfg, amps, traj.directions(2))
    _plant_evals(run_dir, cfg, lead)
    _plant_hessian(run_dir, [60, 120], HESSIAN)
    _plant_probes(run_dir, cfg)
    _outcome(run_dir, cfg, final=2.9)
    return cfg, traj, state


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm-suite")
    cfg42, traj42, state42 = _pretrain(out, 42, lead=2, reopen=True)
    _pretrain(out, 123, lead=-3, reopen=False)

    # Muon: one mode only (k* = 1), weaker gap (R ≈ 5), updates 2 steps apart; Hessian below 1/(ηW).
    muon = LMConfig(
        name="muon-seed42",
        kind="muon",
        optimizer="muon",
        seed=42,
        max_steps=T,
        warmup=10,
        monitor_interval=2,
        eval_every=4,
        windows=(10, 20),
        lr=LR,
    )
    traj = _Trajectory(P, 7)
    traj.drive(out / muon.name, muon, np.full((T, 1), 0.5), traj.directions(1))
    _plant_evals(out / muon.name, muon, lead=0)
    _plant_hessian(out / muon.name, [120], [80.0, 60.0, 40.0, 10.0])  # 0 above 100, 2 above 50
    _outcome(out / muon.name, muon, final=3.0)

    # The shift: seed 42 continued with its monitors, three new modes (k* = 3).
    shift = LMConfig(
        name="shift-milton-seed42",
        kind="shift",
        corpus="milton",
        init_from="adamw-seed42",
        seed=42,
        max_steps=40,
        warmup=3,
        monitor_interval=1,
        eval_every=2,
        windows=(10, 20),
        lr=LR,
    )
    amps = np.tile([1.3 * 1.3, 1.3, 1.0], (40, 1))
    traj42.drive(out / shift.name, shift, amps, traj42.directions(3), first_step=T + 1, state=state42)
    _plant_evals(out / shift.name, shift, lead=0, first_step=T + 1)
    _outcome(out / shift.name, shift, first_step=T + 1)

    # The fine-tune: P = 30000 (BBP vacuous there), steady k* = 2, loss in step with R.
    p_ft = 30_000
    ft = LMConfig(
        name="smollm2-135m-finetune",
        kind="finetune",
        model="smollm2-135m",
        tokenizer="smollm2",
        max_steps=60,
        warmup=5,
        monitor_interval=1,
        eval_every=2,
        windows=(10,),
        lr=3e-5,
        weight_decay=0.1,
        hessian_at=(),
        probe_every=0,
    )
    traj = _Trajectory(p_ft, 11)
    noise = math.sqrt(10) / (10 * math.sqrt(p_ft))
    traj.drive(out / ft.name, ft, np.tile([1.6, 1.0], (60, 1)), traj.directions(2), noise=noise)
    _plant_evals(out / ft.name, ft, lead=0)
    _outcome(
        out / ft.name, ft, p=p_ft, extra={"window_bytes_float32": 1_200_000, "window_bytes_bfloat16": 600_000}
    )

    manifest = {
        "suite": "synthetic",
        "totals": {"wall_s": 4321.0},
        "runs": {
            **{
                name: {"status": "done", "wall_s": 12.0}
                for name in (
                    "adamw-seed42",
                    "adamw-seed123",
                    "muon-seed42",
                    "shift-milton-seed42",
                    "smollm2-135m-finetune",
                )
            },
            "adamw-seed149": {
                "status": "failed",
                "wall_s": 1.0,
                "error": "Traceback\nRuntimeError: out of memory",
            },
        },
    }
    (out / "suite.json").write_text(json.dumps(manifest))
    return out


# -- the tests, each against its planted truth --------------------------------------------------------------


def test_k_star_mode_null_and_cross_correlation(suite: Path) -> None:
    for name in ("adamw-seed42", "adamw-seed123"):
        r = an.k_star_test(suite / name)
        assert r.mode == 2 and r.frequency > 0.5, (name, r.histogram)
        assert r.window == 10 and r.n_windows == T - 9
        assert 1.0 < r.null_q95 < 1.1  # 1 + c95/√P with c95 ≈ 1.7
        assert r.frac_above_null > 0.7
        assert r.peak_ratio > 8 and 3 < r.mean_ratio < 12
        assert r.cross_corr_k == 2  # the loss was planted on R = σ2/σ3
        assert sum(r.histogram.values()) == r.n_windows
    muon = an.k_star_test(suite / "muon-seed42")
    assert muon.mode == 1 and muon.frequency > 0.9


def test_gap_loss_lag_sign_and_flip(suite: Path) -> None:
    lead = an.gap_loss_test(suite / "adamw-seed42")
    assert lead.main_window == 10 and set(lead.by_window) == {10, 20}
    w10 = lead.by_window[10]
    assert w10.best_lag == 2 and w10.best_r < -0.95  # R leads the loss by 2 evaluations; more gap, less loss
    assert w10.n == T // 2 - 4  # evaluations from step 10 on (the first record)
    follow = an.gap_loss_test(suite / "adamw-seed123").by_window[10]
    assert follow.best_lag == -3 and follow.best_r < -0.95  # the loss leads by 3 evaluations
    w20 = lead.by_window[20]
    assert w20.best_lag is not None
    assert lead.lag_flip == (w10.best_lag * w20.best_lag < 0)
    assert lead.flip_windows == (10, 20)
    ft = an.gap_loss_test(suite / "smollm2-135m-finetune")
    assert ft.by_window[10].best_lag == 0 and ft.lag_flip is None


def test_bbp_variants_against_direct_computation(suite: Path) -> None:
    r = an.bbp_test(suite / "adamw-seed42")
    with RunStore(suite / "adamw-seed42", mode="r") as store:
        rec = store.record_arrays()
    sv, nu = rec["singular_values"], rec["noise_level"]
    direct = sv[:, -1] / (nu * (P * 9) ** 0.25)
    assert r.data_pw1.min == pytest.approx(direct.min(), rel=1e-9)
    assert r.stored.median == pytest.approx(np.median(rec["bbp_ratio"]))  # the monitor stores the PW variant
    assert r.stored_variant == "PW" and r.data_pw.median == pytest.approx(r.stored.median, rel=1e-9)
    assert r.data_pw1.min / r.data_pw.min == pytest.approx((10 / 9) ** 0.25, rel=1e-9)
    adam = sv[:, -1] / (LR / 4 * (P * 9) ** 0.25)  # ν = η/√B with B = 16
    assert r.adam_pw1.min == pytest.approx(adam.min(), rel=1e-9)
    assert r.confirmed is bool(direct.min() > 5) and r.confirmed is False  # at P = 3000 the threshold binds
    ft = an.bbp_test(suite / "smollm2-135m-finetune")
    assert ft.confirmed is True and ft.n_params == 30_000


def test_krylov_counts_and_interval_threshold(suite: Path) -> None:
    r = an.krylov_test(suite / "adamw-seed42")
    assert [s.step for s in r.steps] == [60, 120]
    for s in r.steps:
        assert s.threshold == pytest.approx(100.0) and s.count == 3 and s.k_star == 2 and s.satisfied
    assert r.all_satisfied is True and r.lanczos_k == len(HESSIAN)
    muon = an.krylov_test(suite / "muon-seed42")  # interval 2: thresholds 100 and 50
    (s,) = muon.steps
    assert (s.count, s.count_interval, s.k_star) == (0, 2, 1)
    assert s.threshold_interval == pytest.approx(50.0)
    assert muon.all_satisfied is False and muon.all_satisfied_interval is True


def test_alpha_hierarchy(suite: Path) -> None:
    r = an.hierarchy_test(suite / "adamw-seed42")
    assert r.m == 2
    assert r.alpha.dominant > r.alpha.at_gap > r.alpha.subdominant and r.alpha.holds
    assert math.isfinite(r.alpha_half.subdominant)  # j = 4, 5 of the five half-window positions
    muon = an.hierarchy_test(suite / "muon-seed42")  # m = 1: no dominant tier (Remark 25.1)
    assert muon.m == 1 and math.isnan(muon.alpha.dominant) and muon.alpha.holds


def test_gap_flow_recovers_planted_flow(suite: Path) -> None:
    r = an.gap_flow_test(suite / "adamw-seed42")
    assert r.n_probes == r.n_used == len(PROBE_STEPS) and set(r.k_star) == {2} and r.k_changes == 0
    assert r.r_squared == pytest.approx(1.0, abs=1e-9) and r.correlation == pytest.approx(1.0, abs=1e-9)
    assert r.slope == pytest.approx(1.0, abs=1e-9)
    assert r.shares["curvature_asymmetry"] == pytest.approx(0.0, abs=1e-12)
    assert r.shares["damping"] + r.shares["driving_asymmetry"] == pytest.approx(1.0)
    # The paper's §26 test on the records, against a direct computation.
    with RunStore(suite / "adamw-seed42", mode="r") as store:
        rec = store.record_arrays()
    t, g = rec["step"].astype(float), rec["gap"]
    dg = (g[2:] - g[:-2]) / (t[2:] - t[:-2])
    assert r.damping.corr == pytest.approx(np.corrcoef(g[1:-1], dg)[0, 1], rel=1e-9)
    assert r.damping.n == T - 11
    none = an.gap_flow_test(suite / "smollm2-135m-finetune")
    assert none.r_squared is None and "no probe arrays" in none.reason


def test_three_phase_onset(suite: Path) -> None:
    for name in ("adamw-seed42", "adamw-seed123"):
        r = an.phase_test(suite / name)
        assert r.collapse_onset is not None, r
        # The gap fades over 0.6T–0.75T; R < 1.2 needs the amplitude below ~5% of the plateau's.
        assert 0.68 * T <= r.collapse_onset <= 0.82 * T, r.collapse_onset
        assert r.onset_fraction == pytest.approx(r.collapse_onset / T)
        # The plateau (longest run near the peak of a noisy R) lies inside the planted one, after the rise.
        assert r.rise[0] == 10 and r.rise[1] < r.plateau[0] <= r.plateau[1] < r.collapse_onset
        assert 0.3 * T <= r.plateau[0] and r.plateau[1] <= 0.7 * T, r.plateau
        assert 0 < r.rise_loss_fraction < 1
        assert r.params == dict(an.PHASE_PARAMS)


def test_shift_detection(suite: Path) -> None:
    r = an.shift_test(suite / "shift-milton-seed42")
    assert r.parent == "adamw-seed42" and r.pre_mode == 2 and r.post_mode == 3, r
    assert r.first_step == T + 1 and r.shifted is True
    assert r.steps_after_shift is not None and 0 <= r.steps_after_shift <= 10 + 5, r
    assert r.window_span == 10


def test_optimizer_comparison(suite: Path) -> None:
    c = an.optimizer_comparison(suite / "adamw-seed42", suite / "muon-seed42")
    assert c.muon.mode == 1 and c.adamw.mode == 2
    assert c.muon.ratio_median < c.adamw.ratio_median  # Muon's gap is weaker, as planted
    assert c.muon.ratio_min <= c.muon.ratio_p5 <= c.muon.ratio_median <= c.muon.ratio_p95 <= c.muon.ratio_max
    assert (c.adamw.final_val_loss, c.muon.final_val_loss) == (2.9, 3.0)


def test_finetune_overhead_and_memory(suite: Path) -> None:
    r = an.finetune_test(suite / "smollm2-135m-finetune")
    assert r.monitor_overhead == pytest.approx(0.25) and r.train_ms_per_step == pytest.approx(2000 / 60)
    assert r.window_bytes == {"10": 10 * 30_000 * 8} and r.memory["window_bytes_bfloat16"] == 600_000
    assert r.k_star.mode == 2 and r.hierarchy.alpha.holds and r.bbp.confirmed


def test_summary_has_every_row_and_verdicts(suite: Path) -> None:
    md_path, json_path = sm.write_summary(suite)
    assert (md_path.name, json_path.name) == ("summary.md", "summary.json")
    summary = json.loads(json_path.read_text())
    rows = {row["key"]: row for row in summary["section29"]}
    assert list(rows) == list(sm.ROWS)
    verdicts = {k: row["verdict"] for k, row in rows.items()}
    assert verdicts == {
        # P = 3000 binds the BBP threshold for the small runs, P = 30000 does not: a mix.
        "bbp": "inconclusive",
        "k_star": "agrees",
        "krylov": "agrees",
        "gap_loss": "agrees",
        "hierarchy": "agrees",
        "gap_flow": "agrees",
        "three_phase": "agrees",
        "shift": "agrees",
        "optimizer": "agrees",
    }
    assert rows["bbp"]["verdict_note"].startswith("mixed")
    assert rows["bbp"]["per_run"] == {
        "adamw-seed42": "disagrees",
        "adamw-seed123": "disagrees",
        "smollm2-135m-finetune": "agrees",
    }
    assert summary["timing"]["wall_s"] == 4321.0
    assert summary["missing"] == [
        {"name": "adamw-seed149", "status": "failed", "error": "RuntimeError: out of memory"}
    ]
    agg = summary["three_phase"]
    assert agg["verdict"] == "agrees" and abs(agg["onset_fraction_mean"] - 0.75) < 0.1
    md = md_path.read_text()
    assert "72 min 01 s" in md or "1 h 12 min" in md
    for label in sm.ROWS.values():
        assert label in md
    for heading in (
        "## Test 1",
        "## Test 2",
        "## Test 3",
        "## Test 4",
        "## Test 5",
        "## Test 6",
        "## Three-phase",
        "## Distribution shift",
        "## Muon against AdamW",
        "## Fine-tune",
        "## What this does and does not show",
    ):
        assert heading in md
    # The closing paragraph follows the numbers: 8 agree and 1 is inconclusive.
    assert "8 agree, 0 disagree and 1 is inconclusive" in md
    assert "2 AdamW seed(s)" in md and "fewer than the paper's 4" in md
    # P = 3000: (P/(W−1))^{1/4} = 4.3 < 5, so the note says the criterion cannot be met at this P.
    assert "cannot be met whatever the training does (it needs P > 5625)" in md
    assert "R leads the loss in 1 run(s), follows it in 1 and moves with it (lag 0) in 1" in md
    assert not list(suite.glob(".*.tmp"))


def test_short_run_is_robust(tmp_path: Path) -> None:
    """A 3-record run (a smoke run's size): every test returns reasons instead of raising."""
    cfg = LMConfig(
        name="adamw-seed42",
        seed=42,
        max_steps=12,
        warmup=2,
        monitor_interval=1,
        eval_every=2,
        windows=(10, 20),
        lr=LR,
    )
    traj = _Trajectory(500, 0)
    run = tmp_path / cfg.name
    traj.drive(run, cfg, np.tile([1.6, 1.0], (12, 1)), traj.directions(2))
    _plant_evals(run, cfg, lead=0)
    _plant_hessian(run, [12], HESSIAN)
    with RunStore(run, mode="a") as store:
        for s in (11, 12):
            store.add_array(s, "probe_h", [1.0, 1.0, 1.0])
            store.add_array(s, "probe_grad", [1.0, 1.0, 1.0])
            store.add_array(s, "probe_sigma", [3.0, 2.0, 1.0])
            store.add_eval(s, {"probe_lr": LR})
    _outcome(run, cfg, p=500)
    assert an.read_run(run).n == 3
    k = an.k_star_test(run)
    assert k.mode is not None and k.cross_corr_k is None and "need at least 8" in k.reason
    g = an.gap_loss_test(run)
    assert g.by_window[10].best_r != g.by_window[10].best_r or g.by_window[10].best_lag is None
    assert g.by_window[20].reason == "no windows recorded" and g.lag_flip is None
    flow = an.gap_flow_test(run)
    assert flow.r_squared is None and "needs at least 3" in flow.reason and flow.damping.corr is None
    p = an.phase_test(run)
    assert p.peak_step is not None and p.collapse_onset is None and "no collapse" in p.reason
    assert an.krylov_test(run).steps[0].count == 3
    assert an.hierarchy_test(run).m is not None
    assert an.bbp_test(run).n_windows == 3
    json.dumps(an.as_dict(flow))  # JSON-ready, NaN as null
    broken = tmp_path / "adamw-seed7"  # an outcome without a run store: reported, not fatal
    broken.mkdir()
    _outcome(broken, LMConfig(name="adamw-seed7", seed=7))
    md_path, json_path = sm.write_summary(tmp_path)  # no suite.json: still a summary
    summary = json.loads(json_path.read_text())
    assert [r["name"] for r in summary["runs"] if "error" in r] == ["adamw-seed7"]
    verdicts = {row["key"]: row["verdict"] for row in summary["section29"]}
    assert (
        verdicts["gap_loss"]
        == verdicts["gap_flow"]
        == verdicts["shift"]
        == verdicts["optimizer"]
        == "inconclusive"
    )
    assert "## Section 29" in md_path.read_text()
