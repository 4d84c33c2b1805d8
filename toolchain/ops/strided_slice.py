"""STRIDED_SLICE, int8 (TFLM micro/kernels/strided_slice.cc; reference_ops::StridedSlice with the
start and stop of each axis from kernels/internal/strided_slice_logic.h).

Only selects values (Keras Cropping1D/2D and tensor slicing convert to it): along each axis the
indices start, start + stride, ... while they are before stop (after it, for a negative stride).
begin, end and strides are constant int32 inputs; the masks are the op's options. The converter gives
input and output one quantization; the certify engines require it (the values are copied, not
rescaled).
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
class StridedSlice(OpData):
    start: tuple[int, ...]  # per input axis: the first index taken
    stride: tuple[int, ...]
    count: tuple[int, ...]  # how many indices the axis keeps (0: the output is empty)

    def indices(self) -> tuple[np.ndarray, ...]:
        """Per input axis, the indices taken, in output order."""
        axes = zip(self.start, self.stride, self.count, strict=True)
        return tuple(s + d * np.arange(n) for s, d, n in axes)


def axis_range(size: int, begin: int, end: int, stride: int, axis: int,
               o: ir.StridedSliceOptions) -> tuple[int, int]:
    """(start, count) of one axis, as strided_slice_logic.h's StridedSliceStartForAxis and
    StridedSliceEndForAxis compute them for reference_ops::StridedSlice: a negative index counts from
    the end, both ends are clamped to [0, size] ([-1, size - 1] for a negative stride), a masked
    begin or end is the axis's own end on its side, `offset` makes end relative to the start, and a
    shrunk axis ends one after its start (so with a negative stride it keeps nothing: the loop's
    condition fails at once, as the kernel's does)."""
    def clamped(i: int) -> int:
        i = i + size if i < 0 else i
        return min(max(i, 0), size) if stride > 0 else min(max(i, -1), size - 1)

    start = clamped(begin)
    if o.begin_mask >> axis & 1:
        start = 0 if stride > 0 else size - 1
    if o.shrink_axis_mask >> axis & 1:
        stop = start if start >= size else start + 1
    else:
        stop = clamped(end + start if o.offset else end)
        if o.end_mask >> axis & 1:
            stop = size if stride > 0 else -1
    # The kernel loops while index < stop (index > stop for a negative stride).
    return start, len(range(start, stop, stride))


class StridedSliceOp(Op):
    names = ("STRIDED_SLICE",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        return ir.StridedSliceOptions(int(o.beginMask), int(o.endMask), int(o.ellipsisMask),
                                      int(o.newAxisMask), int(o.shrinkAxisMask), bool(o.offset))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> StridedSlice:
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        o = C.options(graph, op, ir.StridedSliceOptions)
        if o.ellipsis_mask or o.new_axis_mask:
            raise UnsupportedOpError(f"{op.describe()}: ellipsis and new-axis masks are not supported "
                                     "(TFLM rejects them too)", graph.path)
        shape = graph.tensor(op.inputs[0]).shape
        given = [graph.tensor(t).data for t in op.inputs[1:4]]
        if len(given) < 3 or any(v is None for v in given):
            raise UnsupportedOpError(f"{op.describe()}: begin, end and strides must be constant", graph.path)
        begin, end, strides = (np.asarray(v, dtype=np.int64).reshape(-1) for v in given)
        if not begin.size == end.size == strides.size == len(shape):
            raise UnsupportedOpError(f"{op.describe()}: begin, end and strides must give every one of the "
                                     f"{len(shape)} input axes", graph.path)
        if np.any(strides == 0):
            raise UnsupportedOpError(f"{op.describe()}: a stride of 0", graph.path)
        start, count = zip(*(axis_range(int(shape[a]), int(begin[a]), int(end[a]), int(strides[a]), a, o)
                             for a in range(len(shape))), strict=True)
        p = StridedSlice(tuple(start), tuple(int(s) for s in strides), tuple(count))
        taken, held = int(np.prod(p.count)), int(np.prod(graph.tensor(op.outputs[0]).shape))
        if taken != held:
            raise UnsupportedOpError(f"{op.describe()}: the slice has {taken} elements but the output tensor "
                                     f"holds {held}", graph.path)
        return p

    def execute(self, p: StridedSlice, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * len(p.start))
        picked = x[(batch,) + np.ix_(*p.indices())]  # (B, count_0, count_1, ...)
        return np.ascontiguousarray(picked).reshape((x.shape[0], *out_shape))

    def lower(self, ctx: LowerContext) -> Lowered:
        """A gathering matrix, the same on both sides: exact, no rounding, no clamp."""
        p: StridedSlice = ctx.prepared
        return C.copying(ctx, np.ravel_multi_index(np.ix_(*p.indices()), ctx.input_shape(0)).ravel())

    def emit_c(self, w: CWriter, op: ir.Operator, p: StridedSlice) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        lead = 4 - len(p.start)
        prm = w.params("qa_strided_slice_params", f"op{op.index}_params", {
            "input_dims": C.c_shape4(x.shape, w.graph, op), "start": [0] * lead + list(p.start),
            "stride": [1] * lead + list(p.stride), "count": [1] * lead + list(p.count)})
        w.call(op, f"qa_strided_slice(&{prm}, {X}, {Y});")
