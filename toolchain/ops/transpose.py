"""TRANSPOSE, int8 (TFLM micro/kernels/transpose.cc; reference_ops::Transpose).

Only rearranges values: output element (i_0, ..., i_k) is input element i at perm (i_perm[0] ... as
numpy.transpose orders them); the permutation is a constant int32 input. The converter gives input and
output one quantization; the certify engines require it (the values are copied, not rescaled).
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
class Transpose(OpData):
    perm: tuple[int, ...]  # output axis a is input axis perm[a]


class TransposeOp(Op):
    names = ("TRANSPOSE",)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Transpose:
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        perm = graph.tensor(op.inputs[1]).data
        rank = len(graph.tensor(op.inputs[0]).shape)
        if perm is None:
            raise UnsupportedOpError(f"{op.describe()}: the permutation must be constant", graph.path)
        perm_t = tuple(int(a) for a in np.asarray(perm).reshape(-1))
        if sorted(perm_t) != list(range(rank)):
            raise UnsupportedOpError(f"{op.describe()}: {perm_t} is not a permutation of {rank} axes",
                                     graph.path)
        return Transpose(perm_t)

    def execute(self, p: Transpose, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return np.ascontiguousarray(np.transpose(x, (0, *(a + 1 for a in p.perm))))

    def lower(self, ctx: LowerContext) -> Lowered:
        """A selection matrix, the same on both sides: exact, no rounding, no clamp."""
        p: Transpose = ctx.prepared
        source = np.arange(ctx.size).reshape(ctx.input_shape(0)).transpose(p.perm).ravel()
        return C.copying(ctx, source)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Transpose) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        lead = 4 - len(p.perm)
        perm4 = list(range(lead)) + [a + lead for a in p.perm]
        prm = w.params("qa_transpose_params", f"op{op.index}_params", {
            "input_dims": C.c_shape4(x.shape, w.graph, op), "perm": perm4})
        w.call(op, f"qa_transpose(&{prm}, {X}, {Y});")
