"""Run independent calls as Ray tasks, on this machine or on a cluster (the ``[ray]`` extra).

:func:`run_tasks` is the one place PruneGym talks to Ray: it connects (:func:`connect`), sends every call as
a task and returns the results in the order of the calls. :func:`agents.compare.compare` uses it with
``ray=`` (``prunegym compare ... --ray [ADDRESS]``) to run its (policy, budget, seed) cells in parallel.

Ray is imported only here and only when a call needs it; without the extra, :func:`connect` raises an
``ImportError`` that names the fix (``pip install "prunegym[ray]"``).

Addresses are Ray's (``ray.init(address=...)``): ``"local"`` starts a new Ray instance on this machine (with
all its cores), ``"auto"`` connects to the cluster this machine belongs to (started with ``ray start``), and
``"HOST:PORT"`` or ``"ray://HOST:PORT"`` connects to that cluster's head node. When Ray is already
initialised in this process (e.g. ``ray.init(num_cpus=2)`` before the call), that instance is used as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from tqdm import tqdm

__all__ = ["connect", "run_tasks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_INSTALL_HINT = 'Ray is not installed; install the extra: pip install "prunegym[ray]" (or pip install "ray>=2.9")'


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return ray


@contextmanager
def connect(address: str) -> Iterator[Any]:
    """Connect to Ray for the duration of a ``with`` block; yields the ``ray`` module.

    Only a connection opened here is closed at the end (``ray.shutdown``), so a caller's own ``ray.init``
    stays usable after the block.

    Args:
        address: ``"local"`` (a new instance on this machine), ``"auto"`` (the running cluster this machine
            joined) or a head node's ``"HOST:PORT"`` / ``"ray://HOST:PORT"`` (see the module docstring).
            Ignored when Ray is already initialised in this process: that instance is used.

    Raises:
        ImportError: Ray is not installed (the message names the extra to install).
        ConnectionError: ``"auto"`` or an address where no cluster answers (Ray's error).
    """
    ray = _ray()
    if ray.is_initialized():
        log.info("using the Ray instance already initialised in this process (address %r not used)", address)
        yield ray
        return
    ray.init(address=address)
    try:
        yield ray
    finally:
        ray.shutdown()


def _call(fn: Callable[..., T], threads: int, *args: Any) -> T:
    """What each task runs: ``fn(*args)`` with ``threads`` torch intra-op threads (the task's CPUs)."""
    torch.set_num_threads(threads)
    return fn(*args)


def run_tasks(
    fn: Callable[..., T],
    calls: Sequence[tuple[Any, ...]],
    *,
    address: str,
    shared: Sequence[Any] = (),
    num_cpus: int = 1,
    num_gpus: float = 0.0,
    progress: bool = False,
    desc: str = "tasks",
) -> list[T]:
    """``[fn(*shared, *call) for call in calls]``, each call a Ray task; results in the order of ``calls``.

    ``fn`` and the arguments are pickled to the workers: ``fn`` must be a module-level function importable
    there (PruneGym installed on every node), and paths among the arguments must name the same files on
    every node. ``shared`` is put into Ray's object store once and passed to every task by reference.

    Args:
        fn: The function each task calls.
        calls: One argument tuple per task.
        address: Where to run (:func:`connect`).
        shared: Arguments that come first in every call, sent once.
        num_cpus: CPUs each task reserves; torch uses as many intra-op threads in it.
        num_gpus: GPUs each task reserves (Ray sets ``CUDA_VISIBLE_DEVICES`` so ``"cuda"`` is the task's GPU).
        progress: Show a progress bar over finished tasks.
        desc: Its label.

    Returns:
        ``fn``'s results, one per call, in the order of ``calls``.

    Raises:
        ImportError: Ray is not installed.
        Exception: The exception of the first task to fail (Ray's ``RayTaskError``, which is also an instance
            of the exception the task raised and carries its traceback); the tasks not finished yet are
            cancelled. Nothing is dropped silently.
    """
    with connect(address) as ray:
        remote = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus)
        shared_refs = [ray.put(value) for value in shared]
        refs = [remote.remote(fn, int(num_cpus), *shared_refs, *call) for call in calls]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, T] = {}
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, disable=not progress) as bar:
            while pending:
                (ref,), pending = ray.wait(pending, num_returns=1)
                try:
                    results[index[ref]] = ray.get(ref)
                except Exception:
                    for other in pending:
                        ray.cancel(other)
                    raise
                bar.update(1)
        return [results[i] for i in range(len(refs))]
