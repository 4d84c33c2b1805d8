"""What every command shares: verbosity, output helpers, one-line errors, the certify options' checks,
the progress display."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer

from toolchain.certify.engines import METHODS  # the registry (cheap: engines load their maths when they run)
from toolchain.errors import QassureError

METHOD_HELP = "Certify engine: " + " | ".join(METHODS) + " (docs/reference.md says what each does)."
MAX_BOXES_HELP = "Work budget: boxes bounded per region, deterministic (default: the config's max_boxes)."
MAX_WORK_HELP = ("Work budget: multiply-adds per region of branch and bound, deterministic (default: the "
                 "config's max_work).")
BRANCHING_HELP = ("What branch and bound splits: input | neuron (phases of crossed ReLU/clamp kinks, for "
                  "regions with many inputs) | auto (whichever took more off the bound when both were last "
                  "tried); default: the config's branching, else input.")
TIME_LIMIT_HELP = ("Safety net in seconds (default: the config's time_limit); when it bites, the verdict is "
                   "unknown and the certificate says so.")
WORKERS_HELP = ("Processes for input splitting (default: every CPU this process may use); ignored when a "
                "Dask scheduler is given.")
SCHEDULER_HELP = ("Dask scheduler tcp://HOST:PORT (or tls://): the certify engines' jobs run on that cluster "
                  "and the certificate is the same as on this machine; `local` runs here even when the "
                  "config names one (default: the config's scheduler key, else this machine).")


@dataclass
class Settings:
    verbosity: int = 0  # -1 quiet, 0 normal, 1 verbose


SETTINGS = Settings()


def say(line: str = "", level: int = 0) -> None:
    """A line on stdout, shown when the verbosity is at least `level` (-q shows only level -1)."""
    if SETTINGS.verbosity >= level:
        typer.echo(line)


def result(line: str) -> None:
    """A final result line: printed even with -q."""
    typer.echo(line)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def one_line(message: object) -> str:
    return " ".join(str(message).split("\n")).strip()


def error(message: object) -> None:
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def check_method(method: str) -> None:
    """--method must name a certify engine (exit 2 otherwise)."""
    if method not in METHODS:
        raise QassureError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def check_branching(branching: str | None) -> None:
    """--branching must name a kind of split (exit 2 otherwise)."""
    from toolchain.certify.settings import BRANCHINGS

    if branching is not None and branching not in BRANCHINGS:
        raise QassureError(f"--branching {branching!r}: expected one of {', '.join(BRANCHINGS)}")


def check_scheduler(scheduler: str | None) -> None:
    """--scheduler must be `local` or a tcp:// / tls:// address (exit 2 otherwise); whether it answers is
    checked before the first slow step."""
    from toolchain.config import LOCAL_SCHEDULER, SCHEDULER_FORM, is_scheduler_address

    if scheduler is not None and scheduler != LOCAL_SCHEDULER and not is_scheduler_address(scheduler):
        raise QassureError(f"--scheduler {scheduler!r}: expected {SCHEDULER_FORM} (port 1..65535) or "
                           f"{LOCAL_SCHEDULER}")


@contextlib.contextmanager
def progress_display(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich spinner on stderr showing the current step; yields the progress callback."""
    if not enabled:
        yield lambda _msg: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:  # CI logs: one plain line per step
        yield lambda msg: console.print(f"… {msg}", highlight=False, markup=False)
        return
    with console.status("starting", spinner="dots") as status:
        yield lambda msg: status.update(msg)
