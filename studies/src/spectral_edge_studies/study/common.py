"""The run contract of the grokking study (thesis §27): what every task family records and returns.

The study trains 48 runs over four task families (modular arithmetic, multi-task arithmetic, Dyck-1,
SCAN), each with seeds 42/137/2024 and weight decay 1.0 and 0.0 (§27, Tables 6 and 7: 24/24 grok with
weight decay, 0/24 without). Every family follows one contract so that one suite runner can drive all of
them, resume an interrupted suite, and summarise the runs.

A family module (``study/modular.py``, ``study/multitask.py``, ...) exposes:

* ``FAMILY: str``, the family's name (``"modular"``, ``"multitask"``, ``"dyck"``, ``"scan"``);
* ``Config``, a frozen dataclass with one comment per field and at least the fields ``task`` (str: the
  operation, preset or split), ``seed`` (int), ``weight_decay`` (float), ``max_steps`` (int),
  ``eval_every`` (int) and ``monitor_interval`` (int), plus the model and optimiser settings;
* ``PRESETS: dict[str, Config]`` with at least ``"smoke"``, ``"quick"`` and ``"full"``;
* ``variants(suite) -> list[Config]``: the configurations of the family in a suite (one of
  :data:`SUITES`): tasks × seeds × weight decays;
* ``run(config, run_dir, *, progress=None) -> RunOutcome``: trains one configuration, writes everything
  into ``run_dir`` and returns the :class:`RunOutcome`. ``progress(step, max_steps)`` is called after each
  optimizer step. It runs on the CPU with ``torch.get_num_threads()`` threads, as the caller set them
  (the suite gives each job one thread), and is deterministic under ``config.seed`` for a given thread
  count (reductions, and so the grok step, change with it).

:func:`check_family` checks a module against this list.

Inside ``run`` the training loop drives a :class:`StudyRecorder`::

    recorder = StudyRecorder(model, optimizer, run_dir, family=FAMILY, config=config)
    with recorder:
        recorder.evaluate(0, metrics, attention_query_weights=[...])  # before any update
        for step in range(1, config.max_steps + 1):
            ...  # forward, backward, optimizer.step()
            recorder.after_step(step, loss.item())
            if step % config.eval_every == 0 or step == config.max_steps:
                recorder.evaluate(step, metrics, attention_query_weights=[...])
            if progress is not None:
                progress(step, config.max_steps)
        return recorder.finish(steps=step)

What a run directory holds when the run is complete:

* ``run.db``, the run store (:class:`~spectral_edge.store.RunStore`):

  - the monitor's spectral records of the update trajectory, W = 10 updates ``config.monitor_interval``
    steps apart (so a window spans ``10 × monitor_interval`` steps), with g23 = λ2 − λ3 (Table 7), and
    its events. The records' X holds every trainable parameter; each record also holds the singular
    values of two parameter groups from the same pass (:func:`parameter_group`): ``attention``, the
    attention projection weights W_Q, W_K, W_V, W_O of every layer (the X of the author's grokking
    scripts), and ``other``, the rest. :data:`PARAMETERS` names the two readings;
  - evaluations at every evaluation step: ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``
    (sequence accuracy for SCAN; the minimum over heads for multi-task), ``weight_norm`` (global L2 norm
    of all parameters: the weight-norm baseline), ``wq{i}_ratio`` = σ1/σ2 of attention layer i's query
    matrix (Remark 27.2's weight-matrix spectrum, Table 6's R), and any family-specific values (e.g.
    per-head accuracies ``test_acc_add``);
  - arrays: ``wq{i}_sigma``, the full singular-value vector of layer i's query matrix, at every evaluation;
  - the config: ``store.config()["user"]`` holds ``family``, ``task``, ``seed``, ``weight_decay``,
    ``torch_threads`` and the resolved family config under ``recipe``; ``["monitor"]`` the monitor's.
* ``checkpoints/step_<n>.safetensors`` (``.pt`` without safetensors): the model's state dict at about 16
  evaluation steps spread over the run, plus the grokking step and the last step, within
  :data:`CHECKPOINT_BUDGET_BYTES` (for the comparison with WeightWatcher on the same checkpoints);
* ``outcome.json``: the :class:`RunOutcome`, written atomically and LAST. Its presence means the run is
  complete (:func:`load_outcome`, :func:`is_complete`); a directory without it is an interrupted run
  that the suite reruns from scratch (the recorder clears it first).

The grokking step is the first evaluation with test accuracy ≥ 0.95 (§27); the memorisation step the
first with train accuracy ≥ 0.99 (:data:`GROK_ACC`, :data:`MEMORIZE_ACC`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_edge import RunStore, SpectralMonitor, SpectralRecord
from spectral_edge.demo import GROK_ACC, MEMORIZE_ACC
from spectral_edge_studies.atomic import write_json

#: Suites every family answers in ``variants``: seconds, under 30 minutes for all families, the paper's 48.
SUITES = ("smoke", "quick", "full")
#: The paper's seeds (§27, Tables 6 and 7).
SEEDS = (42, 137, 2024)
#: The paper's weight decays ω: with and without (§27: 24/24 grok with, 0/24 without).
WEIGHT_DECAYS = (1.0, 0.0)
#: W of the monitor's rolling window, as in the paper (§27, Table 7: W = 10).
WINDOW = 10
#: File whose presence marks a complete run.
OUTCOME_FILE = "outcome.json"
#: Folder of the model checkpoints inside a run directory.
CHECKPOINT_DIR = "checkpoints"
#: Checkpoints planned per run (spread evenly over the evaluation steps), before the grok and final ones.
N_CHECKPOINTS = 16
#: Disk a run's checkpoints may take; fewer are planned for a large model (SCAN's 1.5M parameters).
CHECKPOINT_BUDGET_BYTES = 30_000_000
#: Fields every family ``Config`` has; the suite reads them without knowing the family.
CONFIG_FIELDS = ("task", "seed", "weight_decay", "max_steps", "eval_every", "monitor_interval")
#: Eval names every family logs at each evaluation.
REQUIRED_METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
#: What the study's spectral numbers (g23, k*, σ1/σ2 of the update Gram) can be read from, the
#: ``parameters=`` choice of :func:`~spectral_edge_studies.study.alarms.load_series`:
#: ``"all"`` (default): X holds every trainable parameter, the thesis's trajectory matrix (Def 1.2);
#: ``"attention"``: X holds only the attention projection weights W_Q, W_K, W_V, W_O of every layer, as
#: the author's grokking scripts build it. Both come from one run: the recorder monitors the attention
#: weights as their own group (:func:`parameter_group`), whose Gram is that of the attention-only X.
PARAMETERS = ("all", "attention")
#: The monitor group holding the attention projection weights, and the group holding everything else.
ATTENTION_GROUP, OTHER_GROUP = "attention", "other"
#: Last two name components of an attention projection weight in the study's models (``models/``:
#: ``…attn.q_proj.weight``; the seq2seq model's self- and cross-attention alike).
ATTENTION_WEIGHTS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")


@dataclass(frozen=True)
class RunOutcome:
    """What one run of the study measured; plain JSON-able values, saved as ``outcome.json``.

    Example:
        >>> outcome = RunOutcome(family="modular", task="add", seed=42, weight_decay=1.0, steps=100,
        ...     max_steps=100, grok_step=80, memorize_step=40, final_train_acc=1.0, final_test_acc=0.97,
        ...     final_train_loss=0.01, final_test_loss=0.1, n_params=1000, wall_s=1.5, run_dir="runs/x")
        >>> RunOutcome.from_dict(outcome.to_dict()) == outcome, outcome.grokked
        (True, True)
    """

    family: str  # the family's FAMILY name
    task: str  # config.task: operation, multi-task preset, Dyck protocol or SCAN split
    seed: int  # config.seed
    weight_decay: float  # config.weight_decay (ω)
    steps: int  # optimizer steps run (max_steps unless the family stopped early)
    max_steps: int  # config.max_steps, the step budget
    grok_step: int | None  # first eval step with test_acc ≥ GROK_ACC; None: did not grok within budget
    memorize_step: int | None  # first eval step with train_acc ≥ MEMORIZE_ACC; None: never
    final_train_acc: float  # train accuracy at the last evaluation (step == steps)
    final_test_acc: float  # test accuracy at the last evaluation (SCAN: sequence accuracy)
    final_train_loss: float  # train loss at the last evaluation
    final_test_loss: float  # test loss at the last evaluation
    n_params: int  # trainable parameters of the model
    wall_s: float  # seconds from the recorder's start to finish (evaluations and monitor included)
    run_dir: str  # the run directory, as given
    n_evals: int = 0  # evaluations logged, step 0 included
    n_records: int = 0  # spectral records the monitor wrote
    wq_ratio_at_grok: tuple[float, ...] | None = None  # σ1/σ2 of each layer's W_Q at the grok eval (Table 6)
    wq_ratio_final: tuple[float, ...] = ()  # σ1/σ2 of each layer's W_Q at the last eval (Table 6 "after")
    checkpoint_steps: tuple[int, ...] = ()  # steps with a file in checkpoints/
    extra: Mapping[str, float] = field(default_factory=dict)  # family values at the end (per-head acc...)
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved family config (asdict)

    @property
    def grokked(self) -> bool:
        """Whether test accuracy reached :data:`GROK_ACC` within the step budget."""
        return self.grok_step is not None

    @property
    def ms_per_step(self) -> float:
        """Mean wall-clock milliseconds per optimizer step, evaluations and monitoring included."""
        return 1000.0 * self.wall_s / max(self.steps, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["extra"] = dict(self.extra)
        out["config"] = _jsonable(dict(self.config))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunOutcome:
        """Rebuild an outcome from :meth:`to_dict` output (or parsed ``outcome.json``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown RunOutcome fields {unknown}; expected a subset of {sorted(names)}")
        values = dict(data)
        for key in ("wq_ratio_final", "checkpoint_steps"):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("wq_ratio_at_grok") is not None:
            values["wq_ratio_at_grok"] = tuple(values["wq_ratio_at_grok"])
        return cls(**values)


def check_ints(config: Any, names: Sequence[str], *, minimum: int) -> None:
    """Raise ValueError unless every field in ``names`` is an int (not a bool) ≥ ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_training_settings(config: Any) -> None:
    """The checks every recipe's optimiser fields share: ``post_grok_steps``, ``lr``, ``init_scale``,
    ``grad_clip``, ``weight_decay``, ``betas``, and heads dividing ``d_model``."""
    post = config.post_grok_steps
    if post is not None and (isinstance(post, bool) or not isinstance(post, int) or post < 0):
        raise ValueError(f"post_grok_steps must be None or an int >= 0, got {post!r}")
    for name in ("lr", "init_scale", "grad_clip"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite float >= 0, got {config.weight_decay!r}")
    if len(config.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.betas):
        raise ValueError(f"betas must be two floats in [0, 1), got {config.betas!r}")
    if config.d_model % config.n_heads:
        raise ValueError(
            f"d_model must be a multiple of n_heads, got d_model={config.d_model}, n_heads={config.n_heads}"
        )


def seeds_by_weight_decay(presets: Mapping[str, Any], suite: str) -> list[Any]:
    """A one-task family's runs in ``suite``: its preset for every seed (all three in ``full``, 42
    otherwise) and weight decay (1 and 0), in that order."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    seeds = SEEDS if suite == "full" else SEEDS[:1]
    return [
        dataclasses.replace(presets[suite], seed=seed, weight_decay=wd)
        for seed in seeds
        for wd in WEIGHT_DECAYS
    ]


def scale_parameters(model: nn.Module, scale: float) -> None:
    """Multiply every parameter by ``scale`` in place (the ×3 initial scale of the Dyck and SCAN recipes,
    after Omnigrok, Liu et al. 2023: memorisation comes first and weight decay has a long way to shrink)."""
    if scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(scale)


def run_name(family: str, config: Any) -> str:
    """``<family>-<task>-wd<ω>-seed<seed>``: a run directory name unique within one suite.

    Example:
        >>> from types import SimpleNamespace
        >>> run_name("modular", SimpleNamespace(task="add", weight_decay=1.0, seed=42))
        'modular-add-wd1-seed42'
    """
    return f"{family}-{config.task}-wd{config.weight_decay:g}-seed{config.seed}"


def write_outcome(outcome: RunOutcome, run_dir: str | Path) -> Path:
    """Write ``outcome.json`` into ``run_dir`` atomically (temporary file, fsync, ``os.replace``)."""
    return write_json(Path(run_dir) / OUTCOME_FILE, outcome.to_dict())


def load_outcome(run_dir: str | Path) -> RunOutcome | None:
    """The run's :class:`RunOutcome`, or None if the run is not complete (no ``outcome.json``)."""
    path = Path(run_dir) / OUTCOME_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return RunOutcome.from_dict(json.load(handle))


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run (the suite's resume rule: skip it)."""
    return (Path(run_dir) / OUTCOME_FILE).is_file()


def weight_norm(model: nn.Module) -> float:
    """Global L2 norm of all parameters, ``sqrt(Σ ‖θ_i‖²)`` in float64: the weight-norm baseline."""
    with torch.no_grad():
        total = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    return math.sqrt(total)


def singular_values(matrix: torch.Tensor) -> np.ndarray:
    """Singular values of a 2-D tensor, descending, from a float64 SVD on the CPU."""
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(matrix.shape)}")
    return np.linalg.svd(matrix.detach().cpu().double().numpy(), compute_uv=False)


def parameter_group(name: str) -> str:
    """The monitor group of a parameter: :data:`ATTENTION_GROUP` for an attention projection weight
    (W_Q, W_K, W_V, W_O; biases and everything else are not), :data:`OTHER_GROUP` otherwise.

    The recorder passes it as the monitor's ``groups=``, so each record holds the singular values of the
    attention-only Gram beside the total's (the ``"attention"`` reading of :data:`PARAMETERS`).

    Example:
        >>> parameter_group("blocks.0.attn.q_proj.weight"), parameter_group("blocks.0.mlp.up.weight")
        ('attention', 'other')
        >>> parameter_group("decoder.1.cross_attn.o_proj.weight"), parameter_group("blocks.0.attn.q_proj.bias")
        ('attention', 'other')
    """
    return ATTENTION_GROUP if ".".join(name.split(".")[-2:]) in ATTENTION_WEIGHTS else OTHER_GROUP


def sigma_ratio(sigma: np.ndarray) -> float:
    """σ1/σ2 of a descending singular-value vector (inf when σ2 = 0, nan with fewer than two)."""
    if sigma.size < 2:
        return math.nan
    return float(sigma[0] / sigma[1]) if sigma[1] > 0 else math.inf


class StudyRecorder:
    """Everything a family's training loop records, and the :class:`RunOutcome` at the end.

    Opens the run store in ``run_dir`` (replacing an interrupted run there: its ``outcome.json`` and
    checkpoints are removed first) and a :class:`SpectralMonitor` with W = :data:`WINDOW` and
    ``interval=config.monitor_interval`` on every trainable parameter, reading η from the optimizer, with
    the attention projection weights as their own group (:func:`parameter_group`), so that one pass gives
    both readings of :data:`PARAMETERS`.

    Args:
        model: the network being trained (its parameters are monitored and checkpointed).
        optimizer: the run's optimizer (the monitor reads the learning rate of its first param group),
            or a zero-argument callable returning the current learning rate, for loops that build
            their optimizer inside (the modular family reuses the demo's ``train``).
        run_dir: the run directory (created).
        family: the family's name (``FAMILY``).
        config: the family ``Config`` (a dataclass with the :data:`CONFIG_FIELDS`); saved in the store.
        n_checkpoints: evenly spaced checkpoints planned (0: none); capped by ``checkpoint_budget_bytes``.
        checkpoint_budget_bytes: disk the checkpoints of the run may take.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = torch.nn.Linear(4, 4, bias=False)
        >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        >>> config = SimpleNamespace(task="toy", seed=0, weight_decay=1.0, max_steps=2, eval_every=1,
        ...                          monitor_interval=1)
        >>> metrics = dict(train_loss=1.0, test_loss=1.0, train_acc=1.0, test_acc=0.96)
        >>> with StudyRecorder(model, opt, tmp.name + "/run", family="toy", config=config,
        ...                    n_checkpoints=0) as rec:
        ...     for step in range(3):
        ...         if step:
        ...             opt.zero_grad(); model(torch.randn(2, 4)).sum().backward(); opt.step()
        ...             rec.after_step(step, 1.0)
        ...         _ = rec.evaluate(step, metrics, attention_query_weights=[model.weight])
        ...     outcome = rec.finish(steps=2)
        >>> outcome.grok_step, is_complete(tmp.name + "/run")
        (0, True)
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Callable[[], float],
        run_dir: str | Path,
        *,
        family: str,
        config: Any,
        n_checkpoints: int = N_CHECKPOINTS,
        checkpoint_budget_bytes: int = CHECKPOINT_BUDGET_BYTES,
    ) -> None:
        missing = [name for name in CONFIG_FIELDS if not hasattr(config, name)]
        if missing:
            raise TypeError(
                f"config must have the study fields {CONFIG_FIELDS}; {type(config).__name__} lacks {missing}"
            )
        if n_checkpoints < 0:
            raise ValueError(f"n_checkpoints must be >= 0, got {n_checkpoints!r}")
        self._started = time.perf_counter()
        self.model = model
        self.family = family
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # An interrupted run's leftovers must not pass for this run's: the outcome goes first, so that a
        # crash while clearing still leaves the directory marked incomplete.
        (self.run_dir / OUTCOME_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / CHECKPOINT_DIR, ignore_errors=True)

        self.n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.recipe = _config_dict(config)
        self.store = RunStore(self.run_dir, mode="w", overwrite=True)
        try:
            self.monitor = SpectralMonitor(
                model,
                window=WINDOW,
                interval=int(config.monitor_interval),
                lr=optimizer,
                groups=parameter_group,
                store=self.store,
                config={
                    "family": family,
                    "task": str(config.task),
                    "seed": int(config.seed),
                    "weight_decay": float(config.weight_decay),
                    "recipe": self.recipe,
                    "grok_acc": GROK_ACC,
                    "memorize_acc": MEMORIZE_ACC,
                    "torch_threads": torch.get_num_threads(),
                },
            )
        except BaseException:
            self.store.close()
            raise
        self._checkpoint_plan = self._plan_checkpoints(n_checkpoints, checkpoint_budget_bytes)
        self.checkpoint_steps: list[int] = []
        self.grok_step: int | None = None
        self.memorize_step: int | None = None
        self.n_evals = 0
        self.last_eval_step: int | None = None
        self.latest: dict[str, float] = {}
        self.wq_ratio_at_grok: tuple[float, ...] | None = None
        self.wq_ratio_final: tuple[float, ...] = ()
        self.monitor_time_s = 0.0
        self._closed = False

    # -- the loop's calls ---------------------------------------------------------------------------------

    def after_step(self, step: int, train_loss: float) -> SpectralRecord | None:
        """Feed the monitor the update of optimizer step ``step`` (call right after ``optimizer.step()``)."""
        start = time.perf_counter()
        record = self.monitor.step(step=step, loss=float(train_loss))
        self.monitor_time_s += time.perf_counter() - start
        return record

    def evaluate(
        self, step: int, metrics: Mapping[str, float], *, attention_query_weights: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        """Log one evaluation at ``step``: the family's metrics, the weight norm and every W_Q spectrum.

        Args:
            step: the optimizer step (0 before any update).
            metrics: at least :data:`REQUIRED_METRICS`; other names are logged as they are.
            attention_query_weights: the query matrix of each attention layer, in layer order (the
                live parameters are fine: they are copied). Layer i gives ``wq{i}_ratio`` (eval) and
                ``wq{i}_sigma`` (array).

        Returns:
            Everything logged at this step, by name.
        """
        missing = [name for name in REQUIRED_METRICS if name not in metrics]
        if missing:
            raise ValueError(f"metrics must include {REQUIRED_METRICS}; missing {missing} at step {step}")
        step = int(step)
        logged = {name: float(value) for name, value in metrics.items()}
        logged["weight_norm"] = weight_norm(self.model)
        ratios = []
        for i, weight in enumerate(attention_query_weights):
            sigma = singular_values(weight)
            ratios.append(sigma_ratio(sigma))
            logged[f"wq{i}_ratio"] = ratios[-1]
            self.store.add_array(step, f"wq{i}_sigma", sigma)
        self.monitor.log_eval(step, **logged)

        self.n_evals += 1
        self.last_eval_step = step
        self.latest = logged
        self.wq_ratio_final = tuple(ratios)
        if self.memorize_step is None and logged["train_acc"] >= MEMORIZE_ACC:
            self.memorize_step = step
        grokked_now = self.grok_step is None and logged["test_acc"] >= GROK_ACC
        if grokked_now:
            self.grok_step = step
            self.wq_ratio_at_grok = tuple(ratios)
        if step in self._checkpoint_plan or grokked_now:
            self.save_checkpoint(step)
        return logged

    def past_grok(self, step: int, post_grok_steps: int | None) -> bool:
        """Whether training may stop at ``step`` (an evaluation step): it grokked at least
        ``post_grok_steps`` steps ago. Never with ``post_grok_steps=None``."""
        return (
            post_grok_steps is not None
            and self.grok_step is not None
            and step - self.grok_step >= post_grok_steps
        )

    def save_checkpoint(self, step: int) -> Path:
        """Save the model's state dict as ``checkpoints/step_<step>.safetensors`` (``.pt`` without safetensors)."""
        folder = self.run_dir / CHECKPOINT_DIR
        folder.mkdir(exist_ok=True)
        state = {name: t.detach().cpu().contiguous().clone() for name, t in self.model.state_dict().items()}
        try:
            from safetensors.torch import save_file
        except ImportError:  # an optional extra: torch's own format is read by `spectral-edge analyze` too
            path = folder / f"step_{step}.pt"
            torch.save(state, path)
        else:
            path = folder / f"step_{step}.safetensors"
            save_file(state, str(path), metadata={"step": str(step), "family": self.family})
        if step not in self.checkpoint_steps:
            self.checkpoint_steps.append(step)
        return path

    def finish(self, *, steps: int, extra: Mapping[str, float] | None = None) -> RunOutcome:
        """Close the monitor and the store, write ``outcome.json`` (last) and return the outcome.

        Args:
            steps: optimizer steps run; the last :meth:`evaluate` must have been at this step.
            extra: family values to keep in the outcome (e.g. final per-head accuracies).
        """
        if self.last_eval_step != steps:
            raise ValueError(
                f"the last evaluation must be at the last step: evaluated at {self.last_eval_step}, "
                f"finished at steps={steps}; call evaluate(steps, ...) before finish"
            )
        if steps not in self.checkpoint_steps and self._checkpoint_plan:
            self.save_checkpoint(steps)
        n_records = len(self.store)
        self.close()
        outcome = RunOutcome(
            family=self.family,
            task=str(self.config.task),
            seed=int(self.config.seed),
            weight_decay=float(self.config.weight_decay),
            steps=int(steps),
            max_steps=int(self.config.max_steps),
            grok_step=self.grok_step,
            memorize_step=self.memorize_step,
            final_train_acc=self.latest["train_acc"],
            final_test_acc=self.latest["test_acc"],
            final_train_loss=self.latest["train_loss"],
            final_test_loss=self.latest["test_loss"],
            n_params=self.n_params,
            wall_s=time.perf_counter() - self._started,
            run_dir=str(self.run_dir),
            n_evals=self.n_evals,
            n_records=n_records,
            wq_ratio_at_grok=self.wq_ratio_at_grok,
            wq_ratio_final=self.wq_ratio_final,
            checkpoint_steps=tuple(sorted(self.checkpoint_steps)),
            extra={name: float(value) for name, value in (extra or {}).items()},
            config=self.recipe,
        )
        write_outcome(outcome, self.run_dir)
        return outcome

    def close(self) -> None:
        """Close the monitor and the run store (idempotent; :meth:`finish` calls it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.monitor.close()
        finally:
            self.store.close()

    def __enter__(self) -> StudyRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------------

    def _plan_checkpoints(self, n: int, budget: int) -> frozenset[int]:
        """Evaluation steps to checkpoint: ``n`` spread over [0, max_steps], fewer if the budget is short."""
        size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        n = min(n, max(budget // max(size, 1) - 2, 0))  # 2 more: the grok step and the last step
        if n <= 0:
            return frozenset()
        max_steps, every = int(self.config.max_steps), int(self.config.eval_every)
        grid = sorted({*range(0, max_steps, every), max_steps})  # the steps evaluate() is called at
        picks = np.linspace(0, len(grid) - 1, num=min(n, len(grid))).round().astype(int)
        return frozenset(grid[i] for i in picks)


def check_family(module: ModuleType) -> None:
    """Raise ``TypeError`` unless ``module`` follows the family contract (see the module docstring)."""
    problems = [
        name for name in ("FAMILY", "Config", "PRESETS", "variants", "run") if not hasattr(module, name)
    ]
    if problems:
        raise TypeError(f"family module {module.__name__} lacks {problems}")
    fields = {f.name for f in dataclasses.fields(module.Config)}
    missing = [name for name in CONFIG_FIELDS if name not in fields]
    if missing:
        raise TypeError(f"{module.__name__}.Config lacks the study fields {missing}")
    presets = [name for name in SUITES if name not in module.PRESETS]
    if presets:
        raise TypeError(f"{module.__name__}.PRESETS lacks {presets}")


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _jsonable(dataclasses.asdict(config))
    return _jsonable(dict(vars(config)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


__all__ = [
    "CHECKPOINT_BUDGET_BYTES",
    "CHECKPOINT_DIR",
    "CONFIG_FIELDS",
    "GROK_ACC",
    "MEMORIZE_ACC",
    "ATTENTION_GROUP",
    "ATTENTION_WEIGHTS",
    "N_CHECKPOINTS",
    "OTHER_GROUP",
    "OUTCOME_FILE",
    "PARAMETERS",
    "REQUIRED_METRICS",
    "SEEDS",
    "SUITES",
    "WEIGHT_DECAYS",
    "WINDOW",
    "RunOutcome",
    "StudyRecorder",
    "check_family",
    "is_complete",
    "load_outcome",
    "parameter_group",
    "run_name",
    "sigma_ratio",
    "singular_values",
    "weight_norm",
    "write_outcome",
]
