"""`qassure run CONFIG --target T`: the pre-flash gate (what `make certify` calls)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import (
    BRANCHING_HELP,
    MAX_BOXES_HELP,
    MAX_WORK_HELP,
    METHOD_HELP,
    SCHEDULER_HELP,
    SETTINGS,
    TIME_LIMIT_HELP,
    WORKERS_HELP,
    check_branching,
    check_method,
    check_scheduler,
    emit_json,
    progress_display,
    result,
    say,
)


def command(
    config: Path = typer.Argument(..., help="Config YAML (configs/NAME.yaml)."),
    target: str = typer.Option(..., "--target", "-t", help="Target profile name or YAML file."),
    method: str = typer.Option("auto", "--method", help=METHOD_HELP),
    max_boxes: int | None = typer.Option(None, "--max-boxes", min=1, help=MAX_BOXES_HELP),
    max_work: float | None = typer.Option(None, "--max-work", min=1.0, help=MAX_WORK_HELP),
    branching: str | None = typer.Option(None, "--branching", help=BRANCHING_HELP),
    time_limit: float | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
    out: Path = typer.Option(Path("build"), "--out", help="Root of build/<config>/<target>/."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the summary."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the verdict line."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also the certify engines' status lines."),
) -> None:
    """Quantize, check bit-exactness, certify, check memory, emit; exit 0 only when everything passed."""
    from toolchain.certify.parallel import available_cpus
    from toolchain.gate.run import gate_summary_lines, run_gate

    if quiet:
        SETTINGS.verbosity = -1
    elif verbose:
        SETTINGS.verbosity = 1
    check_method(method)
    check_branching(branching)
    check_scheduler(scheduler)
    show = not json_out and SETTINGS.verbosity >= 0
    with progress_display(show) as progress:
        res = run_gate(config, target, out_root=out, method=method, time_limit=time_limit,
                       max_boxes=max_boxes, max_work=max_work, branching=branching,
                       workers=workers or available_cpus(),
                       scheduler=scheduler,
                       progress=progress)
    if json_out:
        emit_json(res.to_dict())
    else:
        lines = gate_summary_lines(res)
        for line in lines[:-1]:
            say(line)
        result(lines[-1])
    raise typer.Exit(res.exit_code)
