"""ADD, int8 (TFLM micro/kernels/add.cc, add_common.cc; reference_integer_ops/add.h).

Both inputs are offset, shifted left by 20 and rescaled to a shared scale 2 max(s1, s2) with one
MBQM each, summed, and rescaled to the output with a third MBQM; then zp_out and the clamp.
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
from toolchain.errors import QassureError, UnsupportedOpError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Add(OpData):
    """TFLM int8 ADD: both inputs rescaled to a shared scale with 20 bits of headroom."""

    left_shift: int
    input1_offset: int
    input2_offset: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    act_min: int
    act_max: int


def add_recipe(x1: np.ndarray, x2: np.ndarray, p: Add, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Add on integer arrays, elementwise."""
    a = (x1.astype(np.int64) + p.input1_offset) << p.left_shift
    b = (x2.astype(np.int64) + p.input2_offset) << p.left_shift
    a = multiply_by_quantized_multiplier(a, p.input1_multiplier, p.input1_shift, rounding)
    b = multiply_by_quantized_multiplier(b, p.input2_multiplier, p.input2_shift, rounding)
    y = multiply_by_quantized_multiplier(a + b, p.output_multiplier, p.output_shift, rounding)
    y += p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def add(x1: np.ndarray, x2: np.ndarray, p: Add, rounding: Rounding) -> np.ndarray:
    """reference_integer_ops::Add: offsets, << left_shift, rescale each input, sum, rescale out.
    Every parameter is per tensor, so the output is a function of (x1, x2): tabulated once."""
    if not K.all_int8(x1, x2):
        return add_recipe(x1, x2, p, rounding)
    table = p.constants.get(rounding, lambda: K.pair_table(lambda a, b: add_recipe(a, b, p, rounding)))
    return K.lookup_pair(table, x1, x2)


class AddOp(Op):
    names = ("ADD",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        if options is None:
            return ir.ActivationOptions(ir.ACT_NONE)
        return ir.ActivationOptions(C.fused_activation(options.fusedActivationFunction, position, where))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Add:
        o = C.options(graph, op, ir.ActivationOptions)
        C.require_int8(graph, op, *op.inputs, op.outputs[0])
        s1, z1 = C.scalar_quant(graph, op, op.inputs[0])
        s2, z2 = C.scalar_quant(graph, op, op.inputs[1])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        left_shift = 20
        # add_common.cc: max of the two float scales, widened to double, times 2.
        twice_max = 2 * np.float64(max(np.float32(s1), np.float32(s2)))
        m1, e1 = quantize_multiplier(float(np.float64(s1) / twice_max), rounding)
        m2, e2 = quantize_multiplier(float(np.float64(s2) / twice_max), rounding)
        mo, eo = quantize_multiplier(float(twice_max / ((1 << left_shift) * np.float64(s_out))), rounding)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        return Add(left_shift, -z1, -z2, m1, e1, m2, e2, mo, eo, zp_out, act_min, act_max)

    def execute(self, p: Add, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x1, x2 = inputs[0], inputs[1]
        assert x1 is not None and x2 is not None
        return add(x1, x2, p, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """y = a1 x1 + a2 x2 with a_i = s_out M_o 2^20 M_i / s_i (effective scales); noise: the
        output MBQM's rho plus each input MBQM's rho carried through the output multiplier."""
        p: Add = ctx.prepared
        if ctx.input_shape(0) != ctx.input_shape(1) or len(ctx.inputs) != 2:
            raise QassureError(f"{ctx.name}: broadcasting ADD is not supported by the certify engines")
        s_out, n = ctx.scale, ctx.size
        mo = float(effective_scale(p.output_multiplier, p.output_shift))
        m1 = float(effective_scale(p.input1_multiplier, p.input1_shift))
        m2 = float(effective_scale(p.input2_multiplier, p.input2_shift))
        a1 = s_out * mo * (1 << p.left_shift) * m1 / ctx.input_scales[0]
        a2 = s_out * mo * (1 << p.left_shift) * m2 / ctx.input_scales[1]
        r1 = float(requant_error_bound(p.input1_shift, ctx.rounding))
        r2 = float(requant_error_bound(p.input2_shift, ctx.rounding))
        ro = float(requant_error_bound(p.output_shift, ctx.rounding))
        eye = sp.identity(n, format="csr")
        noise = np.full(n, s_out * (ro + mo * (r1 + r2)) * (1 + FP_SLACK))
        q_lo, q_hi = C.clamp_range(p.act_min, p.act_max, s_out, ctx.zero_point, n)
        return Lowered((eye, eye), np.zeros(n), ctx.f_lo, ctx.f_hi, (a1 * eye, a2 * eye), np.zeros(n),
                       noise, q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Add) -> None:
        x, x2, y = (w.graph.tensor(t) for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        if not (x.size == x2.size == y.size):
            raise UnsupportedOpError(f"{op.describe()}: broadcasting ({x.shape} with {x2.shape}) is not "
                                     "supported by emit-c", w.graph.path)
        X2 = w.ref(op.inputs[1])
        prm = w.params("qa_add_params", f"op{op.index}_params", {**asdict(p), "size": y.size})
        w.call(op, f"qa_add(&{prm}, {X}, {X2}, {Y});")

    def multipliers(self, p: Add) -> dict[str, Any]:
        return {"input1": C.mbqm_row(p.input1_multiplier, p.input1_shift),
                "input2": C.mbqm_row(p.input2_multiplier, p.input2_shift),
                "output": C.mbqm_row(p.output_multiplier, p.output_shift)}
