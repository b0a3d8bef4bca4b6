"""Offline analysis: the monitor's records from a sequence of saved checkpoints.

Each checkpoint is a parameter snapshot θ_t; consecutive checkpoints give the updates δ_t = θ_t − θ_{t−1}
(the paper's windows over checkpoints 200 steps apart). At any time the window (W updates) and the
previous checkpoint are held — W + 1 parameter vectors — plus the checkpoint being read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spectral_edge._imports import require
from spectral_edge.errors import MissingExtraError
from spectral_edge.tracking.monitor import SpectralMonitor
from spectral_edge.tracking.record import SpectralRecord

#: Keys under which training scripts commonly nest the model's state dict inside a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")
#: Suffixes of the buffers that torch modules update during training (BatchNorm running statistics).
#: They are not parameters, the online monitor does not see them, and they are left out offline too.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
#: File names looked for inside a checkpoint directory (HF Trainer's checkpoint-N layout among them).
#: The file a checkpoint folder (HF ``checkpoint-N/`` and the like) holds its weights in, by preference.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pt")


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
            from spectral_edge.tracking.checkpoint_folder import SHARD_INDEX_FILES, read_sharded_state_dict

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


def step_from_path(path: str | Path) -> int | None:
    """The training step a checkpoint path names: the last integer in its stem, or in its folder's name.

    Example:
        >>> step_from_path("run/checkpoint-1200/model.safetensors"), step_from_path("ckpt_step_400.pt")
        (1200, 400)
    """
    path = Path(path)
    for text in (path.stem, path.parent.name):
        numbers = re.findall(r"\d+", text)
        if numbers:
            return int(numbers[-1])
    return None


def analyze_checkpoints(
    paths: Iterable[str | Path],
    *,
    window: int = 10,
    steps: Sequence[int] | None = None,
    names: Iterable[str] | None = None,
    **monitor_kwargs: Any,
) -> list[SpectralRecord]:
    """Records from a sequence of checkpoints, as the online monitor would have produced them.

    Args:
        paths: checkpoint files or directories in training order (at least ``window + 1`` of them).
        window: W, updates per window.
        steps: the step of each checkpoint; default read from the paths (:func:`step_from_path`), or
            0, 1, 2, … when a path names none or the numbers read do not increase.
        names: the tensors to analyse (e.g. ``[n for n, p in model.named_parameters() if p.requires_grad]``
            to match an online monitor exactly); default every floating-point tensor but BatchNorm
            statistics.
        **monitor_kwargs: passed to :class:`SpectralMonitor` (``lr``, ``groups``, ``store``, …).

    Returns:
        One record per full window: ``len(paths) − window`` records.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < window + 1:
        raise ValueError(
            f"a window of W={window} updates needs at least {window + 1} checkpoints, got {len(paths)}; "
            "pass more checkpoints or a smaller window"
        )
    if steps is None:
        found = [step_from_path(p) for p in paths]
        increasing = all(s is not None for s in found) and all(
            a < b for a, b in zip(found, found[1:], strict=False)
        )
        steps = found if increasing else list(range(len(paths)))
    if len(steps) != len(paths):
        raise ValueError(f"got {len(steps)} steps for {len(paths)} checkpoints")
    if "interval" in monitor_kwargs:
        raise ValueError("interval does not apply to checkpoints: pass every n-th path instead")

    wanted = None if names is None else list(names)
    first = _select(load_state_dict(paths[0]), wanted, paths[0])
    # The monitor is built on shape-only "meta" tensors (no memory), then given the loaded checkpoint
    # itself as its snapshot: W window rows plus one checkpoint are held, never a second copy.
    shapes_only = {name: torch.empty_like(t, device="meta") for name, t in first.items()}
    monitor = SpectralMonitor(shapes_only, window=window, storage_device="cpu", **monitor_kwargs)
    names = list(monitor._win.layout.names)
    monitor._win.snapshot([first[n] for n in names], copy=False)
    del first

    records = []
    try:
        for path, step in zip(paths[1:], steps[1:], strict=True):
            state = _select(load_state_dict(path), wanted, path)
            if set(state) != set(names):
                missing = sorted(set(names) - set(state))[:5]
                extra = sorted(set(state) - set(names))[:5]
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
            monitor.step_count = int(step)
            record = monitor._observe([state[n] for n in names], copy=False, metrics={})
            if record is not None:
                records.append(record)
    finally:
        monitor.close()
    return records


def _select(state: dict[str, torch.Tensor], names: list[str] | None, path: Path) -> dict[str, torch.Tensor]:
    if names is None:
        return state
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"{path} has no tensor named {missing[:5]}; it holds {sorted(state)[:5]} …")
    return {n: state[n] for n in names}
