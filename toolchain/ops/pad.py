"""PAD and PADV2, int8 (TFLM micro/kernels/pad.cc): constant padding with the output zero point
(a padded real zero) or PADV2's constant value.

Lowered as an exact selection matrix (no rounding, no clamp).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolchain.arith import Rounding
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Pad(OpData):
    paddings: tuple[tuple[int, int], ...]  # per axis (before, after)
    pad_value: int  # the output zero point: a padded real zero (or PADV2's constant)


class PadOp(Op):
    names = ("PAD", "PADV2")

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Pad:
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        pads = graph.tensor(op.inputs[1]).data
        if pads is None:
            raise UnsupportedOpError(f"{op.describe()}: paddings must be constant", graph.path)
        _, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        value = zp_out
        if op.opcode == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            cv = graph.tensor(op.inputs[2]).data
            value = int(np.asarray(cv).reshape(-1)[0])
        return Pad(tuple((int(a), int(b)) for a, b in np.asarray(pads).reshape(-1, 2)), value)

    def execute(self, p: Pad, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return np.pad(x, ((0, 0),) + p.paddings, constant_values=p.pad_value).astype(np.int8)

    def lower(self, ctx: LowerContext) -> Lowered:
        """Input element at index i goes to i + pad_before; padded elements are constant."""
        p: Pad = ctx.prepared
        in_shape, n = ctx.input_shape(0), ctx.size
        idx = np.indices(in_shape)
        shifted = tuple(idx[a] + p.paddings[a][0] for a in range(len(in_shape)))
        out_index = np.ravel_multi_index(shifted, ctx.output.shape).ravel()
        return Lowered.rearrangement((C.selection(n, int(np.prod(in_shape)), out_index),), ctx.inputs[:1])

    def emit_c(self, w: CWriter, op: ir.Operator, p: Pad) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        pads = [(0, 0)] * (4 - len(p.paddings)) + list(p.paddings)
        prm = w.params("qa_pad_params", f"op{op.index}_params", {
            "input_dims": C.c_shape4(x.shape, w.graph, op), "pad_before": [a for a, _ in pads],
            "pad_after": [b for _, b in pads], "pad_value": p.pad_value})
        w.call(op, f"qa_pad(&{prm}, {X}, {Y});")
