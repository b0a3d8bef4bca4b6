"""The language-model study's runs (thesis Part VIII, Tests 1–6, §33, §22.1, §44.9) as frozen configs.

The paper's language-model evidence comes from a 51M TinyStories model (AdamW, η = 1e-3, ω = 0.5,
β2 = 0.95, cosine schedule, seeds 42/123/149/256) and a 124M GPT-2 fine-tune (η = 3e-5, ω = 0.1). Its
windows are W = 10 (and 20) checkpoint deltas 200 steps apart. This machine trains a few-million-parameter
GPT on Shakespeare in minutes, so the study keeps the paper's optimiser settings and protocol and scales
the rest:

* ``pretrain``: a small GPT from scratch on the Shakespeare plays, AdamW, 4 seeds (the paper's SED
  seeds), W = 10 and W = 20 monitors on updates ``monitor_interval`` steps apart (the checkpoint
  spacing), validation loss at every other window, Hessian probes for Tests 3 and 6;
* ``muon``: the same model, data and seed with Muon on the hidden matrices (§44.9);
* ``shift``: the seed-42 AdamW run continued on Milton (§22.1's FineWeb → OpenWebText shift), its
  monitors carried over so the windows straddle the shift; and the control, the same continuation (same
  re-warmed schedule) on Shakespeare;
* ``finetune``: SmolLM2-135M (a real pretrained model of GPT-2 size) fine-tuned on Shakespeare with the
  monitor at every step (P = 1.35e8), for Tests 1, 2, 4, 5 at real scale and the overhead per step.

Each suite (``smoke``: seconds, for the tests; ``quick``: under 30 minutes; ``full``: under 3 hours)
lists its configs in :func:`variants`. Changing a field changes the run: the suite reruns a run whose
saved config differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Kinds of run the study has (see the module docstring).
KINDS = ("pretrain", "muon", "shift", "finetune")
#: The paper's TinyStories seeds (§33: 4 seeds, collapse onset 7500 ± 300).
SEEDS = (42, 123, 149, 256)
SUITES = ("smoke", "quick", "full")


@dataclass(frozen=True)
class LMConfig:
    """One run of the language-model study."""

    name: str  # the run's directory name inside the suite, e.g. "adamw-seed42"
    kind: str = "pretrain"  # one of KINDS
    seed: int = 42  # data order, initialisation and evaluation batches
    corpus: str = "shakespeare"  # the training text: "shakespeare" or "milton" (text/corpus.py)
    corpus_chars: int | None = None  # use only the first N characters of the corpus (smoke tests)
    model: str = "small"  # GPT preset (models/gpt.py); "smollm2-135m" for kind="finetune"
    tokenizer: str = "bpe"  # "bpe" (byte-level, trained here) or "char"; the finetune uses SmolLM2's own
    vocab_size: int = 2048  # BPE vocabulary trained on the Shakespeare plays
    context: int = 128  # tokens per training sequence
    batch_size: int = 16  # sequences per step (B in ν ≈ η/√B, Test 1)
    max_steps: int = 3000  # optimizer steps of this run (after init_from's, for a shift)
    warmup: int = 150  # linear warm-up steps, then cosine decay to min_lr_ratio · lr
    lr: float = 1e-3  # peak AdamW learning rate η (TinyStories: 1e-3)
    min_lr_ratio: float = 0.1  # the cosine schedule's floor, as a fraction of lr
    weight_decay: float = 0.5  # ω, decoupled (TinyStories: 0.5; the GPT-2 fine-tune: 0.1)
    beta2: float = 0.95  # Adam β2 (the paper's 0.95)
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon on hidden matrices, AdamW on the rest)
    muon_lr: float | None = None  # Muon's peak rate; None: lr, as Muon's RMS-matched update (optim.py) is
    # then the size of AdamW's, so "same rate" compares the same step size
    monitor_interval: int = 10  # steps between the updates a window holds (the paper: 200-step checkpoints)
    windows: tuple[int, ...] = (10, 20)  # W of each monitor; the first is the main one (Tests 1–6)
    eval_every: int = 10  # steps between validation-loss evaluations (a multiple of monitor_interval; equal
    # to it by default, so Test 4's lags count windows as in the paper)
    eval_batches: int = 4  # fixed validation batches per evaluation
    hessian_at: tuple[float, ...] = (0.25, 0.5, 1.0)  # fractions of max_steps with a Lanczos run (Test 3)
    lanczos_k: int = 8  # top Hessian eigenvalues kept
    lanczos_iterations: int = 30  # Krylov dimension of each Lanczos run
    probe_every: int = 100  # steps between h_j, G_j probes along the trajectory (Test 6); 0: none
    probe_directions: int = 4  # principal directions probed (k* and k*+1 need at least k* + 1)
    probe_batch: int = 8  # sequences in the fixed batch the Hessian is taken on
    init_from: str | None = None  # kind="shift": the name of the run (same suite) to continue from
    storage_dtype: str = "float32"  # the monitors' window storage: "float32" or "bfloat16"
    device: str = "cpu"  # "cpu" or "cuda" (the GPT-2 124M recipe on a GPU)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.kind == "muon" and self.optimizer != "muon":
            raise ValueError("kind='muon' runs must set optimizer='muon'")
        if self.kind == "shift" and not self.init_from:
            raise ValueError("kind='shift' needs init_from: the name of the run it continues")
        for name in ("context", "batch_size", "max_steps", "monitor_interval", "eval_every", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.eval_every % self.monitor_interval:
            raise ValueError(
                f"eval_every ({self.eval_every}) must be a multiple of monitor_interval "
                f"({self.monitor_interval}) so that every evaluation falls on a window"
            )
        if self.probe_every % self.monitor_interval:
            raise ValueError(
                f"probe_every ({self.probe_every}) must be a multiple of monitor_interval ({self.monitor_interval})"
                " so that every probe falls on a record"
            )
        if self.lanczos_iterations < self.lanczos_k:
            raise ValueError(
                f"lanczos_iterations ({self.lanczos_iterations}) must be >= lanczos_k ({self.lanczos_k})"
            )
        if not self.windows or any(w < 2 for w in self.windows):
            raise ValueError(f"windows must be W values >= 2, got {self.windows!r}")
        if not 0 <= self.warmup < self.max_steps:
            raise ValueError(f"warmup must be in [0, max_steps), got {self.warmup!r}")
        if not (
            self.lr > 0
            and (self.muon_lr is None or self.muon_lr > 0)
            and 0 < self.min_lr_ratio <= 1
            and self.weight_decay >= 0
        ):
            raise ValueError("need lr > 0, muon_lr None or > 0, 0 < min_lr_ratio <= 1 and weight_decay >= 0")
        if self.storage_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"storage_dtype must be 'float32' or 'bfloat16', got {self.storage_dtype!r}")
        if any(not 0 < f <= 1 for f in self.hessian_at):
            raise ValueError(f"hessian_at holds fractions of max_steps in (0, 1], got {self.hessian_at!r}")
        if self.probe_every < 0 or self.probe_directions < 2:
            raise ValueError("need probe_every >= 0 and probe_directions >= 2")


def _pretrain(seed: int, **changes: object) -> LMConfig:
    return LMConfig(name=f"adamw-seed{seed}", seed=seed, **changes)  # type: ignore[arg-type]


def variants(suite: str) -> list[LMConfig]:
    """The runs of ``suite``, in the order they must run (a shift after the run it continues).

    ``full``: 4 AdamW seeds × 3000 steps, Muon (seed 42), the Milton shift (1000 steps after seed 42), and
    the SmolLM2-135M fine-tune. ``quick``: 2 seeds × 1000 steps, Muon, a 300-step shift, a 30-step
    fine-tune. ``smoke``: a tiny GPT on a slice of the text, every kind once, seconds each.
    """
    if suite == "full":
        base = {"max_steps": 3000, "warmup": 150}
        seeds = SEEDS
        shift = {"max_steps": 1000, "warmup": 50, "lr": 3e-4}
        finetune = {"max_steps": 150, "eval_every": 5, "monitor_interval": 1}
    elif suite == "quick":
        base = {"max_steps": 1000, "warmup": 50}
        seeds = SEEDS[:2]
        shift = {"max_steps": 300, "warmup": 15, "lr": 3e-4}
        finetune = {"max_steps": 30, "eval_every": 5, "monitor_interval": 1}
    elif suite == "smoke":
        base = {
            "max_steps": 60, "warmup": 6, "model": "tiny", "vocab_size": 256, "context": 32,
            "batch_size": 4, "corpus_chars": 200_000, "monitor_interval": 2, "eval_every": 2,
            "eval_batches": 2, "lanczos_iterations": 12, "probe_every": 10, "probe_batch": 2,
        }  # fmt: skip
        seeds = SEEDS[:2]
        shift = {**base, "max_steps": 30, "warmup": 3, "lr": 3e-4}
        finetune = None
    else:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    runs = [_pretrain(seed, **base) for seed in seeds]
    runs.append(LMConfig(name="muon-seed42", kind="muon", optimizer="muon", **base))  # type: ignore[arg-type]
    # The shift, and its control: the same continuation (same re-warmed schedule) on Shakespeare, so that
    # a change of k* the schedule alone causes is not read as the corpus's.
    for name, corpus in (("shift-milton-seed42", "milton"), ("continue-shakespeare-seed42", "shakespeare")):
        runs.append(
            LMConfig(name=name, kind="shift", corpus=corpus, init_from="adamw-seed42", **{**base, **shift})  # type: ignore[arg-type]
        )
    if finetune is not None:
        runs.append(
            LMConfig(
                name="smollm2-135m-finetune",
                kind="finetune",
                model="smollm2-135m",
                tokenizer="smollm2",
                context=64,
                batch_size=4,
                lr=3e-5,
                weight_decay=0.1,
                warmup=5,
                windows=(10,),
                eval_batches=2,
                hessian_at=(),
                probe_every=0,
                corpus_chars=1_000_000,
                **finetune,  # type: ignore[arg-type]
            )
        )
    return runs


def config_dict(config: LMConfig) -> dict[str, object]:
    """The config as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
