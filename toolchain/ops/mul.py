"""MUL, int8 (TFLM micro/kernels/mul.cc, mul_common.cc; reference_integer_ops/mul.h).

(x1 + off1) (x2 + off2), one MBQM by s1 s2 / s_out, zp_out, clamp. Lowered where one operand is a
constant (a normalisation's scale): then the op is affine in the other; the product of two activations
is not, and the certify engines refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from toolchain.errors import QassureError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.add import emit_binary
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Mul(OpData):
    input1_offset: int
    input2_offset: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


def mul_recipe(x1: np.ndarray, x2: np.ndarray, p: Mul, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Mul on integer arrays, elementwise."""
    prod = (x1.astype(np.int64) + p.input1_offset) * (x2.astype(np.int64) + p.input2_offset)
    y = multiply_by_quantized_multiplier(prod, p.output_multiplier, p.output_shift, rounding)
    y += p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def mul(x1: np.ndarray, x2: np.ndarray, p: Mul, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Mul: (x1+off1)*(x2+off2), one requantization, offset, clamp.
    Per-tensor parameters: tabulated over the 65536 input pairs once, like ADD."""
    if not K.all_int8(x1, x2):
        return mul_recipe(x1, x2, p, rounding)
    table = p.constants.get(rounding, lambda: K.pair_table(lambda a, b: mul_recipe(a, b, p, rounding)))
    return K.lookup_pair(table, x1, x2)


class MulOp(Op):
    names = ("MUL",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        if options is None:
            return ir.ActivationOptions(ir.ACT_NONE)
        return ir.ActivationOptions(C.fused_activation(options.fusedActivationFunction, position, where))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Mul:
        o = C.options(graph, op, ir.ActivationOptions)
        C.require_int8(graph, op, *op.inputs, op.outputs[0])
        s1, z1 = C.scalar_quant(graph, op, op.inputs[0])
        s2, z2 = C.scalar_quant(graph, op, op.inputs[1])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        m, e = quantize_multiplier(float(np.float64(s1) * np.float64(s2) / np.float64(s_out)), rounding)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        return Mul(-z1, -z2, m, e, zp_out, act_min, act_max)

    def execute(self, p: Mul, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x1, x2 = inputs[0], inputs[1]
        assert x1 is not None and x2 is not None
        return mul(K.aligned(x1, out_shape), K.aligned(x2, out_shape), p, rounding).reshape((-1,) + out_shape)

    def lower(self, ctx: LowerContext) -> Lowered:
        """With one constant operand c: y = c_f x on the float side; on the int8 side
        u = s_out M 2^(e-31) (c_q + off_c) x̂ / s_x + eps (x̂ = s_x (x + off_x)), one MBQM rounding."""
        p: Mul = ctx.prepared
        const = [ctx.graph.tensor(t).data for t in ctx.op.inputs[:2]]
        if len(ctx.inputs) != 1 or sum(c is not None for c in const) != 1:
            raise QassureError(f"{ctx.name}: MUL of two activations is not supported by the certify engines")
        k = 0 if const[0] is not None else 1
        values = const[k]
        assert values is not None
        if int(np.prod(ctx.input_shape(1 - k))) != ctx.size:
            raise QassureError(f"{ctx.name}: broadcasting a non-constant operand is not supported by the "
                               "certify engines")
        s_out, n, shape = ctx.scale, ctx.size, ctx.output.shape
        offset = p.input1_offset if k == 0 else p.input2_offset
        c_q = np.broadcast_to(values, shape).reshape(-1).astype(np.float64) + offset
        c_f = np.broadcast_to(C.float_constant(ctx.float_graph, ctx.float_op.inputs[k]), shape).reshape(-1)
        m = float(effective_scale(p.output_multiplier, p.output_shift))
        noise = np.full(n, s_out * float(requant_error_bound(p.output_shift, ctx.rounding)) * (1 + FP_SLACK))
        q_lo, q_hi = C.clamp_range(p.act_min, p.act_max, s_out, ctx.zero_point, n)
        A_q = sp.diags(s_out * m * c_q / ctx.input_scales[0]).tocsr()
        return Lowered((sp.diags(c_f).tocsr(),), np.zeros(n), ctx.f_lo, ctx.f_hi, (A_q,), np.zeros(n), noise,
                       q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Mul) -> None:
        emit_binary(w, op, "qa_mul_params", asdict(p), "qa_mul")

    def multipliers(self, p: Mul) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.output_multiplier, p.output_shift)}
