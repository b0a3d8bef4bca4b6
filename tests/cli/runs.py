"""Real runs and checkpoint folders for the view commands' tests, written by the library itself."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from spectral_edge import SpectralMonitor

WINDOW = 4
N_STEPS = 40
#: Evaluations logged by write_run: test accuracy first reaches 0.95 at step 30, its best is at step 35.
TEST_ACC = {5: 0.1, 10: 0.2, 15: 0.3, 20: 0.5, 25: 0.94, 30: 0.96, 35: 0.99, 40: 0.97}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


def drift_updates(model: nn.Module, n_steps: int, seed: int = 1):
    """Apply n_steps updates to ``model`` in place, yielding each step after its update.

    Updates are isotropic noise, except on steps 13–26 where one fixed direction dominates: with W = 4 the
    monitor sees the gap open (step 17), the regime change and the gap collapse again (step 34).
    """
    g = torch.Generator().manual_seed(seed)
    direction = {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()}
    for step in range(1, n_steps + 1):
        drift = 3.0 if 13 <= step <= 26 else 0.0
        with torch.no_grad():
            for name, p in model.named_parameters():
                p += 0.01 * (torch.randn(p.shape, generator=g) + drift * direction[name])
        yield step


def write_run(
    path: Path,
    *,
    n_steps: int = N_STEPS,
    seed: int = 1,
    evals: bool = True,
    pause: float = 0.0,
    on_step: Callable[[int], None] | None = None,
) -> SpectralMonitor:
    """A real monitored run (W = 4, η = 0.01) in a run store at ``path``; evaluations every 5 steps."""
    model = tiny_model()
    with SpectralMonitor(model, window=WINDOW, lr=0.01, store=path) as mon:
        for step in drift_updates(model, n_steps, seed):
            mon.step(loss=1.0 / step)
            if evals and step % 5 == 0:
                mon.log_eval(step, test_acc=TEST_ACC[step], test_loss=1.0 / step)
            if on_step is not None:
                on_step(step)
            if pause:
                time.sleep(pause)
    return mon


def write_empty_run(path: Path) -> None:
    """A half-written run: the monitor has written its config, but fewer than W updates came in."""
    model = tiny_model()
    with SpectralMonitor(model, window=WINDOW, lr=0.01, store=path) as mon:
        for _ in drift_updates(model, WINDOW - 2):
            mon.step()


def write_checkpoints(folder: Path, fmt: str, steps: list[int], *, seed: int = 1) -> list[Path]:
    """Checkpoints of the drift trajectory at ``steps`` (one update per step), in one of the layouts:

    ``hf``: ``checkpoint-<step>/model.safetensors`` (plus the optimizer, RNG and trainer files HF Trainer
    writes beside it); ``hf-bin``: ``checkpoint-<step>/pytorch_model.bin``; ``pt``: ``step_<step>.pt`` state
    dicts nested under ``state_dict``; ``safetensors``: ``model_<step>.safetensors``.
    Returns the paths analyze_checkpoints takes, in step order.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    wanted = set(steps)
    paths = []
    for step in itertools.chain([0], drift_updates(model, max(steps), seed)):  # lazily: one state at a time
        if step not in wanted:
            continue
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        if fmt in ("hf", "hf-bin"):
            path = folder / f"checkpoint-{step}"
            path.mkdir()
            if fmt == "hf":
                save_file(state, str(path / "model.safetensors"))
            else:
                torch.save(state, path / "pytorch_model.bin")
            torch.save({"state": {}}, path / "optimizer.pt")
            torch.save({"seed": 0}, path / "rng_state.pth")
            (path / "trainer_state.json").write_text("{}")
        elif fmt == "pt":
            path = folder / f"step_{step}.pt"
            torch.save({"state_dict": state, "global_step": step}, path)
        elif fmt == "safetensors":
            path = folder / f"model_{step}.safetensors"
            save_file(state, str(path))
        else:
            raise AssertionError(fmt)
        paths.append(path)
    return paths
