"""The checkpoints of a training run in one folder, ordered by step, for :func:`analyze_checkpoints`.

Two layouts are recognised, side by side in the folder (not in its subfolders' subfolders):

* folders with a step number in their name holding one checkpoint file, as HF Trainer writes them
  (``checkpoint-500/model.safetensors`` or ``pytorch_model.bin``; also ``model.pt``, ``model.pth``,
  ``checkpoint.pt``), or a sharded checkpoint (``model.safetensors.index.json`` beside
  ``model-00001-of-00002.safetensors`` …);
* files ``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt``, ``*.safetensors`` with a step number in their name
  (``ckpt_step_400.pt``, ``model_000400.safetensors``, ``epoch=0-step=400.ckpt``); optimizer, scheduler,
  RNG-state and trainer files are left out.

The step is the ``global_step`` of a checkpoint folder's ``trainer_state.json`` when it has one, else the
one its name gives (the number after ``step``, ``checkpoint``, ``ckpt`` or ``iter``, else the last
integer; see :func:`~spectral_edge.tracking.checkpoints.step_from_path`). Everything else in the folder
(logs, configs, tokenizers) is ignored.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from spectral_edge._imports import require
from spectral_edge.tracking.checkpoints import (
    BUFFER_SUFFIXES,
    CHECKPOINT_FILES,
    SHARD_INDEX_FILES,
    _step_in_name,
    _trainer_state_step,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "SHARD_INDEX_FILES",
    "CheckpointEntry",
    "check_readable",
    "find_checkpoints",
    "read_sharded_state_dict",
]

#: Suffixes of single-file checkpoints.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
# Files saved beside a model that are not the model: optimizer and scheduler states, RNG states, trainer
# arguments (HF Trainer writes all of these into each checkpoint-N, some scripts write them side by side).
_NOT_MODEL = re.compile(
    r"^(optim|optimizer|scheduler|lr_scheduler|rng_state|training_args|trainer_state|scaler)"
)
_SHARD = re.compile(r"-\d+-of-\d+$")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint found in a folder."""

    step: int  # trainer_state.json's global_step, or the step its name gives
    path: Path  # the file, or the folder holding it (what analyze_checkpoints takes)
    layout: Literal["file", "folder", "sharded"]  # a file; a folder with one file; a folder of shards
    files: tuple[Path, ...]  # the file(s) holding the tensors: one, or every shard


def find_checkpoints(folder: str | os.PathLike[str]) -> list[CheckpointEntry]:
    """The checkpoints in ``folder`` (see the module docstring for the layouts), ordered by step.

    Raises:
        FileNotFoundError: ``folder`` does not exist, or holds no checkpoint (the message says what was
            looked for and what was passed over).
        ValueError: ``folder`` is a file or is itself one checkpoint, or two checkpoints name the same step.

    Example:
        >>> import tempfile, torch
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for step in (200, 100):
        ...     torch.save({"w": torch.zeros(2)}, f"{tmp.name}/ckpt_step_{step}.pt")
        >>> [(c.step, c.path.name) for c in find_checkpoints(tmp.name)]
        [(100, 'ckpt_step_100.pt'), (200, 'ckpt_step_200.pt')]
        >>> tmp.cleanup()
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; pass the folder that holds the checkpoints, one per step")
    own = [name for name in (*CHECKPOINT_FILES, *SHARD_INDEX_FILES) if (folder / name).is_file()]
    found: list[CheckpointEntry] = []
    passed_over: list[str] = []
    for entry in sorted(folder.iterdir()):
        checkpoint = _checkpoint_dir(entry) if entry.is_dir() else _checkpoint_file(entry)
        if checkpoint is not None:
            found.append(checkpoint)
        elif entry.suffix in CHECKPOINT_SUFFIXES and not _NOT_MODEL.match(entry.name):
            passed_over.append(entry.name)
    if not found:
        if own:
            raise ValueError(
                f"{folder} is one checkpoint (it holds {own[0]}), not a folder of checkpoints: pass the "
                "folder that holds the checkpoint-N folders"
            )
        skipped = f"; passed over (no step number in the name, or a shard): {', '.join(passed_over[:5])}"
        raise FileNotFoundError(
            f"no checkpoints found in {folder}: looked for folders named with a step (checkpoint-<step>/) "
            f"holding {' or '.join(CHECKPOINT_FILES[:2])}, and files *{', *'.join(CHECKPOINT_SUFFIXES)} with a "
            f"step number in their name{skipped if passed_over else ''}"
        )
    found.sort(key=lambda c: c.step)
    clashes = [(a, b) for a, b in zip(found, found[1:], strict=False) if a.step == b.step]
    if clashes:
        a, b = clashes[0]
        raise ValueError(
            f"two checkpoints in {folder} name step {a.step}: {a.path.name} and {b.path.name}; keep one "
            "model checkpoint per step in the folder (move the others out)"
        )
    return found


def check_readable(checkpoint: CheckpointEntry) -> None:
    """Cheap checks that the files of ``checkpoint`` are complete, reading headers only, never the tensors.

    A ``.safetensors`` header must parse; a ``torch.save`` zip archive must have its central directory
    (a truncated file has none); a legacy ``torch.save`` file must at least start as a pickle.

    Raises:
        FileNotFoundError: a file is missing (a shard the index names, say).
        ValueError: a file is truncated or is not a checkpoint; the message names it.
    """
    for path in checkpoint.files:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        try:
            if path.suffix == ".safetensors":
                safe_open = require("safetensors", "Reading .safetensors checkpoints").safe_open
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            else:
                with path.open("rb") as fh:
                    head = fh.read(2)
                if head == b"PK":  # torch.save's zip format: a truncated file has no central directory
                    with zipfile.ZipFile(path):
                        pass
                elif not head.startswith(b"\x80"):  # nor the legacy format, a pickle
                    raise ValueError("neither a zip archive nor a pickle: not a torch.save file")
        except Exception as exc:
            raise ValueError(
                f"cannot read the checkpoint {path} ({type(exc).__name__}: {exc}); it may be truncated, or still "
                "being written: move it out of the folder or wait for it to be complete"
            ) from exc


def read_sharded_state_dict(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a sharded checkpoint folder, read from every shard its index names.

    As :func:`~spectral_edge.tracking.checkpoints.load_state_dict` for one file: BatchNorm running
    statistics are left out, tensors are on the CPU.

    Raises:
        FileNotFoundError: the folder has no shard index, or a shard the index names is missing.
        ValueError: a tensor the index maps to a shard is not in it.
    """
    folder = Path(folder)
    index = next((folder / n for n in SHARD_INDEX_FILES if (folder / n).is_file()), None)
    if index is None:
        raise FileNotFoundError(f"no shard index in {folder}: looked for {', '.join(SHARD_INDEX_FILES)}")
    weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    tensors: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(weight_map.values()):  # each shard once, in index order
        path = folder / shard
        if not path.is_file():
            raise FileNotFoundError(f"{index.name} names the shard {shard}, which is missing from {folder}")
        if path.suffix == ".safetensors":
            tensors.update(
                require("safetensors.torch", "Reading .safetensors checkpoints").load_file(str(path))
            )
        else:
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{folder}: the index maps {missing[:5]} to shards that do not hold them")
    return {
        name: tensors[name]
        for name in weight_map
        if tensors[name].is_floating_point() and not name.endswith(BUFFER_SUFFIXES)
    }


def _checkpoint_dir(path: Path) -> CheckpointEntry | None:
    # A folder is a checkpoint only if its name gives a step (a "final/" or "best/" copy beside the
    # checkpoint-N folders is not one); HF Trainer's own count, when it wrote one, is the step.
    step = _step_in_name(path.name)
    if step is None:
        return None
    counted = _trainer_state_step(path)
    step = counted if counted is not None else step
    single = next((path / n for n in CHECKPOINT_FILES if (path / n).is_file()), None)
    if single is not None:
        return CheckpointEntry(step=step, path=path, layout="folder", files=(single,))
    index = next((path / n for n in SHARD_INDEX_FILES if (path / n).is_file()), None)
    if index is None:
        return None
    try:
        shards = tuple(path / s for s in dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{index} is not a shard index (a JSON object with a 'weight_map'): {exc}") from exc
    return CheckpointEntry(step=step, path=path, layout="sharded", files=shards)


def _checkpoint_file(path: Path) -> CheckpointEntry | None:
    if path.suffix not in CHECKPOINT_SUFFIXES or _NOT_MODEL.match(path.name) or _SHARD.search(path.stem):
        return None
    step = _step_in_name(path.stem)
    if step is None:
        return None
    return CheckpointEntry(step=step, path=path, layout="file", files=(path,))
