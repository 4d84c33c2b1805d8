"""LEAKY_RELU, int8 (TFLM micro/kernels/leaky_relu.cc, leaky_relu_common.cc; QuantizeLeakyRelu).

v = x - zp_in; y = zp_out + MBQM(v, M_identity, e_identity) where v >= 0, else MBQM(v, M_alpha, e_alpha);
clamped to int8. Prepare computes both multipliers from float32 products, as TFLM does:
s_in * alpha / s_out and s_in / s_out in float, then QuantizeMultiplier in double.
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
from toolchain.errors import UnsupportedOpError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class LeakyRelu(OpData):
    input_offset: int  # = -input zero point
    output_offset: int
    multiplier_identity: int
    shift_identity: int
    multiplier_alpha: int
    shift_alpha: int
    table: np.ndarray  # int8[256]: the output for input value i - 128, with the prepare's rounding


def leaky_relu_recipe(x: np.ndarray, p: LeakyRelu, rounding: Rounding) -> np.ndarray:
    """reference_ops::QuantizeLeakyRelu on integer arrays, elementwise."""
    v = x.astype(np.int64) + p.input_offset
    up = multiply_by_quantized_multiplier(v, p.multiplier_identity, p.shift_identity, rounding)
    down = multiply_by_quantized_multiplier(v, p.multiplier_alpha, p.shift_alpha, rounding)
    return np.clip(p.output_offset + np.where(v >= 0, up, down), -128, 127).astype(np.int8)


class LeakyReluOp(Op):
    names = ("LEAKY_RELU",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        return ir.LeakyReluOptions(float(np.float32(o.alpha)))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> LeakyRelu:
        alpha = np.float32(C.options(graph, op, ir.LeakyReluOptions).alpha)
        if not alpha >= 0:  # a negative multiplier is outside QuantizeMultiplier's contract
            raise UnsupportedOpError(f"{op.describe()}: LEAKY_RELU with alpha {alpha} < 0", graph.path)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        # leaky_relu_common.cc: both products in float (the tensors' float scales), then to double.
        s_in32, s_out32 = np.float32(s_in), np.float32(s_out)
        m_a, e_a = quantize_multiplier(float(s_in32 * alpha / s_out32), rounding)
        m_i, e_i = quantize_multiplier(float(s_in32 / s_out32), rounding)
        p = LeakyRelu(-zp_in, zp_out, m_i, e_i, m_a, e_a, np.zeros(256, dtype=np.int8))
        return LeakyRelu(-zp_in, zp_out, m_i, e_i, m_a, e_a, leaky_relu_recipe(C.ALL_INT8, p, rounding))

    def execute(self, p: LeakyRelu, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        if not K.all_int8(x):
            return leaky_relu_recipe(x, p, rounding)
        return K.lookup(p.table, x)

    def lower(self, ctx: LowerContext) -> Lowered:
        """two_slopes with the options' alpha and the device's two multipliers."""
        p: LeakyRelu = ctx.prepared
        alpha = float(np.float32(C.options(ctx.float_graph, ctx.float_op, ir.LeakyReluOptions).alpha))
        n = ctx.size
        return two_slopes(ctx, np.full(n, alpha), np.full(n, float(effective_scale(p.multiplier_identity,
                                                                                  p.shift_identity))),
                          np.full(n, float(effective_scale(p.multiplier_alpha, p.shift_alpha))),
                          (p.shift_identity, p.shift_alpha))

    def emit_c(self, w: CWriter, op: ir.Operator, p: LeakyRelu) -> None:
        """The kernel's output for each of the 256 int8 inputs, as a table (the executor's own values)."""
        C.emit_table(w, op, p.table)

    def multipliers(self, p: LeakyRelu) -> dict[str, Any]:
        return {"identity": C.mbqm_row(p.multiplier_identity, p.shift_identity),
                "alpha": C.mbqm_row(p.multiplier_alpha, p.shift_alpha)}


def two_slopes(ctx: LowerContext, alpha: np.ndarray, positive: np.ndarray, negative: np.ndarray,
               shifts: tuple[int, int]) -> Lowered:
    """A leaky ReLU's nodes (LEAKY_RELU, PRELU), per element: y = alpha x + (1 - alpha) relu(x) on the float
    side; on the int8 side the device applies one of two real factors by the sign of x (`positive`,
    `negative`: what MBQM multiplies x - zp_in by), so u = b_n x̂ + (b_p - b_n) relu(x̂) + eps with
    b = s_out factor / s_in and one MBQM rounding (the worse of the two `shifts`). relu(x̂) is an auxiliary
    node on x̂'s grid: the input's own int8 values, no rounding."""
    n, s_in, s_out = ctx.size, ctx.input_scales[0], ctx.scale
    eye = sp.identity(n, format="csr")
    zeros = np.zeros(n)
    relu = Lowered((eye,), zeros, zeros, np.full(n, np.inf), (eye,), zeros, zeros, zeros,
                   np.full(n, 255.0 * s_in), inputs=ctx.inputs, grid=s_in)
    b_p, b_n = s_out * positive / s_in, s_out * negative / s_in
    rho = max(float(requant_error_bound(e, ctx.rounding)) for e in shifts)
    q_lo, q_hi = C.clamp_range(-128, 127, s_out, ctx.zero_point, n)
    return Lowered((sp.diags(alpha).tocsr(), sp.diags(1.0 - alpha).tocsr()), zeros, np.full(n, -np.inf),
                   np.full(n, np.inf), (sp.diags(b_n).tocsr(), sp.diags(b_p - b_n).tocsr()), zeros,
                   np.full(n, s_out * rho * (1 + FP_SLACK)), q_lo, q_hi,
                   inputs=(ctx.inputs[0], ctx.next_node), aux=(relu,))
