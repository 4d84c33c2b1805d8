"""MEAN, int8 (TFLM micro/kernels/reduce.cc, reduce_common.cc; reference_ops QuantizedMeanOrSum).

int32 sum over the reduced axes, minus zp_in * count, then one MBQM whose multiplier has 1/count
folded in, zp_out, clamp to int8.
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


def mean(x: np.ndarray, p: Mean, out_shape: tuple[int, ...], rounding: Rounding) -> np.ndarray:
    """reference_ops::QuantizedMeanOrSum: int32 sum, minus zp*count, one MBQM with 1/count folded in."""
    s = x.sum(axis=tuple(a + 1 for a in p.axes), dtype=np.int64) - p.input_zero_point * p.count
    y = multiply_by_quantized_multiplier(s, p.multiplier, p.shift, rounding) + p.output_offset
    return np.clip(y, -128, 127).astype(np.int8).reshape((x.shape[0],) + out_shape)


class MeanOp(Op):
    names = ("MEAN",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        return ir.ReducerOptions(bool(options.keepDims) if options is not None else False)

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Mean:
        o = C.options(graph, op, ir.ReducerOptions)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        x = graph.tensor(op.inputs[0])
        axes_data = graph.tensor(op.inputs[1]).data
        if axes_data is None:
            raise UnsupportedOpError(f"{op.describe()}: axes must be constant", graph.path)
        axes = tuple(sorted({int(a) % len(x.shape) for a in np.asarray(axes_data).reshape(-1)}))
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
        idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
        out_idx = np.zeros(in_shape, dtype=np.int64)
        kept = [a for a in range(len(in_shape)) if a not in p.axes]
        kept_shape = [in_shape[a] for a in kept]
        grid = np.indices(in_shape)
        if kept:
            out_idx[...] = np.ravel_multi_index(tuple(grid[a] for a in kept), kept_shape)
        else:
            out_idx[...] = np.zeros(in_shape, int)
        rows, cols = out_idx.ravel(), idx.ravel()
        A_f = sp.csr_matrix((np.full(rows.size, 1.0 / p.count), (rows, cols)), shape=(n, idx.size))
        # reduce.h QuantizedMeanOrSum: 1/count folded into (multiplier, shift), one MBQM.
        mq = float(effective_scale(p.multiplier, p.shift))
        A_q = sp.csr_matrix((np.full(rows.size, s_out * mq / ctx.input_scales[0]), (rows, cols)),
                            shape=(n, idx.size))
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
