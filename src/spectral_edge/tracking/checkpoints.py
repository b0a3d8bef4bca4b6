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

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_edge._imports import require
from spectral_edge.errors import MissingExtraError
from spectral_edge.tracking._sharing import count_once
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import SpectralRecord

#: Keys under which training scripts commonly nest the model's state dict inside a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")
#: Suffixes of the buffers that torch modules update during training (BatchNorm running statistics).
#: They are not parameters, the online monitor does not see them, and they are left out offline too.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
#: The file a checkpoint folder (HF ``checkpoint-N/`` and the like) holds its weights in, by preference.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pt")
#: Index files of sharded checkpoints (HF ``save_pretrained`` with ``max_shard_size``).
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# A step number after a word that announces one ("step_500", "checkpoint-500", "epoch=3-step=9000",
# "iter500"); a name without such a word gives its last integer ("model_000400").
_STEP_WORD = re.compile(
    r"(?<![a-z])(?:global_step|steps?|iter(?:ation)?s?|checkpoint|ckpt)[-_=]?(\d+)", re.IGNORECASE
)
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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a checkpoint, flattened to ``{name: tensor}`` on the CPU.

    Accepts ``torch.save`` files (plain state dicts, or dicts nesting one under ``state_dict``/``model``),
    ``.safetensors`` files (needs the ``safetensors`` extra), and directories holding one of
    :data:`CHECKPOINT_FILES` or a sharded checkpoint (``*.index.json`` and its shards, as HF writes large
    models). BatchNorm running statistics (:data:`BUFFER_SUFFIXES`) are left out: they are buffers, not
    parameters.

    Raises:
        FileNotFoundError: no such file, or a folder without a checkpoint in it.
        ValueError: the file cannot be read (truncated, still being written, not a checkpoint) or holds
            no floating-point tensors; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in CHECKPOINT_FILES if (path / name).is_file()), None)
        if found is None:
            from spectral_edge.tracking.checkpoint_folder import read_sharded_state_dict

            if any((path / name).is_file() for name in SHARD_INDEX_FILES):
                return read_sharded_state_dict(path)
            raise FileNotFoundError(
                f"no checkpoint file in {path}: looked for {', '.join(CHECKPOINT_FILES + SHARD_INDEX_FILES)}"
            )
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            safetensors_torch = require("safetensors.torch", "Reading .safetensors checkpoints")
            raw: Any = safetensors_torch.load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except MissingExtraError:
        raise
    except Exception as exc:
        raise ValueError(
            f"cannot read the checkpoint {path} ({type(exc).__name__}: {exc}); is it truncated, still being "
            "written, or not a checkpoint?"
        ) from exc
    if isinstance(raw, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict of tensors")
    tensors = {
        k: v
        for k, v in raw.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.endswith(BUFFER_SUFFIXES)
    }
    if not tensors:
        raise ValueError(f"{path} holds no floating-point tensors")
    return tensors


def step_from_path(path: str | os.PathLike[str]) -> int | None:
    """The training step a checkpoint path names, or None if it names none.

    In order of preference:

    1. ``global_step`` in the ``trainer_state.json`` of an HF checkpoint folder (the path itself, or the
       folder of a :data:`CHECKPOINT_FILES` file or shard index);
    2. the path's own name: the number after ``step``, ``iter``, ``checkpoint`` or ``ckpt``
       (``ckpt_step_400.pt``, ``checkpoint-500``, ``epoch=3-step=9000.ckpt``, ``step_500_v2.pt``), else
       its last integer (``model_000400.safetensors``);
    3. for a file with a checkpoint folder's standard name (``checkpoint-1200/model.safetensors``), the
       step in its folder's name. Other files never borrow their folder's number: ``run7/first.pt`` and
       ``run7/second.pt`` name no step, not step 7 twice.

    Example:
        >>> step_from_path("run/checkpoint-1200/model.safetensors"), step_from_path("ckpt_step_400.pt")
        (1200, 400)
        >>> step_from_path("run7/final.pt") is None
        True
    """
    path = Path(path)
    folder = _checkpoint_folder(path)
    if folder is not None:
        step = _trainer_state_step(folder)
        if step is not None:
            return step
    step = _step_in_name(path.name if path.is_dir() else path.stem)
    if step is None and folder is not None and folder != path:
        step = _step_in_name(folder.name)
    return step


def analyze_checkpoints(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    window: int = 10,
    steps: Sequence[int] | None = None,
    names: Iterable[str] | None = None,
    **monitor_kwargs: Any,
) -> list[SpectralRecord]:
    """Records from a sequence of checkpoints, as the online monitor would have produced them.

    The checkpoints are taken in step order: the step of each is ``steps[i]`` if given, else the one its
    path names (:func:`step_from_path`), and the paths are sorted by it, so ``sorted(glob(...))`` (which
    puts ``checkpoint-10`` before ``checkpoint-5``) gives the same records as the training order.

    * Steps given or read must strictly increase (after sorting, for read ones): a step named twice, or
      ``steps=`` out of order, is a ``ValueError`` that lists the checkpoints and their steps.
    * If no path names a step, the paths are taken in the order given and filed under steps
      0, 1, 2, …; if only some do, that is a ``ValueError`` (pass ``steps=``, or rename the others).

    Each tensor is counted once, as online (:class:`SpectralMonitor`): names that share memory in the
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
        window: W, updates per window.
        steps: the step of each checkpoint, strictly increasing, in the order of ``paths`` (not with a
            folder); default read from the paths as above.
        names: the tensors to analyse (e.g. ``[n for n, p in model.named_parameters() if p.requires_grad]``
            to match an online monitor exactly); default every floating-point tensor but BatchNorm
            statistics.
        **monitor_kwargs: passed to :class:`SpectralMonitor` (``lr``, ``groups``, ``store``, …).

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
    if isinstance(paths, (str, os.PathLike)):
        paths, steps = _folder_checkpoints(Path(paths), steps)
    paths, steps = _in_step_order([Path(p) for p in paths], steps)
    if len(paths) < window + 1:
        raise ValueError(
            f"a window of W={window} updates needs at least {window + 1} checkpoints, got {len(paths)}; "
            "pass more checkpoints or a smaller window"
        )
    if "interval" in monitor_kwargs:
        raise ValueError("interval does not apply to checkpoints: pass every n-th path instead")

    wanted = None if names is None else list(names)
    first = _select(_hf_ties(load_state_dict(paths[0]), paths[0], wanted), wanted, paths[0])
    all_names = list(first)
    # The monitor is built on shape-only "meta" tensors (no memory), then given the loaded checkpoint
    # itself as its snapshot: W window rows plus one checkpoint are held, never a second copy. The meta
    # tensors share memory as the checkpoint's do, so the monitor merges tied names as it does online.
    monitor = SpectralMonitor(_shape_only(first), window=window, storage_device="cpu", **monitor_kwargs)
    names = list(monitor._win.layout.names)
    monitor._win.snapshot([first[n] for n in names], copy=False)
    del first

    records = []
    try:
        for path, step in zip(paths[1:], steps[1:], strict=True):
            state = _select(_hf_ties(load_state_dict(path), path, wanted), wanted, path)
            if set(state) != set(all_names):
                missing = sorted(set(all_names) - set(state))[:5]
                extra = sorted(set(state) - set(all_names))[:5]
                raise ValueError(
                    f"{path} does not hold the same tensors as {paths[0]}: missing {missing}, extra {extra}. "
                    "All checkpoints must come from the same model."
                )
            for name, shape in zip(names, monitor._win.layout.shapes, strict=True):
                if tuple(state[name].shape) != shape:
                    raise ValueError(
                        f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, {paths[0]} has {shape}. "
                        "All checkpoints must come from the same model."
                    )
            merged = count_once(list(state.items())).merged
            if merged != monitor.merged:
                raise ValueError(
                    f"{path} ties tensors differently from {paths[0]}: names sharing memory (left out -> kept) "
                    f"{merged} here, {monitor.merged} there. All checkpoints must come from the same model, "
                    "saved the same way."
                )
            monitor.step_count = step
            record = monitor._observe([state[n] for n in names], copy=False, metrics={})
            if record is not None:
                records.append(record)
    finally:
        monitor.close()
    return records


def _folder_checkpoints(folder: Path, steps: Sequence[int] | None) -> tuple[list[Path], list[int]]:
    """The checkpoints of a run's folder, in step order, with their steps."""
    from spectral_edge.tracking.checkpoint_folder import find_checkpoints

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


def _step_in_name(name: str) -> int | None:
    """The step a file or folder name gives (see :func:`step_from_path`), or None."""
    worded = _STEP_WORD.findall(name)
    if worded:
        return int(worded[-1])
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def _checkpoint_folder(path: Path) -> Path | None:
    """The folder that is one checkpoint (HF ``checkpoint-N/``): ``path`` itself, or the folder of a file
    with a checkpoint folder's standard name; None for other files."""
    if path.is_dir():
        return path
    if path.name in CHECKPOINT_FILES or path.name in SHARD_INDEX_FILES:
        return path.parent
    return None


def _trainer_state_step(folder: Path) -> int | None:
    """``global_step`` of ``folder/trainer_state.json`` (HF Trainer), or None if there is none to read."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def _hf_config(path: Path) -> dict[str, Any] | None:
    folder = _checkpoint_folder(path)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _hf_ties(state: dict[str, torch.Tensor], path: Path, wanted: list[str] | None) -> dict[str, torch.Tensor]:
    """Tie the embeddings of an HF checkpoint folder as the model does, so that they are counted once.

    HF ties the output embedding (and T5's encoder/decoder token embeddings) to the input embedding unless
    ``tie_word_embeddings`` is false. A safetensors file keeps one copy, so a tied name that ``wanted``
    asks for is missing: it is read as the input embedding. A file that keeps both as separate, equal
    copies has them made one tensor. Without ``config.json`` (not an HF folder) nothing is changed.
    """
    config = _hf_config(path)
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


def _shape_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Shape-only "meta" copies of ``state``'s tensors that share memory as its tensors do: one meta
    storage per storage, each tensor at its own offset and strides in it."""
    storages: dict[tuple[str, int], torch.UntypedStorage] = {}
    out = {}
    for name, t in state.items():
        if t.numel() == 0:  # no memory to share
            out[name] = torch.empty_like(t, device="meta")
            continue
        real = t.untyped_storage()
        key = (str(t.device), real.data_ptr())
        if key not in storages:
            storages[key] = torch.UntypedStorage(real.nbytes(), device="meta")
        meta = torch.empty(0, dtype=t.dtype, device="meta")
        out[name] = meta.set_(storages[key], t.storage_offset(), t.shape, t.stride())
    return out


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
