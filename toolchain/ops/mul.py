"""MUL, int8 (TFLM micro/kernels/mul.cc, mul_common.cc; reference_integer_ops/mul.h).

(x1 + off1) (x2 + off2), one MBQM by s1 s2 / s_out, zp_out, clamp. Not lowered: the product of two
activations is not affine, so the certify engines do not take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from toolchain.arith import Rounding, multiply_by_quantized_multiplier, quantize_multiplier
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, Op, OpData
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
        return mul(x1, x2, p, rounding)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Mul) -> None:
        x, x2, y = (w.graph.tensor(t) for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        if not (x.size == x2.size == y.size):
            raise UnsupportedOpError(f"{op.describe()}: broadcasting ({x.shape} with {x2.shape}) is not "
                                     "supported by emit-c", w.graph.path)
        X2 = w.ref(op.inputs[1])
        prm = w.params("qa_mul_params", f"op{op.index}_params", {**asdict(p), "size": y.size})
        w.call(op, f"qa_mul(&{prm}, {X}, {X2}, {Y});")

    def multipliers(self, p: Mul) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.output_multiplier, p.output_shift)}
