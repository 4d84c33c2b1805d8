"""`qassure certify CONFIG --target T`: the certificate alone (no bit-exact check, memory check or artifact).

Writes `model_float.tflite`, `model_int8.tflite` (the files certified) and `certificate.json` into --out
(default build/<config>/<target>.certify/). Exit 0 pass, 1 refuted/unknown, 2 bad input, 3 soundness
violation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from toolchain.cli._common import (
    BRANCHING_HELP,
    MAX_BOXES_HELP,
    MAX_WORK_HELP,
    METHOD_HELP,
    SCHEDULER_HELP,
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
    out: Path | None = typer.Option(None, "--out",
                                    help="Output directory (default build/<config>/<target>.certify)."),
    json_out: bool = typer.Option(False, "--json", help="Print the certificate as one JSON object."),
) -> None:
    """Certify max |float − int8| over the config's region for one target."""
    from toolchain.certify.parallel import available_cpus, peak_memory_bytes
    from toolchain.config import load_config
    from toolchain.emit.artifact import certificate_dict, write_certify_outputs
    from toolchain.errors import EXIT_FAIL, EXIT_PASS
    from toolchain.gate.run import certify_models, check_scheduler_answers, make_models
    from toolchain.targets import load_target

    check_method(method)
    check_branching(branching)
    check_scheduler(scheduler)
    cfg = load_config(config)
    tgt = load_target(target)
    check_scheduler_answers(cfg, scheduler)
    out_dir = out if out is not None else Path("build") / cfg.name / f"{tgt.name}.certify"
    tmp_dir = tempfile.TemporaryDirectory(prefix="qassure-certify-")
    with tmp_dir as tmp, progress_display(not json_out) as progress:
        progress(f"preparing models for {cfg.name}")
        models = make_models(cfg, tgt, Path(tmp))
        t0 = time.perf_counter()
        cert = certify_models(cfg, tgt, models.pair, method=method, time_limit=time_limit,
                              max_boxes=max_boxes, max_work=max_work, branching=branching,
                              workers=workers or available_cpus(),
                              scheduler=scheduler,
                              progress=progress)
        seconds = time.perf_counter() - t0
        path = write_certify_outputs(out_dir, cert, models.pair)
    if json_out:
        emit_json(certificate_dict(cert))
    else:
        for o in cert.outputs:
            say(f"output {o.index}: witnessed {o.lower:.6g} ≤ max error ≤ {o.upper:.6g} certified "
                f"(budget {cert.budget[o.index]:.6g})")
        for note in cert.notes:
            say(f"note: {note}")
        say(f"certificate: {path}")
        peak = peak_memory_bytes() / 2**20
        result(f"{cert.verdict}: bound {cert.bound:.6g} ({cert.method}, {seconds:.1f} s, "
               f"peak memory {peak:.0f} MB)")
    raise typer.Exit(EXIT_PASS if cert.verdict == "pass" else EXIT_FAIL)
