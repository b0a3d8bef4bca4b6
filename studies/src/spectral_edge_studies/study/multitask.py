"""Multi-task family of the grokking study: several modular operations on heads over one shared trunk.

Thesis §27, "Multi-task arithmetic": ``dual`` = add + mul and ``tri`` = add + mul + a² + b², mod 97, with
one output head per operation on a shared transformer trunk (about 303K and 315K parameters), seeds
42/137/2024 with weight decay 1.0 and 0.0: 6/6 grok with weight decay, 0/6 without, in the staggered
order mul → sq → add. The ``full`` suite has those 12 runs.

The loss is the mean of the heads' cross-entropies. A run has grokked when *every* head reaches test
accuracy ≥ 0.95, so the logged ``test_acc`` (and ``train_acc``) is the minimum over heads; each head's
own values are logged too (``test_acc_add``, ``train_loss_mul``, ...) to show the staggered order.
Everything else follows the study's run contract (:mod:`spectral_edge_studies.study.common`).

The trunk is the demo's transformer (:mod:`spectral_edge_studies.models.transformer`) with its
unembedding replaced by one bias-free ``d → p`` head per operation (``heads.add.weight``, ...).

Deviations from the paper, and why:

* Learning rate 2e-3 instead of the author's 1e-3. At 1e-3 the dual model (seed 42) sat on a plateau
  at test accuracy 0.5 on both heads from step 1200 to the end of a 3500-step budget (the author allows
  300,000 steps); at 2e-3 it grokked at step 1900, and the tri model at 2500 (seed 137; seed 42 had every
  head rising through 0.7–0.95 at 3500). AdamW's decoupled decay shrinks weights by lr·ω per step, so
  this doubles the pull of weight decay, the very thing the study contrasts with ω = 0.
* Step budgets per model: 3000 for dual, 5000 for tri (:data:`MAX_STEPS`), as the tri model groks later.
  Training stops ``post_grok_steps`` after every head has grokked; the weight-decay-free controls run
  the whole budget, which bounds the suite's time on a 2-core CPU.
* The author's multi-task scripts sweep ω ∈ {0, 0.1, 0.2, 0.3, 0.5, 1.0}; the study runs ω = 1 and 0 only.
* The author's loss is the sum of the heads' cross-entropies, ours their mean: Adam normalises the
  gradient's scale away, so the updates are the same but for ε.
* Architecture and data are the single-task family's (:mod:`.modular`: inputs ``[a, b, =]`` over all
  p² pairs, 2 layers, d = 128, 4 heads, d_ff = 256, β2 0.98, batch 512, clipping 1.0, train fraction
  0.5), which gives the paper's parameter counts (301,952 and 314,368). The author draws batches with
  replacement from pairs with a, b ≠ 0 and has biased heads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spectral_edge.demo import GROK_ACC
from spectral_edge_studies.models.transformer import Transformer
from spectral_edge_studies.study.common import SEEDS, SUITES, WEIGHT_DECAYS, RunOutcome, StudyRecorder
from spectral_edge_studies.tasks.modular import (
    MULTITASK_PRESETS,
    MultiTaskModularData,
    multitask_modular_dataset,
)

FAMILY = "multitask"
#: The thesis's multi-task models (§27), each a ``Config.task``.
TASKS = ("dual", "tri")
#: Step budget of each model in the full suite: dual grokked at 1900 (seed 42), tri at 2500 (seed 137)
#: and not yet by 3500 (seed 42, every head then rising).
MAX_STEPS = {"dual": 3000, "tri": 5000}

# Rows per forward pass in evaluate (as in spectral_edge.demo: faster than one pass over all p² pairs).
_EVAL_CHUNK = 2048
# Offsets that give the model init and the minibatches streams distinct from the split's seed (as in
# spectral_edge.demo, so a head sees the same split, initial trunk and batches a single-task run would draw).
_INIT_STREAM, _BATCH_STREAM = 1, 2


@dataclass(frozen=True)
class Config:
    """Every setting of one multi-task run; saved in the run store as it is."""

    # task
    task: str = "dual"  # "dual" (add + mul) or "tri" (add + mul + a² + b²), §27
    p: int = 97  # modulus
    train_fraction: float = 0.5  # fraction of the p² pairs used for training, the same split for all heads
    # model: the single-task trunk with one head per operation
    n_layers: int = 2  # transformer blocks
    d_model: int = 128  # residual width
    n_heads: int = 4  # attention heads per block
    d_mlp: int = 256  # MLP hidden width (d_ff)
    norm: str = "layer"  # "layer", "rms" or "none"
    # optimiser
    lr: float = 2e-3  # AdamW learning rate after warm-up; the author's 1e-3 plateaus (module docstring)
    weight_decay: float = 1.0  # AdamW decoupled weight decay ω on every parameter; 0 is the control
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW (β1, β2)
    warmup_steps: int = 10  # linear warm-up steps
    grad_clip: float = 1.0  # max global gradient norm
    batch_size: int = 512  # examples per step, drawn without replacement from the train set
    # loop
    max_steps: int = 3000  # step budget (variants: MAX_STEPS); the wd = 0 controls always run all of it
    eval_every: int = 100  # full train and test evaluation every this many steps (and at the last step)
    post_grok_steps: int | None = 500  # stop at the first eval this many steps after grokking; None: never
    monitor_interval: int = 10  # steps between the monitor's snapshots (W = 10 updates span 10× this)
    seed: int = 42  # seeds the split, the initial weights and the minibatches

    def __post_init__(self) -> None:
        if self.task not in MULTITASK_PRESETS:
            raise ValueError(f"task must be one of {sorted(MULTITASK_PRESETS)}, got {self.task!r}")
        positive = ("p", "n_layers", "d_model", "n_heads", "d_mlp", "batch_size", "max_steps", "eval_every")
        for name, least in [(n, 1) for n in (*positive, "monitor_interval")] + [
            ("warmup_steps", 0),
            ("seed", 0),
        ]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite float > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite float >= 0, got {self.weight_decay!r}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be a float > 0, got {self.grad_clip!r}")
        if self.post_grok_steps is not None and self.post_grok_steps < 0:
            raise ValueError(f"post_grok_steps must be None or an int >= 0, got {self.post_grok_steps!r}")

    @property
    def operations(self) -> tuple[str, ...]:
        """The heads' operations, in head order."""
        return MULTITASK_PRESETS[self.task]


#: Named configurations. ``full`` is the study's run (see the module docstring for what was measured);
#: ``quick`` the same recipe on a shorter budget; ``smoke`` a seconds-long dual mod 23. Its test accuracy
#: (the worse head's) tops out just above the 0.95 threshold, so when it gets there varies a lot with the
#: CPU's rounding: with one thread, mul grokked at step 1000 and add at 1300 on an AMD EPYC, add at 900
#: on an Intel Xeon, and both at 900–2780 over twenty runs with the initial weights perturbed by 1e-6 (mul
#: first in 17 of them). Hence its 4,000-step budget; with ω = 0 it stays below 0.52 through step 4000.
PRESETS: dict[str, Config] = {
    "full": Config(),
    "quick": Config(max_steps=2500, post_grok_steps=200),
    "smoke": Config(
        p=23,
        train_fraction=0.8,  # at 0.6 both heads sit at the commutativity plateau (test 0.58) for 1500 steps
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        lr=1e-2,  # lower rates do not grok within a few seconds
        batch_size=1024,  # ≥ 423 train pairs: full batch
        max_steps=4000,  # grokking comes at 900–2780 depending on the CPU (comment above)
        eval_every=20,
        post_grok_steps=100,
        monitor_interval=5,
        seed=0,
    ),
}


class MultiHeadTransformer(nn.Module):
    """The demo's transformer as a shared trunk, with one bias-free ``d → p`` head per operation.

    Example:
        >>> model = build_model(PRESETS["smoke"])
        >>> model(torch.tensor([[1, 2, 23]])).shape  # (batch, heads, p)
        torch.Size([1, 2, 23])
    """

    def __init__(self, trunk: Transformer, operations: tuple[str, ...], n_classes: int) -> None:
        super().__init__()
        d_model = trunk.unembed.in_features
        trunk.unembed = nn.Identity()  # the trunk now returns the final normed residual (B, d)
        self.trunk = trunk
        self.operations = operations
        self.heads = nn.ModuleDict({op: nn.Linear(d_model, n_classes, bias=False) for op in operations})

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3) tokens → (B, n_heads, p) logits, heads in ``operations`` order."""
        features = self.trunk(tokens)  # (B, d)
        return torch.stack([self.heads[op](features) for op in self.operations], dim=1)

    def query_weights(self) -> list[torch.Tensor]:
        """W_Q of each attention layer, in layer order (live parameters)."""
        return [block.attn.q_proj.weight for block in self.trunk.blocks]


def make_data(config: Config) -> MultiTaskModularData:
    """The split of ``config``, seeded by ``config.seed`` (the same split single-task runs draw)."""
    return multitask_modular_dataset(
        config.p, config.task, train_fraction=config.train_fraction, seed=config.seed
    )


def build_model(config: Config) -> MultiHeadTransformer:
    """A freshly initialised multi-head model for ``config``, seeded without touching the global RNG.

    Example:
        >>> sum(p.numel() for p in build_model(Config(task="tri")).parameters())
        314368
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + _INIT_STREAM)
        trunk = Transformer(
            vocab_size=config.p + 1,  # numbers and "="
            n_classes=config.p,
            seq_len=3,  # [a, b, =]
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            d_mlp=config.d_mlp,
            norm=config.norm,
        )
        return MultiHeadTransformer(trunk, config.operations, config.p)


@torch.no_grad()
def evaluate(model: MultiHeadTransformer, data: MultiTaskModularData) -> dict[str, float]:
    """Per-head and summary loss and accuracy on the full train and test sets.

    Returns:
        ``{split}_loss_{op}``, ``{split}_acc_{op}`` for each head, ``{split}_loss`` (mean over heads, the
        training objective) and ``{split}_acc`` (minimum over heads: grokked means every head grokked),
        for split in train, test.
    """
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            n_heads = y.shape[1]
            loss_sum = torch.zeros(n_heads, dtype=torch.float64)
            correct = torch.zeros(n_heads, dtype=torch.int64)
            for xs, ys in zip(x.split(_EVAL_CHUNK), y.split(_EVAL_CHUNK), strict=True):
                logits = model(xs)  # (b, heads, p)
                loss_sum += F.cross_entropy(logits.transpose(1, 2), ys, reduction="none").sum(0).double()
                correct += (logits.argmax(dim=-1) == ys).sum(0)
            losses, accs = (loss_sum / len(y)).tolist(), (correct.double() / len(y)).tolist()
            for op, loss, acc in zip(data.operations, losses, accs, strict=True):
                metrics[f"{split}_loss_{op}"] = loss
                metrics[f"{split}_acc_{op}"] = acc
            metrics[f"{split}_loss"] = sum(losses) / n_heads
            metrics[f"{split}_acc"] = min(accs)
    finally:
        model.train(was_training)
    return metrics


def variants(suite: str) -> list[Config]:
    """The family's configurations in ``suite``: tasks × seeds × weight decays.

    * ``full``: dual and tri × seeds 42/137/2024 × ω ∈ {1, 0} = 12 runs (§27's multi-task models), with
      the step budgets of :data:`MAX_STEPS`;
    * ``quick``: dual at seed 42 with ω = 1 and 0 (tri takes up to twice as long): 2 runs;
    * ``smoke``: the smoke preset with ω = 1 and 0.

    Example:
        >>> len(variants("full")), sorted({c.task for c in variants("full")})
        (12, ['dual', 'tri'])
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if suite == "smoke":
        return [replace(PRESETS["smoke"], weight_decay=wd) for wd in WEIGHT_DECAYS]
    base = PRESETS[suite]
    if suite == "quick":
        return [replace(base, task="dual", seed=SEEDS[0], weight_decay=wd) for wd in WEIGHT_DECAYS]
    return [
        replace(base, task=task, max_steps=MAX_STEPS[task], seed=seed, weight_decay=wd)
        for task in TASKS
        for seed in SEEDS
        for wd in WEIGHT_DECAYS
    ]


def run(
    config: Config, run_dir: str | Path, *, progress: Callable[[int, int], None] | None = None
) -> RunOutcome:
    """Train one configuration, recording everything the study needs in ``run_dir``.

    Steps are numbered from 1; evaluations run at step 0, every ``eval_every`` steps and at the last
    step. Training stops at ``max_steps``, or at the first evaluation ``post_grok_steps`` or more after
    the grokking step.

    Args:
        config: the run's settings.
        run_dir: the run directory; an interrupted run there is replaced.
        progress: called as ``progress(step, max_steps)`` after each optimizer step.

    Returns:
        The run's :class:`RunOutcome` (also in ``run_dir/outcome.json``); ``extra`` holds each head's
        final test accuracy (``test_acc_<op>``) and grokking step (``grok_step_<op>``, -1 if never).
    """
    data, model = make_data(config), build_model(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warmup = max(config.warmup_steps, 1)
    batches = torch.Generator().manual_seed(config.seed + _BATCH_STREAM)
    n_train = data.train_x.shape[0]
    head_grok: dict[str, int] = {}
    queries = model.query_weights()
    started = time.perf_counter()

    with StudyRecorder(model, optimizer, run_dir, family=FAMILY, config=config) as recorder:

        def log_eval(step: int) -> dict[str, float]:
            metrics = evaluate(model, data)
            for op in data.operations:
                if op not in head_grok and metrics[f"test_acc_{op}"] >= GROK_ACC:
                    head_grok[op] = step
            return recorder.evaluate(step, metrics, attention_query_weights=queries)

        model.train()
        log_eval(0)
        step = 0
        while step < config.max_steps:
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, step / warmup)
            if config.batch_size >= n_train:
                x, y = data.train_x, data.train_y
            else:
                index = torch.randperm(n_train, generator=batches)[: config.batch_size]
                x, y = data.train_x[index], data.train_y[index]
            logits = model(x)  # (B, heads, p)
            # cross_entropy over (B, p, heads) averages over batch and heads: the mean of the heads' losses
            loss = F.cross_entropy(logits.transpose(1, 2), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            recorder.after_step(step, loss.item())

            stop = False
            if step % config.eval_every == 0 or step == config.max_steps:
                log_eval(step)
                stop = recorder.past_grok(step, config.post_grok_steps)
            if progress is not None:
                progress(step, config.max_steps)
            if stop:
                break

        latest = recorder.latest
        extra = {f"test_acc_{op}": latest[f"test_acc_{op}"] for op in data.operations}
        extra.update({f"grok_step_{op}": float(head_grok.get(op, -1)) for op in data.operations})
        extra["ms_per_step"] = 1000.0 * (time.perf_counter() - started) / max(step, 1)
        return recorder.finish(steps=step, extra=extra)


__all__ = [
    "FAMILY",
    "MAX_STEPS",
    "PRESETS",
    "TASKS",
    "Config",
    "MultiHeadTransformer",
    "build_model",
    "evaluate",
    "make_data",
    "run",
    "variants",
]
