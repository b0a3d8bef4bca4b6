"""The monitor on a GPU: its share of a GPT-2 124M training step, and the push against the device's bandwidth.

GPT-2 small (the LM study's ``gpt2-124m`` preset: 12 layers, width 768, context 1024, tied embeddings,
124,439,808 parameters), AdamW with bfloat16 autocast, batches of random tokens, W = 10 at every step
with the window on the device (float32). The script prints, as ratios measured side by side:

(1) the monitor's share of a training step: blocks of steps with and without ``monitor.step()``,
    alternating, (with − without) / without, and the time inside ``monitor.step()`` over the step;
(2) the push's time over one read of the window from device memory (``X.sum()`` over the W × P buffer)
    and over the device's copy bandwidth measured here (a W·P-value ``copy_``, read + write), i.e. how
    close the push comes to the memory floor (goal: within 1.5× of one read).

Goals (issue 15): ≤ 2% of the step; push ≤ 1.5 reads of the window. It needs CUDA and exits otherwise.

    python benchmarks/gpu_step.py [--steps 60] [--batch 8] [--context 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def timed(fn: object, repeats: int = 20) -> float:
    """Median seconds of ``fn()`` on the device (synchronised)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Measure and print the two ratios (and save them with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per arm (in blocks of 5)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_step.py needs a CUDA device; docs/scale.md says where its figures come from")

    from spectral_edge import SpectralMonitor
    from spectral_edge_studies.models.gpt import GPT, GPTConfig

    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-124m", context=args.context)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    mon = SpectralMonitor(model, window=args.window, lr=opt)
    n_params = mon.n_params
    vocab = model.config.vocab_size

    def train_step() -> None:
        tokens = torch.randint(0, vocab, (args.batch, args.context + 1), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    inside: list[float] = []

    def monitored_step() -> None:
        train_step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        mon.step()
        torch.cuda.synchronize()
        inside.append(time.perf_counter() - start)

    for _ in range(args.window + 2):  # warm up, fill the window
        monitored_step()
    inside.clear()
    with_blocks, without_blocks = [], []
    for block in range(args.steps // 5):
        for arm in (0, 1) if block % 2 == 0 else (1, 0):
            fn = monitored_step if arm == 0 else train_step
            t = timed(fn, repeats=5)
            # After a block without it, the monitor's next update spans several steps: same cost.
            (with_blocks if arm == 0 else without_blocks).append(t)
    step_with, step_without = statistics.median(with_blocks), statistics.median(without_blocks)

    window = mon.tracker.window
    x = torch.empty(args.window, n_params, device=device)
    read = timed(lambda: x.sum())
    copy_dst = torch.empty_like(x)
    copy = timed(lambda: copy_dst.copy_(x))
    params = [p for _, p in mon.monitored_parameters()]

    def push_one() -> None:
        with torch.no_grad():
            params[0].add_(1e-6)  # a non-zero update: a zero one would be rejected and empty the window
        window.push(params)

    push = timed(push_one)
    figures = {
        "card": card,
        "n_params": n_params,
        "window": args.window,
        "batch": args.batch,
        "context": args.context,
        "step_ms_without": step_without * 1e3,
        "step_ms_with": step_with * 1e3,
        "share_with_minus_without": (step_with - step_without) / step_without,
        "share_inside": statistics.median(inside) / step_without,
        "push_ms": push * 1e3,
        "push_over_one_read": push / read,
        "read_gb_s": x.numel() * 4 / read / 1e9,
        "copy_gb_s": 2 * x.numel() * 4 / copy / 1e9,
        "push_gb_s_moved": (args.window + 4) * n_params * 4 / push / 1e9,
    }
    print(f"{card}: GPT-2 124M (P = {n_params:,}), W = {args.window}, batch {args.batch} × {args.context}")
    print(
        f"(1) step {step_without * 1e3:.1f} ms without, {step_with * 1e3:.1f} ms with the monitor: "
        f"{figures['share_with_minus_without']:.2%} (with − without), {figures['share_inside']:.2%} inside "
        "monitor.step() (goal ≤ 2%)"
    )
    print(
        f"(2) push {push * 1e3:.2f} ms = {figures['push_over_one_read']:.2f} reads of the window "
        f"(goal ≤ 1.5); read {figures['read_gb_s']:.0f} GB/s, copy {figures['copy_gb_s']:.0f} GB/s, the push "
        f"moves (W + 4)·P values at {figures['push_gb_s_moved']:.0f} GB/s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
