"""`qassure emit-c MODEL.tflite --target T --out DIR`: standalone C99 inference for the int8 graph."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import emit_json, result, say


def command(
    model: Path = typer.Argument(..., help="A full-int8 .tflite file (int8 input and output)."),
    target: str = typer.Option("cortex-m4", "--target", "-t",
                               help="Target profile (rounding, core, budget)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for model.h, model.c and the kernels."),
    no_build: bool = typer.Option(False, "--no-build", help="Do not build the image to measure its size."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write model.h / model.c (no malloc, static arena) and report the image size against the budget."""
    from toolchain.emit.c_codegen import emit_c
    from toolchain.targets import load_target

    tgt = load_target(target)
    res = emit_c(model, out, tgt, build=not no_build)
    if json_out:
        emit_json(res.as_dict())
    else:
        say(f"{res.model}: {res.ops} ops, {res.rounding} rounding, input {res.input_size} B, "
            f"output {res.output_size} B, constants {res.const_bytes:,} B, arena {res.arena_bytes:,} B")
        for note in res.notes:
            say(f"note: {note}")
        if res.image is not None:
            say(f"image ({tgt.cpu_core}, with start-up and runner): {res.image.line()}")
        result(f"wrote {', '.join(res.files)} to {res.out_dir}")
    if res.image is not None and not res.image.fits:
        raise typer.Exit(1)
