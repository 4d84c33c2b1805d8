"""SUB, int8 (TFLM micro/kernels/sub.cc, sub_common.cc; reference_ops Sub / BroadcastQuantSubSlow).

ADD's recipe with the second rescaled input subtracted (ops/add.py). Prepare differs from ADD's in
precision: sub_common.cc takes twice the larger scale and the three real multipliers in float, then
widens them to double for QuantizeMultiplierSmallerThanOneExp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from toolchain.arith import Rounding, quantize_multiplier
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.add import Add, add_recipe, emit_binary, lower_add
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op
from toolchain.tflite import ir


def sub(x1: np.ndarray, x2: np.ndarray, p: Add, rounding: Rounding) -> np.ndarray:
    """x1 - x2 as the kernel computes it, tabulated over the 65536 input pairs like ADD."""
    if not K.all_int8(x1, x2):
        return add_recipe(x1, x2, p, rounding, -1)
    table = p.constants.get(rounding, lambda: K.pair_table(lambda a, b: add_recipe(a, b, p, rounding, -1)))
    return K.lookup_pair(table, x1, x2)


class SubOp(Op):
    names = ("SUB",)

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
        # sub_common.cc: every real multiplier computed in float, then widened to double.
        twice_max = np.float32(2) * max(np.float32(s1), np.float32(s2))
        m1, e1 = quantize_multiplier(float(np.float32(s1) / twice_max), rounding)
        m2, e2 = quantize_multiplier(float(np.float32(s2) / twice_max), rounding)
        real_out = twice_max / (np.float32(1 << left_shift) * np.float32(s_out))
        mo, eo = quantize_multiplier(float(real_out), rounding)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        return Add(left_shift, -z1, -z2, m1, e1, m2, e2, mo, eo, zp_out, act_min, act_max)

    def execute(self, p: Add, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x1, x2 = inputs[0], inputs[1]
        assert x1 is not None and x2 is not None
        return sub(K.aligned(x1, out_shape), K.aligned(x2, out_shape), p, rounding).reshape((-1,) + out_shape)

    def lower(self, ctx: LowerContext) -> Lowered:
        return lower_add(ctx, -1)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Add) -> None:
        emit_binary(w, op, "qa_add_params", {**asdict(p)}, "qa_sub")

    def multipliers(self, p: Add) -> dict[str, Any]:
        return {"input1": C.mbqm_row(p.input1_multiplier, p.input1_shift),
                "input2": C.mbqm_row(p.input2_multiplier, p.input2_shift),
                "output": C.mbqm_row(p.output_multiplier, p.output_shift)}
