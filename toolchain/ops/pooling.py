"""AVERAGE_POOL_2D and MAX_POOL_2D (TFLM micro/kernels/pooling.cc, reference_integer_ops/pooling.h).

AveragePool: sum of the valid int8 inputs of the window, divided by their count rounding half away
from zero (C truncating division after adding +-count/2); MaxPool: max of the valid inputs. Both
clamp to the fused activation's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from toolchain.arith import Rounding
from toolchain.errors import QassureError
from toolchain.margins import FP_SLACK
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.ops.maxtree import max_tree
from toolchain.tflite import ir


@dataclass(frozen=True)
class Pool(OpData):
    average: bool
    filter: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]
    act_min: int
    act_max: int


def pool(x: np.ndarray, p: Pool) -> np.ndarray:
    """AveragePool / MaxPool on a batch (B, 1, H, W, C) -> (B, 1, oh, ow, C)."""
    batch = x.shape[0]
    x4 = x.reshape((batch,) + x.shape[-3:])
    fh, fw = p.filter
    need = K.need(fh, fw, p.stride, (1, 1), p.out_hw)
    if p.average:
        xp = K.padded(x4, 0, np.int32, p.padding, need)
        ones = K.padded(np.ones((1,) + x4.shape[1:3] + (1,), dtype=np.int8), 0, np.int32, p.padding, need)
        sums = np.zeros((batch, *p.out_hw, x.shape[-1]), dtype=np.int32)
        count = np.zeros((1,) + p.out_hw + (1,), dtype=np.int32)
        for fy in range(fh):
            for fx in range(fw):
                sums += K.tap(xp, fy, fx, p.stride, (1, 1), p.out_hw)
                count += K.tap(ones, fy, fx, p.stride, (1, 1), p.out_hw)
        half = count // 2
        num = np.where(sums > 0, sums + half, sums - half)
        out = np.sign(num) * (np.abs(num) // count)  # C division truncates toward zero
    else:
        xp = K.padded(x4, 0, np.int16, p.padding, need, fill=-(1 << 15))
        out = None
        for fy in range(fh):
            for fx in range(fw):
                sl = K.tap(xp, fy, fx, p.stride, (1, 1), p.out_hw)
                out = sl.copy() if out is None else np.maximum(out, sl, out=out)
    return np.clip(out, p.act_min, p.act_max).astype(np.int8).reshape(batch, 1, p.out_hw[0], p.out_hw[1], -1)


def pool_matrix(in_shape, out_shape, p: Pool) -> sp.csr_matrix:
    """Average over the valid window elements (TFLite excludes padding from the count)."""
    _, h, w, c = in_shape
    _, oh, ow, _ = out_shape
    rows, cols, vals = [], [], []
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * p.stride[0] - p.padding[0], ox * p.stride[1] - p.padding[1]
            ys = [y for y in range(y0, y0 + p.filter[0]) if 0 <= y < h]
            xs = [x for x in range(x0, x0 + p.filter[1]) if 0 <= x < w]
            n = len(ys) * len(xs)
            for y in ys:
                for x in xs:
                    for ch in range(c):
                        rows.append((oy * ow + ox) * c + ch)
                        cols.append((y * w + x) * c + ch)
                        vals.append(1.0 / n)
    return sp.csr_matrix((vals, (rows, cols)), shape=(oh * ow * c, h * w * c))


def _max_lowering(ctx: LowerContext, p: Pool) -> Lowered:
    """MAX_POOL_2D: each window's maximum (padding excluded, as the kernel does), ops.maxtree."""
    pattern = pool_matrix(ctx.input_shape(0), ctx.output.shape, p)
    windows = np.split(pattern.indices, pattern.indptr[1:-1])
    return max_tree(ctx, windows, pattern.shape[1], p.act_min, p.act_max)


class PoolOp(Op):
    names = ("AVERAGE_POOL_2D", "MAX_POOL_2D")

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        return ir.PoolOptions(
            padding=C.PADDING[o.padding],
            stride_h=int(o.strideH),
            stride_w=int(o.strideW),
            filter_h=int(o.filterHeight),
            filter_w=int(o.filterWidth),
            activation=C.fused_activation(o.fusedActivationFunction, position, where),
        )

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Pool:
        o = C.options(graph, op, ir.PoolOptions)
        C.require_int8(graph, op, op.inputs[0], op.outputs[0])
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        _, in_h, in_w, _ = graph.tensor(op.inputs[0]).shape
        out_h, pad_h = C.compute_padding(o.padding, o.stride_h, 1, in_h, o.filter_h)
        out_w, pad_w = C.compute_padding(o.padding, o.stride_w, 1, in_w, o.filter_w)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        return Pool(op.opcode == "AVERAGE_POOL_2D", (o.filter_h, o.filter_w), (o.stride_h, o.stride_w),
                    (pad_h, pad_w), (out_h, out_w), act_min, act_max)

    def execute(self, p: Pool, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return pool(x, p)

    def lower(self, ctx: LowerContext) -> Lowered:
        """AVERAGE_POOL without rescaling: the same averaging matrix on both sides, half an LSB of
        rounding noise. MAX_POOL: _max_lowering."""
        p: Pool = ctx.prepared
        s_out, n = ctx.scale, ctx.size
        if not np.isclose(ctx.input_scales[0], s_out, rtol=0, atol=0):
            raise QassureError(f"{ctx.name}: pooling with rescaling is not supported")
        if not p.average:
            return _max_lowering(ctx, p)
        A = pool_matrix(ctx.input_shape(0), ctx.output.shape, p)
        q_lo, q_hi = C.clamp_range(p.act_min, p.act_max, s_out, ctx.zero_point, n)
        return Lowered((A,), np.zeros(n), ctx.f_lo, ctx.f_hi, (A,), np.zeros(n),
                       np.full(n, 0.5 * s_out * (1 + FP_SLACK)), q_lo, q_hi)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Pool) -> None:
        name = f"op{op.index}"
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        b, h, wd, c = x.shape
        prm = w.params("qa_pool_params", f"{name}_params", {
            "stride_h": p.stride[0], "stride_w": p.stride[1], "filter_h": p.filter[0],
            "filter_w": p.filter[1], "pad_h": p.padding[0], "pad_w": p.padding[1], "act_min": p.act_min,
            "act_max": p.act_max,
            "batches": b, "input_h": h, "input_w": wd, "channels": c, "output_h": p.out_hw[0],
            "output_w": p.out_hw[1]})
        if p.average:
            w.call(op, f"if (qa_average_pool(&{prm}, {X}, {Y}) != 0) return -1;")
        else:
            w.call(op, f"qa_max_pool(&{prm}, {X}, {Y});")
