"""RESHAPE (TFLM micro/kernels/reshape.cc): the same bytes under another shape.

In the merged network it is no node at all: its output is its input's node (Role.ALIAS), since
nodes hold flattened tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolchain.arith import Rounding
from toolchain.ops.base import CWriter, Op, OpData, Role
from toolchain.tflite import ir


@dataclass(frozen=True)
class Reshape(OpData):
    """No parameters: the output shape is the output tensor's."""


class ReshapeOp(Op):
    names = ("RESHAPE",)
    role = Role.ALIAS

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Reshape:
        return Reshape()

    def execute(self, p: Reshape, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return x.reshape((x.shape[0],) + out_shape)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Reshape) -> None:
        size = w.graph.tensor(op.outputs[0]).size
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        w.call(op, f"memcpy({Y}, {X}, {size});")
