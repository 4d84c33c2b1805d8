"""`qassure targets`: the shipped target profiles."""

from __future__ import annotations

import typer

from toolchain.cli._common import emit_json, say
from toolchain.targets import list_targets


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB" if n >= 1024 * 1024 else f"{n / 1024:g} KiB"


def command(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the target profiles (targets/*.yaml)."""
    targets = list_targets()
    if json_out:
        emit_json([t.as_dict() for t in targets])
        return
    rows = [("name", "core", "kernels", "rounding", "per-ch", "flash", "RAM", "qemu")]
    rows += [(t.name, t.cpu_core, t.kernel_library, t.rounding, "yes" if t.per_channel else "no",
              _mib(t.flash_bytes), _mib(t.ram_bytes), t.qemu_machine or "-") for t in targets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), level=-1)
    for t in targets:
        say(f"{t.name}: {t.description}  [{t.cpu_flags}]", level=1)
