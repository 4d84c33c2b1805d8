"""Emit standalone C99 inference for an int8 graph, and run it on an emulated Cortex-M.

`emit_c` writes `model.h` / `model.c` (const weights, biases, multipliers and shifts taken from
the same `prepare` records the executor and the certify engines read; a static arena laid out by
`toolchain.inspect.memory_estimate`; one call into `qassure_kernels` per op; no malloc) next to a
copy of the kernel library. `QemuOracle` builds that C with `arm-none-eabi-gcc` for the target's
core into a bare-metal image (cached by content hash under `.cache/firmware/`), boots it ONCE per
batch on the target's QEMU board, and feeds the vectors through semihosting files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ModelError, QassureError, UnsupportedOpError
from toolchain.inspect import memory_estimate
from toolchain.targets import Target
from toolchain.tflite import ir, prepare, reader
from toolchain.tflite import prepare as P

RUNTIME_DIR = Path(__file__).resolve().parent / "c_runtime"
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "firmware"
KERNEL_FILES = ("qassure_kernels.h", "qassure_kernels.c")
BOARD_SOURCES = ("startup_m4.c", "semihost.c", "model_runner.c")
BOARD_HEADERS = ("semihost.h",)
LINKER_TEMPLATE = RUNTIME_DIR / "mps2_an386.ld"

CC, SIZE, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"
# -std=c99 and -ffp-contract=off as the kernel tests build; the kernels use no floating point.
COMMON_FLAGS = ("-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-ffp-contract=off",
                "-Wall", "-Wextra", "-Werror")


@dataclass(frozen=True)
class Board:
    """Where a QEMU board has memory for code (the vector table sits at flash_origin) and data."""

    flash_origin: int
    flash_length: int
    ram_origin: int
    ram_length: int


KIB, MIB = 1024, 1024 * 1024
BOARDS: dict[str, Board] = {
    "mps2-an386": Board(0x00000000, 4 * MIB, 0x20000000, 4 * MIB),  # Cortex-M4: SSRAM1 / SSRAM2-3
    "mps2-an500": Board(0x00000000, 4 * MIB, 0x20000000, 4 * MIB),  # Cortex-M7: same MPS2 map
    "mps3-an547": Board(0x00000000, 512 * KIB, 0x21000000, 4 * MIB),  # Cortex-M55: ITCM / SRAM 2
}


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageSize:
    """`arm-none-eabi-size` of a linked image against the target's budget."""

    text: int
    data: int
    bss: int
    flash_budget: int
    ram_budget: int

    @property
    def flash(self) -> int:
        return self.text + self.data  # code + const data + the .data load image

    @property
    def ram(self) -> int:
        return self.data + self.bss  # initialised data + arena + I/O buffers (stack not counted)

    @property
    def fits(self) -> bool:
        return self.flash <= self.flash_budget and self.ram <= self.ram_budget

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flash": self.flash, "ram": self.ram, "fits": self.fits}

    def line(self) -> str:
        return (f"text {self.text:,} B, data {self.data:,} B, bss {self.bss:,} B: flash {self.flash:,} of "
                f"{self.flash_budget:,} B ({100.0 * self.flash / self.flash_budget:.1f}%), RAM {self.ram:,} of "
                f"{self.ram_budget:,} B ({100.0 * self.ram / self.ram_budget:.1f}%)"
                + ("" if self.fits else " -- OVER BUDGET"))


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
    v = int(v)
    if not -(2**31) <= v < 2**31:
        raise QassureError(f"value {v} does not fit int32")
    return "(-2147483647 - 1)" if v == -(2**31) else str(v)


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


class _Writer:
    """Collects the file-scope constants and the body of model_invoke for one graph."""

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
                raise UnsupportedOpError(f"constant tensor '{tensor.name}' is {tensor.dtype}, not int8", self.graph.path)
            if t not in self._const_tensors:
                self._const_tensors[t] = self.array(f"tensor{t}", "int8_t", tensor.data)
            return self._const_tensors[t]
        return f"QA_T({self.offsets[t]})"

    def call(self, op: ir.Operator, text: str) -> None:
        out = self.graph.tensor(op.outputs[0])
        label = _comment(out.name.split(";")[0])  # converters join fused names with ';'
        self.body.append(f"    /* {op.describe()} -> tensor {out.index} '{label}' {list(out.shape)} */")
        self.body.append(f"    {text}")


def _shape4(shape: tuple[int, ...], graph: ir.Graph, op: ir.Operator) -> list[int]:
    if len(shape) > 4:
        raise UnsupportedOpError(f"{op.describe()}: rank {len(shape)} > 4 is not supported by emit-c", graph.path)
    return [1] * (4 - len(shape)) + [int(d) for d in shape]


def _emit_op(w: _Writer, op: ir.Operator, p: P.Prepared) -> None:  # noqa: C901 - one branch per op, flat
    g = w.graph
    k = op.index
    name = f"op{k}"
    x_t = op.inputs[0]
    x = g.tensor(x_t)
    y = g.tensor(op.outputs[0])
    X, Y = w.ref(x_t), w.ref(op.outputs[0])
    if isinstance(p, (P.FullyConnected, P.Conv)):
        r = p.requant
        n_out = int(r.multiplier.size)
        mult = w.array(f"{name}_multiplier", "int32_t", r.multiplier, 8)
        shift = w.array(f"{name}_shift", "int32_t", r.shift, 8)
        filt = w.array(f"{name}_filter", "int8_t", p.weights)
        bias = w.array(f"{name}_bias", "int32_t", p.bias, 8) if np.any(p.bias != 0) else "0"
        common = {"input_offset": p.input_offset, "output_offset": r.output_offset, "act_min": r.act_min,
                  "act_max": r.act_max}
        if isinstance(p, P.FullyConnected):
            n_in = int(p.weights.shape[1])
            prm = w.params("qa_fc_params", f"{name}_params", {
                **common, "filter_offset": 0, "batches": x.size // n_in, "accum_depth": n_in, "output_depth": n_out,
                "per_channel": 1, "output_multiplier": mult, "output_shift": shift})
            w.call(op, f"qa_fully_connected(&{prm}, {X}, {filt}, {bias}, {Y});")
            return
        b, h, wd, c = x.shape
        kh, kw = int(p.weights.shape[1]), int(p.weights.shape[2])
        prm = w.params("qa_conv_params", f"{name}_params", {
            **common, "stride_h": p.stride[0], "stride_w": p.stride[1], "dilation_h": p.dilation[0],
            "dilation_w": p.dilation[1], "pad_h": p.padding[0], "pad_w": p.padding[1], "batches": b, "input_h": h,
            "input_w": wd, "input_c": c, "filter_h": kh, "filter_w": kw,
            "filter_c": 0 if p.depthwise else int(p.weights.shape[3]), "depth_multiplier": p.depth_multiplier,
            "output_h": p.out_hw[0], "output_w": p.out_hw[1], "output_c": n_out,
            "output_multiplier": mult, "output_shift": shift})
        fn = "qa_depthwise_conv2d" if p.depthwise else "qa_conv2d"
        w.call(op, f"{fn}(&{prm}, {X}, {filt}, {bias}, {Y});")
        return
    if isinstance(p, P.Pool):
        b, h, wd, c = x.shape
        prm = w.params("qa_pool_params", f"{name}_params", {
            "stride_h": p.stride[0], "stride_w": p.stride[1], "filter_h": p.filter[0], "filter_w": p.filter[1],
            "pad_h": p.padding[0], "pad_w": p.padding[1], "act_min": p.act_min, "act_max": p.act_max,
            "batches": b, "input_h": h, "input_w": wd, "channels": c, "output_h": p.out_hw[0],
            "output_w": p.out_hw[1]})
        if p.average:
            w.call(op, f"if (qa_average_pool(&{prm}, {X}, {Y}) != 0) return -1;")
        else:
            w.call(op, f"qa_max_pool(&{prm}, {X}, {Y});")
        return
    if isinstance(p, (P.Add, P.Mul)):
        x2 = g.tensor(op.inputs[1])
        if not (x.size == x2.size == y.size):
            raise UnsupportedOpError(f"{op.describe()}: broadcasting ({x.shape} with {x2.shape}) is not supported "
                                     "by emit-c", g.path)
        X2 = w.ref(op.inputs[1])
        if isinstance(p, P.Add):
            fields = {k2: v for k2, v in asdict(p).items()}
            prm = w.params("qa_add_params", f"{name}_params", {**fields, "size": y.size})
            w.call(op, f"qa_add(&{prm}, {X}, {X2}, {Y});")
        else:
            prm = w.params("qa_mul_params", f"{name}_params", {**asdict(p), "size": y.size})
            w.call(op, f"qa_mul(&{prm}, {X}, {X2}, {Y});")
        return
    if isinstance(p, P.Reshape):
        w.call(op, f"memcpy({Y}, {X}, {y.size});")
        return
    if isinstance(p, P.Pad):
        pads = [(0, 0)] * (4 - len(p.paddings)) + list(p.paddings)
        prm = w.params("qa_pad_params", f"{name}_params", {
            "input_dims": _shape4(x.shape, g, op), "pad_before": [a for a, _ in pads],
            "pad_after": [b for _, b in pads], "pad_value": p.pad_value})
        w.call(op, f"qa_pad(&{prm}, {X}, {Y});")
        return
    if isinstance(p, P.Concatenation):
        outer = int(np.prod(y.shape[:p.axis], dtype=np.int64))
        sizes = [int(np.prod(g.tensor(t).shape[p.axis:], dtype=np.int64)) for t in op.inputs]
        ins = f"{name}_inputs"
        refs = ", ".join(w.ref(t) for t in op.inputs)
        w.decls.append(f"static const int8_t *const {ins}[{len(sizes)}] = {{{refs}}};")
        sz = w.array(f"{name}_axis_sizes", "int32_t", sizes, 8)
        prm = w.params("qa_concat_params", f"{name}_params", {"num_inputs": len(sizes), "outer_size": outer,
                                                              "axis_sizes": sz})
        w.call(op, f"qa_concatenation(&{prm}, {ins}, {Y});")
        return
    if isinstance(p, P.Mean):
        lead = 4 - len(x.shape)
        dims = _shape4(x.shape, g, op)
        prm = w.params("qa_mean_params", f"{name}_params", {
            "dims": dims, "reduced": [int(a - lead in p.axes) for a in range(4)],
            "input_zero_point": p.input_zero_point, "count": p.count, "multiplier": p.multiplier, "shift": p.shift,
            "output_offset": p.output_offset})
        w.call(op, f"qa_mean(&{prm}, {X}, {Y});")
        return
    if isinstance(p, P.Softmax):
        depth = int(x.shape[-1])
        prm = w.params("qa_softmax_params", f"{name}_params", {
            "outer_size": x.size // depth, "depth": depth, "input_multiplier": p.input_multiplier,
            "input_left_shift": p.input_left_shift, "diff_min": p.diff_min})
        w.call(op, f"qa_softmax(&{prm}, {X}, {Y});")
        return
    if isinstance(p, P.Table):
        table = w.array(f"{name}_table", "int8_t", p.table)
        w.call(op, f"qa_lookup_table({table}, {X}, {Y}, {y.size});")
        return
    if isinstance(p, P.Quantize) and not p.from_float:
        prm = w.params("qa_requantize_params", f"{name}_params", {
            "input_zero_point": p.input_zero_point, "output_zero_point": p.zero_point, "multiplier": p.multiplier,
            "shift": p.shift, "size": y.size})
        w.call(op, f"qa_requantize(&{prm}, {X}, {Y});")
        return
    raise UnsupportedOpError(f"{op.describe()}: emit-c needs int8 in and out (float tensors stay on the host)",
                             g.path)


def _check_int8(graph: ir.Graph) -> None:
    if len(graph.inputs) != 1:
        raise ModelError(f"emit-c supports one input tensor, this graph has {len(graph.inputs)}", graph.path)
    for role, t in [("input", graph.inputs[0])] + [("output", o) for o in graph.outputs]:
        tensor = graph.tensor(t)
        if tensor.dtype != "int8":
            raise ModelError(f"graph {role} '{tensor.name}' is {tensor.dtype}: emit-c needs a model with int8 "
                             "input and output (quantize with int8 I/O, e.g. `qassure quantize`)", graph.path)
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
    w = _Writer(pg, mem.offsets)
    for op, p in zip(graph.operators, pg.ops, strict=True):
        _emit_op(w, op, p)
    in_t = graph.inputs[0]
    in_size = graph.tensor(in_t).size
    out_size = sum(graph.tensor(t).size for t in graph.outputs)
    arena = max(mem.arena_bytes, 4)
    single = 1 if pg.rounding == "single" else 0
    name = graph.name
    header = f"""/* Generated by qassure emit-c from {_comment(name)}. Do not edit.
 * int8 inference with the qassure kernels (TFLite Micro reference arithmetic), {pg.rounding} rounding.
 * Build every file (model.c, qassure_kernels.c) with -DQA_SINGLE_ROUNDING={single}; a mismatch fails to link. */
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
    source = f"""/* Generated by qassure emit-c from {_comment(name)}: {len(graph.operators)} ops, {pg.rounding} rounding,
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


# --------------------------------------------------------------------------------------------- build


def missing_tools() -> list[str]:
    return [t for t in (CC, SIZE, QEMU) if shutil.which(t) is None]


def _arm_core(target: Target) -> bool:
    return target.cpu_core.startswith("cortex-m")


def cpu_flags(target: Target) -> tuple[str, ...]:
    flags = tuple(shlex.split(target.cpu_flags))
    return flags or (f"-mcpu={target.cpu_core}", "-mthumb")


def _defines(rounding: str) -> tuple[str, ...]:
    return ("-DQA_SINGLE_ROUNDING=1",) if rounding == "single" else ()


def _board(target: Target) -> Board:
    return BOARDS.get(target.qemu_machine or "", BOARDS["mps2-an386"])


def linker_script(board: Board) -> str:
    text = LINKER_TEMPLATE.read_text(encoding="utf-8")
    memory = (f"MEMORY\n{{\n  FLASH (rx)  : ORIGIN = 0x{board.flash_origin:08X}, LENGTH = {board.flash_length}\n"
              f"  RAM   (rwx) : ORIGIN = 0x{board.ram_origin:08X}, LENGTH = {board.ram_length}\n}}")
    return re.sub(r"MEMORY\s*\{[^}]*\}", memory, text, count=1)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise QassureError(f"{what} failed: {err[0] if err else 'exit ' + str(r.returncode)}")
    return r


def build_image(src_dir: Path, target: Target, rounding: str, cache: Path = CACHE_DIR) -> Path:
    """Link model.c + the kernels + start-up + runner for the target's core and board; cached by content."""
    board = _board(target)
    flags = (*cpu_flags(target), *COMMON_FLAGS, *_defines(rounding))
    script = linker_script(board)
    h = hashlib.sha256()
    for f in ("model.h", "model.c", *KERNEL_FILES):
        h.update((src_dir / f).read_bytes())
    for f in (*BOARD_SOURCES, *BOARD_HEADERS):
        h.update((RUNTIME_DIR / f).read_bytes())
    h.update(repr((flags, script)).encode())
    digest = h.hexdigest()[:20]
    out = cache / digest
    elf = out / "model.elf"
    if elf.is_file():
        return elf
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=cache))
    try:
        for f in ("model.h", "model.c", *KERNEL_FILES):
            shutil.copyfile(src_dir / f, staging / f)
        (staging / "board.ld").write_text(script, encoding="utf-8")
        sources = [staging / "model.c", staging / "qassure_kernels.c", *(RUNTIME_DIR / f for f in BOARD_SOURCES)]
        cmd = [CC, *flags, f"-I{staging}", f"-I{RUNTIME_DIR}", *map(str, sources), "--specs=nosys.specs",
               "-nostartfiles", f"-T{staging / 'board.ld'}", "-Wl,--gc-sections", "-o", str(staging / "model.elf")]
        _run(cmd, f"{CC} ({target.cpu_core})")
        try:
            os.replace(staging, out)
        except OSError:  # another process built the same image meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return elf


def image_size(elf: Path, target: Target) -> ImageSize:
    r = _run([SIZE, str(elf)], SIZE)
    text, data, bss = (int(v) for v in r.stdout.splitlines()[1].split()[:3])
    return ImageSize(text, data, bss, target.flash_bytes, target.ram_bytes)


def compile_only(src_dir: Path, target: Target, rounding: str) -> ImageSize:
    """Compile model.c + kernels to objects for the target's core (no board); size of the objects."""
    with tempfile.TemporaryDirectory() as d:
        objs = []
        for f in ("model.c", "qassure_kernels.c"):
            obj = Path(d) / (f + ".o")
            _run([CC, *cpu_flags(target), *COMMON_FLAGS, *_defines(rounding), f"-I{src_dir}", "-c",
                  str(src_dir / f), "-o", str(obj)], f"{CC} ({target.cpu_core})")
            objs.append(obj)
        r = _run([SIZE, "--totals", *map(str, objs)], SIZE)
        text, data, bss = (int(v) for v in r.stdout.splitlines()[-1].split()[:3])
    return ImageSize(text, data, bss, target.flash_bytes, target.ram_bytes)


# --------------------------------------------------------------------------------------------- emit


def emit_c(int8_tflite: Path | str, out_dir: Path | str, target: Target, *, build: bool = True,
           prepared: prepare.PreparedGraph | None = None) -> EmitResult:
    """Write model.h, model.c and the kernel library into out_dir; size the image when the toolchain is here.
    `prepared`: the graph of `int8_tflite` already prepared for `target.rounding` (then not read again)."""
    path = Path(int8_tflite)
    graph = reader.read_model(path) if prepared is None else prepared.graph
    if graph.input.dtype != "int8":
        raise ModelError(f"input '{graph.input.name}' is {graph.input.dtype}: emit-c needs a full-int8 model with "
                         "int8 input (a float-input graph would quantize on the device in float)", path)
    pg = prepare.prepare(graph, target.rounding) if prepared is None else prepared
    header, source, sizes = generate(pg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.h").write_text(header, encoding="utf-8")
    (out / "model.c").write_text(source, encoding="utf-8")
    for f in KERNEL_FILES:
        shutil.copyfile(RUNTIME_DIR / f, out / f)
    notes: list[str] = []
    image = elf = None
    if build:
        if not _arm_core(target):
            notes.append(f"no image size: core {target.cpu_core} is not built by arm-none-eabi-gcc")
        elif missing := [t for t in (CC, SIZE) if shutil.which(t) is None]:
            notes.append(f"no image size: {', '.join(missing)} not on PATH (make setup-firmware)")
        else:
            elf = build_image(out, target, target.rounding)
            image = image_size(elf, target)
    return EmitResult(out, ("model.h", "model.c", *KERNEL_FILES), graph.name, target.name, target.rounding,
                      len(graph.operators), sizes["input_size"], sizes["output_size"], sizes["arena_bytes"],
                      sizes["const_bytes"], image, elf, tuple(notes))


# --------------------------------------------------------------------------------------------- QEMU


class QemuOracle:
    """The emitted C of one model on the target's emulated board: one QEMU boot per batch."""

    def __init__(self, path: Path | str, target: Target, *, rounding: str | None = None, cache: Path = CACHE_DIR):
        self.path = Path(path)
        self.target = target
        self.rounding = rounding or target.rounding
        machine = target.qemu_machine
        if machine is None or not _arm_core(target):
            raise QassureError(f"target {target.name} has no emulated board (qemu_machine: {machine}); "
                               "use --against tflm")
        if machine not in BOARDS:
            raise QassureError(f"target {target.name}: no memory map for QEMU board {machine} "
                               f"(known: {', '.join(BOARDS)})")
        missing = missing_tools()
        if missing:
            raise QassureError(f"--against qemu needs {', '.join(missing)} on PATH (run `make setup-firmware` "
                               "or scripts/setup-firmware.sh)")
        self.machine = machine
        self.graph = reader.read_model(self.path)
        with tempfile.TemporaryDirectory() as d:
            emitted = emit_c(self.path, Path(d), _with_rounding(target, self.rounding), build=False)
            self.elf = build_image(Path(d), target, self.rounding, cache)
        self.emitted = emitted
        self.size = image_size(self.elf, target)
        self.last_seconds = 0.0
        self.boots = 0

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [self.graph.tensor(t).shape for t in self.graph.outputs]

    def run(self, xs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output for each input of a batch: a tuple of (B, *output_shape) int8 arrays."""
        shape = self.graph.input.shape
        xs = np.asarray(xs)
        xs = xs.reshape((-1, *shape)) if xs.size else np.zeros((0, *shape), np.int8)
        if not np.all((xs >= -128) & (xs <= 127)):
            raise QassureError("QEMU oracle inputs must be int8 values")
        n = len(xs)
        n_in = int(np.prod(shape))
        n_out = self.emitted.output_size
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            (work / "in.bin").write_bytes(struct.pack("<II", n, n_in) + xs.astype(np.int8).tobytes())
            cmd = [QEMU, "-M", self.machine, "-nographic", "-monitor", "none", "-serial", "none",
                   "-semihosting-config", "enable=on,target=native", "-kernel", str(self.elf)]
            timeout = 60.0 + 2.0 * n
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise QassureError(f"QEMU {self.machine} did not finish {n} inferences in {timeout:.0f} s") from None
            self.last_seconds = time.perf_counter() - t0
            self.boots += 1
            if r.returncode != 0:
                msg = (r.stdout + r.stderr).strip().splitlines()
                raise QassureError(f"the model image exited with status {r.returncode} on {self.machine}"
                                   + (f": {msg[-1]}" if msg else ""))
            raw = (work / "out.bin").read_bytes()
        count, size = struct.unpack_from("<II", raw, 0)
        if count != n or size != n_out or len(raw) != 8 + n * n_out:
            raise QassureError(f"the model image returned {len(raw)} bytes, expected {8 + n * n_out}")
        flat = np.frombuffer(raw, dtype=np.int8, offset=8).reshape(n, n_out)
        outs, pos = [], 0
        for s in self.output_shapes:
            k = int(np.prod(s))
            outs.append(flat[:, pos:pos + k].reshape((n, *s)).copy())
            pos += k
        return tuple(outs)

    def describe(self) -> str:
        """One line: which core and board ran how many vectors in how long, and the image size."""
        return (f"emitted C on QEMU {self.machine} ({self.target.cpu_core}, {self.rounding} rounding): last boot "
                f"{self.last_seconds:.2f} s; image {self.size.line()}")

    def run_one(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One inference (one boot); prefer run() for batches."""
        return tuple(o[0] for o in self.run(np.asarray(x)[None]))


def _with_rounding(target: Target, rounding: str) -> Target:
    from dataclasses import replace

    return target if rounding == target.rounding else replace(target, rounding=rounding)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- gate


def verify_on_qemu(int8_tflite: Path, target: Target, inputs: np.ndarray,
                   prepared: prepare.PreparedGraph | None = None) -> dict[str, Any]:
    """The gate's firmware record: the executor (on `prepared` when given) vs the emitted C on the
    target's emulated core."""
    from toolchain import execute

    oracle = QemuOracle(int8_tflite, target)
    pg = prepare.prepare(oracle.graph, target.rounding) if prepared is None else prepared
    xs = np.asarray(inputs).reshape((-1, *oracle.graph.input.shape))
    ours = execute.run(pg, xs).outputs
    theirs = oracle.run(xs)
    same = np.ones(len(xs), dtype=bool)
    for a, b in zip(ours, theirs, strict=True):
        same &= (a.reshape(len(xs), -1) == b.reshape(len(xs), -1)).all(axis=1)
    return {"core": target.cpu_core, "machine": oracle.machine, "cpu_flags": " ".join(cpu_flags(target)),
            "rounding": target.rounding, "vectors": int(len(xs)), "matched": int(same.sum()),
            "image": oracle.size.as_dict()}
