"""`qassure inspect MODEL.tflite`: ops, shapes, quantization, multipliers and memory."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.cli._common import emit_json, say
from toolchain.inspect import TensorInfo, format_multipliers, inspect_graph


def _q(t: TensorInfo) -> str:
    if t.scale is None:
        return "-" if t.dtype == "float32" else "per-channel"
    return f"{t.scale:.6g}/{t.zero_point}"


def command(
    model: Path = typer.Argument(..., help="A .tflite file (int8)."),
    target: str = typer.Option("cortex-m4", "--target", "-t", help="Target profile (sets the rounding)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show each op with shapes, scale/zero point, (M, shift) multipliers, weights and memory."""
    from toolchain.bitexact import require_int8
    from toolchain.targets import load_target
    from toolchain.tflite import reader

    tgt = load_target(target)
    graph = reader.read_model(model)
    require_int8(graph)
    info = inspect_graph(graph, tgt.rounding, file_bytes=Path(model).stat().st_size)
    if json_out:
        emit_json(info.as_dict() | {"target": tgt.name})
        return
    for label, ts in (("input", info.inputs), ("output", info.outputs)):
        for t in ts:
            say(f"{label}: {t.name} {list(t.shape)} {t.dtype} scale/zp {_q(t)}")
    rows = [("#", "op", "act", "output shape", "out scale/zp", "weights", "multipliers (M, shift)")]
    for op in info.ops:
        pc = "" if op.per_channel is None else (" per-ch" if op.per_channel else " per-tensor")
        rows.append((str(op.index), op.opcode, op.activation if op.activation != "NONE" else "",
                     str(list(op.output.shape)), _q(op.output),
                     (f"{op.weight_bytes} B{pc}" if op.weight_bytes else ""),
                     format_multipliers(op.multipliers)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    m = info.memory
    say(f"weights (constants): {m.weight_bytes} B   file: {m.file_bytes} B   "
        f"activation arena (greedy, tensor lifetimes): {m.arena_bytes} B   "
        f"peak live: {m.peak_live_bytes} B", -1)
    say(f"target {tgt.name}: flash {tgt.flash_bytes} B, RAM {tgt.ram_bytes} B", 1)
