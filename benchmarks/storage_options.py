"""What each way of storing the window costs and how far its readings move: memory, time per push, error.

For real training trajectories (the demo's grokking transformer, the LM study's small GPT on the
Shakespeare plays with byte tokens, and a model of SmolLM2-135M's shape, the LM study's fine-tune model,
built from its config with random weights), several trackers watch the same parameters at every step,
W = 10.
The float64 exact window is the reference: its Gram is that of the updates to float64 round-off (the
dense float64 SVD of the same window agrees to ~1e-13; tests/tracking/test_window.py). For each option the
script prints

* the memory it holds (window + snapshot, bytes) and its share of the float32 window's;
* its time per push (median over the run), over the float32 window's, measured in the same loop;
* the relative error of σ_j against the reference, as the largest over the run within bands of
  σ_j/σ_1 (a rounded window has a noise floor near u·√W·σ_1; a sketch's error is relative on every σ_j);
* the largest relative error of the gap ratio R, and how often k* equals the reference's, over all
  records and over the records off ties (where the reference's best ratio beats its second by ≥ 10%).

Options: float32 (the default), bfloat16 (half the memory; storage_dtype=torch.bfloat16), 8-bit e4m3 with
one scale per update (simulated from the reference's rows: the library does not offer it, see
docs/scale.md), and CountSketches of m = 1024 … 65536 rows (sketch_dim=m).

    python benchmarks/storage_options.py [--steps 300] [--smollm-steps 60] [--only demo|gpt|smollm] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spectral_edge.tracking import MonitorConfig, SpectralTracker

WINDOW = 10
#: Bands of σ_j/σ_1 the errors are reported in.
BANDS = ((1e-1, 1.0), (1e-2, 1e-1), (1e-3, 1e-2), (0.0, 1e-3))
SKETCH_DIMS = (1024, 4096, 16384, 65536)


@dataclass
class Option:
    """One way of storing the window, and what was measured of it."""

    name: str
    config: MonitorConfig | None  # None: simulated from the reference's rows
    tracker: SpectralTracker | None = None
    times: list[float] = field(default_factory=list)
    sigmas: dict[int, np.ndarray] = field(default_factory=dict)  # step -> σ
    k_star: dict[int, int] = field(default_factory=dict)
    gap_ratio: dict[int, float] = field(default_factory=dict)
    nbytes: int = 0


def cpu_name() -> str:
    """The CPU's model name, as lscpu gives it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name:")), "?")


def options(large: bool = False) -> list[Option]:
    """The reference first, then the options compared with it. For a ``large`` model the float32 window
    is the reference (a float64 one would not fit beside the others; on the smaller runs float32 agrees
    with float64 to 1e-9) and the 8-bit simulation, which needs the rows in float64, is left out."""
    if large:
        out = [Option("float32 (reference)", MonitorConfig(window=WINDOW))]
    else:
        out = [
            Option("float64 (reference)", MonitorConfig(window=WINDOW, storage_dtype=torch.float64)),
            Option("float32", MonitorConfig(window=WINDOW)),
        ]
    out.append(Option("bfloat16", MonitorConfig(window=WINDOW, storage_dtype=torch.bfloat16)))
    if not large:
        out.append(Option("8-bit e4m3, row scales (simulated)", None))
    out += [Option(f"sketch m={m:,}", MonitorConfig(window=WINDOW, sketch_dim=m)) for m in SKETCH_DIMS]
    return out


def e4m3_sigmas(rows: torch.Tensor) -> np.ndarray:
    """σ of the window whose rows are rounded to float8 e4m3 with one scale per row (amax → 448)."""
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-300) / 448.0
    stored = (rows / scale).to(torch.float8_e4m3fn).to(torch.float64) * scale
    lam = np.linalg.eigvalsh((stored @ stored.T).numpy())[::-1]
    return np.sqrt(np.clip(lam, 0.0, None))


class Tracking:
    """Every option's tracker over the same parameters; :meth:`observe` after each update."""

    def __init__(self, named: list[tuple[str, torch.Tensor]], *, large: bool = False) -> None:
        self.opts = options(large)
        self.simulated = next((opt for opt in self.opts if opt.config is None), None)
        snapshot = sum(t.numel() * t.element_size() for _, t in named)
        for opt in self.opts:
            if opt.config is not None:
                opt.tracker = SpectralTracker(named, config=opt.config)
                opt.nbytes = opt.tracker.window.nbytes + (0 if opt.config.sketch_dim else snapshot)
        p = sum(t.numel() for _, t in named)
        if self.simulated is not None:
            self.simulated.nbytes = WINDOW * p + WINDOW * 8 + snapshot  # one byte a value, a scale a row
        self.tensors = [t for _, t in named]

    def observe(self, step: int) -> None:
        """Push the step's update into every option's window, in an order that rotates with the step."""
        opts = self.opts
        for i in ((i + step) % len(opts) for i in range(len(opts))):
            opt = opts[i]
            if opt.tracker is None:
                continue
            start = time.perf_counter()
            result = opt.tracker.observe(self.tensors, step=step)
            opt.times.append(time.perf_counter() - start)
            if result.record is not None:
                opt.sigmas[step] = np.asarray(result.record.singular_values)
                opt.k_star[step] = result.record.k_star
                opt.gap_ratio[step] = float(result.record.gap_ratio)
        reference, simulated = opts[0], self.simulated
        if simulated is not None and step in reference.sigmas:
            assert reference.tracker is not None
            sigma = e4m3_sigmas(reference.tracker.window.updates())  # (W, P) float64 rows, oldest first
            simulated.sigmas[step] = sigma
            ratios = sigma[:-1] / np.where(sigma[1:] > 0, sigma[1:], np.nan)
            k = int(np.nanargmax(ratios)) + 1 if np.isfinite(ratios).any() else 1
            simulated.k_star[step] = k
            simulated.gap_ratio[step] = float(ratios[k - 1])


def summarize(opts: list[Option]) -> list[dict[str, Any]]:
    """One row per option: memory, time, errors against the reference."""
    reference = opts[0]
    steps = sorted(reference.sigmas)
    float32 = next(opt for opt in opts if opt.name.startswith("float32"))
    t32 = statistics.median(float32.times)
    rows = []
    for opt in opts:
        band_err = [0.0] * len(BANDS)
        band_n = [0] * len(BANDS)
        r_err, k_all, k_off, n_off = 0.0, 0, 0, 0
        for step in steps:
            ref, got = reference.sigmas[step], opt.sigmas[step]
            for j, s in enumerate(ref):
                if s <= 0:
                    continue
                rel = abs(got[j] / s - 1.0)
                for b, (lo, hi) in enumerate(BANDS):
                    if lo <= s / ref[0] < hi or (hi == 1.0 and s == ref[0]):
                        band_err[b] = max(band_err[b], rel)
                        band_n[b] += 1
            r_ref, r_got = reference.gap_ratio[step], opt.gap_ratio[step]
            if math.isfinite(r_ref) and math.isfinite(r_got):
                r_err = max(r_err, abs(r_got / r_ref - 1.0))
            elif math.isfinite(r_ref) != math.isfinite(r_got):
                r_err = math.inf
            same = opt.k_star[step] == reference.k_star[step]
            k_all += same
            ratios = np.sort(ref[:-1] / np.where(ref[1:] > 0, ref[1:], np.nan))
            ratios = ratios[np.isfinite(ratios)]
            if len(ratios) >= 2 and ratios[-1] >= 1.1 * ratios[-2]:
                n_off += 1
                k_off += same
        rows.append(
            {
                "option": opt.name,
                "bytes": opt.nbytes,
                "memory_vs_float32": opt.nbytes / float32.nbytes,
                "push_vs_float32": statistics.median(opt.times) / t32 if opt.times else None,
                "push_ms": statistics.median(opt.times) * 1e3 if opt.times else None,
                "sigma_error_by_band": [e if n else None for e, n in zip(band_err, band_n, strict=True)],
                "gap_ratio_error": r_err,
                "k_star_same": f"{k_all}/{len(steps)}",
                "k_star_same_off_ties": f"{k_off}/{n_off}",
            }
        )
    return rows


def print_table(title: str, p: int, rows: list[dict[str, Any]]) -> None:
    """The rows as a markdown table."""
    bands = " | ".join(f"σ/σ₁ in [{lo:g}, {hi:g})" for lo, hi in BANDS)
    print(f"\n### {title} (P = {p:,}, W = {WINDOW})\n")
    print(f"| option | memory | vs float32 | push vs float32 | {bands} | R error | k* same | k* off ties |")
    print("|---" * (7 + len(BANDS)) + "|")
    for r in rows:
        errors = " | ".join("—" if e is None else f"{e:.1e}" for e in r["sigma_error_by_band"])
        push = "—" if r["push_vs_float32"] is None else f"{r['push_vs_float32']:.2f}"
        print(
            f"| {r['option']} | {_size(r['bytes'])} | {r['memory_vs_float32']:.3g} | {push} | {errors} | "
            f"{r['gap_ratio_error']:.1e} | {r['k_star_same']} | {r['k_star_same_off_ties']} |"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def demo_trajectory(steps: int) -> tuple[int, list[Option]]:
    """The demo's grokking transformer (default preset), trained ``steps`` steps."""
    import dataclasses

    from spectral_edge.demo import PRESETS, build_model, make_data, train

    config = dataclasses.replace(PRESETS["default"], max_steps=steps, eval_every=steps)
    model = build_model(config)
    tracking = Tracking([(n, p) for n, p in model.named_parameters() if p.requires_grad])
    train(config, model, make_data(config), on_step=lambda step, metrics: tracking.observe(step))
    return sum(p.numel() for p in model.parameters()), tracking.opts


def gpt_trajectory(steps: int) -> tuple[int, list[Option]]:
    """The LM study's small GPT (4 layers, width 128) on the Shakespeare plays, byte tokens, AdamW."""
    from spectral_edge_studies.models.gpt import GPT, GPTConfig
    from spectral_edge_studies.text.corpus import corpus_text

    torch.manual_seed(42)
    data = torch.tensor(list(corpus_text("shakespeare").encode("utf-8")), dtype=torch.long)
    model = GPT(GPTConfig.from_preset("small", vocab_size=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.5)
    tracking = Tracking([(n, p) for n, p in model.named_parameters() if p.requires_grad])
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        start = torch.randint(0, len(data) - 129, (16,), generator=gen)
        batch = torch.stack([data[s : s + 129] for s in start.tolist()])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tracking.observe(step)
    return sum(p.numel() for p in model.parameters()), tracking.opts


def smollm_trajectory(steps: int) -> tuple[int, list[Option]]:
    """A model of SmolLM2-135M's shape (the LM study's fine-tune; random weights, built from its config:
    30 layers, width 576, 9 heads, 3 key-value heads, vocabulary 49,152, tied embeddings) trained from
    scratch on the Shakespeare plays as byte tokens, AdamW at 3e-4, batches of 4 × 128 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spectral_edge_studies.text.corpus import corpus_text

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    data = torch.tensor(list(corpus_text("shakespeare").encode("utf-8")), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    tracking = Tracking([(n, p) for n, p in model.named_parameters() if p.requires_grad], large=True)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        start = torch.randint(0, len(data) - 129, (4,), generator=gen)
        batch = torch.stack([data[s : s + 128] for s in start.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tracking.observe(step)
    return sum(p.numel() for p in model.parameters()), tracking.opts


def main() -> None:
    """Run the trajectories and print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", choices=("demo", "gpt", "smollm"))
    parser.add_argument("--smollm-steps", type=int, default=60, help="steps of the 135M model (slow)")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    for name, build in (("demo", demo_trajectory), ("gpt", gpt_trajectory), ("smollm", smollm_trajectory)):
        if args.only and name != args.only:
            continue
        steps = args.smollm_steps if name == "smollm" else args.steps
        p, opts = build(steps)
        rows = summarize(opts)
        print_table(f"{name}: {steps} steps", p, rows)
        results[name] = {"n_params": p, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "window": WINDOW, **results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
