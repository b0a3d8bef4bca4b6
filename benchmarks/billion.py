"""Monitor a model of more than 10⁹ parameters at every step on one 24 GiB machine, with a sketched window.

The exact float32 window of a 1.1·10⁹-parameter model at W = 10 would hold 44 GB, plus a 2.2 GB bfloat16
snapshot, which is more than this machine has. A sketched window (``sketch_dim=m``,
``tracking/sketch.py``) holds (W + 2)·m float64 numbers per group whatever P is. This script trains a
Llama-shaped model from a ``transformers`` config with random weights in bfloat16 (TinyLlama's shape:
22 layers, hidden 2048, 32 heads, 4 key-value heads, vocabulary 32000) for a few AdamW steps on small
batches of generated tokens. The monitor runs at every step, and the script prints

* P, the sketch's memory, and what the exact window would need;
* the process's peak resident memory after the model, the optimizer and the first step, and at the end
  (the monitor's share is the difference it makes, also measured by running with ``--no-monitor``);
* each step's time, split into the training step and ``monitor.step``;
* the records (σ_1..σ_3, k*, R), once the window is full.

Nothing is downloaded: the model is built from its config with random weights.

    python benchmarks/billion.py [--steps 12] [--window 10] [--sketch-dim 65536] [--no-monitor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import time

import torch


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports kibibytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_name() -> str:
    """The CPU's model name, as lscpu gives it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def build_model(layers: int) -> torch.nn.Module:
    """A Llama-shaped causal LM with TinyLlama's widths and random bfloat16 weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)


def main() -> None:
    """Parse the arguments, train and monitor, print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--sketch-dim", type=int, default=65536)
    parser.add_argument("--layers", type=int, default=22, help="22 gives 1.1e9 parameters")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--no-monitor", action="store_true", help="the same run without the monitor")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    from spectral_edge import SpectralMonitor

    model = build_model(args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    after_model = peak_rss_gib()
    mon = None
    if not args.no_monitor:
        mon = SpectralMonitor(model, window=args.window, lr=opt, sketch_dim=args.sketch_dim)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"P = {n_params:,} (bfloat16 parameters: {n_params * 2 / 2**30:.2f} GiB)")
    exact = (args.window * 4 + 2) * n_params / 2**30
    print(f"exact float32 window + bfloat16 snapshot at W = {args.window}: {exact:.1f} GiB (does not fit)")
    if mon is not None:
        print(f"sketched window, m = {args.sketch_dim:,}: {mon.config()['window_bytes'] / 2**20:.1f} MiB")
    print(f"peak RSS after the model: {after_model:.2f} GiB")

    gen = torch.Generator().manual_seed(1)
    rows = []
    for step in range(1, args.steps + 1):
        tokens = torch.randint(0, 32000, (args.batch, args.tokens), generator=gen)
        t0 = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        record = mon.step(loss=loss.item()) if mon is not None else None
        t2 = time.perf_counter()
        row = {
            "step": step,
            "loss": loss.item(),
            "train_s": t1 - t0,
            "monitor_s": t2 - t1,
            "peak_rss_gib": peak_rss_gib(),
        }
        if record is not None:
            row.update(
                sigma=[float(s) for s in record.singular_values[:3]],
                k_star=record.k_star,
                gap_ratio=float(record.gap_ratio),
            )
        rows.append(row)
        extra = (
            f"  σ1..3 {', '.join(f'{s:.3e}' for s in row['sigma'])}  k* {row['k_star']}  R {row['gap_ratio']:.3f}"
            if "sigma" in row
            else ""
        )
        print(
            f"step {step:3d}  loss {row['loss']:.4f}  train {row['train_s']:6.1f} s  monitor "
            f"{row['monitor_s']:6.2f} s  peak RSS {row['peak_rss_gib']:.2f} GiB{extra}",
            flush=True,
        )
    if mon is not None:
        mon.close()
    later = rows[1:] or rows  # the first step also builds the optimizer's state
    train = sum(r["train_s"] for r in later) / len(later)
    monitor = sum(r["monitor_s"] for r in later) / len(later)
    print(
        f"mean over steps 2..{args.steps}: train {train:.1f} s, monitor {monitor:.2f} s "
        f"({monitor / train:.1%} of the training step); peak RSS {peak_rss_gib():.2f} GiB"
    )
    if args.json:
        summary = {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "n_params": n_params,
            "monitor": mon is not None,
            "sketch_dim": args.sketch_dim,
            "window": args.window,
            "after_model_gib": after_model,
            "steps": rows,
        }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
