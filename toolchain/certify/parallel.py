"""Where the engines' work runs: in this process, a local process pool, or a Dask cluster.

Every unit of work is a pure function `fn(problem, job) -> result` of the `Problem` (the merged
network, the prepared int8 graph and the settings, identical for every job of a search) and a
small job. A `Runner` maps such a function over a list of jobs and returns the results *in the
order of the jobs*, so a search gives the same answer whichever runner does the work and however
many workers it has. The problem reaches each worker once: a pool's initializer registers it
under a token (searches may run side by side), a Dask cluster gets it scattered to every worker.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from toolchain.certify.settings import Settings
from toolchain.errors import QassureError
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph


@dataclass(frozen=True)
class Problem:
    """What every job of one certify call shares."""

    net: MergedNet
    pg: PreparedGraph
    settings: Settings


class Runner(Protocol):
    """Maps fn(problem, job) over jobs, results in job order."""

    workers: int

    def map(self, fn: Callable[[Problem, Any], Any], jobs: Sequence[Any]) -> list[Any]: ...

    def close(self) -> None: ...


def available_cpus() -> int:
    """CPUs this process may run on (the default number of workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LocalRunner:
    """Everything in this process, one job after another."""

    workers = 1

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def map(self, fn, jobs):
        return [fn(self.problem, job) for job in jobs]

    def close(self) -> None:
        return None


# Problems registered in a pool worker process, by token (a worker may serve several searches).
_REGISTERED: dict[str, Problem] = {}
_TOKENS = itertools.count()


def _register(token: str, problem: Problem) -> None:
    _REGISTERED[token] = problem


def _call(token: str, fn, job):
    return fn(_REGISTERED[token], job)


class PoolRunner:
    """A local process pool (concurrent.futures); the problem is sent once per worker."""

    def __init__(self, problem: Problem, workers: int) -> None:
        self.workers = workers
        self.token = f"{os.getpid()}-{next(_TOKENS)}"
        self.pool = ProcessPoolExecutor(workers, initializer=_register, initargs=(self.token, problem))

    def map(self, fn, jobs):
        futures = [self.pool.submit(_call, self.token, fn, job) for job in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class DaskRunner:
    """A Dask distributed cluster at `address` (tcp://HOST:PORT); the problem is scattered to every
    worker once and each job is one task."""

    def __init__(self, problem: Problem, address: str) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise QassureError("a scheduler address was given but Dask's `distributed` package is not "
                               "installed (pip install distributed)") from None
        try:
            self.client = Client(address, timeout=30, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise QassureError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self.workers = max(1, sum(self.client.nthreads().values()))
        [self.problem] = self.client.scatter([problem], broadcast=True)

    def map(self, fn, jobs):
        futures = [self.client.submit(fn, self.problem, job, pure=False) for job in jobs]
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()


def make_runner(problem: Problem, workers: int = 1, scheduler: str | None = None) -> Runner:
    """A Dask runner when a scheduler address is given, else a process pool for workers > 1, else local."""
    if scheduler:
        return DaskRunner(problem, scheduler)
    if workers > 1:
        return PoolRunner(problem, workers)
    return LocalRunner(problem)
