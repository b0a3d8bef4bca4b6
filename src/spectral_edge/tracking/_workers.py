"""Host threads that run the push loop of a CPU-resident window on every core.

Why: on the CPU the W dot products of a push go through BLAS ``sgemv``, which runs on one thread for a
W × chunk block, so a single-threaded push reads the window at one core's memory bandwidth while
``X.sum()`` (the floor of benchmarks/monitor_step.py) reads it with all of torch's intra-op threads. Giving
each thread a contiguous share of the chunks lets every core stream its share of the window: about 25%
less time per push at P = 10^7 on the 2-core development machine (benchmarks/monitor_step.py). It is
opt-in (``threads=``): in one measured demo run the training step around a pooled push was slower
(51 against 42 ms), and the fused kernel (``csrc/fused_push.cpp``), the default for float32 windows, already uses
torch's own threads.

Each worker thread runs torch with ONE intra-op thread, so the workers never nest OpenMP teams (nested
teams spin-wait against each other and are far slower than either alone). ``torch.set_num_threads`` sets
the calling thread's OpenMP setting, but also a process-wide default that torch hands to threads it
initialises later; the pool restores that default to the caller's value once its workers are set up, so
the training loop's own parallelism is unchanged.

The pools are shared by every window in the process (one per worker count) and are dropped in a child
process after ``fork`` (their threads do not exist there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def run_in_workers(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` concurrently, one per worker thread, and wait for all of them.

    Every task is waited for even when one fails (so no worker is still writing when the caller cleans
    up); the first failure is then raised.
    """
    pool = _pool(len(tasks))
    futures = [pool.submit(task) for task in tasks]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _pool(n_workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(n_workers)
        if pool is None:
            pool = _start_pool(n_workers)
            _pools[n_workers] = pool
        return pool


def _start_pool(n_workers: int) -> ThreadPoolExecutor:
    caller_threads = torch.get_num_threads()
    ready = threading.Barrier(n_workers + 1)

    def one_intra_op_thread() -> None:
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(
        n_workers, thread_name_prefix="spectral-edge-push", initializer=one_intra_op_thread
    )
    # Start every worker now (the executor starts them lazily, one per submit, while none is idle): the
    # barrier holds each one until all have set their thread count, so each submit starts a new thread.
    started = [pool.submit(lambda: None) for _ in range(n_workers)]
    ready.wait()
    for f in started:
        f.result()
    torch.set_num_threads(caller_threads)  # restore the process-wide default the workers overwrote
    return pool


def _forget_pools_in_child() -> None:
    global _lock
    _pools.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)
