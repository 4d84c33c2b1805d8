"""CONCATENATION, int8 (TFLM micro/kernels/concatenation.cc) of inputs that share the output's
quantization (the converter's usual case; rescaling inputs are refused at prepare).

Lowered as exact selection matrices, one per input (no rounding, no clamp).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.arith import Rounding
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Concatenation(OpData):
    axis: int  # axis of the tensor's own shape (batch included)


class ConcatenationOp(Op):
    names = ("CONCATENATION",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        activation = C.fused_activation(o.fusedActivationFunction, position, where)
        return ir.ConcatenationOptions(int(o.axis), activation)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Concatenation:
        o = C.options(graph, op, ir.ConcatenationOptions)
        C.require_int8(graph, op, *op.inputs, op.outputs[0])
        q_out = C.scalar_quant(graph, op, op.outputs[0])
        for t in op.inputs:
            q_in = C.scalar_quant(graph, op, t)
            if not (np.float32(q_in[0]) == np.float32(q_out[0]) and q_in[1] == q_out[1]):
                raise UnsupportedOpError(
                    f"{op.describe()}: inputs with differing quantization are not supported", graph.path
                )
        rank = len(graph.tensor(op.outputs[0]).shape)
        return Concatenation(o.axis % rank)

    def execute(self, p: Concatenation, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        xs = [x for x in inputs if x is not None]
        batch = xs[0].shape[0]
        parts = [np.broadcast_to(x, (batch,) + x.shape[1:]) for x in xs]  # constants have B = 1
        return np.concatenate(parts, axis=p.axis + 1)

    def lower(self, ctx: LowerContext) -> Lowered:
        """Input k's element at index i goes to i + (sizes of inputs before k) along the axis."""
        p: Concatenation = ctx.prepared
        mats = []
        offset = 0
        n, out_shape = ctx.size, ctx.output.shape
        for t in ctx.op.inputs:
            shp = ctx.graph.tensor(t).shape
            idx = np.indices(shp)
            moved = tuple(idx[a] + (offset if a == p.axis else 0) for a in range(len(shp)))
            mats.append(C.selection(n, int(np.prod(shp)), np.ravel_multi_index(moved, out_shape).ravel()))
            offset += shp[p.axis]
        return Lowered.rearrangement(tuple(mats))

    def emit_c(self, w: CWriter, op: ir.Operator, p: Concatenation) -> None:
        name = f"op{op.index}"
        g = w.graph
        refs = ", ".join(w.ref(t) for t in op.inputs)
        Y = w.ref(op.outputs[0])
        y = g.tensor(op.outputs[0])
        outer = int(np.prod(y.shape[:p.axis], dtype=np.int64))
        sizes = [int(np.prod(g.tensor(t).shape[p.axis:], dtype=np.int64)) for t in op.inputs]
        ins = f"{name}_inputs"
        w.decls.append(f"static const int8_t *const {ins}[{len(sizes)}] = {{{refs}}};")
        sz = w.array(f"{name}_axis_sizes", "int32_t", sizes, 8)
        prm = w.params("qa_concat_params", f"{name}_params", {"num_inputs": len(sizes), "outer_size": outer,
                                                              "axis_sizes": sz})
        w.call(op, f"qa_concatenation(&{prm}, {ins}, {Y});")
