"""The language-model study's analysis and summary on synthetic run directories with planted truths.

No language model is trained: a :class:`SpectralMonitor` watches one parameter vector whose updates are
δ_t = Σ_m a_m(t) c_tm u_m + ν ε_t (orthonormal directions u_m, random coefficients c, isotropic noise ε),
so the gap position and strength are known. The validation loss is written afterwards as a linear trend
minus κ·R shifted by a known number of evaluations, Hessian and probe arrays are planted with known
counts and a known gap flow (seed 42 with Adam's preconditioner p_j, seed 123 as a run recorded before
``probe_precond`` existed), and ``outcome.json`` is an :class:`LMOutcome`, exactly what train.py leaves.
The shift run has a same-corpus control that continues the same state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.series import lag_correlation
from spectral_edge_studies.lmstudy import analysis as an
from spectral_edge_studies.lmstudy import summary as sm
from spectral_edge_studies.lmstudy.recipes import LMConfig, config_dict
from spectral_edge_studies.lmstudy.train import OUTCOME_FILE, LMOutcome

P = 3000  # parameters of the pretraining runs
NOISE = math.sqrt(10) / (10 * math.sqrt(P))  # ν: mode 2 at amplitude 1 sits 10× above the noise (R ≈ 10)
T = 240  # steps of a pretraining run
LR = 1e-3
KAPPA = 0.05  # val_loss = trend − κ R(shifted)
HESSIAN = [500.0, 150.0, 120.0, 30.0, 10.0, 5.0, 1.0, 0.5]  # 3 above 1/(ηW) = 100
# Lanczos residuals: 120 has residual/θ = 0.5 > RITZ_TOL, the other seven are converged.
RESIDUALS = [1.0, 1.0, 60.0, 0.1, 0.1, 0.1, 0.01, 0.01]
PROBE_STEPS = list(range(90, 151, 6))
PRECOND = [2.0, 3.0, 3.0, 1.0]  # Adam's p_j along the probed directions of seed 42 (p_2 = p_3)


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


def _plant_hessian(
    run_dir: Path, steps: list[int], eigenvalues: list[float], residuals: list[float] | None = None
) -> None:
    with RunStore(run_dir, mode="a") as store:
        for s in steps:
            store.add_array(s, "hessian_top", eigenvalues)
            if residuals is not None:
                store.add_array(s, "hessian_residuals", residuals)
            store.add_eval(s, {"hessian_lr": LR})


def _plant_probes(run_dir: Path, cfg: LMConfig, precond: list[float] | None) -> tuple[float, float, float]:
    """Probes at PROBE_STEPS where the records have k* = 2, with g = d_2 − d_3 quadratic in t and h, G chosen so
    eq 68 gives exactly dg/dt (h_2 = h_3: no curvature asymmetry). With ``precond`` (p_j, stored as
    ``probe_precond``) eq 68 is exact for the preconditioned p h, p G and not for the raw h, G; without it (a
    run from before probe_precond existed) for the raw ones. Returns (g0, a, b) of g = g0 + a τ + b τ²."""
    with RunStore(run_dir, mode="r") as store:
        rec = store.record_arrays()
    k_at = dict(zip(rec["step"].tolist(), rec["k_star"].tolist(), strict=True))
    assert all(k_at[s] == 2 for s in PROBE_STEPS), "the plateau should have k* = 2 at every probe step"
    g0, a, b = 2.0, 0.01, -1e-5
    omega, w, h = cfg.weight_decay, cfg.windows[0], 50.0
    p = precond[1] if precond else 1.0  # p_2 = p_3
    with RunStore(run_dir, mode="a") as store:
        for s in PROBE_STEPS:
            tau = s - PROBE_STEPS[0]
            g, dg = g0 + a * tau + b * tau**2, a + 2 * b * tau
            d2 = 1.0
            d1 = d2 + g
            g2 = 0.1
            drive = dg + LR * (p * h + omega) * g  # Term 3 must supply dg/dt plus the damping
            g1 = math.sqrt(d1 * (drive / (LR * w) + (p * g2) ** 2 / d2)) / p
            store.add_array(s, "probe_h", [300.0, h, h, 10.0])
            store.add_array(s, "probe_grad", [1.0, g1, g2, 0.01])
            store.add_array(s, "probe_sigma", [d1 + 1.0, d1, d2, 0.5])
            if precond:
                store.add_array(s, "probe_precond", precond)
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
    _plant_hessian(run_dir, [60], HESSIAN, RESIDUALS)
    _plant_hessian(run_dir, [120], HESSIAN)  # no residuals: convergence unknown
    _plant_probes(run_dir, cfg, PRECOND if seed == 42 else None)
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
    # Lanczos at 121, between Muon's records (every 2 steps): k* is the record at 120's, not a later one.
    _plant_hessian(out / muon.name, [121], [80.0, 60.0, 40.0, 10.0])  # 0 above 100, 2 above 50
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
    at_parent_end = traj42.param.detach().clone()
    traj42.drive(out / shift.name, shift, amps, traj42.directions(3), first_step=T + 1, state=state42)
    _plant_evals(out / shift.name, shift, lead=0, first_step=T + 1)
    _outcome(out / shift.name, shift, first_step=T + 1)

    # Its control: the same state, corpus and schedule, no new data: the parent's two modes go on (k* = 2).
    control = dataclasses.replace(shift, name="continue-shakespeare-seed42", corpus="shakespeare")
    with torch.no_grad():
        traj42.param.copy_(at_parent_end)
    amps = np.tile([1.6 * 0.5, 0.5], (40, 1))  # the parent's amplitude at its end (reopened to 0.5)
    traj42.drive(out / control.name, control, amps, traj42.directions(2), first_step=T + 1, state=state42)
    _plant_evals(out / control.name, control, lead=0, first_step=T + 1)
    _outcome(out / control.name, control, first_step=T + 1)

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
                    "continue-shakespeare-seed42",
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
    # Evaluations every 2 steps: a lag of 2 evaluations is 4 optimizer steps.
    assert (w10.eval_spacing, w10.interval, w10.best_lag_steps) == (2, 1, 4)
    follow = an.gap_loss_test(suite / "adamw-seed123").by_window[10]
    assert follow.best_lag == -3 and follow.best_r < -0.95  # the loss leads by 3 evaluations
    assert follow.best_lag_steps == -6
    w20 = lead.by_window[20]
    assert w20.best_lag is not None
    assert lead.flip_direction == an.flip_direction(w10.best_lag, w20.best_lag)
    assert lead.lag_flip is (lead.flip_direction == an.FLIP_PAPER)
    assert lead.flip_windows == (10, 20)
    ft = an.gap_loss_test(suite / "smollm2-135m-finetune")
    assert ft.by_window[10].best_lag == 0 and ft.lag_flip is None and ft.flip_direction is None


def test_lag_flip_is_directional() -> None:
    """The paper's flip is W = 10 lag < 0 with W = 20 lag > 0; opposite signs the other way round are the
    reverse flip, not the paper's (the old check, a·b < 0, counted both)."""
    assert an.flip_direction(-1, 1) == an.FLIP_PAPER
    assert an.flip_direction(1, -1) == an.FLIP_REVERSE
    assert an.flip_direction(0, 1) == an.flip_direction(-2, -1) == an.FLIP_NONE
    assert an.flip_direction(None, 1) is None


def test_lag_masks_nonfinite_pairs_after_shifting() -> None:
    """A missing sample (R = inf at a rank edge, a NaN) must only drop the pairs it is in. Dropping it from both
    series before shifting closes the gap, so every pair across it is one evaluation off at every lag."""
    t = np.arange(40.0)
    x, y = np.sin(t / 3), np.sin((t - 2) / 3)  # x leads y by exactly 2
    x[[7, 20]] = [np.nan, np.inf]
    lc, why = an._lag(x, y, None)
    assert why is None and lc.best_lag == 2 and lc.best_r == pytest.approx(1.0, abs=1e-12)
    assert lc.n == 38
    keep = np.isfinite(x)
    closed = lag_correlation(x[keep], y[keep], detrend_order=None)  # the old way: mask, then shift
    assert closed.r[an.MAX_LAG + 2] < 1 - 1e-3
    # With every sample finite it is the library's lag_correlation, detrend included.
    xs, ys = np.sin(t / 3) + 0.01 * t, np.cos(t / 5)
    lc, _ = an._lag(xs, ys, 1)
    np.testing.assert_allclose(lc.r, lag_correlation(xs, ys, detrend_order=1).r, rtol=1e-12)


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


def test_krylov_counts_convergence_and_interval_threshold(suite: Path) -> None:
    r = an.krylov_test(suite / "adamw-seed42")
    assert [s.step for s in r.steps] == [60, 120]
    for s in r.steps:
        assert s.threshold == pytest.approx(100.0) and s.count == 3 and s.k_star == 2 and s.satisfied
        assert s.record_step == s.step
    assert r.all_satisfied is True and r.lanczos_k == len(HESSIAN)
    with_res, without = r.steps
    assert with_res.n_converged == 7 and with_res.converged[2] is False  # 120: residual/θ = 0.5
    assert without.converged is None and without.n_converged is None
    muon = an.krylov_test(suite / "muon-seed42")  # interval 2: thresholds 100 and 50
    (s,) = muon.steps
    assert (s.count, s.count_interval, s.k_star) == (0, 2, 1)
    assert s.step == 121 and s.record_step == 120  # the latest record at or before the Lanczos step
    assert s.threshold_interval == pytest.approx(50.0)
    assert muon.all_satisfied is False and muon.all_satisfied_interval is True


def test_record_at_or_before_not_nearest() -> None:
    """A probe at step 19 saw the window of the record at 10; the record at 20 did not exist yet."""
    steps = np.array([10, 20, 30])
    assert an._at_or_before(steps, 19) == 0 and an._at_or_before(steps, 20) == 1
    assert an._at_or_before(steps, 9) is None


def test_alpha_hierarchy(suite: Path) -> None:
    r = an.hierarchy_test(suite / "adamw-seed42")
    assert r.m == 2
    assert r.alpha.dominant > r.alpha.at_gap > r.alpha.subdominant and r.alpha.holds
    assert math.isfinite(r.alpha.next_to_gap) and r.alpha.all_zero is False
    assert math.isfinite(r.alpha_half.subdominant)  # j = 4, 5 of the five half-window positions
    muon = an.hierarchy_test(suite / "muon-seed42")  # m = 1: no dominant tier (Remark 25.1)
    assert muon.m == 1 and math.isnan(muon.alpha.dominant) and muon.alpha.holds
    # α_2 alone against the subdominant mean, reported beside the at-gap mean (which includes α_1).
    with RunStore(suite / "muon-seed42", mode="r") as store:
        alpha = store.record_arrays()["alpha"]
    assert muon.alpha.next_to_gap == pytest.approx(np.nanmean(alpha[:, 1]))
    assert muon.alpha.next_above_sub is bool(muon.alpha.next_to_gap > muon.alpha.subdominant)


def test_all_zero_alpha_is_inconclusive() -> None:
    """With every α = 0 nothing is stable; 0 > 0 is False, but that must not read as a disagreement."""
    regions = an._regions(np.zeros((6, 10)), 1, 10)
    assert regions.all_zero and regions.holds is None and regions.next_above_sub is None
    assert sm._verdict_hierarchy(an.as_dict({"alpha": regions})) == "inconclusive"
    some = an._regions(np.tile([0.9, 0.2, 0.0, 0.0], (6, 1)), 1, 4)
    assert some.holds is True and some.next_to_gap == pytest.approx(0.2) and some.next_above_sub is True


def test_gap_flow_preconditioned_and_raw(suite: Path) -> None:
    r = an.gap_flow_test(suite / "adamw-seed42")
    assert r.n_probes == len(PROBE_STEPS) and r.n_centres == r.n_used == len(PROBE_STEPS) - 2
    assert set(r.k_star) == {2} and r.k_changes == 0 and r.n_skipped_width == 0
    assert r.steps == tuple(PROBE_STEPS[1:-1])
    # Seed 42 was planted for Adam's p_j: the preconditioned eq 68 is exact, the raw (SGD, p = 1) one is not.
    pre, raw = r.preconditioned, r.raw
    assert r.basis == "preconditioned" and r.precond_reason is None
    assert pre.r_squared == pytest.approx(1.0, abs=1e-9) and pre.correlation == pytest.approx(1.0, abs=1e-9)
    assert pre.slope == pytest.approx(1.0, abs=1e-9)
    assert pre.shares["curvature_asymmetry"] == pytest.approx(0.0, abs=1e-12)
    assert pre.shares["damping"] + pre.shares["driving_asymmetry"] == pytest.approx(1.0)
    assert abs(raw.slope - 1.0) > 0.1
    # Seed 123 has no probe_precond (a run from before it existed): the raw reading, exact there.
    old = an.gap_flow_test(suite / "adamw-seed123")
    assert old.preconditioned is None and old.basis == "raw" and "no probe_precond" in old.precond_reason
    assert old.raw.r_squared == pytest.approx(1.0, abs=1e-9) and old.raw.slope == pytest.approx(1.0, abs=1e-9)
    # The paper's §26 test on the records, against a direct computation.
    with RunStore(suite / "adamw-seed42", mode="r") as store:
        rec = store.record_arrays()
    t, g = rec["step"].astype(float), rec["gap"]
    dg = (g[2:] - g[:-2]) / (t[2:] - t[:-2])
    assert r.damping.corr == pytest.approx(np.corrcoef(g[1:-1], dg)[0, 1], rel=1e-9)
    assert r.damping.n == T - 11
    none = an.gap_flow_test(suite / "smollm2-135m-finetune")
    assert none.raw is None and none.basis is None and "no probe arrays" in none.reason


def test_gap_flow_nan_preconditioner_falls_back_to_raw(suite: Path, tmp_path: Path) -> None:
    """A direction touching Muon's matrices has p_j = NaN: no preconditioned reading, the verdict reads raw."""
    run = tmp_path / "adamw-seed123"
    shutil.copytree(suite / "adamw-seed123", run)
    with RunStore(run, mode="a") as store:
        for s in PROBE_STEPS:
            store.add_array(s, "probe_precond", [1.0, 1.0, float("nan"), 1.0])
    r = an.gap_flow_test(run)
    assert r.preconditioned is None and r.basis == "raw" and "not finite" in r.precond_reason
    assert sm._gap_flow_fit(an.as_dict(r))["reading"] == "raw"
    with RunStore(run, mode="a") as store:  # p = 1 everywhere: the preconditioned reading is the raw one
        for s in PROBE_STEPS:
            store.add_array(s, "probe_precond", [1.0, 1.0, 1.0, 1.0])
    r = an.gap_flow_test(run)
    assert r.basis == "preconditioned" and r.preconditioned.predicted == pytest.approx(r.raw.predicted)


def test_centred_differences_follow_one_pair() -> None:
    """Each centre reads g from its own pair (k_i, k_i + 1) at both neighbours, even when k* moves; a centre is
    skipped only when k_i + 1 exceeds the directions probed around it."""
    steps = np.array([0, 10, 20, 30, 40])
    k = np.array([1, 1, 2, 1, 3])
    sigma = np.array(
        [
            [9.0, 5.0, 1.0, 0.5],
            [9.0, 6.0, 2.0, 0.5],
            [9.0, 8.0, 2.0, 0.5],
            [9.0, 7.0, 4.0, np.nan],
            [9.0, 7.0, 3.0, 1.0],
        ]
    )
    centres, rates, skipped = an._centred_gap_rates(steps, k, sigma)
    assert centres.tolist() == [1, 2, 3] and skipped == 0
    # Centre 1 (k = 1): σ1 − σ2 at probes 0 and 2: (1 − 4) / 20.  Centre 2 (k = 2): σ2 − σ3 at probes 1 and 3.
    np.testing.assert_allclose(rates, [(1.0 - 4.0) / 20, (3.0 - 4.0) / 20, (2.0 - 1.0) / 20])
    k[2] = 3  # σ4 is missing at probe 3: centre 2 cannot read its pair there
    centres, _, skipped = an._centred_gap_rates(steps, k, sigma)
    assert centres.tolist() == [1, 3] and skipped == 1


def test_three_phase_onset(suite: Path) -> None:
    for name in ("adamw-seed42", "adamw-seed123"):
        r = an.phase_test(suite / name)
        assert r.series == an.PHASE_SERIES == "σ2/σ3" and r.max_ratio.series == an.PHASE_SECONDARY
        assert r.collapse_onset is not None, r
        # The gap fades over 0.6T–0.75T; σ2/σ3 < 1.2 needs the amplitude below ~5% of the plateau's.
        assert 0.68 * T <= r.collapse_onset <= 0.82 * T, r.collapse_onset
        assert r.onset_fraction == pytest.approx(r.collapse_onset / T)
        # The plateau (longest run near the peak of a noisy ratio) lies inside the planted one, after the rise.
        assert r.rise[0] == 10 and r.rise[1] < r.plateau[0] <= r.plateau[1] < r.collapse_onset
        assert 0.3 * T <= r.plateau[0] and r.plateau[1] <= 0.7 * T, r.plateau
        assert 0 < r.rise_loss_fraction < 1
        assert r.params == dict(an.PHASE_PARAMS)
        # k* = 2 throughout: R is σ2/σ3 in most windows, so the secondary segmentation collapses nearby.
        assert r.max_ratio.collapse_onset is not None
        assert abs(r.max_ratio.collapse_onset - r.collapse_onset) <= 0.1 * T


def test_shift_detection_with_control(suite: Path) -> None:
    r = an.shift_test(suite / "shift-milton-seed42", control_dir=suite / "continue-shakespeare-seed42")
    assert r.parent == "adamw-seed42" and r.pre_mode == 2 and r.window == 10 and r.window_span == 10
    side = r.shift
    assert side.post_mode == 3 and side.first_step == T + 1 and r.shifted is True, r
    # The first W = 10 records straddle the shift and are left out of the post statistics.
    assert (side.n_records, side.excluded, side.post_n) == (40, 10, 30)
    assert side.steps_after_shift is not None and 0 <= side.steps_after_shift <= 10 + 5, r
    control = r.control
    assert control.name == "continue-shakespeare-seed42" and control.corpus == "shakespeare"
    assert control.post_mode == 2 and control.changed is False and r.control_changed is False
    assert r.control_reason is None
    alone = an.shift_test(suite / "shift-milton-seed42")
    assert alone.control is None and "no control run" in alone.control_reason


def test_shift_verdict_needs_the_control_to_stay() -> None:
    base = {"pre_mode": 2, "shift": {"post_mode": 3, "post_n": 30, "shift_step": 250}}
    same = {**base, "control": {"post_mode": 2, "changed": False}, "control_reason": None}
    assert sm._verdict_shift(same)[0] == "agrees"
    moved = {**base, "control": {"post_mode": 3, "changed": True}, "control_reason": None}
    verdict, note = sm._verdict_shift(moved)
    assert verdict == "inconclusive" and "the schedule alone moves k*" in note
    missing = {**base, "control": None, "control_reason": "no control run (same state) in this suite"}
    verdict, note = sm._verdict_shift(missing)
    assert verdict == "agrees" and "no control run" in note and "shift run alone" in note
    flat = {"pre_mode": 2, "shift": {"post_mode": 2, "post_n": 30, "shift_step": None}, "control": None}
    assert sm._verdict_shift(flat)[0] == "disagrees"


def test_optimizer_comparison(suite: Path) -> None:
    c = an.optimizer_comparison(suite / "adamw-seed42", suite / "muon-seed42")
    assert c.muon.mode == 1 and c.adamw.mode == 2
    assert c.muon.cross_corr_k == 1 and c.adamw.cross_corr_k == 2
    assert c.muon.ratio_median < c.adamw.ratio_median  # Muon's gap is weaker, as planted
    assert c.muon.ratio_min <= c.muon.ratio_p5 <= c.muon.ratio_median <= c.muon.ratio_p95 <= c.muon.ratio_max
    assert (c.adamw.final_val_loss, c.muon.final_val_loss) == (2.9, 3.0)


def test_optimizer_verdict_reads_cross_correlation_only() -> None:
    """One k* definition decides (the cross-correlation one, where the paper's AdamW k* = 2): an argmax-mode
    agreement must not rescue a cross-correlation disagreement (no second chance)."""

    def side(mode: int, cross: int | None) -> dict:
        return {"mode": mode, "cross_corr_k": cross}

    assert sm._verdict_optimizer({"adamw": side(1, 2), "muon": side(1, 1)}) == "agrees"
    assert sm._verdict_optimizer({"adamw": side(2, 2), "muon": side(1, 2)}) == "disagrees"
    assert sm._verdict_optimizer({"adamw": side(2, None), "muon": side(1, 1)}) is None


def test_finetune_overhead_and_memory(suite: Path) -> None:
    r = an.finetune_test(suite / "smollm2-135m-finetune")
    assert r.monitor_overhead == pytest.approx(0.25) and r.train_ms_per_step == pytest.approx(2000 / 60)
    assert r.window_bytes == {"10": 10 * 30_000 * 8} and r.memory["window_bytes_bfloat16"] == 600_000
    assert r.k_star.mode == 2 and r.hierarchy.alpha.holds and r.bbp.confirmed


def test_aggregates_skip_nonfinite_values() -> None:
    """min/max over runs must ignore a run without the value: max(nan, 5) is nan, min(5, nan) is 5, so the old
    cells depended on the order of the runs."""

    def run(peak: float | None, adam: float | None) -> dict:
        spread = {"min": 2.0, "median": 3.0, "max": 4.0, "n": 5}
        return {
            "tests": {
                "k_star": {"mode": 2, "frequency": 0.8, "mean_ratio": 3.0, "peak_ratio": peak, "frac_above_null": 1.0,
                           "null_q95": 1.03, "cross_corr_k": 2},
                "bbp": {"data_pw1": spread, "adam_pw1": {"min": adam}, "n_params": 10, "window": 10},
            }
        }  # fmt: skip

    for runs in ([run(None, None), run(5.0, 7.0)], [run(5.0, 7.0), run(None, None)]):
        assert "peak 5;" in sm._cell_k_star(runs)
        assert "Adam ν = η/√B: min 7)" in sm._cell_bbp(runs)
    assert math.isnan(sm._fmax([None, float("nan")])) and sm._fmin(["inf", 3.0, None]) == 3.0


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
        "gap_dynamics": sm.NOT_IN_STUDY,
        "causal": sm.NOT_IN_STUDY,
    }
    assert rows["bbp"]["verdict_note"].startswith("mixed")
    assert rows["bbp"]["per_run"] == {
        "adamw-seed42": "disagrees",
        "adamw-seed123": "disagrees",
        "smollm2-135m-finetune": "agrees",
    }
    # The grokking rows carry the paper's values and are left out of the counts.
    assert rows["gap_dynamics"]["ours_pretrain"] == "not part of the LM study (see the grokking study)"
    assert rows["causal"]["ours_pretrain"] == "not part of the LM study (not reproduced)"
    assert "24/24 grok" in rows["gap_dynamics"]["paper_status"] and "0.75" in rows["causal"]["paper_status"]
    assert summary["verdict_counts"] == {"agrees": 8, "inconclusive": 1}
    # The paper's shift (GPT-2 pretraining) sits in the GPT-2 column, ours in the small-GPT column.
    assert (
        "FineWeb" in rows["shift"]["paper_gpt2"] and "shakespeare → milton" in rows["shift"]["ours_pretrain"]
    )
    assert "control" in rows["shift"]["ours_pretrain"] and "does not change" in rows["shift"]["verdict_note"]
    assert summary["shift"]["control"]["name"] == "continue-shakespeare-seed42"
    # Gap flow: seed 42 read preconditioned, seed 123 (no probe_precond) raw.
    assert (
        "preconditioned in 1" in rows["gap_flow"]["ours_pretrain"]
        and "raw in 1" in rows["gap_flow"]["ours_pretrain"]
    )
    assert summary["timing"]["wall_s"] == 4321.0
    assert summary["missing"] == [
        {"name": "adamw-seed149", "status": "failed", "error": "RuntimeError: out of memory"}
    ]
    agg = summary["three_phase"]
    assert agg["verdict"] == "agrees" and abs(agg["onset_fraction_mean"] - 0.75) < 0.1
    assert agg["series"] == "σ2/σ3"
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
    assert "monitor ms/step (all monitors)" in md and "W = 10 and W = 20 together" in md
    assert "Verdicts: 8 agree, 0 disagree, 1 inconclusive; 2 not tested here." in md
    # The closing paragraph follows the numbers: 8 agree and 1 is inconclusive.
    assert "Of the 9 predictions this study tests, 8 agree, 0 disagree and 1 is inconclusive" in md
    assert "2 AdamW seed(s)" in md and "fewer than the paper's 4" in md
    # P = 3000: (P/(W−1))^{1/4} = 4.3 < 5, so the note says the criterion cannot be met at this P.
    assert "cannot be met whatever the training does (it needs P > 5625)" in md
    assert "R leads the loss in 1 run(s), follows it in 1 and moves with it (lag 0) in 1" in md
    # Eq 68 fits exactly here (R² = 1 > 0.5): "explains", and the note states the verdict's statistic.
    assert "Eq 68, fed with h_j and G_j measured on one fixed probe batch, explains the measured dg/dt" in md
    assert "mean corr 1 (the verdict's statistic" in md
    assert not list(suite.glob(".*.tmp"))


def test_gap_flow_note_says_correlates_unless_r2_is_high() -> None:
    """The note and the verdict read the same statistic: corr ≥ 0.5 agrees, and "explains" needs R² > 0.5."""

    def notes(corr: float, r2: float) -> str:
        fit = {"reading": "raw", "correlation": corr, "r_squared": r2}
        flow = {"measured": [0.0] * 6, "basis": "raw", "raw": fit}
        summary = {"section29": [], "optimizer": None, "missing": []}
        pretrain = [
            {"n_params": 10**6, "steps": 100, "window": 10, "n_windows": 50, "tests": {"gap_flow": flow}}
        ]
        return " ".join(sm._notes(summary, pretrain, []))

    assert "correlates with, but does not explain, the measured dg/dt" in notes(0.7, 0.2)
    assert "explains the measured dg/dt" in notes(0.9, 0.8)
    assert "does not track the measured dg/dt" in notes(0.3, 0.05)
    assert "mean corr 0.7" in notes(0.7, 0.2) and "mean R² 0.2" in notes(0.7, 0.2)


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
    _plant_hessian(run, [12], HESSIAN, RESIDUALS)
    with RunStore(run, mode="a") as store:
        for s in (11, 12):
            store.add_array(s, "probe_h", [1.0, 1.0, 1.0])
            store.add_array(s, "probe_grad", [1.0, 1.0, 1.0])
            store.add_array(s, "probe_sigma", [3.0, 2.0, 1.0])
            store.add_array(s, "probe_precond", [float("nan")] * 3)
            store.add_eval(s, {"probe_lr": LR})
    _outcome(run, cfg, p=500)
    assert an.read_run(run).n == 3
    k = an.k_star_test(run)
    assert k.mode is not None and k.cross_corr_k is None and "need at least 8" in k.reason
    g = an.gap_loss_test(run)
    assert g.by_window[10].best_r != g.by_window[10].best_r or g.by_window[10].best_lag is None
    assert g.by_window[20].reason == "no windows recorded" and g.lag_flip is None and g.flip_direction is None
    flow = an.gap_flow_test(run)
    assert flow.raw is None and "needs at least 3" in flow.reason and flow.damping.corr is None
    p = an.phase_test(run)
    assert p.peak_step is not None and p.collapse_onset is None and "no collapse" in p.reason
    assert p.max_ratio is not None and p.max_ratio.peak_step is not None
    assert an.krylov_test(run).steps[0].count == 3 and an.krylov_test(run).steps[0].n_converged == 7
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


def test_phase_without_rise_reports_none(tmp_path: Path) -> None:
    """A ratio at its plateau from the first record has no rise: rise and its loss share are None, not 0% (the
    segmentation's rise would be the one-record span (first, first), whose loss share is 0 by construction)."""
    steps = np.arange(10, 21)
    r23 = np.array([3.0, 3.0, 3.0, 3.1, 3.0, 3.0, 2.5, 1.5, 1.1, 1.05, 1.0])
    ratios = np.stack([np.full(11, 1.5), r23, np.full(11, 1.01)], axis=1)  # (n, W − 1) with W = 4
    series = an.RunSeries(
        path=tmp_path,
        window=4,
        interval=1,
        n_params=100,
        bbp_variant="PW",
        run_config={"max_steps": 20},
        records={"step": steps, "ratios": ratios, "gap_ratio": r23, "k_star": np.full(11, 2)},
        evals={"val_loss": (steps, np.linspace(4.0, 3.0, 11))},
        arrays={},
    )
    p = an.phase_test(series)
    assert p.series == "σ2/σ3" and p.plateau[0] == 10 and p.collapse_onset is not None
    assert p.rise is None and p.rise_loss_fraction is None and "no rise" in p.reason
    assert an.as_dict(p)["rise_loss_fraction"] is None
    assert sm._pct(an.as_dict(p)["rise_loss_fraction"]) == "—"
