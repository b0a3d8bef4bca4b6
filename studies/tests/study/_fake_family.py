"""A tiny family that follows the study's run contract, for the suite and summary tests (seconds, CPU).

A 2-layer MLP learns the sign of a fixed linear function of 4 Gaussian inputs. With weight decay the
test labels come from the same function and the run "groks" (test accuracy ≥ 0.95) within a few dozen
steps; with ``weight_decay=0`` the test labels are noise, so the run never does: the control, by
construction. Real training, real :class:`StudyRecorder`, real run stores and checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from spectral_edge_studies.study.common import StudyRecorder

FAMILY = "fake"


@dataclass(frozen=True)
class Config:
    task: str = "sign"  # "sign"; "crash" raises at step 3; "die" kills its process at step 3
    seed: int = 42  # seeds data, init and batches
    weight_decay: float = 1.0  # AdamW ω; 0 makes the test labels noise
    max_steps: int = 60  # optimizer steps
    eval_every: int = 10  # steps between evaluations
    monitor_interval: int = 1  # steps between monitor snapshots
    hidden: int = 16  # MLP width
    lr: float = 1e-2  # AdamW learning rate
    step_delay: float = 0.0  # seconds slept per step, so tests can kill a suite mid-run


PRESETS = {
    "smoke": Config(),
    "quick": Config(step_delay=0.03),
    "full": Config(max_steps=120, step_delay=0.03),
}
TASKS = ("sign",)
SEEDS = (42, 137)


def variants(suite: str) -> list[Config]:
    base = PRESETS[suite]
    return [replace(base, task=t, seed=s, weight_decay=w) for t in TASKS for s in SEEDS for w in (1.0, 0.0)]


def run(config: Config, run_dir, *, progress=None):
    gen = torch.Generator().manual_seed(config.seed)
    teacher = torch.randn(4, generator=gen)
    x_train, x_test = torch.randn(256, 4, generator=gen), torch.randn(256, 4, generator=gen)
    y_train = (x_train @ teacher > 0).long()
    y_test = (x_test @ teacher > 0).long()
    if config.weight_decay == 0:
        y_test = torch.randint(0, 2, (256,), generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = nn.Sequential(nn.Linear(4, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def metrics() -> dict[str, float]:
        with torch.no_grad():
            out = {}
            for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
                logits = model(x)
                out[f"{split}_loss"] = float(F.cross_entropy(logits, y))
                out[f"{split}_acc"] = float((logits.argmax(-1) == y).float().mean())
            return out

    recorder = StudyRecorder(model, optimizer, run_dir, family=FAMILY, config=config, n_checkpoints=4)
    with recorder:
        recorder.evaluate(0, metrics(), attention_query_weights=[model[0].weight])
        step = 0
        for step in range(1, config.max_steps + 1):
            if config.task in ("crash", "die") and step == 3:
                if config.task == "crash":
                    raise RuntimeError("the fake family crashed on purpose")
                os._exit(3)
            loss = F.cross_entropy(model(x_train), y_train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.after_step(step, loss.item())
            if step % config.eval_every == 0 or step == config.max_steps:
                recorder.evaluate(step, metrics(), attention_query_weights=[model[0].weight])
            if config.step_delay:
                time.sleep(config.step_delay)
            if progress is not None:
                progress(step, config.max_steps)
        return recorder.finish(steps=step)
