"""The main job: a grokking run with the spectral monitor at every step, a run store, a summary and a figure.

``spectral-edge demo`` (and ``make demo``) call :func:`run_demo`. The recipe is
:data:`spectral_edge.experiments.grokking.PRESETS` ["default"]; the monitor watches every optimizer step
(W = 10, interval 1), the evaluations go to the run store with σ1/σ2 of the first attention layer's query
matrix (§27's weight-matrix spectrum), and the run ends with the grokking step, the spectral events and a
figure.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from spectral_edge.errors import MissingExtraError, SpectrumWarning
from spectral_edge.experiments.grokking import (
    GROK_ACC,
    MEMORIZE_ACC,
    GrokConfig,
    TrainResult,
    build_model,
    make_data,
    train,
)
from spectral_edge.experiments.progress import ProgressBar
from spectral_edge.store import RunStore
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord
from spectral_edge.tracking.window import check_window


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured and where it put it."""

    run_dir: Path  # the run store's directory
    figure: Path | None  # the PNG, None if matplotlib is missing or figure=False
    train: TrainResult  # the training loop's own result (grok and memorise steps, history)
    events: tuple[SpectralEvent, ...]  # every spectral event of the run, in order
    n_records: int  # records written (one per step once the window is full)
    monitor_time_s: float  # seconds spent inside the monitor's step()
    wall_time_s: float  # seconds for the whole demo, set-up and figure included

    @property
    def grok_step(self) -> int | None:
        return self.train.grok_step

    @property
    def memorize_step(self) -> int | None:
        return self.train.memorize_step


def default_run_dir(config: GrokConfig, root: str | Path = "runs") -> Path:
    """``runs/grokking-<op>-p<p>-wd<wd>-seed<seed>``: one directory per distinct demo setting."""
    wd = f"{config.weight_decay:g}"
    return Path(root) / f"grokking-{config.operation}-p{config.p}-wd{wd}-seed{config.seed}"


def run_demo(
    config: GrokConfig,
    run_dir: str | Path | None = None,
    *,
    window: int = 10,
    interval: int = 1,
    progress: bool = True,
    figure: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Train ``config`` with a :class:`SpectralMonitor` at every step and report what it saw.

    The run directory is replaced if it already holds a run (the demo is meant to be rerun).

    Args:
        config: the grokking recipe (``PRESETS["default"]`` for the demo, ``PRESETS["smoke"]`` for tests).
        run_dir: where the run store goes; default :func:`default_run_dir`.
        window: W of the monitor.
        interval: steps between snapshots.
        progress: draw a progress bar on ``stream``.
        figure: write ``spectrum.png`` into the run directory (needs matplotlib).
        stream: where progress and the summary go; default stderr for progress, stdout for the summary.
    """
    started = time.perf_counter()
    check_window(window)  # before anything is trained or an old run is replaced
    if config.max_steps < window * interval:
        raise ValueError(
            f"max_steps={config.max_steps} is too short for one full window of W={window} updates "
            f"{interval} step(s) apart"
        )
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    data, model = make_data(config), build_model(config)
    # Records are committed on the store's writer thread while the next step trains (one in flight at most).
    store = RunStore(run_dir, mode="w", overwrite=True, write_behind=True)
    current_lr = {"lr": config.lr}
    monitor = SpectralMonitor(
        model,
        window=window,
        interval=interval,
        lr=lambda: current_lr["lr"],
        store=store,
        config={"recipe": dataclasses.asdict(config), "task": "grokking-demo"},
    )
    bar = ProgressBar(stream or sys.stderr) if progress else None
    latest: dict[str, Any] = {}
    monitor_time = 0.0

    def on_step(step: int, metrics: dict[str, float]) -> None:
        nonlocal monitor_time
        current_lr["lr"] = metrics["lr"]
        t0 = time.perf_counter()
        record = monitor.step(step=step, loss=metrics["loss"])
        monitor_time += time.perf_counter() - t0
        if record is not None:
            latest["record"] = record

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        monitor.log_eval(step, **metrics)
        latest["eval"] = metrics

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if bar is not None:
            bar(step, total, _status(latest))

    try:
        result = train(config, model, data, on_step=on_step, on_eval=on_eval, progress=on_progress)
    finally:
        monitor.close()
        try:
            store.close()  # commits the last record, on the store's writer thread until now
        except Exception as exc:  # never let it hide train()'s own error or fail a finished run
            warnings.warn(
                f"spectral-edge: the run store's last write failed ({exc!r}); the records before it are "
                f"stored in {store.path}",
                SpectrumWarning,
                stacklevel=2,
            )

    png = None
    if figure:
        from spectral_edge.report.figures import save_run_figure

        try:
            png = save_run_figure(run_dir, title=_title(config))
        except MissingExtraError as exc:  # the run itself is complete and stored: say so, do not fail
            print(f"spectral-edge demo: no figure ({exc})", file=stream or sys.stderr)
    with RunStore(run_dir, mode="r") as reader:
        n_records = len(reader)
    return DemoResult(
        run_dir=run_dir,
        figure=png,
        train=result,
        events=tuple(monitor.events),
        n_records=n_records,
        monitor_time_s=monitor_time,
        wall_time_s=time.perf_counter() - started,
    )


def format_summary(config: GrokConfig, result: DemoResult) -> str:
    """The end-of-run summary printed by ``spectral-edge demo``."""
    train_result = result.train
    lines = [
        "",
        f"== spectral-edge demo: {_title(config)} ==",
        f"steps run           {train_result.steps_run} in {result.wall_time_s:.0f} s "
        f"({train_result.ms_per_step:.1f} ms/step; monitor {1000 * result.monitor_time_s / max(train_result.steps_run, 1):.2f} ms/step)",
        f"memorised           {_step_or_never(train_result.memorize_step)} (first eval with train accuracy ≥ {MEMORIZE_ACC})",
        f"grokked             {_step_or_never(train_result.grok_step)} (first eval with test accuracy ≥ {GROK_ACC})",
        f"final accuracy      train {train_result.final['train_acc']:.3f}, test {train_result.final['test_acc']:.3f}",
        f"W_Q σ1/σ2           {train_result.history['wq_ratio'][0]:.3g} at step 0 → {train_result.final['wq_ratio']:.3g} at the end",
    ]
    spectral = [
        e for e in result.events if e.kind in ("gap_opening", "gap_collapse", "k_star_shift", "regime_change")
    ]
    lines.append(f"spectral events     {len(spectral)}" + ("" if spectral else " (none)"))
    for event in spectral:
        relative = ""
        if train_result.grok_step is not None:
            relative = f"  [{event.step - train_result.grok_step:+d} steps from grokking]"
        lines.append(f"  step {event.step:>6}  {event.kind:<14} {event.message}{relative}")
    other = [e for e in result.events if e not in spectral]
    for event in other:
        lines.append(f"  step {event.step:>6}  {event.kind:<14} {event.message}")
    lines.append(f"records             {result.n_records} in the run store {result.run_dir / 'run.db'}")
    if result.figure is not None:
        lines.append(f"figure              {result.figure}")
    lines.append(f"export              spectral-edge export {result.run_dir} --format csv")
    return "\n".join(lines)


def _status(latest: dict[str, Any]) -> str:
    parts = []
    ev = latest.get("eval")
    if ev is not None:
        parts.append(f"train {ev['train_acc']:.2f} test {ev['test_acc']:.2f}")
    rec: SpectralRecord | None = latest.get("record")
    if rec is not None:
        ratio = "inf" if math.isinf(rec.gap_ratio) else f"{rec.gap_ratio:.2f}"
        parts.append(f"k*={rec.k_star} R={ratio}")
    return " | ".join(parts)


def _title(config: GrokConfig) -> str:
    return f"{config.operation} mod {config.p}, train {config.train_fraction:.0%}, weight decay {config.weight_decay:g}, seed {config.seed}"


def _step_or_never(step: int | None) -> str:
    return f"at step {step}" if step is not None else "never (within the step budget)"
