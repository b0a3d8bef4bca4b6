"""Cost of the monitor per training step, as ratios measured side by side in one run.

For W = 10 and P in {1e5, 1e6, 1e7} it prints

(a) the monitor's time per step (``SpectralMonitor.step``: the push and the whole record) over the
    memory-bandwidth floor, one read of a W × P float32 buffer (``X.sum()``, the window's size);
(b) the speed-up of the monitor over recomputing G = X·Xᵀ per step (float32, and float64 as an
    accurate reference would) and over a float32 SVD of X per step;
(c) the monitor's overhead on the demo's training step at interval 1 (the demo's own ``train`` loop,
    the monitor called from its step hook in alternate blocks), measured two ways: inside-monitor time /
    training-step time, and (with − without) / without over neighbouring blocks; then the same with a
    run store, as ``make demo`` runs it, and the monitor's time over a bare forward/backward/AdamW step;
(d) the two pushes kept (issue 16): the torch path's time (the push on accelerators and the reference)
    over the fused C++ kernel's (the CPU default), the same update pushed into two windows, at P = 1e6
    and 1e7 (``--push-sizes``);
(e) the compiled eigen stage (``csrc/window_spectra.cpp``) against NumPy's (``SPECTRAL_EDGE_EIGEN=numpy``),
    switched on one monitor from step to step: in the demo loop, steps rotate between no monitor, the
    one and the other, and the saving is (NumPy − compiled time in ``monitor.step``) over the un-monitored step
    of the same three, in points of overhead; at P = 1e7, the ratio of whole monitor steps, NumPy over
    compiled, taken pair by pair. Issue 16 keeps the compiled stage only if it saves more than one point
    on the demo or anything measurable at P ≥ 1e7; each median comes with a 95% bootstrap interval.

Each repetition times the arms being compared back to back (in rotating order where there are several)
and the ratios are medians of per-repetition ratios, so bursts of load on a shared machine hit both
sides; read the ratios, not the absolute times. Targets (issue 2): (a) ≤ 2.0 at P = 1e7; (b) ≥ 5× and
≥ 50× at P = 1e7; (c) ≤ 5%.

    python benchmarks/monitor_step.py [--sizes 1e5 1e6 1e7] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch

from spectral_edge import SpectralMonitor
from spectral_edge.tracking.window import EIGEN_ENV, ParameterLayout, UpdateWindow

WINDOW = 10


def tensor_sizes(n_params: int) -> list[int]:
    """Four tensors, as a model would have, with one very large one."""
    return [
        n_params // 2,
        n_params // 4,
        n_params // 8,
        n_params - n_params // 2 - n_params // 4 - n_params // 8,
    ]


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and a bootstrap interval for it (2000 resamples, seeded)."""
    rng = random.Random(0)
    boots = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(2000))
    cut = int((1 - level) / 2 * len(boots))
    return statistics.median(values), boots[cut], boots[-1 - cut]


def use_eigen_stage(which: str) -> None:
    """Records from now on take the eigen stage ``which``: "compiled" or "numpy" (``SPECTRAL_EDGE_EIGEN``,
    read by the window at every record, so both run on one monitor and one window's buffers)."""
    os.environ[EIGEN_ENV] = "numpy" if which == "numpy" else "auto"


def check_compiled_eigen_stage() -> None:
    if UpdateWindow(4, window=2).eigen != "compiled":
        raise RuntimeError("(e) needs the compiled eigen stage: the C++ kernel did not build here")


def cpu_model() -> str:
    """The CPU's model name (Linux), for the heading of the printed figures."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def bench_size(n_params: int, repeats: int, chunk_size: int | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    sizes = tensor_sizes(n_params)
    params = [torch.nn.Parameter(torch.randn(s)) for s in sizes]
    steps = [[torch.randn(s) * 1e-3 for s in sizes] for _ in range(3)]
    monitor = SpectralMonitor(params, window=WINDOW, lr=1e-3, groups=None, chunk_size=chunk_size)
    counter = [0]

    def optimizer_step() -> None:  # stands in for optimizer.step(); not timed
        with torch.no_grad():
            for p, d in zip(params, steps[counter[0] % 3], strict=True):
                p.add_(d)
        counter[0] += 1

    for _ in range(WINDOW + 1):
        optimizer_step()
        monitor.step()
    assert monitor.last_record is not None

    x = torch.randn(WINDOW, n_params)  # (W, P) float32, the size of the window the monitor reads
    baselines = {
        "floor": lambda: x.sum(),
        "gram32": lambda: x @ x.T,
        "gram64": lambda: x.double() @ x.double().T,
        "svd32": lambda: torch.linalg.svdvals(x),
    }
    # Interleave: every repetition times the monitor and each baseline back to back, so that a burst of
    # load on this shared machine hits both sides of a ratio; report medians of per-repetition ratios.
    times: dict[str, list[float]] = {name: [] for name in ["monitor", *baselines]}
    for _ in range(repeats):
        optimizer_step()
        t0 = time.perf_counter()
        monitor.step()
        times["monitor"].append(time.perf_counter() - t0)
        for name, fn in baselines.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ratio = {name: [b / m for b, m in zip(times[name], times["monitor"], strict=True)] for name in baselines}
    result = {"P": float(n_params)}
    result.update({f"{name}_s": statistics.median(v) for name, v in times.items()})
    result["ratio_floor"] = statistics.median(1.0 / r for r in ratio["floor"])
    result["speedup_gram32"] = statistics.median(ratio["gram32"])
    result["speedup_gram64"] = statistics.median(ratio["gram64"])
    result["speedup_svd32"] = statistics.median(ratio["svd32"])
    return result


def bench_demo_overhead(steps: int, blocks: int, *, with_store: bool = False) -> dict[str, float]:
    """Overhead of the monitor (interval 1, W = 10) on the demo's own training step.

    The demo's ``train`` loop runs unchanged (the step ``make demo`` takes: a seeded minibatch, forward,
    backward, gradient-norm clipping, AdamW, the loss and norm read back) with its evaluations switched
    off; its ``on_step`` hook calls the monitor in one block of each pair of ``steps``-step blocks, first
    in even pairs and second in odd ones, so that a drift in step time cancels. Each step is timed from
    the end of one hook call to the end of the next; the first step of every block is left out, as it
    carries the other arm's after-effects. Two measures:

    * inside: the median time in ``monitor.step()`` over the median step without the monitor;
    * with − without: for each pair of blocks, (mean step with − mean step without) / mean step without,
      and the median over pairs, which also counts what the monitor costs the training step after it
      (caches it evicted, a store's writer thread).

    With ``with_store`` the monitor also files every record in a run store opened as the demo opens it
    (``write_behind``: committed on the store's thread while the next step trains).
    """
    import dataclasses
    import tempfile

    from spectral_edge.demo import PRESETS, build_model, make_data, train
    from spectral_edge.store import RunStore

    warmup = 2 * WINDOW
    config = PRESETS["default"]
    # No evaluations inside the measured steps (train() still evaluates at steps 0 and max_steps).
    config = dataclasses.replace(config, max_steps=warmup + 2 * blocks * steps, eval_every=10**9)
    data, model = make_data(config), build_model(config)
    current_lr = {"lr": config.lr}

    def block_of(step: int) -> int:
        return (step - warmup - 1) // steps

    def monitored(step: int) -> bool:
        if step <= warmup:
            return True
        k = block_of(step)
        return k % 2 == (1 if (k // 2) % 2 == 0 else 0)  # pairs alternate: off-on, on-off, ...

    def measured(step: int) -> bool:
        return step > warmup and (step - warmup - 1) % steps != 0

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/run", mode="w", write_behind=True) if with_store else None
        monitor = SpectralMonitor(model, window=WINDOW, lr=lambda: current_lr["lr"], store=store)
        step_end: dict[int, float] = {}
        inside: list[float] = []

        def on_step(step: int, metrics: dict[str, float]) -> None:
            current_lr["lr"] = metrics["lr"]
            if monitored(step):
                t0 = time.perf_counter()
                monitor.step(step=step, loss=metrics["loss"])
                if measured(step):
                    inside.append(time.perf_counter() - t0)
            step_end[step] = time.perf_counter()

        try:
            train(config, model, data, on_step=on_step)
        finally:
            monitor.close()
            if store is not None:
                store.close()
    step_s = {s: step_end[s] - step_end[s - 1] for s in step_end if s - 1 in step_end and measured(s)}
    by_arm: dict[tuple[int, bool], list[float]] = {}  # (pair, monitored) -> step times
    for s, t in step_s.items():
        by_arm.setdefault((block_of(s) // 2, monitored(s)), []).append(t)
    pairs = [
        (statistics.fmean(by_arm[(b, False)]), statistics.fmean(by_arm[(b, True)])) for b in range(blocks)
    ]
    without = statistics.median(t for s, t in step_s.items() if not monitored(s))
    return {
        "P": float(monitor.n_params),
        "train_step_s": without,
        "monitor_s": statistics.median(inside),
        "overhead_inside": statistics.median(inside) / without,
        "overhead_ab": statistics.median((on - off) / off for off, on in pairs),
    }


def bench_bare_step_overhead(steps: int) -> dict[str, float]:
    """The monitor's time over a bare forward, backward and AdamW step of the demo model (no clipping,
    no read-backs): a stricter reference than the demo's own step, reported beside it."""
    import torch.nn.functional as F

    from spectral_edge.demo import PRESETS, build_model, make_data

    config = PRESETS["default"]
    data, model = make_data(config), build_model(config)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
    )
    monitor = SpectralMonitor(model, window=WINDOW, lr=opt)
    gen = torch.Generator().manual_seed(0)
    n_train = data.train_x.shape[0]

    def train_step() -> None:
        idx = torch.randint(n_train, (min(config.batch_size, n_train),), generator=gen)
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_times, inside = [], []
    for i in range(2 * WINDOW + steps):
        t0 = time.perf_counter()
        train_step()
        t1 = time.perf_counter()
        monitor.step()
        if i >= 2 * WINDOW:
            train_times.append(t1 - t0)
            inside.append(time.perf_counter() - t1)
    return {
        "train_step_s": statistics.median(train_times),
        "monitor_s": statistics.median(inside),
        "overhead_inside": statistics.median(inside) / statistics.median(train_times),
    }


def bench_pushes(n_params: int, repeats: int) -> dict[str, float]:
    """(d) One push by the fused kernel and by the torch path, the same update into two windows of one
    layout, in alternating order, with one read of a window-sized buffer (the floor) beside them."""
    torch.manual_seed(0)
    sizes = tensor_sizes(n_params)
    layout, _ = ParameterLayout.build([f"t{i}" for i in range(4)], [(s,) for s in sizes], lambda _: "all")
    params = [torch.randn(s) for s in sizes]
    steps = [[torch.randn(s) * 1e-3 for s in sizes] for _ in range(3)]
    windows = {kernel: UpdateWindow(layout, window=WINDOW, kernel=kernel) for kernel in ("fused", "torch")}
    for win in windows.values():
        win.snapshot(params)
    x = torch.randn(WINDOW, n_params)
    times: dict[str, list[float]] = {"fused": [], "torch": [], "floor": []}
    for r in range(WINDOW + 1 + repeats):
        for p, d in zip(params, steps[r % 3], strict=True):
            p.add_(d)
        for name in ("fused", "torch") if r % 2 else ("torch", "fused"):
            t0 = time.perf_counter()
            windows[name].push(params)
            if r > WINDOW:  # the window is full: every push also drops the oldest update
                times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x.sum()
        if r > WINDOW:
            times["floor"].append(time.perf_counter() - t0)
    result = {"P": float(n_params)}
    result.update({f"{name}_s": statistics.median(v) for name, v in times.items()})
    result["torch_over_fused"] = statistics.median(
        t / f for t, f in zip(times["torch"], times["fused"], strict=True)
    )
    result["fused_over_floor"] = statistics.median(
        f / b for f, b in zip(times["fused"], times["floor"], strict=True)
    )
    return result


def bench_eigen_stage_demo(triples: int) -> dict[str, float]:
    """(e) on the demo: the steps of the demo's own ``train`` loop (evaluations off) rotate between no
    monitor, the monitor with the compiled eigen stage and the monitor with NumPy's (the order shifting
    every three steps). For each three: the NumPy step's time in ``monitor.step`` minus the compiled one's,
    over the un-monitored step's time (from the end of one hook call to the end of the next), in points;
    the median over the threes and its bootstrap interval."""
    import dataclasses

    from spectral_edge.demo import PRESETS, build_model, make_data, train

    check_compiled_eigen_stage()
    warmup = 2 * WINDOW
    config = dataclasses.replace(PRESETS["default"], max_steps=warmup + 3 * triples, eval_every=10**9)
    data, model = make_data(config), build_model(config)
    current_lr = {"lr": config.lr}
    monitor = SpectralMonitor(model, window=WINDOW, lr=lambda: current_lr["lr"])
    arms = ("off", "compiled", "numpy")
    last_end = [0.0]
    current: dict[str, float] = {}
    rows: list[dict[str, float]] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        current_lr["lr"] = metrics["lr"]
        if step <= warmup:  # fill the window
            monitor.step(step=step, loss=metrics["loss"])
            last_end[0] = time.perf_counter()
            return
        k, j = divmod(step - warmup - 1, 3)
        arm = arms[(j + k) % 3]
        if arm != "off":
            use_eigen_stage(arm)
            t0 = time.perf_counter()
            monitor.step(step=step, loss=metrics["loss"])
            current[arm] = time.perf_counter() - t0
        now = time.perf_counter()
        if arm == "off":
            current["off"] = now - last_end[0]
        last_end[0] = now
        if j == 2:
            rows.append(dict(current))
            current.clear()

    try:
        train(config, model, data, on_step=on_step)
    finally:
        monitor.close()
        use_eigen_stage("compiled")
    points, lo, hi = median_ci([100 * (r["numpy"] - r["compiled"]) / r["off"] for r in rows])
    return {
        "P": float(monitor.n_params),
        "train_step_s": statistics.median(r["off"] for r in rows),
        "compiled_s": statistics.median(r["compiled"] for r in rows),
        "numpy_s": statistics.median(r["numpy"] for r in rows),
        "compiled_points": statistics.median(100 * r["compiled"] / r["off"] for r in rows),
        "numpy_points": statistics.median(100 * r["numpy"] / r["off"] for r in rows),
        "saving_points": points,
        "saving_points_ci": (lo, hi),
    }


def bench_eigen_stage_large(n_params: int, repeats: int) -> dict[str, float]:
    """(e) at large P: one monitor on four tensors, its eigen stage alternating between compiled and NumPy
    from one (untimed) optimizer step to the next, the order swapped every two steps; the median over
    pairs of steps of the NumPy step's time over the compiled one's, with its bootstrap interval.

    One monitor, not one per stage: two windows of 400 MB are two allocations, and in one trial their
    pushes differed by 4% whatever the eigen stage (the pages' placement), more than the stage's saving."""
    check_compiled_eigen_stage()
    torch.manual_seed(0)
    sizes = tensor_sizes(n_params)
    params = [torch.nn.Parameter(torch.randn(s)) for s in sizes]
    steps = [[torch.randn(s) * 1e-3 for s in sizes] for _ in range(3)]
    monitor = SpectralMonitor(params, window=WINDOW, lr=1e-3, groups=None)
    times: dict[str, list[float]] = {"compiled": [], "numpy": []}
    warm = 2 * (WINDOW // 2 + 1)  # even, past the first record: timing starts with a pair
    try:
        for r in range(warm + 2 * repeats):
            with torch.no_grad():
                for p, d in zip(params, steps[r % 3], strict=True):
                    p.add_(d)
            arm = ("compiled", "numpy")[(r + r // 2) % 2]
            use_eigen_stage(arm)
            t0 = time.perf_counter()
            monitor.step()
            if r >= warm:
                times[arm].append(time.perf_counter() - t0)
    finally:
        monitor.close()
        use_eigen_stage("compiled")
    ratio, lo, hi = median_ci([n / c for n, c in zip(times["numpy"], times["compiled"], strict=True)])
    return {
        "P": float(n_params),
        "compiled_s": statistics.median(times["compiled"]),
        "numpy_s": statistics.median(times["numpy"]),
        "numpy_over_compiled": ratio,
        "numpy_over_compiled_ci": (lo, hi),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--demo-steps", type=int, default=10, help="steps per block of the overhead test")
    parser.add_argument("--demo-blocks", type=int, default=20, help="pairs of blocks of the overhead test")
    parser.add_argument("--skip-demo", action="store_true", help="leave out (c) and (e) on the demo")
    parser.add_argument("--push-sizes", type=float, nargs="+", default=[1e6, 1e7], help="P of (d)")
    parser.add_argument("--push-repeats", type=int, default=40)
    parser.add_argument("--eigen-size", type=float, default=1e7, help="P of (e) beside the demo")
    parser.add_argument("--eigen-repeats", type=int, default=200)
    parser.add_argument("--eigen-triples", type=int, default=200, help="threes of demo steps in (e)")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="the monitor's chunk size (default: its own)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    print(
        f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, W = {WINDOW}, "
        "float32 window; load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min)".format(*os.getloadavg())
    )
    print(
        f"{'P':>8} | {'monitor':>9} {'floor':>8} {'(a) /floor':>10} | {'(b) vs XXᵀ32':>12} {'vs XXᵀ64':>9} {'vs SVD':>8}"
    )
    rows = []
    for p in args.sizes:
        r = bench_size(int(p), args.repeats, args.chunk_size)
        rows.append(r)
        print(
            f"{p:8.0e} | {r['monitor_s'] * 1e3:7.2f}ms {r['floor_s'] * 1e3:6.2f}ms {r['ratio_floor']:10.2f} | "
            f"{r['speedup_gram32']:11.1f}× {r['speedup_gram64']:8.1f}× {r['speedup_svd32']:7.1f}×"
        )
    out: dict[str, object] = {"sizes": rows}
    if not args.skip_demo:
        d = bench_demo_overhead(args.demo_steps, args.demo_blocks)
        ds = bench_demo_overhead(args.demo_steps, args.demo_blocks, with_store=True)
        bare = bench_bare_step_overhead(args.demo_steps * args.demo_blocks)
        out["demo"], out["demo_with_store"], out["bare_step"] = d, ds, bare
        print(
            f"(c) demo model P = {d['P']:.0f}, the demo's training step {d['train_step_s'] * 1e3:.1f} ms:\n"
            f"    monitor {d['monitor_s'] * 1e3:.2f} ms → overhead {100 * d['overhead_inside']:.1f}% (inside), "
            f"{100 * d['overhead_ab']:.1f}% (with − without)\n"
            f"    with a run store: monitor {ds['monitor_s'] * 1e3:.2f} ms of {ds['train_step_s'] * 1e3:.1f} ms → "
            f"{100 * ds['overhead_inside']:.1f}% (inside), {100 * ds['overhead_ab']:.1f}% (with − without)\n"
            f"    against a bare forward/backward/AdamW step ({bare['train_step_s'] * 1e3:.1f} ms): "
            f"monitor {bare['monitor_s'] * 1e3:.2f} ms → {100 * bare['overhead_inside']:.1f}% (inside)"
        )
    pushes = [bench_pushes(int(p), args.push_repeats) for p in args.push_sizes]
    out["pushes"] = pushes
    print("(d) one push, median over interleaved repetitions:")
    for r in pushes:
        print(
            f"    P = {r['P']:.0e}: fused {r['fused_s'] * 1e3:.2f} ms ({r['fused_over_floor']:.2f}× the floor), "
            f"torch {r['torch_s'] * 1e3:.2f} ms → torch/fused {r['torch_over_fused']:.2f}"
        )
    big = bench_eigen_stage_large(int(args.eigen_size), args.eigen_repeats)
    out["eigen_large"] = big
    lo, hi = big["numpy_over_compiled_ci"]
    print(
        f"(e) eigen stage, compiled against NumPy:\n"
        f"    P = {big['P']:.0e}: monitor step {big['compiled_s'] * 1e3:.2f} ms compiled, "
        f"{big['numpy_s'] * 1e3:.2f} ms NumPy → NumPy/compiled {big['numpy_over_compiled']:.4f} "
        f"[95% {lo:.4f}–{hi:.4f}]"
    )
    if not args.skip_demo:
        e = bench_eigen_stage_demo(args.eigen_triples)
        out["eigen_demo"] = e
        lo, hi = e["saving_points_ci"]
        print(
            f"    demo P = {e['P']:.0f}, un-monitored step {e['train_step_s'] * 1e3:.1f} ms: monitor "
            f"{e['compiled_s'] * 1e3:.2f} ms compiled ({e['compiled_points']:.2f} pts), {e['numpy_s'] * 1e3:.2f} ms "
            f"NumPy ({e['numpy_points']:.2f} pts) → the compiled stage saves {e['saving_points']:.2f} points "
            f"[95% {lo:.2f}–{hi:.2f}]"
        )
    print("load average at the end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
