"""LOGISTIC and TANH, int8 (TFLM micro/kernels/logistic.cc, logistic_common.cc, tanh.cc;
reference_integer_ops/logistic.h, tanh.h), in gemmlowp fixed point (toolchain.fixedpoint).

TFLM runs the fixed-point reference recipe for int8 (no lookup table on the device); an int8 input
has 256 values, so prepare runs that recipe once on all of them and the op is a table lookup here
and in the emitted C. Not lowered: the certify engines take piecewise-affine ops only. As the model's
last op (a sigmoid or tanh output layer) it is skipped like SOFTMAX: the certificate bounds its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolchain import fixedpoint as fx
from toolchain.arith import (
    INT32_MAX,
    Rounding,
    multiply_by_quantized_multiplier,
    round_half_away,
    rounding_divide_by_pot,
)
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, Op, OpData, Role
from toolchain.tflite import ir

INPUT_INTEGER_BITS = 4  # logistic / tanh int8: Q4.27 input
# LOGISTIC int8 requires output zero point -128 but does not check the scale (the kernel assumes
# 1/256); TANH int8 checks neither (the kernel assumes scale 1/128, zero point 0). The converter
# always emits these.
LOGISTIC_OUTPUT_QUANT = (1.0 / 256.0, -128)
TANH_OUTPUT_QUANT = (1.0 / 128.0, 0)


@dataclass(frozen=True)
class ActivationParams:
    """tflite::OpDataLogistic / tanh.cc's OpData (int8): the same four fields for both."""

    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


@dataclass(frozen=True)
class Table(OpData):
    """LOGISTIC / TANH on int8: 256 possible inputs, so the exact outputs are tabulated."""

    table: np.ndarray  # int8[256], entry i is the output for input i - 128


def activation_params(input_scale: float, input_zero_point: int) -> ActivationParams:
    """Shared int8 prepare of micro/kernels/logistic_common.cc (CalculateArithmeticOpDataLogistic)
    and tanh.cc (CalculateArithmeticOpData): real = double(scale) * double(1 << 27);
    q, shift = frexp(real); M = int32(round(q * 2^31)); radius = CalculateInputRadius(4, shift, 31).

    Unlike QuantizeMultiplier there is no q == 2^31 fix-up; it cannot trigger for float32 scales
    (q <= 1 - 2^-24 gives q * 2^31 <= 2^31 - 128).
    """
    real = float(np.float32(input_scale)) * float(1 << (31 - INPUT_INTEGER_BITS))
    q, shift = math.frexp(real)
    m = round_half_away(q * (1 << 31))
    if m > INT32_MAX:
        raise ValueError("input multiplier overflows int32")
    if shift > 62:
        raise ValueError(f"input scale {input_scale} too large: 1LL << {shift} is undefined in TFLM")
    # For scale >= 8 (shift >= 31) the radius is 0: every input saturates (input 0 -> -128 since
    # 0 <= -0), so the multiplier path (where 1 << 31 would be undefined) is never reached.
    radius = fx.calculate_input_radius(INPUT_INTEGER_BITS, shift, 31)
    return ActivationParams(int(input_zero_point), radius, m, shift)


def _act_int8(x, p: ActivationParams, fn: Callable[[np.ndarray, int], np.ndarray], out_shift: int,
              out_zp: int) -> np.ndarray:
    """The shared shape of reference_integer_ops::Logistic / Tanh (int8): inputs beyond the radius
    saturate; the others go to Q4.27 by one MBQM (no int32 overflow within the radius), through the
    fixed-point function, and back to int8 by RoundingDivideByPOT."""
    xi = np.asarray(x).astype(np.int64)
    inp = xi - p.input_zero_point
    radius = p.input_range_radius
    in_q4 = multiply_by_quantized_multiplier(
        np.where((inp > -radius) & (inp < radius), inp, 0), p.input_multiplier, p.input_left_shift, "double")
    out_q0 = fn(in_q4, INPUT_INTEGER_BITS)
    out = np.clip(rounding_divide_by_pot(out_q0, out_shift) + out_zp, -128, 127)
    out = np.where(inp <= -radius, -128, np.where(inp >= radius, 127, out))
    return out.astype(np.int8)


def logistic_int8(x: np.ndarray, p: ActivationParams) -> np.ndarray:
    """reference_integer_ops::Logistic (int8), which TFLM's LOGISTIC runs for int8 (no LUT)."""
    return _act_int8(x, p, fx.logistic, 31 - 8, -128)


def tanh_int8(x: np.ndarray, p: ActivationParams) -> np.ndarray:
    """reference_integer_ops::Tanh (int8), which TFLM's TANH runs for int8 (no LUT)."""
    return _act_int8(x, p, fx.tanh, 31 - 7, 0)


_ALL_INT8 = C.ALL_INT8.astype(np.int8)


def logistic_table(p: ActivationParams) -> np.ndarray:
    """int8[256]: entry i = TFLM LOGISTIC output for input int8 value i - 128 (use table[x + 128])."""
    return logistic_int8(_ALL_INT8, p)


def tanh_table(p: ActivationParams) -> np.ndarray:
    """int8[256]: entry i = TFLM TANH output for input int8 value i - 128 (use table[x + 128])."""
    return tanh_int8(_ALL_INT8, p)


class LookupTableOp(Op):
    names = ("LOGISTIC", "TANH")
    role = Role.TERMINAL
    merge_note = ("the model ends in LOGISTIC or TANH: the certificate bounds its input, the values before "
                  "the squashing (both are 1-Lipschitz or flatter; the int8 tables' own error is not "
                  "bounded)")

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Table:
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        build = logistic_table if op.opcode == "LOGISTIC" else tanh_table
        return Table(np.asarray(build(activation_params(s_in, zp_in)), dtype=np.int8))

    def execute(self, p: Table, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return p.table[x.astype(np.int64) + 128]

    def emit_c(self, w: CWriter, op: ir.Operator, p: Table) -> None:
        C.emit_table(w, op, p.table)
