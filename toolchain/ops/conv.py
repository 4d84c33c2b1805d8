"""CONV_2D and DEPTHWISE_CONV_2D (TFLM micro/kernels/conv.cc, depthwise_conv.cc;
reference_integer_ops/conv.h, depthwise_conv.h: ConvPerChannel, DepthwiseConvPerChannel).

acc = sum over the window of w (x + input_offset) + bias, points outside the image skipped (the same
as padding x + input_offset with zeros); y = clamp(MBQM(acc, M_c, e_c) + zp_out, lo, hi) per channel.
Weights: CONV [out, kh, kw, in]; DEPTHWISE [1, kh, kw, out], output channel c * m + j reads input c.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from toolchain.arith import Rounding
from toolchain.errors import UnsupportedOpError
from toolchain.ops import common as C
from toolchain.ops import kernels as K
from toolchain.ops.base import CWriter, LowerContext, Lowered, Op, OpData
from toolchain.tflite import ir


@dataclass(frozen=True)
class Conv(OpData):
    """CONV_2D (weights [out, kh, kw, in]) or DEPTHWISE_CONV_2D (weights [1, kh, kw, out])."""

    depthwise: bool
    input_offset: int
    weights: np.ndarray  # int64
    bias: np.ndarray  # int64 [out]
    requant: C.Requant
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]  # (top, left): TFLM ComputePaddingHeightWidth
    out_hw: tuple[int, int]
    depth_multiplier: int
    per_channel: bool


# --------------------------------------------------------------------------------------------- execute


class ConvPlan:
    """Float weights for one convolution, in one of two forms.

    per-tap: taps[fy, fx] is (c_in, n_out) (depthwise: (c_in, m)); one matmul (or multiply) per tap.
    band (few input channels, where per-tap matmuls are too thin to be efficient): `tw` adjacent
    outputs of one row read a window of `span` input columns in each of the kh filter rows, and
    those kh * span * c_in values are contiguous runs of the padded input. One GEMM with a banded
    matrix band[(fy, col, c), (x, o)] = w[o, fy, col - x*sw, c] when col - x*sw is a multiple of
    dw (zero elsewhere) gives all tw outputs at once: the zeros add exact zeros, so sums and their
    bound are those of the plain dot product.
    """

    BAND_MAX_CHANNELS = 8
    BAND_TILE = 4

    def __init__(self, p: Conv, rounding: Rounding) -> None:
        w = p.weights
        kh, kw = w.shape[1], w.shape[2]
        self.kh, self.kw = kh, kw
        sw, dw = p.stride[1], p.dilation[1]
        m = p.depth_multiplier
        if p.depthwise:
            c_out = w.shape[3]
            c_in = c_out // m
            abs_sum = np.abs(w).reshape(kh * kw, c_out).sum(axis=0)
            self.dtype = K.exact_float(p.input_offset, abs_sum, p.bias)
            # taps[fy][fx] has shape (c_in, m): output channel c * m + j reads input channel c
            self.taps = w.reshape(kh, kw, c_in, m).astype(self.dtype)
            self.n_out = c_out
        else:
            n_out, c_in = w.shape[0], w.shape[3]
            abs_sum = np.abs(w).reshape(n_out, -1).sum(axis=1)
            self.dtype = K.exact_float(p.input_offset, abs_sum, p.bias)
            # taps[fy, fx] is (c_in, n_out), ready for x_slice @ tap
            self.taps = np.ascontiguousarray(w.transpose(1, 2, 3, 0).astype(self.dtype))
            self.n_out = n_out
        self.c_in = c_in
        self.band = None
        if c_in <= self.BAND_MAX_CHANNELS and kh * kw > 1:
            tw = max(1, min(self.BAND_TILE, p.out_hw[1]))
            span = (tw - 1) * sw + (kw - 1) * dw + 1
            band = np.zeros((kh, span, c_in, tw, self.n_out), dtype=self.dtype)
            for fy in range(kh):
                for fx in range(kw):
                    for x in range(tw):
                        col = x * sw + fx * dw
                        if p.depthwise:
                            for c in range(c_in):
                                band[fy, col, c, x, c * m : (c + 1) * m] = self.taps[fy, fx, c]
                        else:
                            band[fy, col, :, x, :] = self.taps[fy, fx]
            self.band = band.reshape(kh * span * c_in, tw * self.n_out)
            self.tile, self.span = tw, span
            self.tiles = -(-p.out_hw[1] // tw)
        self.bias = p.bias.astype(self.dtype)
        self.out = K.OutputStage(p.requant, rounding)


def plan(p: Conv, rounding: Rounding) -> ConvPlan:
    """The record's plan for `rounding`, built on first use."""
    return p.constants.get(rounding, lambda: ConvPlan(p, rounding))


def _band_acc(xp: np.ndarray, plan: ConvPlan, p: Conv) -> np.ndarray:
    """All outputs of a chunk with one GEMM against the banded weights (see ConvPlan)."""
    b = xp.shape[0]
    oh, ow = p.out_hw
    sh, sw = p.stride
    dh = p.dilation[0]
    tw, span, nt, kh, c = plan.tile, plan.span, plan.tiles, plan.kh, plan.c_in
    s0, s1, _, s3 = xp.strides
    # view (b, oh, tile, fy, span * c): row y * sh + fy * dh, columns from tile * tw * sw, contiguous
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(b, oh, nt, kh, span * c), strides=(s0, sh * s1, tw * sw * c * s3, dh * s1, s3),
        writeable=False)
    cols = np.ascontiguousarray(view).reshape(b * oh * nt, kh * span * c)
    acc = (cols @ plan.band).reshape(b, oh, nt * tw, plan.n_out)
    return acc[:, :, :ow] if nt * tw != ow else acc


def _taps_acc(xp: np.ndarray, plan: ConvPlan, p: Conv) -> np.ndarray:
    """All outputs of a chunk as a sum over filter taps of one matmul (depthwise: multiply) each."""
    acc: np.ndarray | None = None
    for fy in range(plan.kh):
        for fx in range(plan.kw):
            sl = K.tap(xp, fy, fx, p.stride, p.dilation, p.out_hw)
            if p.depthwise:
                tap = plan.taps[fy, fx]  # (c_in, m)
                term = sl[..., :, None] * tap if tap.shape[1] > 1 else sl * tap[:, 0]
            else:
                term = sl @ plan.taps[fy, fx]
            if acc is None:
                acc = term
            else:
                acc += term
    assert acc is not None  # a filter has at least one tap
    return acc.reshape(acc.shape[0], p.out_hw[0], p.out_hw[1], plan.n_out)  # depthwise: channel c * m + j


def conv(x: np.ndarray, p: Conv, rounding: Rounding) -> np.ndarray:
    """ConvPerChannel / DepthwiseConvPerChannel: points outside the image are skipped, which is
    the same as padding (x + input_offset) with zeros."""
    pl = plan(p, rounding)
    batch = x.shape[0]
    x4 = x.reshape((batch,) + x.shape[-3:])
    oh, ow = p.out_hw
    kh, kw = pl.kh, pl.kw
    need = K.need(kh, kw, p.stride, p.dilation, p.out_hw)
    if pl.band is not None:  # whole tiles: columns up to the last tile's window
        need = (need[0], max(need[1], (pl.tiles - 1) * pl.tile * p.stride[1] + pl.span))
    out = np.empty((batch, oh, ow, pl.n_out), dtype=np.int8)
    step = K.batch_step(batch, oh * ow * pl.n_out)
    off = pl.dtype(p.input_offset)
    for i in range(0, batch, step):
        xp = K.padded(x4[i : i + step], off, pl.dtype, p.padding, need)
        acc = _band_acc(xp, pl, p) if pl.band is not None else _taps_acc(xp, pl, p)
        acc = acc + pl.bias
        pl.out(acc, out[i : i + step])
    return out.reshape(batch, 1, oh, ow, -1)


# --------------------------------------------------------------------------------------------- lower


def conv_matrix(in_shape, out_shape, weights, stride, dilation, padding, depthwise, mult) -> sp.csr_matrix:
    """Sparse (n_out, n_in) matrix of a CONV_2D / DEPTHWISE_CONV_2D in NHWC flattened order.

    weights: CONV [out, kh, kw, in]; DEPTHWISE [1, kh, kw, out]."""
    _, h, w, c_in = in_shape
    _, oh, ow, c_out = out_shape
    kh, kw = weights.shape[1], weights.shape[2]
    rows, cols, vals = [], [], []
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    for fy in range(kh):
        for fx in range(kw):
            iy = oy * stride[0] - padding[0] + fy * dilation[0]
            ix = ox * stride[1] - padding[1] + fx * dilation[1]
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            oyv, oxv, iyv, ixv = oy[ok], ox[ok], iy[ok], ix[ok]
            if oyv.size == 0:
                continue
            if not depthwise:
                co, ci = np.meshgrid(np.arange(c_out), np.arange(c_in), indexing="ij")
                r = ((oyv * ow + oxv) * c_out)[:, None, None] + co[None]
                c = ((iyv * w + ixv) * c_in)[:, None, None] + ci[None]
                v = np.broadcast_to(weights[:, fy, fx, :][None], r.shape)
            else:
                co = np.arange(c_out)
                ci = co // mult
                r = ((oyv * ow + oxv) * c_out)[:, None] + co[None]
                c = ((iyv * w + ixv) * c_in)[:, None] + ci[None]
                v = np.broadcast_to(weights[0, fy, fx, :][None], r.shape)
            rows.append(r.ravel())
            cols.append(c.ravel())
            vals.append(np.asarray(v, dtype=np.float64).ravel())
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(oh * ow * c_out, h * w * c_in),
    )


class ConvOp(Op):
    names = ("CONV_2D", "DEPTHWISE_CONV_2D")

    def parse_options(self, name: str, options: Any, position: int, where: object) -> ir.OpOptions:
        o = C.require_options(name, options, position, where)
        return ir.ConvOptions(
            padding=C.PADDING[o.padding],
            stride_h=int(o.strideH),
            stride_w=int(o.strideW),
            dilation_h=int(o.dilationHFactor or 1),
            dilation_w=int(o.dilationWFactor or 1),
            depth_multiplier=int(getattr(o, "depthMultiplier", 1) or 1),
            activation=C.fused_activation(o.fusedActivationFunction, position, where),
        )

    def prepare(self, graph: ir.Graph, op: ir.Operator, rounding: Rounding) -> Conv:
        o = C.options(graph, op, ir.ConvOptions)
        depthwise = op.opcode == "DEPTHWISE_CONV_2D"
        x_t, w_t = op.inputs[0], op.inputs[1]
        C.require_int8(graph, op, x_t, w_t, op.outputs[0])
        w = graph.tensor(w_t)
        if w.data is None:
            raise UnsupportedOpError(f"{op.describe()}: non-constant weights", graph.path)
        s_in, zp_in = C.scalar_quant(graph, op, x_t)
        s_out, zp_out = C.scalar_quant(graph, op, op.outputs[0])
        if w.quant is None or np.any(w.quant.zero_point != 0):
            raise UnsupportedOpError(f"{op.describe()}: weights must be symmetric int8", graph.path)
        n_out = w.shape[3] if depthwise else w.shape[0]
        mult, shift = C.channel_multipliers(s_in, w.quant.scale, s_out, n_out, rounding)
        act_min, act_max = C.activation_range(o.activation, s_out, zp_out)
        requant = C.Requant(mult, shift, zp_out, act_min, act_max)
        weights = w.data.astype(np.int64)
        bias = C.bias(graph, op, n_out)
        x = graph.tensor(x_t)
        _, in_h, in_w, _ = x.shape
        kh, kw = w.shape[1], w.shape[2]
        out_h, pad_h = C.compute_padding(o.padding, o.stride_h, o.dilation_h, in_h, kh)
        out_w, pad_w = C.compute_padding(o.padding, o.stride_w, o.dilation_w, in_w, kw)
        mult_depth = (n_out // x.shape[3]) if depthwise else 1
        return Conv(
            depthwise, -zp_in, weights, bias, requant,
            (o.stride_h, o.stride_w), (o.dilation_h, o.dilation_w), (pad_h, pad_w), (out_h, out_w),
            mult_depth, w.quant.per_channel,
        )

    def execute(self, p: Conv, inputs: Sequence[np.ndarray | None], out_shape: tuple[int, ...],
                rounding: Rounding) -> np.ndarray:
        x = inputs[0]
        assert x is not None
        return conv(x, p, rounding)

    def lower(self, ctx: LowerContext) -> Lowered:
        """Both sides as sparse matrices over the flattened NHWC tensors; the int8 weights scaled by
        the device's effective multiplier per channel, noise rho per channel (DESIGN.md)."""
        p: Conv = ctx.prepared
        wf, bf = C.float_weights(ctx.float_graph, ctx.float_op)
        in_shape, out_shape = ctx.input_shape(0), ctx.output.shape
        geometry = (p.stride, p.dilation, p.padding, p.depthwise, p.depth_multiplier)
        A_f = conv_matrix(in_shape, out_shape, wf, *geometry)
        A_int = conv_matrix(in_shape, out_shape, p.weights.astype(np.float64), *geometry)
        return C.output_stage_lowered(ctx, p.requant, p.bias, A_f, bf, A_int)

    def emit_c(self, w: CWriter, op: ir.Operator, p: Conv) -> None:
        name = f"op{op.index}"
        x = w.graph.tensor(op.inputs[0])
        X, Y = w.ref(op.inputs[0]), w.ref(op.outputs[0])
        r = p.requant
        n_out = int(r.multiplier.size)
        mult = w.array(f"{name}_multiplier", "int32_t", r.multiplier, 8)
        shift = w.array(f"{name}_shift", "int32_t", r.shift, 8)
        filt = w.array(f"{name}_filter", "int8_t", p.weights)
        bias = w.array(f"{name}_bias", "int32_t", p.bias, 8) if np.any(p.bias != 0) else "0"
        b, h, wd, c = x.shape
        kh, kw = int(p.weights.shape[1]), int(p.weights.shape[2])
        prm = w.params("qa_conv_params", f"{name}_params", {
            "input_offset": p.input_offset, "output_offset": r.output_offset, "act_min": r.act_min,
            "act_max": r.act_max, "stride_h": p.stride[0], "stride_w": p.stride[1],
            "dilation_h": p.dilation[0], "dilation_w": p.dilation[1], "pad_h": p.padding[0],
            "pad_w": p.padding[1], "batches": b, "input_h": h, "input_w": wd, "input_c": c, "filter_h": kh,
            "filter_w": kw,
            "filter_c": 0 if p.depthwise else int(p.weights.shape[3]), "depth_multiplier": p.depth_multiplier,
            "output_h": p.out_hw[0], "output_w": p.out_hw[1], "output_c": n_out,
            "output_multiplier": mult, "output_shift": shift})
        fn = "qa_depthwise_conv2d" if p.depthwise else "qa_conv2d"
        w.call(op, f"{fn}(&{prm}, {X}, {filt}, {bias}, {Y});")

    def multipliers(self, p: Conv) -> dict[str, Any]:
        return {"output": C.mbqm_row(p.requant.multiplier, p.requant.shift)}
