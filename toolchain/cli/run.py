"""`qassure run CONFIG --target T`: the pre-flash gate (what `make certify` calls)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from toolchain.cli._common import SETTINGS, emit_json, result, say


@contextlib.contextmanager
def progress_display(enabled: bool) -> Iterator:
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


def command(
    config: Path = typer.Argument(..., help="Config YAML (configs/NAME.yaml)."),
    target: str = typer.Option(..., "--target", "-t", help="Target profile name or YAML file."),
    method: str = typer.Option("auto", "--method", help="auto | interval | differential | milp | split."),
    time_limit: float = typer.Option(None, "--time-limit", help="Certify time limit in seconds (default: config)."),
    workers: int = typer.Option(None, "--workers", min=1,
                                help="Processes for input splitting (default: every CPU this process may use)."),
    out: Path = typer.Option(Path("build"), "--out", help="Root of build/<config>/<target>/."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the summary."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the verdict line."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also the certify engines' status lines."),
) -> None:
    """Quantize, check bit-exactness, certify, check memory, emit; exit 0 only when everything passed."""
    from toolchain.certify.split import available_cpus
    from toolchain.cli.certify import check_method
    from toolchain.pipeline import gate_summary_lines, run_gate

    if quiet:
        SETTINGS.verbosity = -1
    elif verbose:
        SETTINGS.verbosity = 1
    check_method(method)
    show = not json_out and SETTINGS.verbosity >= 0
    with progress_display(show) as progress:
        res = run_gate(config, target, out_root=out, method=method, time_limit=time_limit,
                       workers=workers or available_cpus(),
                       progress=progress)
    if json_out:
        emit_json(res.to_dict())
    else:
        lines = gate_summary_lines(res)
        for line in lines[:-1]:
            say(line)
        result(lines[-1])
    raise typer.Exit(res.exit_code)
