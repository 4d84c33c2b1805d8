"""TRANSPOSE_CONV, int8 per channel (TFLM micro/kernels/transpose_conv.cc;
reference_integer_ops/transpose_conv.h): Keras Conv2DTranspose.

Inputs: the output shape (constant int32), the weights [out, kh, kw, in], the input, an optional int32
bias. Every input element scatters w (x + input_offset) into the outputs at y * stride - pad + (fy, fx)
(those inside the output: an int32 scratch sum), then acc + bias goes through the convolution's output
stage per channel (multipliers as PopulateConvolutionQuantizationParams). The padding is TFLM's
ComputePaddingHeightWidth with the *output* size in the role of the input size, dilation 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from toolchain.arith import Rounding
from toolchain.errors import QassureError, UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir

_WEIGHTS, _INPUT, _BIAS = 1, 2, 3  # op input positions (0: the output shape)


@dataclass(frozen=True)
class TransposeConv(OpData):
    input_offset: int
    weights: np.ndarray  # int64 [out, kh, kw, in]
    bias: np.ndarray  # int64 [out]
    requant: C.Requant
    stride: tuple[int, int]
    padding: tuple[int, int]  # (top, left)
    in_shape: tuple[int, int, int, int]
    out_shape: tuple[int, int, int, int]


def transpose_conv_matrix(in_shape, out_shape, weights, stride, padding) -> sp.csr_matrix:
    """Sparse (n_out, n_in) matrix of a TRANSPOSE_CONV over flattened NHWC tensors: input (iy, ix, ci)
    reaches output (iy sh - ph + fy, ix sw - pw + fx, co) with weight w[co, fy, fx, ci]."""
    _, h, w, c_in = in_shape
    _, oh, ow, c_out = out_shape
    kh, kw = weights.shape[1], weights.shape[2]
    iy, ix = (a.ravel() for a in np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))
    co, ci = np.meshgrid(np.arange(c_out), np.arange(c_in), indexing="ij")
    rows, cols, vals = [], [], []
    for fy in range(kh):
        for fx in range(kw):
            oy, ox = iy * stride[0] - padding[0] + fy, ix * stride[1] - padding[1] + fx
            ok = (oy >= 0) & (oy < oh) & (ox >= 0) & (ox < ow)
            if not ok.any():
                continue
            r = ((oy[ok] * ow + ox[ok]) * c_out)[:, None, None] + co[None]
            c = ((iy[ok] * w + ix[ok]) * c_in)[:, None, None] + ci[None]
            rows.append(r.ravel())
            cols.append(c.ravel())
            vals.append(np.broadcast_to(weights[:, fy, fx, :][None], r.shape).astype(np.float64).ravel())
    if not rows:
        return sp.csr_matrix((oh * ow * c_out, h * w * c_in))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(oh * ow * c_out, h * w * c_in))


class _Plan:
    """The int8 weights as a sparse matrix (integers, exact in float64: every partial sum is below
    2^31, checked in prepare) and the output stage, for one rounding."""

    def __init__(self, p: TransposeConv, rounding: Rounding) -> None:
        self.matrix = transpose_conv_matrix(p.in_shape, p.out_shape, p.weights, p.stride, p.padding)
        self.bias = np.tile(p.bias.astype(np.float64), p.out_shape[1] * p.out_shape[2])
        self.out = K.OutputStage(p.requant, rounding)


class TransposeConvOp(Op):
    names = ("TRANSPOSE_CONV",)

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        return ir.ConvOptions(padding=C.PADDING[o.padding], stride_h=int(o.strideH), stride_w=int(o.strideW),
                              activation=C.fused_activation(getattr(o, "fusedActivationFunction", 0) or 0,
                                                            position, where))

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> TransposeConv:
        o = C.options(graph, op, ir.ConvOptions)
        if len(op.inputs) <= _INPUT:
            raise UnsupportedOpError(f"{op.describe()}: expected output shape, weights and input", graph.path)
        x_t, w_t = op.inputs[_INPUT], op.inputs[_WEIGHTS]
        C.require_int8(graph, op, x_t, w_t, op.outputs[0])
        w = graph.tensor(w_t)
        if w.data is None:
            raise UnsupportedOpError(f"{op.describe()}: non-constant weights", graph.path)
        if w.quant is None or np.any(w.quant.zero_point != 0):
            raise UnsupportedOpError(f"{op.describe()}: weights must be symmetric int8", graph.path)
        x, y = graph.tensor(x_t), graph.tensor(op.outputs[0])
        if len(x.shape) != 4 or len(y.shape) != 4 or x.shape[0] != 1:
            raise UnsupportedOpError(f"{op.describe()}: input and output must be 4-D with batch 1",
                                     graph.path)
        n_out, kh, kw, c_in = (int(d) for d in w.shape)
        if c_in != x.shape[3] or n_out != y.shape[3]:
            raise UnsupportedOpError(f"{op.describe()}: weights {w.shape} do not match input {x.shape} and "
                                     f"output {y.shape}", graph.path)
        s_in, zp_in = C.scalar_quant(graph, op, x_t)
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        mult, shift = C.channel_multipliers(s_in, w.quant.scale, s_out, n_out, rounding)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        bias = C.bias(graph, op, n_out, slot=_BIAS)
        weights = w.data.astype(np.int64)
        # The device sums in int32: refuse what could overflow it (then float64 sums are exact too).
        reach = int(np.abs(weights).reshape(n_out, -1).sum(axis=1).max()) * 255 + int(np.abs(bias).max())
        if reach >= 2**31:
            raise UnsupportedOpError(f"{op.describe()}: accumulators may overflow int32", graph.path)
        # TFLM CalculateOpData: ComputePaddingHeightWidth(stride, dilation 1, the output's height/width, ...)
        _, pad_h = C.compute_padding(o.padding, o.stride_h, 1, int(y.shape[1]), kh)
        _, pad_w = C.compute_padding(o.padding, o.stride_w, 1, int(y.shape[2]), kw)
        return TransposeConv(-zp_in, weights, bias, C.Requant(mult, shift, zp_out, act_min, act_max),
                             (o.stride_h, o.stride_w), (pad_h, pad_w),
                             tuple(int(d) for d in x.shape), tuple(int(d) for d in y.shape))  # type: ignore[arg-type]

    def execute(self, p: TransposeConv, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[_INPUT]
        assert x is not None
        plan: _Plan = p.constants.get(rounding, lambda: _Plan(p, rounding))
        batch = x.shape[0]
        rows = x.reshape(batch, -1).astype(np.float64) + p.input_offset
        acc = np.asarray((plan.matrix @ rows.T).T) + plan.bias
        out = np.empty(acc.shape, dtype=np.int8)
        plan.out(acc.reshape(batch, -1, p.out_shape[3]), out.reshape(batch, -1, p.out_shape[3]))
        return out.reshape((batch, *out_shape))

    def lower(self, ctx: LowerContext) -> Lowered:
        """Both sides as sparse matrices over the flattened NHWC tensors; the int8 weights scaled by the
        device's effective multiplier per channel, noise rho per channel (as CONV_2D)."""
        p: TransposeConv = ctx.prepared
        fg, fo = ctx.float_graph, ctx.float_op
        wf, bias_f = C.float_weights(fg, fo, bias_slot=_BIAS)
        if wf.shape != p.weights.shape:
            raise QassureError(f"{ctx.name}: float weights {wf.shape} against int8 {p.weights.shape}")
        A_f = transpose_conv_matrix(p.in_shape, p.out_shape, wf, p.stride, p.padding)
        A_int = transpose_conv_matrix(p.in_shape, p.out_shape, p.weights, p.stride, p.padding)
        return C.output_stage_lowered(ctx, p.requant, p.bias, A_f, bias_f, A_int)

    def emit_c(self, w: CWriter, op: ir.Operator, p: TransposeConv) -> None:
        name = f"op{op.index}"
        X, Y = w.ref(op.inputs[_INPUT]), w.ref(op.outputs[0])
        r = p.requant
        mult = w.array(f"{name}_multiplier", "int32_t", r.multiplier, 8)
        shift = w.array(f"{name}_shift", "int32_t", r.shift, 8)
        filt = w.array(f"{name}_filter", "int8_t", p.weights)
        bias = w.array(f"{name}_bias", "int32_t", p.bias, 8) if np.any(p.bias != 0) else "0"
        _, h, wd, c = p.in_shape
        prm = w.params("qa_conv_params", f"{name}_params", {
            "input_offset": p.input_offset, "output_offset": r.output_offset, "act_min": r.act_min,
            "act_max": r.act_max, "stride_h": p.stride[0], "stride_w": p.stride[1], "dilation_h": 1,
            "dilation_w": 1, "pad_h": p.padding[0], "pad_w": p.padding[1], "batches": 1, "input_h": h,
            "input_w": wd, "input_c": c, "filter_h": int(p.weights.shape[1]),
            "filter_w": int(p.weights.shape[2]),
            "filter_c": c, "depth_multiplier": 1, "output_h": p.out_shape[1], "output_w": p.out_shape[2],
            "output_c": p.out_shape[3], "output_multiplier": mult, "output_shift": shift})
        w.call(op, f"qa_transpose_conv2d(&{prm}, {X}, {filt}, {bias}, {Y});")

    def multipliers(self, p: TransposeConv) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.requant.multiplier, p.requant.shift)}
