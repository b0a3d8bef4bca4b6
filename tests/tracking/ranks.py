"""Run a function in several processes joined by torch.distributed (gloo on loopback), for the tests.

Each process initialises the default group from a file in a temporary folder, runs ``worker(rank, world,
folder, **kwargs)`` and leaves its return value (or the error it raised, as text) in ``rank<r>.pkl``.
With ``init=False`` the process group is left to the worker (a training framework): each process gets the
environment torchrun gives (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE).
A process still running ``limit`` seconds after the start is killed and reported as such, so a hang fails the test instead of
stalling the suite.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def run_ranks(
    worker: Callable[..., Any],
    world: int,
    folder: Path,
    *,
    limit: float = 180.0,
    init: bool = True,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """``worker`` on ``world`` processes; per rank {"result": ...} or {"error": text} or {"exitcode": n}."""
    ctx = mp.get_context("spawn")
    # The file rendezvous of the default group, or (init=False) a free port for the worker's own.
    rendezvous = str(folder / "init") if init else str(_free_port())
    procs = [
        ctx.Process(target=_entry, args=(worker, rank, world, rendezvous, init, str(folder), kwargs))
        for rank in range(world)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(limit - (time.monotonic() - started), 0.1))
    outcomes = []
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join()
            outcomes.append({"exitcode": "killed after the timeout"})
            continue
        path = folder / f"rank{rank}.pkl"
        outcomes.append(pickle.loads(path.read_bytes()) if path.exists() else {"exitcode": p.exitcode})
    return outcomes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    worker: Callable[..., Any], rank: int, world: int, rendezvous: str, init: bool, folder: str, kwargs: dict
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if init:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    else:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=rendezvous,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
        )
    try:
        out: dict[str, Any] = {"result": worker(rank, world, Path(folder), **kwargs)}
    except BaseException as exc:  # reported to the test, which names it
        out = {"error": "".join(traceback.format_exception(exc)), "type": type(exc).__name__}
    (Path(folder) / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
