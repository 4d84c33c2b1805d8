"""Emit standalone C99 inference for a prepared int8 graph.

`generate` writes the text of `model.h` / `model.c`: const weights, biases, multipliers and shifts
taken from the same `prepare` records the executor and the certify engines read (each op's
`Op.emit_c`, toolchain/ops/, declares its constants and one call into `qassure_kernels`); a
static arena laid out by `toolchain.inspect.memory_estimate`; no malloc. `emit_c` writes them next
to a copy of the kernel library and, when the cross-compiler is here, sizes the image
(toolchain.emit.firmware).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import ops
from toolchain.arith import INT32_MAX, INT32_MIN
from toolchain.emit import firmware
from toolchain.emit.firmware import ImageSize
from toolchain.errors import ModelError, QassureError, UnsupportedOpError
from toolchain.inspect import memory_estimate
from toolchain.targets import Target
from toolchain.tflite import ir, prepare, reader
from toolchain.tflite import prepare as P


@dataclass(frozen=True)
class EmitResult:
    out_dir: Path
    files: tuple[str, ...]  # names written into out_dir
    model: str
    target: str
    rounding: str
    ops: int
    input_size: int  # bytes of the int8 input vector
    output_size: int  # bytes of the int8 output vector (all outputs, concatenated)
    arena_bytes: int  # static activation arena
    const_bytes: int  # weights, biases, multipliers, shifts, tables, params
    image: ImageSize | None  # size of the bare-metal image for the target's core, when it was built
    elf: Path | None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"], d["elf"] = str(self.out_dir), None if self.elf is None else str(self.elf)
        d["image"] = None if self.image is None else self.image.as_dict()
        return d


# --------------------------------------------------------------------------------------------- C text


def _i32(v: int) -> str:
    """An int32 C literal (INT32_MIN spelled so that no int64 constant is negated)."""
    v = int(v)
    if not INT32_MIN <= v <= INT32_MAX:
        raise QassureError(f"value {v} does not fit int32")
    return "(-2147483647 - 1)" if v == INT32_MIN else str(v)


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


class Writer:
    """Collects the file-scope constants and the body of model_invoke for one graph (the
    toolchain.ops.base.CWriter each op's emit_c writes into)."""

    def __init__(self, pg: P.PreparedGraph, offsets: dict[int, int]):
        self.pg = pg
        self.graph = pg.graph
        self.offsets = offsets
        self.decls: list[str] = []
        self.body: list[str] = []
        self.const_bytes = 0
        self._const_tensors: dict[int, str] = {}

    # -- constants
    def array(self, name: str, ctype: str, values, per_line: int = 16) -> str:
        vals = [int(v) for v in np.asarray(values).reshape(-1)]
        if not vals:
            vals = [0]
        self.const_bytes += len(vals) * (1 if ctype == "int8_t" else 4)
        rows = [", ".join(_i32(v) for v in vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
        body = ",\n    ".join(rows)
        self.decls.append(f"static const {ctype} {name}[{len(vals)}] = {{\n    {body}\n}};")
        return name

    def params(self, ctype: str, name: str, fields: dict[str, Any]) -> str:
        def value(v: Any) -> str:
            if isinstance(v, str):
                return v
            if isinstance(v, (list, tuple)):
                return "{" + ", ".join(value(x) for x in v) + "}"
            return _i32(v)

        inits = ",\n    ".join(f".{k} = {value(v)}" for k, v in fields.items())
        self.decls.append(f"static const {ctype} {name} = {{\n    {inits}\n}};")
        return name

    # -- tensors
    def ref(self, t: int) -> str:
        """A C expression for tensor t's int8 data: an arena slice or a const array."""
        tensor = self.graph.tensor(t)
        if tensor.is_const:
            if tensor.dtype != "int8":
                raise UnsupportedOpError(f"constant tensor '{tensor.name}' is {tensor.dtype}, not int8",
                                         self.graph.path)
            if t not in self._const_tensors:
                self._const_tensors[t] = self.array(f"tensor{t}", "int8_t", tensor.data)
            return self._const_tensors[t]
        return f"QA_T({self.offsets[t]})"

    def call(self, op: ir.Operator, text: str) -> None:
        out = self.graph.tensor(op.outputs[0])
        label = _comment(out.name.split(";")[0])  # converters join fused names with ';'
        self.body.append(f"    /* {op.describe()} -> tensor {out.index} '{label}' {list(out.shape)} */")
        self.body.append(f"    {text}")


def _check_int8(graph: ir.Graph) -> None:
    if len(graph.inputs) != 1:
        raise ModelError(f"emit-c supports one input tensor, this graph has {len(graph.inputs)}", graph.path)
    for role, t in [("input", graph.inputs[0])] + [("output", o) for o in graph.outputs]:
        tensor = graph.tensor(t)
        if tensor.dtype != "int8":
            raise ModelError(f"graph {role} '{tensor.name}' is {tensor.dtype}: emit-c needs a model with "
                             "int8 input and output (quantize with int8 I/O, e.g. `qassure quantize`)",
                             graph.path)
    for op in graph.operators:
        for t in (*op.inputs, *op.outputs):
            if t >= 0 and not graph.tensor(t).is_const and graph.tensor(t).dtype != "int8":
                raise UnsupportedOpError(f"{op.describe()}: tensor '{graph.tensor(t).name}' is "
                                         f"{graph.tensor(t).dtype}; emit-c runs int8 graphs", graph.path)


def generate(pg: P.PreparedGraph) -> tuple[str, str, dict[str, int]]:
    """(model.h, model.c, sizes) for a prepared int8 graph."""
    graph = pg.graph
    _check_int8(graph)
    mem = memory_estimate(graph)
    w = Writer(pg, mem.offsets)
    for op, p in zip(graph.operators, pg.ops, strict=True):
        ops.lookup(op.opcode, op.index, graph.path).emit_c(w, op, p)
    in_t = graph.inputs[0]
    in_size = graph.tensor(in_t).size
    out_size = sum(graph.tensor(t).size for t in graph.outputs)
    arena = max(mem.arena_bytes, 4)
    single = 1 if pg.rounding == "single" else 0
    name = graph.name
    build_note = (f"Build every file (model.c, qassure_kernels.c) with -DQA_SINGLE_ROUNDING={single}; "
                  "a mismatch fails to link.")
    header = f"""/* Generated by qassure emit-c from {_comment(name)}. Do not edit.
 * int8 inference with the qassure kernels (TFLite Micro reference arithmetic), {pg.rounding} rounding.
 * {build_note} */
#ifndef QASSURE_MODEL_H
#define QASSURE_MODEL_H

#include <stdint.h>

#define QA_MODEL_SINGLE_ROUNDING {single}
#define QA_MODEL_INPUT_SIZE {in_size}  /* int8 elements of the input {list(graph.tensor(in_t).shape)} */
#define QA_MODEL_OUTPUT_SIZE {out_size} /* int8 elements of the output(s), concatenated in graph order */
#define QA_MODEL_ARENA_BYTES {arena}

#ifdef __cplusplus
extern "C" {{
#endif

/* One inference: `in` holds QA_MODEL_INPUT_SIZE int8 values (NHWC, row major), `out` receives
 * QA_MODEL_OUTPUT_SIZE. Returns 0, or -1 when an AVERAGE_POOL window has no element (TFLM fails
 * too), or -2 when the kernels were built with another rounding. Not reentrant (static arena). */
int model_invoke(const int8_t *in, int8_t *out);

#ifdef __cplusplus
}}
#endif
#endif
"""
    copy_out = []
    pos = 0
    for t in graph.outputs:
        n = graph.tensor(t).size
        copy_out.append(f"    memcpy(out + {pos}, {w.ref(t)}, {n});")
        pos += n
    decls = "\n\n".join(w.decls)
    summary = f"{_comment(name)}: {len(graph.operators)} ops, {pg.rounding} rounding,"
    source = f"""/* Generated by qassure emit-c from {summary}
 * constants {w.const_bytes} B, arena {arena} B (tensor offsets by lifetime, TFLM greedy planner). */
#include <string.h>

#include "model.h"
#include "qassure_kernels.h"

#if QA_SINGLE_ROUNDING != QA_MODEL_SINGLE_ROUNDING
#error "compile with -DQA_SINGLE_ROUNDING={single}: this model was prepared for {pg.rounding} rounding"
#endif

static union {{
    int32_t align;
    int8_t bytes[QA_MODEL_ARENA_BYTES];
}} qa_arena;
#define QA_T(offset) (qa_arena.bytes + (offset))

{decls}

int model_invoke(const int8_t *in, int8_t *out)
{{
    if (QA_KERNELS_ROUNDING_GUARD != 1) return -2;
    memcpy({w.ref(in_t)}, in, QA_MODEL_INPUT_SIZE);
{chr(10).join(w.body)}
{chr(10).join(copy_out)}
    return 0;
}}
"""
    return header, source, {"input_size": in_size, "output_size": out_size, "arena_bytes": arena,
                            "const_bytes": w.const_bytes}


# --------------------------------------------------------------------------------------------- emit


def emit_c(int8_tflite: Path | str, out_dir: Path | str, target: Target, *, build: bool = True,
           prepared: P.PreparedGraph | None = None) -> EmitResult:
    """Write model.h, model.c and the kernel library into out_dir; size the image when the
    cross-compiler is here. `prepared`: the graph of `int8_tflite` already prepared for
    `target.rounding` (then not read again)."""
    path = Path(int8_tflite)
    graph = reader.read_model(path) if prepared is None else prepared.graph
    if graph.input.dtype != "int8":
        raise ModelError(f"input '{graph.input.name}' is {graph.input.dtype}: emit-c needs a full-int8 model "
                         "with int8 input (a float-input graph would quantize on the device in float)", path)
    pg = prepare.prepare(graph, target.rounding) if prepared is None else prepared
    header, source, sizes = generate(pg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.h").write_text(header, encoding="utf-8")
    (out / "model.c").write_text(source, encoding="utf-8")
    for f in firmware.KERNEL_FILES:
        shutil.copyfile(firmware.RUNTIME_DIR / f, out / f)
    notes: list[str] = []
    image = elf = None
    if build:
        if not firmware.arm_core(target):
            notes.append(f"no image size: core {target.cpu_core} is not built by arm-none-eabi-gcc")
        elif missing := [t for t in (firmware.CC, firmware.SIZE) if shutil.which(t) is None]:
            notes.append(f"no image size: {', '.join(missing)} not on PATH (make setup-firmware)")
        else:
            elf = firmware.build_image(out, target, target.rounding)
            image = firmware.image_size(elf, target)
    return EmitResult(out, ("model.h", "model.c", *firmware.KERNEL_FILES), graph.name, target.name,
                      target.rounding,
                      len(graph.operators), sizes["input_size"], sizes["output_size"], sizes["arena_bytes"],
                      sizes["const_bytes"], image, elf, tuple(notes))
