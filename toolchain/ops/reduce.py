"""MEAN and REDUCE_MAX, int8 (TFLM micro/kernels/reduce.cc, reduce_common.cc).

MEAN (reference_ops QuantizedMeanOrSum): int32 sum over the reduced axes, minus zp_in * count, then one
MBQM whose multiplier has 1/count folded in, zp_out, clamp to int8. REDUCE_MAX (ReduceGeneric with
max, from -128): the largest int8 value over the reduced axes; input and output share scale and zero
point (EvalMaxHelper checks both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from toolchain.errors import UnsupportedOpError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.ops.maxtree import max_tree
from toolchain.tflite import ir


@dataclass(frozen=True)
class Mean(OpData):
    """TFLM int8 MEAN (reduce.h QuantizedMeanOrSum): sum, then one requantization folding 1/n."""

    axes: tuple[int, ...]  # axes of the tensor's own shape
    keep_dims: bool
    input_zero_point: int
    count: int
    multiplier: int
    shift: int
    output_offset: int


def _reducer_options(options: Any) -> ir.ReducerOptions:
    """ReducerOptions (MEAN, REDUCE_MAX): keep_dims only changes the output's shape."""
    return ir.ReducerOptions(bool(options.keepDims) if options is not None else False)


def _axes(graph: ir.Graph, op: ir.Operator) -> tuple[int, ...]:
    """The reduced axes (second input, constant) of the input tensor's own shape, sorted."""
    x = graph.tensor(op.inputs[0])
    axes_data = graph.tensor(op.inputs[1]).data
    if axes_data is None:
        raise UnsupportedOpError(f"{op.describe()}: axes must be constant", graph.path)
    return tuple(sorted({int(a) % len(x.shape) for a in np.asarray(axes_data).reshape(-1)}))


def _output_index(in_shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """For every input element (row-major), the output element it is reduced into (kept axes, row-major)."""
    kept = [a for a in range(len(in_shape)) if a not in axes]
    if not kept:
        return np.zeros(int(np.prod(in_shape)), dtype=np.int64)
    grid = np.indices(in_shape)
    return np.ravel_multi_index(tuple(grid[a] for a in kept), [in_shape[a] for a in kept]).ravel()


def mean(x: np.ndarray, p: Mean, out_shape: tuple[int, ...], rounding: Rounding) -> np.ndarray:
    """reference_ops::QuantizedMeanOrSum: int32 sum, minus zp*count, one MBQM with 1/count folded in."""
    s = x.sum(axis=tuple(a + 1 for a in p.axes), dtype=np.int64) - p.input_zero_point * p.count
    y = multiply_by_quantized_multiplier(s, p.multiplier, p.shift, rounding) + p.output_offset
    return np.clip(y, -128, 127).astype(np.int8).reshape((x.shape[0],) + out_shape)


class MeanOp(Op):
    names = ("MEAN",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        return _reducer_options(options)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Mean:
        o = C.options(graph, op, ir.ReducerOptions)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        x = graph.tensor(op.inputs[0])
        axes = _axes(graph, op)
        s_in, zp_in = C.scalar_quant(graph, op, op.inputs[0])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        m, e = quantize_multiplier(float(np.float64(s_in) / np.float64(s_out)), rounding)
        count = int(np.prod([x.shape[a] for a in axes]))
        # reduce.h: fold 1/count into the multiplier, keeping `shift` bits of precision.
        extra = min(count.bit_length() - 1, 32, 31 + e)
        m = int((m << extra) // count)
        e = e - extra
        return Mean(axes, o.keep_dims, zp_in, count, m, e, zp_out)

    def execute(self, p: Mean, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return mean(x, p, out_shape, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """Averaging matrices: 1/count on the float side, the device's s_out M 2^(e-31) / s_in (1/count
        folded in) on the int8 side; noise: rho of that one MBQM."""
        p: Mean = ctx.prepared
        in_shape, n, s_out = ctx.input_shape(0), ctx.size, ctx.scale
        rows = _output_index(in_shape, p.axes)
        cols = np.arange(rows.size)
        A_f = sp.csr_matrix((np.full(rows.size, 1.0 / p.count), (rows, cols)), shape=(n, rows.size))
        # reduce.h QuantizedMeanOrSum: 1/count folded into (multiplier, shift), one MBQM.
        mq = float(effective_scale(p.multiplier, p.shift))
        A_q = sp.csr_matrix((np.full(rows.size, s_out * mq / ctx.input_scales[0]), (rows, cols)),
                            shape=(n, rows.size))
        noise = np.full(n, s_out * float(requant_error_bound(p.shift, ctx.rounding)) * (1 + FP_SLACK))
        q_lo, q_hi = C.clamp_range(-128, 127, s_out, ctx.zero_point, n)
        return Lowered((A_f,), np.zeros(n), ctx.f_lo, ctx.f_hi, (A_q,), np.zeros(n), noise, q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Mean) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        lead = 4 - len(x.shape)
        dims = C.c_shape4(x.shape, w.graph, op)
        prm = w.params("qa_mean_params", f"op{op.index}_params", {
            "dims": dims, "reduced": [int(a - lead in p.axes) for a in range(4)],
            "input_zero_point": p.input_zero_point, "count": p.count, "multiplier": p.multiplier,
            "shift": p.shift, "output_offset": p.output_offset})
        w.call(op, f"qa_mean(&{prm}, {X}, {Y});")

    def multipliers(self, p: Mean) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.multiplier, p.shift)}


@dataclass(frozen=True)
class ReduceMax(OpData):
    axes: tuple[int, ...]  # axes of the tensor's own shape
    keep_dims: bool


class ReduceMaxOp(Op):
    names = ("REDUCE_MAX",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        return _reducer_options(options)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> ReduceMax:
        o = C.options(graph, op, ir.ReducerOptions)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        if C.scalar_quant(graph, op, op.inputs[0]) != C.scalar_quant(graph, op, op.outputs[0]):
            raise UnsupportedOpError(f"{op.describe()}: input and output quantization differ (TFLM refuses "
                                     "it)", graph.path)
        return ReduceMax(_axes(graph, op), o.keep_dims)

    def execute(self, p: ReduceMax, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return x.max(axis=tuple(a + 1 for a in p.axes)).reshape((x.shape[0],) + out_shape)

    def lower(self, ctx: LowerContext) -> Lowered:
        """The maximum over each output's reduced elements (ops.maxtree), no clamp beyond int8's."""
        p: ReduceMax = ctx.prepared
        out = _output_index(ctx.input_shape(0), p.axes)
        order = np.argsort(out, kind="stable")
        windows = np.split(order, np.cumsum(np.bincount(out, minlength=ctx.size))[:-1])
        return max_tree(ctx, windows, out.size, -128, 127)

    def emit_c(self, w: CWriter, op: ir.Operator, p: ReduceMax) -> None:
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        lead = 4 - len(x.shape)
        prm = w.params("qa_reduce_max_params", f"op{op.index}_params", {
            "dims": C.c_shape4(x.shape, w.graph, op), "reduced": [int(a - lead in p.axes) for a in range(4)]})
        w.call(op, f"qa_reduce_max(&{prm}, {X}, {Y});")
