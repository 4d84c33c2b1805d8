"""ADD, int8 (TFLM micro/kernels/add.cc, add_common.cc; reference_integer_ops/add.h).

Both inputs are offset, shifted left by 20 and rescaled to a shared scale 2 max(s1, s2) with one
MBQM each, summed, and rescaled to the output with a third MBQM; then zp_out and the clamp. SUB
(ops/sub.py) is the same recipe with the second term subtracted, and shares the lowering here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

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


def scaled_input(x: np.ndarray, p: Add, k: int, rounding: Rounding) -> np.ndarray:
    """Input k (0 or 1) offset, shifted left and rescaled to the shared scale: the kernel's integer."""
    offset, multiplier, shift = ((p.input1_offset, p.input1_multiplier, p.input1_shift) if k == 0 else
                                 (p.input2_offset, p.input2_multiplier, p.input2_shift))
    return multiply_by_quantized_multiplier((x.astype(np.int64) + offset) << p.left_shift, multiplier, shift,
                                            rounding)


def add_recipe(x1: np.ndarray, x2: np.ndarray, p: Add, rounding: Rounding, sign: int = 1) -> np.ndarray:
    """reference_integer_ops::Add on integer arrays, elementwise (sign -1: reference_ops Sub)."""
    a, b = scaled_input(x1, p, 0, rounding), scaled_input(x2, p, 1, rounding)
    y = multiply_by_quantized_multiplier(a + sign * b, p.output_multiplier, p.output_shift, rounding)
    y += p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def add(x1: np.ndarray, x2: np.ndarray, p: Add, rounding: Rounding, sign: int = 1) -> np.ndarray:
    """reference_integer_ops::Add (sign -1: Sub): offsets, << left_shift, rescale each input, sum, rescale
    out. Every parameter is per tensor, so the output is a function of (x1, x2): tabulated once."""
    if not K.all_int8(x1, x2):
        return add_recipe(x1, x2, p, rounding, sign)
    table = p.constants.get(rounding, lambda: K.pair_table(lambda a, b: add_recipe(a, b, p, rounding, sign)))
    return K.lookup_pair(table, x1, x2)


class AddOp(Op):
    names = ("ADD",)
    sign: ClassVar[int] = 1  # SUB (ops/sub.py): -1
    kernel: ClassVar[str] = "qa_add"

    @staticmethod
    def real_multipliers(s1: float, s2: float, s_out: float, left_shift: int) -> tuple[float, float, float]:
        """add_common.cc: twice the larger float scale, widened to double; the three ratios in double."""
        twice_max = 2 * np.float64(max(np.float32(s1), np.float32(s2)))
        return (float(np.float64(s1) / twice_max), float(np.float64(s2) / twice_max),
                float(twice_max / ((1 << left_shift) * np.float64(s_out))))

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
        (m1, e1), (m2, e2), (mo, eo) = (quantize_multiplier(r, rounding)
                                        for r in self.real_multipliers(s1, s2, s_out, left_shift))
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        return Add(left_shift, -z1, -z2, m1, e1, m2, e2, mo, eo, zp_out, act_min, act_max)

    def execute(self, p: Add, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x1, x2 = inputs[0], inputs[1]
        assert x1 is not None and x2 is not None
        y = add(K.aligned(x1, out_shape), K.aligned(x2, out_shape), p, rounding, self.sign)
        return y.reshape((-1,) + out_shape)

    def lower(self, ctx: LowerContext) -> Lowered:
        return lower_add(ctx, self.sign)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Add) -> None:
        emit_binary(w, op, "qa_add_params", asdict(p), self.kernel)

    def multipliers(self, p: Add) -> dict[str, Any]:
        return {"input1": C.mbqm_row(p.input1_multiplier, p.input1_shift),
                "input2": C.mbqm_row(p.input2_multiplier, p.input2_shift),
                "output": C.mbqm_row(p.output_multiplier, p.output_shift)}


def lower_add(ctx: LowerContext, sign: int) -> Lowered:
    """ADD (sign 1) or SUB (-1): y = a1 x1 + sign a2 x2 with a_k = s_out M_o 2^20 M_k / s_k (effective
    scales); noise: the output MBQM's rho plus each input MBQM's rho carried through the output
    multiplier. A constant operand (a normalisation's mean, a bias) is no node: its rescaled integer is
    exact (the kernel's own arithmetic on its int8 values, broadcast to the output), so it adds a constant
    and no rounding term; the float side adds the float graph's constant."""
    p: Add = ctx.prepared
    s_out, n = ctx.scale, ctx.size
    const = [ctx.graph.tensor(t).data for t in ctx.op.inputs[:2]]
    if sum(c is None for c in const) != len(ctx.inputs):
        raise QassureError(f"{ctx.name}: an operand that is neither a node nor a constant")
    shape = ctx.output.shape
    if any(c is None and int(np.prod(ctx.input_shape(k))) != n for k, c in enumerate(const)):
        raise QassureError(f"{ctx.name}: broadcasting a non-constant operand is not supported by the certify "
                           "engines")
    mo = float(effective_scale(p.output_multiplier, p.output_shift))
    signs = (1.0, float(sign))
    eye = sp.identity(n, format="csr")
    A_f, A_q = [], []
    c_f, c_q = np.zeros(n), np.zeros(n)
    rounding_terms = float(requant_error_bound(p.output_shift, ctx.rounding))
    node_scales = iter(ctx.input_scales)
    for k, c in enumerate(const):
        m_k, e_k = (p.input1_multiplier, p.input1_shift) if k == 0 else (p.input2_multiplier, p.input2_shift)
        if c is None:
            a_k = s_out * mo * (1 << p.left_shift) * float(effective_scale(m_k, e_k)) / next(node_scales)
            A_f.append(signs[k] * eye)
            A_q.append(signs[k] * a_k * eye)
            rounding_terms += mo * float(requant_error_bound(e_k, ctx.rounding))
        else:
            q = np.broadcast_to(c, shape).reshape(-1)
            c_q += signs[k] * s_out * mo * scaled_input(q, p, k, ctx.rounding).astype(np.float64)
            c_f += signs[k] * np.broadcast_to(C.float_constant(ctx.float_graph, ctx.float_op.inputs[k]),
                                              shape).reshape(-1)
    noise = np.full(n, s_out * rounding_terms * (1 + FP_SLACK))
    q_lo, q_hi = C.clamp_range(p.act_min, p.act_max, s_out, ctx.zero_point, n)
    return Lowered(tuple(A_f), c_f, ctx.f_lo, ctx.f_hi, tuple(A_q), c_q, noise, q_lo, q_hi)


def emit_binary(w: CWriter, op: ir.Operator, ctype: str, fields: dict[str, Any], kernel: str) -> None:
    """One elementwise int8 kernel call on two operands of the output's size; a constant operand of
    another shape is emitted broadcast to the output's (a non-constant one is refused)."""
    y = w.graph.tensor(op.outputs[0])
    refs = []
    for k, t in enumerate(op.inputs[:2]):
        x = w.graph.tensor(t)
        if x.size == y.size:
            refs.append(w.ref(t))
        elif x.is_const and x.data is not None:
            full = np.broadcast_to(x.data.astype(np.int8), y.shape).reshape(-1)
            refs.append(w.array(f"op{op.index}_input{k + 1}", "int8_t", full))
        else:
            raise UnsupportedOpError(f"{op.describe()}: broadcasting a non-constant operand ({x.shape} to "
                                     f"{y.shape}) is not supported by emit-c", w.graph.path)
    prm = w.params(ctype, f"op{op.index}_params", {**fields, "size": y.size})
    w.call(op, f"{kernel}(&{prm}, {refs[0]}, {refs[1]}, {w.ref(op.outputs[0])});")
