"""RELU as an op of its own, int8 (TFLM micro/kernels/activations.cc, activations_common.cc:
ReluPrepare / CalculateReluOpData, ReluQuantized). The converter leaves it unfused after ops without a
fused activation (Keras Conv2DTranspose with activation="relu" gives TRANSPOSE_CONV, then RELU).

y = clamp(zp_out + MBQM(x - zp_in, M, e), zp_out, 127): M, e from QuantizeMultiplier of
double(s_in) / double(s_out); the lower clamp is zp_out + roundf(0 / s_out), a real zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from toolchain.arith import (
    Rounding,
    effective_scale,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requant_error_bound,
)
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Relu(OpData):
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int
    table: np.ndarray  # int8[256]: the output for input value i - 128, with the prepare's rounding


def relu_recipe(x: np.ndarray, p: Relu, rounding: Rounding) -> np.ndarray:
    """ReluQuantized on integer arrays, elementwise."""
    v = multiply_by_quantized_multiplier(x.astype(np.int64) - p.input_zero_point, p.multiplier, p.shift,
                                         rounding)
    return np.clip(p.output_zero_point + v, max(-128, p.output_zero_point), 127).astype(np.int8)


class ReluOp(Op):
    names = ("RELU",)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Relu:
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        # CalculateReluOpData: the float32 scales divided in double
        real = float(np.float64(np.float32(s_in)) / np.float64(np.float32(s_out)))
        m, e = quantize_multiplier(real, rounding)
        p = Relu(zp_in, zp_out, m, e, np.zeros(256, dtype=np.int8))
        return Relu(zp_in, zp_out, m, e, relu_recipe(C.ALL_INT8, p, rounding))

    def execute(self, p: Relu, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return K.lookup(p.table, x) if K.all_int8(x) else relu_recipe(x, p, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """Float side: y = max(p, 0) of its input; int8 side: u = (s_out M' / s_in) ŷ_in plus one MBQM
        rounding, clamped to [0, s_out (127 - zp_out)] (M' the device's effective multiplier)."""
        p: Relu = ctx.prepared
        n, s_in, s_out = ctx.size, ctx.input_scales[0], ctx.scale
        b = s_out * float(effective_scale(p.multiplier, p.shift)) / s_in
        rho = float(requant_error_bound(p.shift, ctx.rounding))
        q_lo, q_hi = C.clamp_range(max(-128, p.output_zero_point), 127, s_out, ctx.zero_point, n)
        eye = sp.identity(n, format="csr")
        zeros = np.zeros(n)
        return Lowered((eye,), zeros, zeros, np.full(n, np.inf), (b * eye,), zeros,
                       np.full(n, s_out * rho * (1 + FP_SLACK)), q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Relu) -> None:
        """The kernel's output for each of the 256 int8 inputs, as a table (the executor's own values)."""
        C.emit_table(w, op, p.table)

    def multipliers(self, p: Relu) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.multiplier, p.shift)}
