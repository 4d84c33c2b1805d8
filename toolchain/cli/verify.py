"""`qassure verify-certificate DIR`: hashes, witness replay, sampling check of an artifact directory."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import emit_json, result, say


def command(
    directory: Path = typer.Argument(..., help="An artifact directory (build/<config>/<target>/)."),
    samples: int = typer.Option(200, "--samples", "-n", min=1, help="Random inputs per region."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Exit 0 only when every hash matches, the witness replays and no sampled error exceeds the bound."""
    from toolchain.verify import verify

    res = verify(directory, samples=samples)
    if json_out:
        emit_json(res.to_dict())
    else:
        for line in res.checked:
            say(f"ok    {line}")
        for line in res.problems:
            say(f"FAIL  {line}", level=-1)
        for line in res.soundness:
            say(f"SOUNDNESS VIOLATION  {line}", level=-1)
        result(f"verify {'OK' if res.exit_code == 0 else 'FAILED'}: {directory}")
    raise typer.Exit(res.exit_code)
