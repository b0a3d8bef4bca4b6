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
integer; see :func:`step_from_path`). Everything else in the folder (logs, configs, tokenizers) is ignored.

This module reads checkpoints (:func:`load_state_dict`, :func:`step_from_path`, the folder scan);
:mod:`~spectral_edge.tracking.checkpoints` analyses them and imports from here, never the other way.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from spectral_edge._imports import require
from spectral_edge.errors import MissingExtraError

__all__ = [
    "BUFFER_SUFFIXES",
    "CHECKPOINT_FILES",
    "CHECKPOINT_SUFFIXES",
    "SHARD_INDEX_FILES",
    "CheckpointEntry",
    "check_readable",
    "find_checkpoints",
    "load_state_dict",
    "read_sharded_state_dict",
    "step_from_path",
    "trainer_state_lrs",
]

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

    As :func:`load_state_dict` for one file: BatchNorm running
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
    step = step_in_name(path.name)
    if step is None:
        return None
    counted = trainer_state_step(path)
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
    step = step_in_name(path.stem)
    if step is None:
        return None
    return CheckpointEntry(step=step, path=path, layout="file", files=(path,))


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
    folder = checkpoint_folder_of(path)
    if folder is not None:
        step = trainer_state_step(folder)
        if step is not None:
            return step
    step = step_in_name(path.name if path.is_dir() else path.stem)
    if step is None and folder is not None and folder != path:
        step = step_in_name(folder.name)
    return step


def step_in_name(name: str) -> int | None:
    """The step a file or folder name gives (see :func:`step_from_path`), or None.

    Example:
        >>> step_in_name("epoch=3-step=9000"), step_in_name("model_000400"), step_in_name("final")
        (9000, 400, None)
    """
    worded = _STEP_WORD.findall(name)
    if worded:
        return int(worded[-1])
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def checkpoint_folder_of(path: Path) -> Path | None:
    """The folder that is one checkpoint (HF ``checkpoint-N/``): ``path`` itself, or the folder of a file
    with a checkpoint folder's standard name; None for other files."""
    if path.is_dir():
        return path
    if path.name in CHECKPOINT_FILES or path.name in SHARD_INDEX_FILES:
        return path.parent
    return None


def trainer_state_step(folder: Path) -> int | None:
    """``global_step`` of ``folder/trainer_state.json`` (HF Trainer), or None if there is none to read."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def trainer_state_lrs(folder: Path) -> dict[int, float]:
    """The learning-rate schedule an HF Trainer logged: ``step -> learning_rate`` from the ``log_history``
    of ``folder/trainer_state.json``; empty if there is none to read.

    The Trainer logs, at step s, the rate that step s used (the scheduler moves after the log). The
    ``trainer_state.json`` of a run's last checkpoint holds every entry logged up to it.

    Example:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> history = [{"step": 10, "learning_rate": 1e-3, "loss": 2.5}, {"step": 10, "eval_loss": 2.6},
        ...            {"step": 20, "learning_rate": 5e-4}]
        >>> _ = (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        >>> trainer_state_lrs(folder)
        {10: 0.001, 20: 0.0005}
        >>> import shutil; shutil.rmtree(folder)
    """
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}
    history = state.get("log_history") if isinstance(state, dict) else None
    out: dict[int, float] = {}
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict):
            continue
        step, lr = entry.get("step"), entry.get("learning_rate")
        if isinstance(step, int) and not isinstance(step, bool) and isinstance(lr, (int, float)):
            if not isinstance(lr, bool) and lr > 0 and lr == lr and lr != float("inf"):
                out[step] = float(lr)
    return dict(sorted(out.items()))


def hf_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the HF checkpoint folder ``path`` is (or is in), or None."""
    folder = checkpoint_folder_of(path)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
