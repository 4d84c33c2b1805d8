"""PRELU, int8 (TFLM micro/kernels/prelu.cc, prelu_common.cc; reference_ops::BroadcastPrelu4DSlow).

v = x - zp_in; y = zp_out + MBQM(v, M_1, e_1) where v >= 0, else MBQM(v * (alpha - zp_alpha), M_2, e_2),
clamped to int8, alpha (a constant int8 tensor) broadcast to the input's shape as numpy broadcasts.
M_1 = s_in / s_out and M_2 = s_in s_alpha / s_out, from the scales widened to double.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from toolchain.arith import (
    Rounding,
    effective_scale,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.ops.leaky_relu import two_slopes
from toolchain.tflite import ir


@dataclass(frozen=True)
class Prelu(OpData):
    input_offset: int  # = -input zero point
    alpha_offset: int  # = -alpha zero point
    output_offset: int
    multiplier_1: int
    shift_1: int
    multiplier_2: int
    shift_2: int
    alpha: np.ndarray  # int8, broadcast to the input's shape (without batch; the C array holds all of it)


def prelu(x: np.ndarray, p: Prelu, rounding: Rounding) -> np.ndarray:
    """reference_ops::BroadcastPrelu4DSlow on a batch (B, *shape), elementwise."""
    v = x.astype(np.int64) + p.input_offset
    up = multiply_by_quantized_multiplier(v, p.multiplier_1, p.shift_1, rounding)
    down = multiply_by_quantized_multiplier(v * (p.alpha.astype(np.int64) + p.alpha_offset), p.multiplier_2,
                                            p.shift_2, rounding)
    return np.clip(p.output_offset + np.where(v >= 0, up, down), -128, 127).astype(np.int8)


def _broadcast(graph: ir.Graph, op: ir.Operator, values: np.ndarray) -> np.ndarray:
    """Alpha as the input's shape without its batch axis (numpy broadcasting, as TFLite's)."""
    shape = graph.tensor(op.inputs[0]).shape
    try:
        return np.broadcast_to(values, shape)[0] if len(shape) > 0 else values
    except ValueError:
        raise UnsupportedOpError(f"{op.describe()}: alpha of shape {values.shape} does not broadcast to "
                                 f"{shape}", graph.path) from None


class PreluOp(Op):
    names = ("PRELU",)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Prelu:
        C.require_int8(graph, op, op.inputs[0], op.inputs[1], op.outputs[0])
        alpha = graph.tensor(op.inputs[1])
        if alpha.data is None:
            raise UnsupportedOpError(f"{op.describe()}: alpha must be constant", graph.path)
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        s_a, zp_a = C.scalar_quant(graph, op, op.inputs[1])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        m1, e1 = quantize_multiplier(float(np.float64(s_in) / np.float64(s_out)), rounding)
        m2, e2 = quantize_multiplier(float(np.float64(s_in) * np.float64(s_a) / np.float64(s_out)), rounding)
        values = np.ascontiguousarray(_broadcast(graph, op, alpha.data.astype(np.int8)))
        return Prelu(-zp_in, -zp_a, zp_out, m1, e1, m2, e2, values)

    def execute(self, p: Prelu, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return prelu(x, p, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """leaky_relu.two_slopes with a slope per element: the float graph's alpha, and on the int8 side
        M_1 2^(e_1-31) above zero, M_2 2^(e_2-31) (alpha_q - zp_alpha) below."""
        p: Prelu = ctx.prepared
        alpha = np.broadcast_to(C.float_constant(ctx.float_graph, ctx.float_op.inputs[1]),
                                ctx.input_shape(0)).ravel()  # the input's shape holds its batch of 1
        negative = float(effective_scale(p.multiplier_2, p.shift_2)) * (p.alpha.astype(np.float64).ravel()
                                                                         + p.alpha_offset)
        positive = np.full(ctx.size, float(effective_scale(p.multiplier_1, p.shift_1)))
        return two_slopes(ctx, alpha, positive, negative, (p.shift_1, p.shift_2))

    def emit_c(self, w: CWriter, op: ir.Operator, p: Prelu) -> None:
        size = w.graph.tensor(op.outputs[0]).size
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        alpha = w.array(f"op{op.index}_alpha", "int8_t", p.alpha.ravel())
        fields = {k: v for k, v in asdict(p).items() if k != "alpha"}
        prm = w.params("qa_prelu_params", f"op{op.index}_params", {**fields, "size": size})
        w.call(op, f"qa_prelu(&{prm}, {X}, {alpha}, {Y});")

    def multipliers(self, p: Prelu) -> dict[str, Any]:
        return {"positive": C.mbqm_row(p.multiplier_1, p.shift_1),
                "negative": C.mbqm_row(p.multiplier_2, p.shift_2)}
