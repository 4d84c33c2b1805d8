"""QUANTIZE and DEQUANTIZE (TFLM micro/kernels/quantize.cc, quantize_common.cc, dequantize.cc):
the conversions at a graph's float interface, and int8 -> int8 requantization.

QUANTIZE float -> int8 is AffineQuantize (roundf(x / scale) + zp in float32 arithmetic); int8 ->
int8 is reference_ops::Requantize (one MBQM). DEQUANTIZE is float(double(scale) * (q - zp)).
merge.build skips both (Role.INTERFACE): it models the float input's rounding itself. Only the
int8 -> int8 QUANTIZE has a C kernel (float tensors stay on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.arith import (
    Rounding,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away_f32,
)
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, Op, OpData, Role
from toolchain.tflite import ir


@dataclass(frozen=True)
class Quantize(OpData):
    """QUANTIZE: float -> int8 (AffineQuantize) or int8 -> int8 (Requantize)."""

    from_float: bool
    scale: float  # output scale (float input path)
    zero_point: int  # output zero point
    input_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class Dequantize(OpData):
    scale: float
    zero_point: int


def affine_quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """AffineQuantize (float -> int8): roundf(x / scale) + zero_point, clamped; float32 arithmetic."""
    q = round_half_away_f32(np.asarray(x, dtype=np.float32) / np.float32(scale))
    q = np.clip(q, -(2**31), 2**31 - 1).astype(np.int64) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def requantize_recipe(x: np.ndarray, p: Quantize, rounding: Rounding) -> np.ndarray:
    """reference_ops::Requantize on integer arrays, elementwise."""
    centred = x.astype(np.int64) - p.input_zero_point
    y = multiply_by_quantized_multiplier(centred, p.multiplier, p.shift, rounding)
    return np.clip(y + p.zero_point, -128, 127).astype(np.int8)


def requantize(x: np.ndarray, p: Quantize, rounding: Rounding) -> np.ndarray:
    """reference_ops::Requantize (int8 -> int8 QUANTIZE): 256 possible inputs, tabulated once."""
    if not K.all_int8(x):
        return requantize_recipe(x, p, rounding)
    table = p.constants.get(rounding, lambda: requantize_recipe(np.arange(-128, 128), p, rounding))
    return K.lookup(table, x)


def dequantize(x: np.ndarray, p: Dequantize) -> np.ndarray:
    """reference_ops::Dequantize: float(double(scale) * (q - zp))."""
    return (np.float64(p.scale) * (x.astype(np.float64) - p.zero_point)).astype(np.float32)


def _no_c_kernel(w: CWriter, op: ir.Operator) -> UnsupportedOpError:
    return UnsupportedOpError(f"{op.describe()}: emit-c needs int8 in and out "
                              "(float tensors stay on the host)", w.graph.path)


class QuantizeOp(Op):
    names = ("QUANTIZE",)
    role = Role.INTERFACE

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Quantize:
        x = graph.tensor(op.inputs[0])
        C.require_int8(graph, op, op.outputs[0])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        if x.dtype == "float32":
            return Quantize(True, s_out, zp_out, 0, 0, 0)
        C.require_int8(graph, op, op.inputs[0])
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        m, e = quantize_multiplier(float(np.float64(s_in) / np.float64(s_out)), rounding)
        return Quantize(False, s_out, zp_out, zp_in, m, e)

    def execute(self, p: Quantize, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        if p.from_float:
            return affine_quantize(x, p.scale, p.zero_point)
        return requantize(x, p, rounding)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Quantize) -> None:
        if p.from_float:
            raise _no_c_kernel(w, op)
        size = w.graph.tensor(op.outputs[0]).size
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        prm = w.params("qa_requantize_params", f"op{op.index}_params", {
            "input_zero_point": p.input_zero_point, "output_zero_point": p.zero_point,
            "multiplier": p.multiplier, "shift": p.shift, "size": size})
        w.call(op, f"qa_requantize(&{prm}, {X}, {Y});")

    def multipliers(self, p: Quantize) -> dict[str, Any]:
        return {} if p.from_float else {"output": C.mbqm_row(p.multiplier, p.shift)}


class DequantizeOp(Op):
    names = ("DEQUANTIZE",)
    role = Role.INTERFACE

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Dequantize:
        C.require_int8(graph, op, op.inputs[0])
        s, zp = C.scalar_quant(graph, op, op.inputs[0])
        return Dequantize(s, zp)

    def execute(self, p: Dequantize, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return dequantize(x, p)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Dequantize) -> None:
        raise _no_c_kernel(w, op)
