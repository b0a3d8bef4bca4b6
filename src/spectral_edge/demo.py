"""``spectral-edge demo``: a small transformer groks modular arithmetic with the monitor at every step.

Thesis §27: a 2-layer transformer learns ``a ÷ b mod 97`` from 40% of the pairs with AdamW and weight
decay. It memorises its training pairs first and generalises, abruptly, much later; without weight decay
it does not within the same budget (§27: 24/24 grok with weight decay, 0/24 without), so
``--weight-decay 0`` is the control. The monitor watches every step (W = 10); the evaluations go to the
run store with σ1/σ2 of the first layer's query matrix W_Q (Remark 27.2); the run ends with the grokking
step, the spectral events and a figure. The split, the initial weights and the minibatches each come from
a generator seeded by ``config.seed``, never the global one, so the run repeats bit for bit on one CPU.

Usage: ``result = run_demo(PRESETS["smoke"]); print(format_summary(PRESETS["smoke"], result))``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectral_edge.errors import MissingExtraError, SpectrumWarning
from spectral_edge.progress import ProgressBar
from spectral_edge.store import RunStore
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import SpectralEvent, SpectralRecord
from spectral_edge.tracking.window import check_window


def _div(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    inverse = torch.tensor([pow(v, p - 2, p) for v in range(p)], dtype=torch.int64)  # Fermat, p prime
    return (a * inverse[b]) % p


#: The operations (the thesis's four of Table 7, and division): the answer to ``a ∘ b`` mod p.
OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": _div,  # b ≠ 0 only
    "x2_y2": lambda a, b, p: (a * a + b * b) % p,
}


@dataclass(frozen=True)
class GrokConfig:
    """Every setting of one grokking run; saved beside the results as it is (``dataclasses.asdict``)."""

    # task
    p: int = 97  # modulus; prime so that division is defined
    operation: str = "div"  # one of OPERATIONS
    train_fraction: float = 0.4  # fraction of all pairs used for training; lower delays generalisation
    # model
    n_layers: int = 2  # transformer blocks
    d_model: int = 128  # residual width
    n_heads: int = 4  # attention heads per block
    d_mlp: int = 512  # MLP hidden width
    # optimiser
    lr: float = 1e-3  # AdamW peak learning rate (after warm-up)
    weight_decay: float = 1.0  # AdamW decoupled weight decay, on every parameter; 0 is the control
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW (β1, β2); β2 0.98 as in the author's code
    warmup_steps: int = 10  # linear warm-up from lr/warmup_steps to lr, then constant
    grad_clip: float = 1.0  # max global gradient norm
    batch_size: int = 512  # examples per step, drawn without replacement; ≥ train size means full batch
    # loop
    max_steps: int = 3500  # optimizer steps to run (fewer only if on_eval stops the run)
    eval_every: int = 20  # evaluate on the full train and test sets every this many steps
    seed: int = 42  # seeds the split, the initial weights and the minibatches

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {self.operation!r}")
        smallest = {"p": 2, "n_layers": 1, "d_model": 1, "n_heads": 1, "d_mlp": 1, "batch_size": 1}
        for name, low in {**smallest, "max_steps": 1, "eval_every": 1, "warmup_steps": 0, "seed": 0}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be a multiple of n_heads, got {self.d_model} and {self.n_heads}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite float > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite float >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite float > 0, got {self.grad_clip!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas!r}")


#: Named configurations. ``default`` is the demo (a/b mod 97, 40% train, 2 layers, 4 heads, batch 512),
#: tuned on a 2-core CPU: seeds 42, 137 and 2024 memorise at steps 420, 380, 380 and grok at 2540, 2440,
#: 2280; with ``weight_decay=0`` they memorise by step 340 and end at test accuracy 0.012–0.016 (about
#: 3 min a run). ``smoke`` (a+b mod 23, about 7 s) memorises at step 300 and groks at 1340 on an AMD EPYC
#: (2 threads; 320 and 1500 with one) and at 1480 on an Intel Xeon: the trajectory is chaotic, so its
#: steps depend on the CPU's rounding (1240–1500 over twenty runs with the initial weights perturbed by
#: 1e-6), and its 2,000-step budget leaves room for that.
PRESETS: dict[str, GrokConfig] = {
    "default": GrokConfig(),
    "smoke": GrokConfig(
        p=23,
        operation="add",
        train_fraction=0.6,
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        lr=3e-3,  # p = 23 at lr 1e-3 does not grok within a few seconds
        batch_size=1024,  # ≥ 317 train pairs: full batch
        max_steps=2000,
        seed=0,
    ),
}
#: Train accuracy at which the training set counts as memorised.
MEMORIZE_ACC = 0.99
#: Test accuracy at which the run counts as grokked (thesis §27: first step with test accuracy ≥ 0.95).
GROK_ACC = 0.95
# Examples per forward pass in evaluate: 40% faster than one pass over all 9409 pairs of p = 97 on a
# 2-core CPU (the activations of a single pass overflow the caches).
_EVAL_CHUNK = 2048
# Offsets that give the initial weights and the minibatches seeds distinct from the split's.
_INIT_STREAM, _BATCH_STREAM = 1, 2


# ---- data: every pair (a, b) as the tokens [a, b, =], ids 0 … p−1 the numbers and p the "=" sign ----


@dataclass(frozen=True)
class ModularData:
    """A fixed train/test split of every pair of one operation; CPU tensors of token ids and answers."""

    p: int  # the modulus
    operation: str  # one of OPERATIONS
    train_x: torch.Tensor  # (n_train, 3) int64 tokens [a, b, =]
    train_y: torch.Tensor  # (n_train,) int64 answers in [0, p)
    test_x: torch.Tensor  # (n_test, 3)
    test_y: torch.Tensor  # (n_test,)


def modular_dataset(p: int, operation: str, *, train_fraction: float, seed: int) -> ModularData:
    """Every pair of ``a ∘ b mod p`` (``b ≠ 0`` for ``div``), split at random into train and test.

    The split is a permutation from a ``torch.Generator`` seeded with ``seed`` (the global RNG is not
    touched); the train set holds ``round(train_fraction * n_pairs)`` pairs, the test set the others.

    Example:
        >>> data = modular_dataset(7, "add", train_fraction=0.5, seed=0)
        >>> a, b, eq = data.train_x[0].tolist()
        >>> len(data.train_x) + len(data.test_x), eq, data.train_y[0].item() == (a + b) % 7
        (49, 7, True)
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    if operation == "div" and not all(p % d for d in range(2, int(p**0.5) + 1)):
        raise ValueError(f"division mod p needs a prime p so every b != 0 has an inverse, got p={p}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)  # (p²,) a major, b minor
    if operation == "div":
        a, b = a[b != 0], b[b != 0]  # (p (p − 1),)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (n_pairs, 3)
    n_train = round(train_fraction * len(x))
    if not 0 < n_train < len(x):
        raise ValueError(
            f"train_fraction={train_fraction} gives {n_train} of {len(x)} pairs for training; "
            "choose a fraction that leaves at least one pair on each side"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    y = OPERATIONS[operation](a, b, p)
    return ModularData(p, operation, train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test])


def make_data(config: GrokConfig) -> ModularData:
    """The train/test split of ``config``'s task, seeded by ``config.seed``."""
    return modular_dataset(config.p, config.operation, train_fraction=config.train_fraction, seed=config.seed)


# ---- model: a pre-norm decoder-only transformer that reads its class at the last position ----


class Attention(nn.Module):
    """Causal multi-head self-attention with separate, bias-free Q, K, V and output projections."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)  # W_Q, whose σ1/σ2 §27 follows
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.n_heads, d_model // self.n_heads).transpose(1, 2)  # (B, H, T, dh)

    def forward(self, x: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Map (B, T, d) to (B, T, d), or to the last position's (B, 1, d) if ``last_only`` (exact: the
        last query may attend to every key, so it needs no mask)."""
        q_in = x[:, -1:] if last_only else x
        q, k, v = self._heads(self.q_proj(q_in)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, T)
        if not last_only:
            length = x.shape[1]
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (B, H, Tq, dh)
        return self.o_proj(out.transpose(1, 2).reshape(q_in.shape))


class MLP(nn.Module):
    """Two-layer GELU perceptron, ``d → d_mlp → d``, position-wise."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp)
        self.down = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU MLP: (batch, seq, d_model) -> the same shape."""
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One pre-LayerNorm block: ``x ← x + attn(norm1(x))``, ``x ← x + mlp(norm2(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.norm2, self.mlp = nn.LayerNorm(d_model), MLP(d_model, d_mlp)

    def forward(self, x: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Pre-norm attention then MLP, each residual; ``last_only`` keeps only the last position."""
        x = (x[:, -1:] if last_only else x) + self.attn(self.norm1(x), last_only=last_only)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final LayerNorm, and the class logits read at the
    last position of ``[a, b, =]``. Parameter names, as a monitor's per-group report shows them:
    ``embed``, ``pos_embed``, ``blocks.{i}.{norm1, attn.{q,k,v,o}_proj, norm2, mlp.up, mlp.down}``,
    ``norm``, ``unembed``."""

    def __init__(self, config: GrokConfig) -> None:
        super().__init__()
        d_model = config.d_model
        self.embed = nn.Embedding(config.p + 1, d_model)  # the numbers 0 … p−1 and "="
        self.pos_embed = nn.Embedding(3, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, config.n_heads, config.d_mlp) for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, config.p, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map (B, T ≤ 3) token ids to (B, p) logits; the final block computes the last position only."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos_embed(positions)  # (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=i == len(self.blocks) - 1)
        return self.unembed(self.norm(x[:, -1]))  # (B, p)


def build_model(config: GrokConfig) -> Transformer:
    """A freshly initialised transformer for ``config``, seeded without touching the global RNG.

    Example:
        >>> model = build_model(PRESETS["smoke"])
        >>> model(torch.tensor([[1, 2, 23]])).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([1, 23]), 10080)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + _INIT_STREAM)
        return Transformer(config)


# ---- training ----


@dataclass(frozen=True)
class TrainResult:
    """What one :func:`train` call measured; plain CPU values only."""

    memorize_step: int | None  # first eval step with train acc ≥ MEMORIZE_ACC, None if never
    grok_step: int | None  # first eval step with test acc ≥ GROK_ACC, None if never
    steps_run: int  # optimizer steps taken (max_steps unless on_eval stopped the run)
    wall_time_s: float  # seconds for the whole loop, evaluations and callbacks included
    eval_time_s: float  # part of wall_time_s spent in evaluations
    final: Mapping[str, float]  # metrics of the last evaluation (taken at step steps_run)
    eval_steps: tuple[int, ...]  # steps at which evaluations ran, 0 first
    history: Mapping[str, tuple[float, ...]]  # each eval metric, aligned with eval_steps
    losses: tuple[float, ...] = field(repr=False, default=())  # train batch loss of steps 1 … steps_run

    @property
    def ms_per_step(self) -> float:
        """Mean wall-clock milliseconds per optimizer step, evaluations and callbacks included."""
        return 1000.0 * self.wall_time_s / max(self.steps_run, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: ModularData) -> dict[str, float]:
    """``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` on the full sets (in eval mode, the
    model's mode restored after), and ``wq_sigma1``, ``wq_sigma2``, ``wq_ratio`` = σ1/σ2 of the first
    layer's W_Q (float64 SVD; inf when σ2 = 0)."""
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            loss_sum, correct = 0.0, 0
            for xs, ys in zip(x.split(_EVAL_CHUNK), y.split(_EVAL_CHUNK), strict=True):
                logits = model(xs)
                loss_sum += F.cross_entropy(logits, ys, reduction="sum").item()
                correct += int((logits.argmax(dim=-1) == ys).sum())
            metrics[f"{split}_loss"] = loss_sum / len(y)
            metrics[f"{split}_acc"] = correct / len(y)
    finally:
        model.train(was_training)
    wq = model.blocks[0].attn.q_proj.weight  # type: ignore[index, union-attr]
    sigma = np.linalg.svd(wq.detach().cpu().double().numpy(), compute_uv=False)
    metrics["wq_sigma1"], metrics["wq_sigma2"] = float(sigma[0]), float(sigma[1])
    metrics["wq_ratio"] = float(sigma[0] / sigma[1]) if sigma[1] > 0 else math.inf
    return metrics


def train(
    config: GrokConfig,
    model: nn.Module,
    data: ModularData,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], bool | None] | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with AdamW after a linear warm-up, evaluating as it goes.

    Step ``t`` is the ``t``-th ``optimizer.step()``, from 1. Evaluations (:func:`evaluate`) run at step 0,
    every ``config.eval_every`` steps and at the last step.

    Args:
        config: the run's settings; only the optimiser and loop fields are read here.
        model: maps (B, 3) tokens to (B, p) logits with its first W_Q at ``blocks[0].attn.q_proj``, e.g.
            from :func:`build_model`; trained in place on the CPU.
        data: the split, e.g. from :func:`make_data`.
        on_step: ``on_step(t, metrics)`` right after the ``t``-th update, with ``loss`` (the batch loss
            before it), ``lr`` (the rate it used) and ``grad_norm`` (before clipping).
        on_eval: ``on_eval(t, metrics)`` after each evaluation, step 0 included; if it returns True
            (nothing else counts) the run ends after this step: early stopping.
        progress: ``progress(t, max_steps, metrics)`` after each step, the ``on_step`` metrics merged with
            the latest evaluation's.

    Example:
        >>> config = dataclasses.replace(PRESETS["smoke"], max_steps=20)
        >>> result = train(config, build_model(config), make_data(config))
        >>> result.steps_run, result.eval_steps
        (20, (0, 20))
    """
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warmup = max(config.warmup_steps, 1)
    batches = torch.Generator().manual_seed(config.seed + _BATCH_STREAM)
    n_train = data.train_x.shape[0]
    eval_steps: list[int] = []
    history: dict[str, list[float]] = {}
    losses: list[float] = []
    found: dict[str, int] = {}  # "memorize" / "grok" -> first step over the threshold
    eval_time = 0.0
    latest: dict[str, float] = {}

    def run_eval(step: int) -> bool:
        nonlocal eval_time, latest
        start = time.perf_counter()
        latest = evaluate(model, data)
        eval_time += time.perf_counter() - start
        eval_steps.append(step)
        for key, value in latest.items():
            history.setdefault(key, []).append(value)
        if latest["train_acc"] >= MEMORIZE_ACC:
            found.setdefault("memorize", step)
        if latest["test_acc"] >= GROK_ACC:
            found.setdefault("grok", step)
        return on_eval is not None and on_eval(step, dict(latest)) is True

    start = time.perf_counter()
    model.train()
    stop = run_eval(0)
    step = 0
    while step < config.max_steps and not stop:
        step += 1
        lr = config.lr * min(1.0, step / warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.batch_size >= n_train:
            x, y = data.train_x, data.train_y
        else:
            index = torch.randperm(n_train, generator=batches)[: config.batch_size]
            x, y = data.train_x[index], data.train_y[index]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        metrics = {"loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
        losses.append(metrics["loss"])
        if on_step is not None:
            on_step(step, dict(metrics))
        if step % config.eval_every == 0 or step == config.max_steps:
            stop = run_eval(step)
        if progress is not None:
            progress(step, config.max_steps, {**latest, **metrics})
    return TrainResult(
        memorize_step=found.get("memorize"),
        grok_step=found.get("grok"),
        steps_run=step,
        wall_time_s=time.perf_counter() - start,
        eval_time_s=eval_time,
        final=dict(latest),
        eval_steps=tuple(eval_steps),
        history={key: tuple(values) for key, values in history.items()},
        losses=tuple(losses),
    )


# ---- the monitored run, its summary and its progress line ----


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
        """The first evaluation step with test accuracy >= GROK_ACC, or None."""
        return self.train.grok_step

    @property
    def memorize_step(self) -> int | None:
        """The first evaluation step with train accuracy >= MEMORIZE_ACC, or None."""
        return self.train.memorize_step


def default_run_dir(config: GrokConfig, root: str | Path = "runs") -> Path:
    """``runs/grokking-<op>-p<p>-wd<wd>-seed<seed>``: one directory per distinct demo setting."""
    return Path(root) / f"grokking-{config.operation}-p{config.p}-wd{config.weight_decay:g}-seed{config.seed}"


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
    run = result.train
    monitor_ms = 1000 * result.monitor_time_s / max(run.steps_run, 1)
    lines = [
        "",
        f"== spectral-edge demo: {_title(config)} ==",
        f"steps run           {run.steps_run} in {result.wall_time_s:.0f} s "
        f"({run.ms_per_step:.1f} ms/step; monitor {monitor_ms:.2f} ms/step)",
        f"memorised           {_step_or_never(run.memorize_step)} "
        f"(first eval with train accuracy ≥ {MEMORIZE_ACC})",
        f"grokked             {_step_or_never(run.grok_step)} (first eval with test accuracy ≥ {GROK_ACC})",
        f"final accuracy      train {run.final['train_acc']:.3f}, test {run.final['test_acc']:.3f}",
        f"W_Q σ1/σ2           {run.history['wq_ratio'][0]:.3g} at step 0 → "
        f"{run.final['wq_ratio']:.3g} at the end",
    ]
    kinds = ("gap_opening", "gap_collapse", "k_star_shift", "regime_change")
    spectral = [e for e in result.events if e.kind in kinds]
    lines.append(f"spectral events     {len(spectral)}" + ("" if spectral else " (none)"))
    for event in spectral:
        relative = "" if run.grok_step is None else f"  [{event.step - run.grok_step:+d} steps from grokking]"
        lines.append(f"  step {event.step:>6}  {event.kind:<14} {event.message}{relative}")
    for event in (e for e in result.events if e not in spectral):
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
    return (
        f"{config.operation} mod {config.p}, train {config.train_fraction:.0%}, "
        f"weight decay {config.weight_decay:g}, seed {config.seed}"
    )


def _step_or_never(step: int | None) -> str:
    return f"at step {step}" if step is not None else "never (within the step budget)"
