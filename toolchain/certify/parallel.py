"""Where the engines' work runs: in this process, a local process pool, or a Dask cluster.

Every job runs with BLAS on one thread (toolchain.blas): the workers are the parallelism, and
OpenBLAS's own spinning threads on top of them cost more than half the throughput on 2 cores.

Every unit of work is a pure function `fn(problem, job) -> result` of the `Problem` (the merged
network, the prepared int8 graph and the settings, identical for every job of a search) and a
small job. A `Runner` maps such a function over a list of jobs and returns the results *in the
order of the jobs*, so a search gives the same answer whichever runner does the work and however
many workers it has. The problem reaches each worker once: a pool's initializer registers it
under a token (searches may run side by side), a Dask cluster gets it broadcast to every worker.
`distributed` is imported only when a scheduler address is given.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from toolchain import blas
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


def run_one(fn: Callable[[Problem, Any], Any], problem: Problem, job: Any) -> Any:
    """One job, as every runner runs it: BLAS on one thread (the runner's workers are the parallelism)."""
    with blas.limit_threads(1):
        return fn(problem, job)


class LocalRunner:
    """Everything in this process, one job after another (BLAS on one thread, as in every runner)."""

    workers = 1

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def map(self, fn, jobs):
        return [run_one(fn, self.problem, job) for job in jobs]

    def close(self) -> None:
        return None


# Problems registered in a pool worker process, by token (a worker may serve several searches).
_REGISTERED: dict[str, Problem] = {}
_TOKENS = itertools.count()


def _register(token: str, problem: Problem) -> None:
    _REGISTERED[token] = problem


def _call(token: str, fn, job):
    return run_one(fn, _REGISTERED[token], job)


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


CONNECT_TIMEOUT = 10.0  # seconds: the scheduler's TCP port, then Dask's handshake, then a first worker


class ClusterError(QassureError):
    """The Dask cluster cannot be used: `distributed` missing, scheduler unreachable, no workers, a
    scheduler or workers running other code than this process (the certificate would depend on where
    jobs ran), or the cluster failing under the search (exit 2, one line, like any bad input)."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("a Dask scheduler was given but the `distributed` package is not installed: "
                           "pip install 'distributed>=2024.1'") from None
    return distributed


def _split_address(address: str) -> tuple[str, str, int]:
    """tcp://HOST:PORT or tls://HOST:PORT (HOST may be [IPv6]) -> (scheme, host, port)."""
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not host or not port.isdigit():
        raise ClusterError(f"not a Dask scheduler address: {address!r} (expected tcp://HOST:PORT)")
    return scheme, host.strip("[]"), int(port)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Fail fast, in one line, when no Dask scheduler answers at `address`: refused, unknown host, no
    answer, or (tcp://) a server that does not open with Dask's handshake. A Dask server writes its
    handshake first; Dask's own client would wait for it forever (e.g. on the dashboard's HTTP port),
    and on a refused port retry until its timeout. A TLS server waits for the client, so tls://
    addresses are only checked for a listening port. Also ClusterError when `distributed` is missing."""
    import socket

    _distributed()
    scheme, host, port = _split_address(address)
    seconds = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        sock = socket.create_connection((host, port), timeout=seconds)
    except (OSError, OverflowError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {_reason(exc)}") from None
    with sock:
        if scheme != "tcp":
            return
        try:
            first = sock.recv(1)
        except TimeoutError:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: the server there sent no Dask "
                               f"handshake within {seconds:g} s (a scheduler listens on 8786 by default, its "
                               "dashboard on 8787)") from None
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {_reason(exc)}") from None
        if not first:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: the server there closed the "
                               "connection without Dask's handshake")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def code_identity() -> dict[str, str]:
    """What a job's result depends on besides its arguments: qassure's sources and the numeric
    packages. Every Dask worker must report the same as the client process."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    import toolchain

    root = Path(toolchain.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    identity = {"qassure": f"{toolchain.__version__} (sources {digest.hexdigest()[:12]})"}
    for package in ("numpy", "scipy", "numba", "highspy"):
        try:
            identity[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            identity[package] = "not installed"
    return identity


# One qassure job at a time per worker process, however many threads the worker has: a job already
# keeps a core busy (BLAS, the compiled relaxation step), and the prepared ops' constants are built
# lazily on first use without a guard.
_JOB_LOCK = threading.Lock()


def _run_job(fn, problem: Problem, job):
    with _JOB_LOCK:
        return run_one(fn, problem, job)


class DaskRunner:
    """A Dask distributed cluster at `address` (tcp://HOST:PORT or tls://HOST:PORT).

    Connecting checks that the scheduler and the workers run the same qassure and numeric packages (else
    the certificate would depend on where each job ran); the problem is then broadcast to every worker
    once, each job is one task (pure=False: never merged with another search's), and results are
    gathered in job order. A job's exception is re-raised here with its own type (SoundnessViolation,
    QassureError); a cluster that fails under the search (scheduler lost, a job killing its workers)
    is one ClusterError. While the runner is open, Dask's own log lines in this process are dropped
    (they carry tracebacks; what matters reaches the caller as an exception)."""

    def __init__(self, problem: Problem, address: str) -> None:
        distributed = _distributed()
        probe_scheduler(address)
        self.address = address
        self._hush = _DaskLogs()
        try:
            self.client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, TypeError, ValueError) as exc:  # TypeError: tls:// without TLS config
            self._hush.restore()
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {_reason(exc)}") from None
        try:
            self.workers = _check_workers(self.client, address)
            [self.problem] = self.client.scatter([problem], broadcast=True, hash=False)
        except (OSError, TimeoutError) as exc:  # the scheduler went away while we set up
            self.close()
            raise ClusterError(f"lost the Dask scheduler at {address}: {_reason(exc)}") from None
        except BaseException:
            self.close()
            raise

    def map(self, fn, jobs):
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        futures = [self.client.submit(_run_job, fn, self.problem, job, pure=False) for job in jobs]
        try:
            return self.client.gather(futures)
        except (FutureCancelledError, CommClosedError, KilledWorker) as exc:  # the cluster, not the job
            raise ClusterError(f"the Dask cluster at {self.address} failed during the search: "
                               f"{_reason(exc)}") from None
        except BaseException:
            self.client.cancel(futures)  # the rest of the batch would only load the cluster
            raise

    def close(self) -> None:
        """Close the client (its scattered problem and futures are released on the cluster); a cluster
        already gone is no reason to hide the error on its way up."""
        try:
            self.client.close(timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        finally:
            self._hush.restore()


_DASK_LOGGERS = ("distributed", "tornado", "bokeh")  # the loggers `distributed` gives stderr handlers


class _DaskLogs(logging.Filter):
    """Drops every record of Dask's (and its tornado's) stderr handlers in this process until restore()."""

    def __init__(self) -> None:
        super().__init__()
        loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
                   if name.split(".")[0] in _DASK_LOGGERS and isinstance(lg, logging.Logger)]
        self.handlers = [h for lg in loggers for h in lg.handlers]
        for h in self.handlers:
            h.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        return False

    def restore(self) -> None:
        for h in self.handlers:
            h.removeFilter(self)


def _check_workers(client, address: str) -> int:
    """The number of worker processes, once at least one is there and the scheduler (it unpickles the
    tasks) and every worker run this process's code."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        raise ClusterError(f"the Dask scheduler at {address} has no workers (start some with "
                           f"`dask worker {address}`)") from None
    here = code_identity()
    try:
        reports = {f"scheduler {address}": client.run_on_scheduler(code_identity)}
        reports.update((f"worker {w}", r) for w, r in sorted(client.run(code_identity).items()))
    except Exception as exc:  # e.g. toolchain is not installed there, or is another version
        raise ClusterError(f"the Dask cluster at {address} cannot run this qassure ({_reason(exc)}): install "
                           "the same qassure on the scheduler and every worker") from None
    for where, there in reports.items():
        for name, version in here.items():
            if there.get(name) != version:
                raise ClusterError(f"the Dask {where} runs {name} {there.get(name)} but this process runs "
                                   f"{version}: install the same versions on the scheduler and every worker")
    return len(reports) - 1


# A worker process before any problem: the interpreter, numpy/scipy/numba/highspy and the compiled
# relaxation kernels (measured ~250 MB resident on x86-64 Linux; rounded up).
WORKER_BASE_BYTES = 400 * 2**20


def problem_bytes(problem: Problem) -> int:
    """What one process holding `problem` and running one job may keep resident: the problem itself
    (its pickle, twice: the unpickled arrays and the prepared ops' lazily built constants), one block
    of objective rows with its temporaries (four float64 arrays of `block_entries`), one executor
    chunk of input cells (int32 activations of the widest layer) and the process's base."""
    import pickle

    pickled = len(pickle.dumps(problem, protocol=pickle.HIGHEST_PROTOCOL))
    widest = max(node.size for node in problem.net.nodes)
    cells = problem.settings.cell_chunk * widest * 4 * 3
    return WORKER_BASE_BYTES + 2 * pickled + 4 * 8 * problem.settings.block_entries + cells


def workers_within(memory_bytes: float, per_worker: int, requested: int) -> int:
    """How many pool workers fit beside the main process (itself about one worker's size) in
    `memory_bytes`: at most `requested`, at least one (the search must run somewhere)."""
    fit = int(memory_bytes // per_worker) - 1
    return max(1, min(requested, fit))


def peak_memory_bytes() -> int:
    """Peak resident memory of this process plus the largest finished or waited-for child
    (Linux getrusage; ru_maxrss is in KiB there). An upper estimate of one certify run's peak when
    its pool workers are alive one at a time per core and exited before this is read."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int((own + children) * 1024)


def make_runner(problem: Problem, workers: int = 1, scheduler: str | None = None,
                say: Callable[[str], None] | None = None) -> Runner:
    """A Dask runner when a scheduler address is given, else a process pool for workers > 1 (as many as
    fit in `settings.memory_bytes` with the main process), else local."""
    if scheduler:
        return DaskRunner(problem, scheduler)
    if workers > 1:
        per_worker = problem_bytes(problem)
        fit = workers_within(problem.settings.memory_bytes, per_worker, workers)
        if fit < workers and say is not None:
            say(f"{fit} worker(s) instead of {workers}: each needs about {per_worker / 2**20:.0f} MB and "
                f"memory_bytes is {problem.settings.memory_bytes / 2**30:.3g} GiB")
        if fit > 1:
            return PoolRunner(problem, fit)
    return LocalRunner(problem)
