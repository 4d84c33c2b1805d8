"""`qassure check-bitexact MODEL.tflite`: executor vs. tflite-micro (or the emulated board)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from toolchain.cli._common import emit_json, result, say


class Against(str, Enum):
    tflm = "tflm"
    qemu = "qemu"


def command(
    model: Path = typer.Argument(..., help="A full-int8 .tflite file."),
    target: str = typer.Option("cortex-m4", "--target", "-t", help="Target profile (sets the rounding)."),
    samples: int = typer.Option(100, "--samples", "-n", min=1, help="Number of random int8 inputs."),
    against: Against = typer.Option(Against.tflm, "--against", help="Reference: tflm or qemu."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the inputs."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run random inputs through the executor and the reference; exit 0 only if all are bit-exact."""
    from toolchain.bitexact import check_bitexact, format_report
    from toolchain.targets import load_target

    tgt = load_target(target)
    report = check_bitexact(model, tgt, samples=samples, seed=seed, against=against.value)
    if json_out:
        emit_json(report.as_dict())
    else:
        lines = format_report(report)
        for line in lines[:-1]:
            say(line)
        result(lines[-1])
    if not report.ok:
        raise typer.Exit(1)
