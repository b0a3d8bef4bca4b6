"""Offline analysis: the monitor's records from a sequence of saved checkpoints.

Each checkpoint is a parameter snapshot θ_t; consecutive checkpoints give the updates δ_t = θ_t − θ_{t−1}
(the paper's windows over checkpoints 200 steps apart). At any time the window (W updates) and the
previous checkpoint are held — W + 1 parameter vectors — plus the checkpoint being read.

The updates are only right when the checkpoints are taken in training order, so they are ordered by the
step each one names (:func:`step_from_path`), never by how their names sort: ``sorted(glob(...))`` puts
``checkpoint-10`` before ``checkpoint-5``, and the differences between checkpoints out of order are not
updates at all (R came out 3–7 times too large on a real run).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_edge.errors import SpectrumWarning
from spectral_edge.sinks.base import as_sink
from spectral_edge.sinks.store import StoreSink
from spectral_edge.tracking._fanout import FanOut
from spectral_edge.tracking._guard import Guard
from spectral_edge.tracking._lr import resolve_lr
from spectral_edge.tracking._sharing import count_once
from spectral_edge.tracking.checkpoint_folder import (
    BUFFER_SUFFIXES,
    CHECKPOINT_FILES,
    SHARD_INDEX_FILES,
    find_checkpoints,
    hf_config,
    load_state_dict,
    step_from_path,
)
from spectral_edge.tracking.config import MonitorConfig, resolve_config
from spectral_edge.tracking.record import SpectralRecord
from spectral_edge.tracking.tracker import SpectralTracker

# load_state_dict, step_from_path and the file names live in checkpoint_folder (reading checkpoints);
# they are importable from here as they always were.
__all__ = [
    "BUFFER_SUFFIXES",
    "CHECKPOINT_FILES",
    "SHARD_INDEX_FILES",
    "analyze_checkpoints",
    "load_state_dict",
    "step_from_path",
]

# HF names of a model's input embedding, and of the tensors tied to it when tie_word_embeddings is on
# (the output embedding; T5's encoder and decoder token embeddings tied to its shared one). Matched as
# whole trailing components of a name: "lm_head.weight" matches "model.lm_head.weight".
_INPUT_EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "tok_embeddings.weight",
    "shared.weight",
    "embed.weight",
)
_OUTPUT_EMBEDDINGS = ("lm_head.weight", "embed_out.weight")


def analyze_checkpoints(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    window: int | None = None,
    steps: Sequence[int] | None = None,
    names: Iterable[str] | None = None,
    config: MonitorConfig | Mapping[str, Any] | None = None,
    store: Any = None,
    sinks: Sequence[Any] = (),
    lr_by_step: Mapping[int, float] | None = None,
    progress: Callable[[int, int, str], object] | None = None,
    **settings: Any,
) -> list[SpectralRecord]:
    """Records from a sequence of checkpoints, as the online monitor would have produced them.

    The checkpoints are taken in step order: the step of each is ``steps[i]`` if given, else the one its
    path names (:func:`step_from_path`), and the paths are sorted by it, so ``sorted(glob(...))`` (which
    puts ``checkpoint-10`` before ``checkpoint-5``) gives the same records as the training order.

    * Steps given or read must strictly increase (after sorting, for read ones): a step named twice, or
      ``steps=`` out of order, is a ``ValueError`` that lists the checkpoints and their steps.
    * If no path names a step, the paths are taken in the order given and filed under steps
      0, 1, 2, …; if only some do, that is a ``ValueError`` (pass ``steps=``, or rename the others).

    The records come from the same :class:`~spectral_edge.tracking.tracker.SpectralTracker` the online
    :class:`~spectral_edge.tracking.monitor.SpectralMonitor` drives, and reach the run store and the sinks
    through the same fan-out and guard. Each tensor is counted once, as online: names that share memory in the
    checkpoint (a tied embedding ``torch.save``-d under both names) are merged, and the monitor's config
    (in ``store=``) lists them under ``"merged"``. In an HF checkpoint folder whose ``config.json`` does
    not turn ``tie_word_embeddings`` off, an output embedding (``lm_head.weight``) that equals the input
    embedding (``embed_tokens.weight``, ``wte.weight``, …) is taken as tied to it, and one that
    ``names=`` asks for but the file left out (safetensors drops tied copies) is read as the input
    embedding. Anywhere else equal values never tie two tensors (LayerNorm weights all start at one): to
    count a tied copy saved as a separate tensor once, leave it out of ``names=``.

    Args:
        paths: checkpoint files or folders (at least ``window + 1`` of them), or one folder that holds a
            run's checkpoints (``checkpoint-N/`` folders, or files with a step in their names; see
            :func:`~spectral_edge.tracking.checkpoint_folder.find_checkpoints`), as a str or a Path.
        window: W, updates per window; default the config's (10).
        steps: the step of each checkpoint, strictly increasing, in the order of ``paths`` (not with a
            folder); default read from the paths as above.
        names: the tensors to analyse (e.g. ``[n for n, p in model.named_parameters() if p.requires_grad]``
            to match an online monitor exactly); default every floating-point tensor but BatchNorm
            statistics.
        progress: called as ``progress(done, total, text)`` before each checkpoint after the first and
            once at the end (a :class:`~spectral_edge.progress.ProgressBar` draws a bar).
        lr_by_step: η of each record, by the record's step (the newest checkpoint of its window), in
            place of one ``lr``: a learning-rate schedule, say an HF Trainer's logged one
            (:func:`~spectral_edge.tracking.checkpoint_folder.trainer_state_lrs`). A record whose step
            is not in it has no 𝒜.
        config: a :class:`~spectral_edge.tracking.config.MonitorConfig`, or a mapping of extra settings
            to save in the run store, as for :class:`~spectral_edge.tracking.monitor.SpectralMonitor`.
        store: a run directory or an open :class:`~spectral_edge.RunStore` to write to; None writes none.
        sinks: more sinks that get every record and event.
        **settings: :class:`~spectral_edge.tracking.config.MonitorConfig` fields (``lr``, ``groups``,
            ``storage_dtype``, …); ``interval`` and ``storage_device`` do not apply (pass every n-th
            path; the window is kept on the CPU, beside the checkpoints).

    Returns:
        One record per full window: ``len(paths) − window`` records.

    Raises:
        ValueError: too few checkpoints, steps that do not strictly increase, some paths naming a step
            and others none, or checkpoints that hold different tensors, shapes or ties.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for step in (5, 10, 15, 20):
        ...     torch.save({"w": torch.randn(6, generator=torch.Generator().manual_seed(step))},
        ...                f"{tmp.name}/checkpoint-{step}.pt")
        >>> [r.step for r in analyze_checkpoints(tmp.name, window=2)]
        [15, 20]
        >>> tmp.cleanup()
    """
    cfg = resolve_config(
        config, settings if window is None else {**settings, "window": window}, caller="analyze_checkpoints"
    )
    if cfg.interval != 1:
        raise ValueError(
            f"interval does not apply to checkpoints, got interval={cfg.interval}: pass every n-th path instead"
        )
    if lr_by_step is not None:
        if cfg.lr is not None:
            raise ValueError(
                f"pass one learning rate: lr={cfg.lr!r} or lr_by_step=, not both (lr_by_step gives each "
                "record's η)"
            )
        bad = {k: v for k, v in lr_by_step.items() if not (isinstance(v, (int, float)) and 0 < v < np.inf)}
        if bad:
            raise ValueError(
                f"lr_by_step must map steps to rates > 0, got {dict(list(bad.items())[:3])}: leave out the "
                "steps without a rate"
            )
        schedule = {int(k): float(v) for k, v in lr_by_step.items()}
    if cfg.storage_device is not None and torch.device(cfg.storage_device).type != "cpu":
        raise ValueError(
            f"storage_device does not apply to checkpoints, got {cfg.storage_device!r}: the checkpoints are read "
            "to the CPU and the window is kept beside them; leave storage_device out"
        )
    if isinstance(paths, (str, os.PathLike)):
        paths, steps = _folder_checkpoints(Path(paths), steps)
    paths, steps = _in_step_order([Path(p) for p in paths], steps)
    if len(paths) < cfg.window + 1:
        raise ValueError(
            f"a window of W={cfg.window} updates needs at least {cfg.window + 1} checkpoints, got {len(paths)}; "
            "pass more checkpoints or a smaller window"
        )
    delivered = [as_sink(sink) for sink in sinks]  # a TypeError names what a sink lacks

    wanted = None if names is None else list(names)
    first = _select(_hf_ties(load_state_dict(paths[0]), paths[0], wanted), wanted, paths[0])
    all_names = list(first)
    shared = count_once(list(first.items()))  # tied names (one storage) counted once, as online
    if shared.partial:
        warnings.warn(shared.partial_warning(), SpectrumWarning, stacklevel=2)
    # The loaded checkpoint itself is the snapshot (copy=False): W window rows plus one checkpoint are
    # held, never a second copy of it.
    tracker = SpectralTracker(shared.named, config=replace(cfg, storage_device="cpu"), copy=False)
    del first
    guard = Guard(strict=cfg.strict, note="analyze_checkpoints returns every record.")
    store_sink = StoreSink.open(store, write_behind=not cfg.strict)
    out = FanOut(
        ([store_sink] if store_sink is not None else []) + delivered,
        guard=guard,
        kept="analyze_checkpoints returns every record whatever happens",
        counts="the run store's backlog()",
    )
    document = {
        "monitor": {
            **tracker.describe(),
            "excluded": {},
            "merged": dict(shared.merged),
            "partially_merged": dict(shared.partial),
        },
        "user": dict(cfg.user),
    }
    try:
        out.config(document, check=True)
    except BaseException:  # a config that cannot be stored: leave no store open (and locked) behind
        if store_sink is not None and store_sink.owned:
            with contextlib.suppress(Exception):
                store_sink.close()
        raise

    def rate() -> float | None:  # read only when a record is made, as online
        if lr_by_step is not None:
            return schedule.get(step)  # the step of the record being made (the loop's)
        return resolve_lr(cfg.lr, warn=guard.warn_once)

    records = []
    try:
        for done, (path, step) in enumerate(zip(paths[1:], steps[1:], strict=True), start=1):
            if progress is not None:
                progress(done - 1, len(paths) - 1, f"step {step}")
            state = _select(_hf_ties(load_state_dict(path), path, wanted), wanted, path)
            if set(state) != set(all_names):
                missing = sorted(set(all_names) - set(state))[:5]
                extra = sorted(set(state) - set(all_names))[:5]
                raise ValueError(
                    f"{path} does not hold the same tensors as {paths[0]}: missing {missing}, extra {extra}. "
                    "All checkpoints must come from the same model."
                )
            layout = tracker.layout
            for name, shape in zip(layout.names, layout.shapes, strict=True):
                if tuple(state[name].shape) != shape:
                    raise ValueError(
                        f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, {paths[0]} has {shape}. "
                        "All checkpoints must come from the same model."
                    )
            merged = count_once(list(state.items())).merged
            if merged != shared.merged:
                raise ValueError(
                    f"{path} ties tensors differently from {paths[0]}: names sharing memory (left out -> kept) "
                    f"{merged} here, {shared.merged} there. All checkpoints must come from the same model, "
                    "saved the same way."
                )
            result = tracker.observe(state, step=step, lr=rate, copy=False)
            if result.record is not None:
                records.append(result.record)
                out.record(result.record)
            out.emit(result.events)
        if progress is not None:
            progress(len(paths) - 1, len(paths) - 1, f"{len(records)} records")
    finally:
        out.close()
    return records


def _folder_checkpoints(folder: Path, steps: Sequence[int] | None) -> tuple[list[Path], list[int]]:
    """The checkpoints of a run's folder, in step order, with their steps."""
    if steps is not None:
        raise ValueError(
            f"steps= applies to a list of checkpoint paths, not to a folder ({folder}), whose checkpoints "
            "are ordered by the steps in their names: pass the paths in training order with steps=, or "
            "leave steps= out"
        )
    if folder.is_file():
        raise ValueError(
            f"{folder} is one checkpoint file; pass the folder that holds the run's checkpoints, or a list "
            "of checkpoint paths (at least window + 1 of them)"
        )
    found = find_checkpoints(folder)
    return [c.path for c in found], [c.step for c in found]


def _in_step_order(paths: list[Path], steps: Sequence[int] | None) -> tuple[list[Path], list[int]]:
    """``paths`` sorted by step, with their steps; see :func:`analyze_checkpoints` for the rules."""
    if steps is not None:
        steps = [_as_step(s) for s in steps]
        if len(steps) != len(paths):
            raise ValueError(f"got {len(steps)} steps for {len(paths)} checkpoints; pass one step per path")
        _check_increasing(
            paths,
            steps,
            "pass the paths in training order with their steps, or leave steps= out to order them by the "
            "steps their names give",
        )
        return paths, steps
    found = [step_from_path(p) for p in paths]
    unnamed = [p for p, s in zip(paths, found, strict=True) if s is None]
    if len(unnamed) == len(paths):  # nothing to order by: the caller's order, filed under 0, 1, 2, …
        return paths, list(range(len(paths)))
    if unnamed:
        named = [f"{p.name} (step {s})" for p, s in zip(paths, found, strict=True) if s is not None]
        raise ValueError(
            f"{len(unnamed)} of {len(paths)} checkpoints name no step ({_listing([p.name for p in unnamed])}) "
            f"while the others do ({_listing(named)}); the order of the checkpoints cannot be told. Pass "
            "steps= (one per path, in training order), or rename the checkpoints with their steps "
            "(step_<N>.pt, checkpoint-<N>/)"
        )
    known = [s for s in found if s is not None]  # all of them
    order = sorted(range(len(paths)), key=known.__getitem__)  # stable: a step named twice keeps its order
    paths, steps = [paths[i] for i in order], [known[i] for i in order]
    _check_increasing(
        paths,
        steps,
        "keep one checkpoint per step (leave the copies out), or pass steps= to give each its step",
    )
    return paths, steps


def _as_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"steps must be integers, got {step!r} ({type(step).__name__})")
    return int(step)


def _check_increasing(paths: list[Path], steps: list[int], fix: str) -> None:
    bad = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    if bad:
        pairs = [
            f"{paths[i - 1].name} (step {steps[i - 1]}) then {paths[i].name} (step {steps[i]})" for i in bad
        ]
        raise ValueError(
            f"checkpoint steps must strictly increase, got {_listing([str(s) for s in steps], 12)}: "
            f"{_listing(pairs)}; {fix}"
        )


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items)} in all)"


def _hf_ties(state: dict[str, torch.Tensor], path: Path, wanted: list[str] | None) -> dict[str, torch.Tensor]:
    """Tie the embeddings of an HF checkpoint folder as the model does, so that they are counted once.

    HF ties the output embedding (and T5's encoder/decoder token embeddings) to the input embedding unless
    ``tie_word_embeddings`` is false. A safetensors file keeps one copy, so a tied name that ``wanted``
    asks for is missing: it is read as the input embedding. A file that keeps both as separate, equal
    copies has them made one tensor. Without ``config.json`` (not an HF folder) nothing is changed.
    """
    config = hf_config(path)
    if config is None:
        return state
    text = config.get("text_config")
    tie = config.get(
        "tie_word_embeddings", text.get("tie_word_embeddings") if isinstance(text, dict) else None
    )
    if tie is False:
        return state
    # The copy the file kept: the input embedding (the first: T5's "shared"), else an output embedding.
    kept = [n for n in state if _ends_with(n, _INPUT_EMBEDDINGS)] or [
        n for n in state if _ends_with(n, _OUTPUT_EMBEDDINGS)
    ]
    if not kept:
        return state
    source = state[kept[0]]
    for name in wanted or ():
        if name not in state and _ends_with(name, _INPUT_EMBEDDINGS + _OUTPUT_EMBEDDINGS):
            state[name] = source
    for name, tensor in list(state.items()):
        if (
            tensor is not source
            and _ends_with(name, _INPUT_EMBEDDINGS + _OUTPUT_EMBEDDINGS)
            and tensor.shape == source.shape
            and tensor.dtype == source.dtype
            and torch.equal(tensor, source)
        ):
            state[name] = source
    return state


def _ends_with(name: str, suffixes: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _select(state: dict[str, torch.Tensor], names: list[str] | None, path: Path) -> dict[str, torch.Tensor]:
    if names is None:
        return state
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(
            f"{path} has no tensor named {missing[:5]}; it holds {sorted(state)[:5]} …. A tied weight that "
            "the file left out (safetensors keeps one copy) is counted with the tensor it is tied to: leave "
            "it out of names="
        )
    return {n: state[n] for n in names}
