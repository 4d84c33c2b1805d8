"""What every command shares: verbosity, output helpers, one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer


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
